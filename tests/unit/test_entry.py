"""archive/entry.py's Entry: immutable, equal by every field, its rarely distinct fields shared between entries."""

from __future__ import annotations

import pickle
import sys

import pytest

from linuxkit_py.archive.entry import FIELDS, Entry, FileRegion, FrozenEntryError, Kind

FULL = {"path": "usr/bin/tool", "kind": Kind.FILE, "mode": 0o4755, "uid": 1000, "gid": 100, "size": 5,
        "linkname": "", "devmajor": 0, "devminor": 0, "data": FileRegion("/cache/a.tar", 1536, 5), "mtime": 1700000000,
        "xattrs": (("security.capability", b"\x01\x02"),), "source": "docker.io/library/x:1", "location": "layer",
        "uname": "me", "gname": "staff"}


def test_every_field_as_given_positionally_and_by_name() -> None:
    by_name = Entry(**FULL)  # type: ignore[arg-type]
    positional = Entry(*(FULL[name] for name in FIELDS))  # type: ignore[arg-type]
    for entry in (by_name, positional):
        assert {name: getattr(entry, name) for name in FIELDS} == FULL
    assert by_name == positional and hash(by_name) == hash(positional)


def test_defaults() -> None:
    entry = Entry("etc", Kind.DIR, 0o755)
    assert (entry.uid, entry.gid, entry.size, entry.linkname, entry.devmajor, entry.devminor, entry.data,
            entry.mtime, entry.xattrs, entry.source, entry.location, entry.uname, entry.gname) == \
        (0, 0, 0, "", 0, 0, None, 0, (), "", "", "", "")


@pytest.mark.parametrize("name", FIELDS)
def test_any_field_differing_makes_entries_unequal(name: str) -> None:
    changed = {"path": "usr/bin/other", "kind": Kind.HARDLINK, "mode": 0o755, "uid": 0, "gid": 0, "size": 6,
               "linkname": "usr/bin/tool", "devmajor": 1, "devminor": 3, "data": b"hello", "mtime": 0,
               "xattrs": (), "source": "other:2", "location": "files", "uname": "root", "gname": "root"}[name]
    base = Entry(**FULL)  # type: ignore[arg-type]
    other = base.evolve(**{name: changed})
    assert getattr(other, name) == changed
    assert other != base
    assert {n: getattr(other, n) for n in FIELDS if n != name} == {n: v for n, v in FULL.items() if n != name}
    assert other.evolve(**{name: FULL[name]}) == base  # and back


def test_frozen() -> None:
    entry = Entry("a", Kind.FILE, 0o644)
    for name in ("path", "uid", "source", "anything"):
        with pytest.raises(FrozenEntryError):
            setattr(entry, name, "x")
    with pytest.raises(FrozenEntryError):
        del entry.path
    with pytest.raises(TypeError, match="no field 'colour'"):
        entry.evolve(colour="red")


def test_entries_of_one_image_share_their_common_fields() -> None:
    """What makes 230,000 entries fit: one tuple of owner, time and origin for all the entries that share them,
    and no per-entry dictionary."""
    a = Entry("a", Kind.FILE, 0o644, uid=1, mtime=1234567890, source="img:1", location="layer")
    b = Entry("b", Kind.FILE, 0o600, uid=1, mtime=1234567890, source="img:1", location="layer", size=3, data=b"abc")
    moved = a.evolve(path="containers/x/rootfs/a")
    relocated = a.evolve(location="layer")  # unchanged values: the same tuple again
    assert a.shared_fields is b.shared_fields is moved.shared_fields is relocated.shared_fields
    assert not hasattr(a, "__dict__")
    assert sys.getsizeof(a) <= sys.getsizeof(object()) + 8 * 8  # six fields of its own (16 before)


def test_pickles_and_repr() -> None:
    entry = Entry(**FULL)  # type: ignore[arg-type]
    assert pickle.loads(pickle.dumps(entry)) == entry
    assert repr(entry).startswith("Entry(path='usr/bin/tool', kind=<Kind.FILE: 'file'>, mode=2541, uid=1000,")
    assert Entry("a", Kind.DIR, 0o755) != ("a", Kind.DIR, 0o755)


def test_forgetting_the_shared_tuples_keeps_every_entry_whole() -> None:
    """After a cold build's layers are indexed their entries are gone; the tuples kept for them are let go too."""
    from linuxkit_py.archive.entry import forget_shared_fields

    before = Entry("a", Kind.SYMLINK, 0o777, linkname="b", source="img:1", location="layer")
    forget_shared_fields()
    after = Entry("a", Kind.SYMLINK, 0o777, linkname="b", source="img:1", location="layer")
    assert after == before and after.shared_fields is not before.shared_fields  # not kept across the forgetting
    assert Entry("c", Kind.DIR, 0o755).shared_fields is Entry("d", Kind.DIR, 0o700).shared_fields  # defaults still
    assert after.evolve(path="x").shared_fields is after.shared_fields
