"""The merged, validated spec. Image entries stay LinuxKit-shaped dicts (YAML keys as written)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SECTIONS = ("onboot", "onshutdown", "services")


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

    def position(self, path: str) -> Position | None:
        """The position of `path` or of its closest ancestor that has one."""
        while True:
            if path in self.positions:
                return self.positions[path]
            if "/" not in path:
                return self.positions.get(path)
            path = path.rsplit("/", 1)[0]

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
