"""An ordered path map of entries: later additions override earlier ones, like unpacking a tar.

LinuxKit writes every section into one tar and lets the unpacker resolve overlaps (the
last entry wins). We resolve them while assembling, so every output holds each path once,
parents before children, and a hard link always points at an earlier regular file.
"""

from __future__ import annotations

import posixpath

from linuxkit_py.archive.entry import Entry, Kind


def parent_dirs(path: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`]."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


class Tree:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._links: dict[str, list[str]] = {}  # hard link target -> paths linking to it

    def __contains__(self, path: str) -> bool:
        return path in self._entries

    def get(self, path: str) -> Entry | None:
        return self._entries.get(path)

    def add(self, entry: Entry, *, parent: Entry | None = None, keep_existing_dir: bool = False) -> None:
        """Add `entry`, creating missing parents like `parent` (default: 0755 root dirs).

        An existing path is replaced in place; a directory keeps its children unless it is
        replaced by a non-directory. With `keep_existing_dir`, an existing directory is left
        as it is (used for the parents that `files` entries imply).
        """
        # A directory in the tree has all its parents (add makes them, a replaced directory takes its
        # children along): when the entry's parent is one, there is nothing to make.
        up = entry.path.rpartition("/")[0]
        above = self._entries.get(up) if up else None
        if up and (above is None or above.kind is not Kind.DIR):
            for p in parent_dirs(entry.path):
                existing = self._entries.get(p)
                if existing is None or existing.kind != Kind.DIR:
                    template = parent or Entry(p, Kind.DIR, 0o755, source=entry.source, location=entry.location)
                    self._put(template.evolve(path=p, kind=Kind.DIR))
        old = self._entries.get(entry.path)
        if old is not None and old.kind == Kind.DIR and entry.kind == Kind.DIR and keep_existing_dir:
            return
        if entry.kind == Kind.HARDLINK:
            target = self._entries.get(entry.linkname)
            if target is None or target.kind != Kind.FILE:
                raise ValueError(f"hard link {entry.path} -> {entry.linkname}: no such regular file before it")
            if entry.linkname == entry.path:
                return
        self._put(entry)

    def _put(self, entry: Entry) -> None:
        path = entry.path
        old = self._entries.get(path)
        if old is not None:
            if old.kind == Kind.DIR and entry.kind != Kind.DIR:
                self._remove_children(path)
            self._detach(path, old)
        self._entries[path] = entry
        if entry.kind == Kind.HARDLINK:
            self._links.setdefault(entry.linkname, []).append(path)

    def _remove_children(self, path: str) -> None:
        prefix = path + "/"
        for child in [p for p in self._entries if p.startswith(prefix)]:
            self._detach(child, self._entries[child])
            del self._entries[child]

    def _detach(self, path: str, old: Entry) -> None:
        """`path` is going away or changing: keep hard links to it pointing at its old content."""
        if old.kind == Kind.HARDLINK:
            links = self._links.get(old.linkname, [])
            if path in links:
                links.remove(path)
            return
        links = self._links.pop(path, [])
        links = [p for p in links if p in self._entries]
        if not links:
            return
        heir, rest = links[0], links[1:]
        self._entries[heir] = old.evolve(path=heir, source=self._entries[heir].source,
                                      location=self._entries[heir].location)
        for p in rest:
            self._entries[p] = self._entries[p].evolve(linkname=heir)
        if rest:
            self._links[heir] = rest

    def entries(self) -> list[Entry]:
        """Entries in order, with every hard link after the file it points to."""
        out: list[Entry] = []
        # only the paths hard links point at are remembered (a set of every path is 8 MiB at 230,000)
        targets = {e.linkname for e in self._entries.values() if e.kind == Kind.HARDLINK}
        seen: set[str] = set()
        deferred: dict[str, list[Entry]] = {}
        for path, entry in self._entries.items():
            if entry.kind == Kind.HARDLINK and entry.linkname not in seen:
                deferred.setdefault(entry.linkname, []).append(entry)
                continue
            out.append(entry)
            if path in targets:
                seen.add(path)
                out.extend(deferred.pop(path, ()))
        for group in deferred.values():  # targets that came later in place: emit after them
            out.extend(group)
        return out


def normalize_path(path: str) -> str:
    """`/etc//x/` -> `etc/x`."""
    return posixpath.normpath("/" + path).lstrip("/") if path.strip("/") else ""
