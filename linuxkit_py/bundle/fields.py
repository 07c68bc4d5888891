"""Field lookup with LinuxKit's precedence (YAML entry over image label), and field-level errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LABEL_NAME = "org.mobyproject.config"


class FieldError(Exception):
    """A bad value in one field of a container entry (or of its image label)."""

    def __init__(self, field: str, detail: str, from_label: bool = False) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail
        self.from_label = from_label


@dataclass(frozen=True)
class Picked:
    value: Any
    from_label: bool


@dataclass(frozen=True)
class Layers:
    """The YAML entry and the image's label; a key set in the YAML wins over the label's."""

    entry: dict[str, Any]
    label: dict[str, Any]

    def pick(self, key: str) -> Picked | None:
        """The value of `key` from the YAML, else from the label, else None (an empty value counts as set)."""
        if key in self.entry and self.entry[key] is not None:
            return Picked(self.entry[key], False)
        if key in self.label and self.label[key] is not None:
            return Picked(self.label[key], True)
        return None

    def pick_nonempty(self, key: str) -> Picked | None:
        """Like pick, but an empty string does not override (LinuxKit's `assignStringEmpty`)."""
        for source, from_label in ((self.entry, False), (self.label, True)):
            value = source.get(key)
            if value is not None and value != "":
                return Picked(value, from_label)
        return None

    def value(self, key: str, default: Any = None) -> Any:
        picked = self.pick(key)
        return default if picked is None else picked.value

    def merged(self, key: str) -> list[tuple[Any, bool]]:
        """`key` merged with `key.add`, de-duplicated; each item with whether it came from the label.

        The base list is the YAML's `key` if set, else the label's `key` followed by the label's `key.add`;
        the YAML's `key.add` is appended to it.
        """
        if self.entry.get(key) is not None:
            parts = [(self.entry[key], False)]
        else:
            parts = [(self.label.get(key) or [], True), (self.label.get(f"{key}.add") or [], True)]
        parts.append((self.entry.get(f"{key}.add") or [], False))
        seen: set[Any] = set()
        out: list[tuple[Any, bool]] = []
        for items, from_label in parts:
            for item in items:
                if item not in seen:
                    seen.add(item)
                    out.append((item, from_label))
        return out
