"""Checks across the merged spec: unique names, container names used as ids, volume references.

These run after merging because a name may be declared in one file and used in another.
"""

from __future__ import annotations

import logging
from typing import Any

from linuxkit_py.bundle.mounts import options_read_only
from linuxkit_py.spec.fields import quoted, suggest
from linuxkit_py.spec.model import SECTIONS, STDIN, STDIN_NAME, Spec, pointer

log = logging.getLogger("linuxkit_py")

ROOT_IDS = ("", "root")


class _Checker:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.problems: list[tuple[str, str, str | None]] = []

    def problem(self, path: str, message: str, hint: str | None = None) -> None:
        self.problems.append((path, message, hint))

    def images(self) -> list[tuple[tuple[str, int], dict[str, Any]]]:
        """(section, index) and entry of every container."""
        return [
            ((section, i), image)
            for section in SECTIONS
            for i, image in enumerate(getattr(self.spec, section))
        ]

    def unique_names(self, section: str, what: str) -> None:
        first: dict[str, str] = {}
        for i, entry in enumerate(getattr(self.spec, section)):
            path = pointer(section, i, "name")
            name = entry["name"]
            if name in first:
                where = self.spec.position(first[name])
                self.problem(path, f"duplicate {what} name {quoted(name)} (first at {where})")
            else:
                first[name] = path

    def known_ids(self) -> None:
        names = [image["name"] for _, image in self.images()]
        owners = [(path, image) for path, image in self.images()]
        owners += [(("files", i), f) for i, f in enumerate(self.spec.files)]
        for path, owner in owners:
            ids = [(pointer(*path, key), owner[key]) for key in ("uid", "gid") if key in owner]
            ids += [
                (pointer(*path, "additionalGids", j), v)
                for j, v in enumerate(owner.get("additionalGids", []))
            ]
            for id_path, value in ids:
                if isinstance(value, str) and value not in ROOT_IDS and value not in names:
                    hint = suggest(value, names) or "a uid/gid is a number, root, or the name of a container"
                    self.problem(
                        id_path, f"{quoted(value)} is not a number, root or a container in the spec", hint
                    )

    def volume(self, path: str, name: str, options: list[str]) -> None:
        volumes = {v["name"]: v for v in self.spec.volumes}
        volume = volumes.get(name)
        if volume is None:
            hint = suggest(name, list(volumes)) or "a source that does not start with / names a volume"
            self.problem(path, f"{quoted(name)} is not a declared volume", hint)
        elif volume.get("readonly") and not options_read_only(options):
            self.problem(
                path, f"volume {quoted(name)} is read-only: mount it with the ro option", "e.g. vol:/dst:ro"
            )

    def volume_references(self) -> None:
        for path, image in self.images():
            for key in ("binds", "binds.add"):
                for j, bind in enumerate(image.get(key, [])):
                    parts = bind.split(":")
                    if not parts[0].startswith("/"):
                        options = parts[2].split(",") if len(parts) == 3 else []
                        self.volume(pointer(*path, key, j), parts[0], options)
            for j, mount in enumerate(image.get("mounts", [])):
                source = mount.get("source", "")
                if mount.get("type") == "bind" and not source.startswith("/"):
                    self.volume(pointer(*path, "mounts", j, "source"), source, mount.get("options", []))

    def warn_restart(self) -> None:
        for section in ("onboot", "onshutdown"):
            for i, image in enumerate(getattr(self.spec, section)):
                if "restart" in image:
                    path = pointer(section, i, "restart")
                    log.warning("%s", self.spec.error(path, "ignored: only services are restarted"))

    def order(self, problem: tuple[str, str, str | None]) -> tuple[int, int, int]:
        files = [STDIN_NAME if source == STDIN else source for source in self.spec.sources]
        pos = self.spec.position(problem[0])
        if pos is None:
            return (len(files), 0, 0)
        return (files.index(pos.file) if pos.file in files else len(files), pos.line, pos.column)


def check_spec(spec: Spec) -> None:
    """Raise the first (in file order) cross-reference mistake of a merged spec as a SpecError."""
    checker = _Checker(spec)
    checker.unique_names("services", "service")
    checker.unique_names("volumes", "volume")
    checker.known_ids()
    checker.volume_references()
    checker.warn_restart()
    if checker.problems:
        path, message, hint = min(checker.problems, key=checker.order)
        raise spec.error(path, message, hint)
