"""Which files of the `packages` go into the image: docs dropped, `include`/`exclude`/`keep` globs.

Globs are paths without a leading `/` in the syntax of `kernel.modules` (`*`, `?`, `[...]` within
one path segment, `**` as a whole segment for any number of directories). A glob that matches a
directory matches everything below it, so `exclude: [usr/share/bash-completion]` drops the tree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from linuxkit_py.archive.entry import Entry, Kind
from linuxkit_py.archive.tree import parent_dirs
from linuxkit_py.kernel.modules import compile_module_glob

# Documentation, manual pages and translations: nothing in an image reads them.
DROPPED_TREES = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian")


class Globs:
    """A set of path globs; a path matches when it or one of its parent directories matches."""

    def __init__(self, globs: Sequence[str]) -> None:
        self.patterns: list[re.Pattern[str]] = [compile_module_glob(g) for g in globs]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, path: str) -> bool:
        candidates = [path, *parent_dirs(path)]
        return any(p.fullmatch(c) for p in self.patterns for c in candidates)


def is_dropped_doc(path: str) -> bool:
    return any(path == tree or path.startswith(tree + "/") for tree in DROPPED_TREES)


def _wanted(entry: Entry, include: Globs, exclude: Globs, keep: Globs) -> bool:
    path = entry.path
    if exclude.matches(path):
        return False
    if is_dropped_doc(path) and not keep.matches(path):
        return False
    return not include or include.matches(path)


def _detach_hard_links(entries: list[Entry], chosen: set[str], by_path: dict[str, Entry]) -> list[Entry]:
    """A chosen hard link whose target was left out becomes the file itself (its later links point at it)."""
    heirs: dict[str, str] = {}
    out = []
    for entry in entries:
        if entry.path not in chosen:
            continue
        if entry.kind is Kind.HARDLINK and entry.linkname not in chosen:
            heir = heirs.get(entry.linkname)
            if heir is None:
                heirs[entry.linkname] = entry.path
                target = by_path[entry.linkname]
                entry = target.evolve(path=entry.path, source=entry.source, location=entry.location)
            else:
                entry = entry.evolve(linkname=heir)
        out.append(entry)
    return out


def select_entries(entries: list[Entry], include: Sequence[str] = (), exclude: Sequence[str] = (),
                   keep: Sequence[str] = ()) -> list[Entry]:
    """The entries of a package that go into the image, in their order.

    Directories the package ships empty stay (unless a rule drops them); a directory whose
    contents were all dropped goes too; the directories above a chosen entry stay.
    """
    include_globs, exclude_globs, keep_globs = Globs(include), Globs(exclude), Globs(keep)
    by_path = {e.path: e for e in entries}
    had_children = {parent for e in entries for parent in parent_dirs(e.path)}
    chosen = {e.path for e in entries if _wanted(e, include_globs, exclude_globs, keep_globs)}
    if include_globs:
        # `include` names files: a directory it matches only stays when something below it does.
        chosen -= {p for p in chosen if by_path[p].kind is Kind.DIR and p in had_children}
    for path in list(chosen):
        for parent in parent_dirs(path):
            if parent in by_path and by_path[parent].kind is Kind.DIR:
                chosen.add(parent)
    children: dict[str, int] = {}
    for path in chosen:
        for parent in parent_dirs(path)[-1:]:
            children[parent] = children.get(parent, 0) + 1
    for path in sorted(chosen, key=lambda p: p.count("/"), reverse=True):
        if by_path[path].kind is Kind.DIR and path in had_children and not children.get(path):
            chosen.discard(path)
            for parent in parent_dirs(path)[-1:]:
                children[parent] -= 1
    return _detach_hard_links(entries, chosen, by_path)
