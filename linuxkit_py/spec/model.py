"""The merged, validated spec. Image entries stay LinuxKit-shaped dicts (YAML keys as written)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from linuxkit_py.errors import SpecError

SECTIONS = ("onboot", "onshutdown", "services")
STDIN = "-"  # a spec path meaning standard input
STDIN_NAME = "<stdin>"  # how messages name it


def pointer(*parts: str | int) -> str:
    """A positions key: ("services", 1, "binds.add") -> "services/1/binds.add" (RFC 6901 escapes)."""
    return "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def child(path: str, part: str | int) -> str:
    """The key of `part` inside the value at `path` ("" is the document)."""
    escaped = pointer(part)
    return f"{path}/{escaped}" if path else escaped


def pointer_parts(path: str) -> list[str]:
    """The inverse of pointer(): every part as a string."""
    if not path:
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")]


def display_path(path: str) -> str:
    """The form error messages use: "services/1/capabilities/0" -> "services[1].capabilities[0]"."""
    out = ""
    for part in pointer_parts(path):
        if not part.isprintable():  # a key holding a newline must not break the one-line message
            part = part.encode("unicode_escape").decode("ascii")
        if part.isdigit():
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass
class Position:
    """Where a value came from: file, 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass
class Spec:
    """A spec after validation and merging.

    kernel: {"image", "cmdline", "binary", "tar", "ucode"} (only keys that were given).
    init: image reference strings as written (normalisation happens in resolve).
    onboot/onshutdown/services: image entries, each a dict with at least "name" and "image".
    files, volumes: entries as dicts. `mode` values are normalised to octal strings ("0644").
    positions: JSON-pointer-like path (e.g. "services/1/capabilities/0") -> Position, for
      errors found after validation (unknown uid name, missing source file, ...).
    """

    kernel: dict[str, Any] = field(default_factory=dict)
    init: list[str] = field(default_factory=list)
    onboot: list[dict[str, Any]] = field(default_factory=list)
    onshutdown: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    trust: dict[str, Any] | None = None
    sources: list[str] = field(default_factory=list)
    positions: dict[str, Position] = field(default_factory=dict)
    # merged entry key ("services/3") -> its key inside its own file ("services/0"), when they differ
    local_paths: dict[str, str] = field(default_factory=dict)

    def position(self, path: str) -> Position | None:
        """The position of `path` or of its closest ancestor that has one."""
        while True:
            if path in self.positions:
                return self.positions[path]
            if "/" not in path:
                return self.positions.get(path)
            path = path.rsplit("/", 1)[0]

    def local_path(self, path: str) -> str:
        """`path` as the user sees it in the file it came from (merging renumbers list entries)."""
        parts = path.split("/")
        if len(parts) >= 2:
            entry = "/".join(parts[:2])
            if entry in self.local_paths:
                return "/".join([self.local_paths[entry], *parts[2:]])
        return path

    def error(self, path: str, message: str, hint: str | None = None) -> SpecError:
        """A SpecError at `path`: `file:line:col: services[0].uid: message`."""
        first = self.sources[0] if self.sources else "<spec>"
        pos = self.position(path) or Position(STDIN_NAME if first == STDIN else first, 1, 1)
        shown = display_path(self.local_path(path))
        return SpecError(pos.file, pos.line, pos.column, f"{shown}: {message}" if shown else message, hint)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a LinuxKit YAML document (empty sections omitted), for --dry-run and metadata."""
        doc: dict[str, Any] = {}
        if self.kernel:
            doc["kernel"] = dict(self.kernel)
        for key in ("init", "onboot", "onshutdown", "services", "files", "volumes"):
            value = getattr(self, key)
            if value:
                doc[key] = value
        if self.trust:
            doc["trust"] = self.trust
        return doc
