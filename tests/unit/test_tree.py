"""The assembled path map (archive/tree.py): parents before children, later entries win."""

from __future__ import annotations

from linuxkit_py.archive.entry import Entry, Kind
from linuxkit_py.archive.tree import Tree


def _d(path: str, mode: int = 0o755, source: str = "") -> Entry:
    return Entry(path, Kind.DIR, mode, source=source)


def _f(path: str, data: bytes = b"x", source: str = "") -> Entry:
    return Entry(path, Kind.FILE, 0o644, size=len(data), data=data, source=source)


def _listing(tree: Tree) -> list[tuple[str, Kind, int, str]]:
    return [(e.path, e.kind, e.mode, e.source) for e in tree.entries()]


def test_missing_parents_are_made_and_existing_ones_kept() -> None:
    tree = Tree()
    tree.add(_f("a/b/c", source="img"))
    tree.add(_d("a/b", mode=0o700, source="other"))  # a directory over a directory: new metadata
    tree.add(_f("a/b/d"))
    assert _listing(tree) == [("a", Kind.DIR, 0o755, "img"), ("a/b", Kind.DIR, 0o700, "other"),
                              ("a/b/c", Kind.FILE, 0o644, "img"), ("a/b/d", Kind.FILE, 0o644, "")]


def test_a_parent_that_is_no_directory_is_made_one_again() -> None:
    tree = Tree()
    tree.add(_f("a/b/c"))
    tree.add(_f("a"))  # a file over a directory takes its children away
    tree.add(_f("a/x", source="later"))
    assert _listing(tree) == [("a", Kind.DIR, 0o755, "later"), ("a/x", Kind.FILE, 0o644, "later")]
    tree.add(Entry("lib", Kind.SYMLINK, 0o777, linkname="usr/lib"))
    tree.add(_f("lib/y"), parent=Entry("", Kind.DIR, 0o711, source="files"))
    assert _listing(tree)[-2:] == [("lib", Kind.DIR, 0o711, "files"), ("lib/y", Kind.FILE, 0o644, "")]
    tree.add(_f("lib/deep/z"), parent=Entry("", Kind.DIR, 0o700, source="files"))
    assert ("lib", Kind.DIR, 0o711, "files") in _listing(tree)  # an existing parent keeps its metadata
    assert ("lib/deep", Kind.DIR, 0o700, "files") in _listing(tree)
