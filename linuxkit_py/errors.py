"""User errors: one clear line on stderr and exit status 1, never a traceback.

Anything that is not a UserError is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad spec, missing image, unreachable registry, unwritable output."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class SpecError(UserError):
    """An error located in a spec file: rendered as `file:line:col: message`."""

    def __init__(self, file: str, line: int, column: int, message: str, hint: str | None = None) -> None:
        super().__init__(f"{file}:{line}:{column}: {message}", hint)
        self.file = file
        self.line = line
        self.column = column
        self.detail = message


class RegistryError(UserError):
    """A registry fault that survived retries; the message names the reference and the registry."""
