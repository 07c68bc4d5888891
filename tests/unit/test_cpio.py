"""newc cpio writer: read back and extracted by GNU cpio."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from linuxkit_py.archive.cpio import link_identical_files, newc_header, newc_trailer, write_cpio
from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.errors import UserError

EPOCH = 1_700_000_000


def _entries(tmp_path: Path) -> list[Entry]:
    blob = tmp_path / "layer.tar"
    blob.write_bytes(b"\0" * 700 + b"#!/bin/sh\necho hi\n" + b"\0" * 100)
    return [
        Entry("bin", Kind.DIR, 0o755),
        Entry("bin/busybox", Kind.FILE, 0o755, size=18, data=FileRegion(str(blob), 700, 18)),
        Entry("bin/sh", Kind.HARDLINK, 0o755, linkname="bin/busybox"),
        Entry("bin/ls", Kind.SYMLINK, 0o777, linkname="busybox"),
        Entry("dev", Kind.DIR, 0o755),
        Entry("dev/console", Kind.CHAR, 0o600, devmajor=5, devminor=1),
        Entry("etc", Kind.DIR, 0o755),
        Entry("etc/init.d", Kind.DIR, 0o700),
        Entry("etc/init.d/rcS", Kind.FILE, 0o750, uid=1, gid=2, size=6, data=b"run!\n\n"),
        Entry("etc/empty", Kind.FILE, 0o600),
        Entry("etc/ssl", Kind.DIR, 0o755),
        Entry("run", Kind.DIR, 0o755),
        Entry("run/fifo", Kind.FIFO, 0o644),
        Entry("sbin", Kind.DIR, 0o755),
        Entry("sbin/init", Kind.HARDLINK, 0o755, linkname="bin/busybox"),
    ]


def _cpio(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    write_cpio(entries, buf, EPOCH)
    return buf.getvalue()


def test_header_layout() -> None:
    header = newc_header(ino=0x2D1, mode=0o100644, uid=0, gid=0, nlink=1, mtime=EPOCH, filesize=5,
                         namesize=6)
    assert header == (b"070701" b"000002D1" b"000081A4" b"00000000" b"00000000" b"00000001" b"6553F100"
                      b"00000005" b"00000000" b"00000000" b"00000000" b"00000000" b"00000006" b"00000000")
    assert newc_trailer() == newc_header(ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0,
                                         namesize=11) + b"TRAILER!!!\0" + bytes(3)


def test_archive_is_block_padded_and_starts_with_the_first_entry(tmp_path: Path) -> None:
    data = _cpio(_entries(tmp_path))
    assert len(data) % 512 == 0
    assert data.startswith(b"070701" b"00000001" b"000041ED")  # ino 1, a 0755 directory
    assert data[110:114] == b"bin\0"


def test_cpio_lists_names_modes_and_link_counts(tmp_path: Path) -> None:
    listing = subprocess.run(["cpio", "-tv", "--numeric-uid-gid", "--quiet"], input=_cpio(_entries(tmp_path)),
                             check=True, capture_output=True).stdout.decode().splitlines()
    fields = [line.split() for line in listing]
    assert [(f[0], f[1], f[-1]) for f in fields] == [
        ("drwxr-xr-x", "2", "bin"),
        ("-rwxr-xr-x", "3", "bin/busybox"),
        ("-rwxr-xr-x", "3", "bin/sh"),
        ("lrwxrwxrwx", "1", "busybox"),
        ("drwxr-xr-x", "2", "dev"),
        ("crw-------", "1", "dev/console"),
        ("drwxr-xr-x", "4", "etc"),
        ("drwx------", "2", "etc/init.d"),
        ("-rwxr-x---", "1", "etc/init.d/rcS"),
        ("-rw-------", "1", "etc/empty"),
        ("drwxr-xr-x", "2", "etc/ssl"),
        ("drwxr-xr-x", "2", "run"),
        ("prw-r--r--", "1", "run/fifo"),
        ("drwxr-xr-x", "2", "sbin"),
        ("-rwxr-xr-x", "3", "sbin/init"),
    ]
    assert fields[3][-3:] == ["bin/ls", "->", "busybox"]
    assert fields[5][4:6] == ["5,", "1"]
    assert fields[8][2:4] == ["1", "2"]


def test_cpio_extracts_contents_modes_symlinks_and_hard_links(tmp_path: Path) -> None:
    entries = [e for e in _entries(tmp_path) if e.kind is not Kind.CHAR]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=_cpio(entries), cwd=out, check=True)
    assert (out / "bin/busybox").read_bytes() == b"#!/bin/sh\necho hi\n"
    inodes = {os.stat(out / p).st_ino for p in ("bin/busybox", "bin/sh", "sbin/init")}
    assert len(inodes) == 1
    assert os.stat(out / "bin/sh").st_nlink == 3
    assert os.readlink(out / "bin/ls") == "busybox"
    assert (out / "etc/init.d/rcS").read_bytes() == b"run!\n\n"
    assert os.stat(out / "etc/init.d/rcS").st_mode & 0o7777 == 0o750
    assert os.stat(out / "etc/init.d").st_mode & 0o7777 == 0o700
    assert os.stat(out / "etc/init.d/rcS").st_mtime == EPOCH
    assert (out / "etc/empty").read_bytes() == b""
    assert os.path.exists(out / "run/fifo")


def test_hard_link_data_is_stored_once(tmp_path: Path) -> None:
    big = b"0123456789" * 10_000
    entries = [Entry("a", Kind.FILE, 0o644, size=len(big), data=big)]
    entries += [Entry(f"link{i}", Kind.HARDLINK, 0o644, linkname="a") for i in range(5)]
    assert len(_cpio(entries)) < len(big) + 2048


def test_deterministic(tmp_path: Path) -> None:
    assert _cpio(_entries(tmp_path)) == _cpio(_entries(tmp_path))


def test_file_over_4_gib_is_refused_before_writing(tmp_path: Path) -> None:
    huge = Entry("var/lib/huge.img", Kind.FILE, 0o644, size=(4 << 30) + 1,
                 data=FileRegion(str(tmp_path / "never-read"), 0, (4 << 30) + 1))
    buf = io.BytesIO()
    with pytest.raises(UserError) as err:
        write_cpio([Entry("var", Kind.DIR, 0o755), huge], buf, EPOCH)
    assert str(err.value).startswith(
        "var/lib/huge.img: 4294967297 bytes is too big for an initramfs (a newc cpio member holds at most "
        "4294967295 bytes)")
    assert buf.getvalue() == b""


@pytest.mark.parametrize(("field", "value"), [("uid", 1 << 32), ("gid", -1), ("devmajor", 1 << 40)])
def test_a_header_field_newc_cannot_hold_is_named(field: str, value: int) -> None:
    entry = Entry("dev/odd", Kind.CHAR if field == "devmajor" else Kind.FILE, 0o600, **{field: value})
    with pytest.raises(ValueError, match=f"cpio header field out of range: {value}"):
        _cpio([Entry("dev", Kind.DIR, 0o755), entry])


def test_every_name_length_is_padded_as_gnu_cpio_reads_it(tmp_path: Path) -> None:
    """Header + name + NUL end on a 4-byte boundary for each name length mod 4 (the hot loop's table)."""
    entries = [Entry("d", Kind.DIR, 0o755)]
    entries += [Entry("d/" + "n" * n, Kind.FILE, 0o644, size=n, data=b"x" * n) for n in range(1, 9)]
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=_cpio(entries), capture_output=True, check=True)
    assert listing.stdout.decode().split() == [e.path for e in entries]


def test_hard_link_without_its_file_is_a_bug() -> None:
    with pytest.raises(ValueError, match="hard link b -> a: no regular file before it"):
        _cpio([Entry("b", Kind.HARDLINK, 0o644, linkname="a")])


def _copies(tmp_path: Path) -> list[Entry]:
    """Three containers' busybox (two identical, one patched), a copy with other permissions, small twins."""
    body = os.urandom(200_000)
    layer = tmp_path / "other-layer.tar"
    layer.write_bytes(b"\0" * 512 + body)
    patched = body[:-1] + bytes([body[-1] ^ 1])
    return [
        Entry("a", Kind.DIR, 0o755),
        Entry("a/busybox", Kind.FILE, 0o755, size=len(body), data=body),
        Entry("a/sh", Kind.HARDLINK, 0o755, linkname="a/busybox"),
        Entry("b", Kind.DIR, 0o755),
        Entry("b/busybox", Kind.FILE, 0o755, size=len(body), data=FileRegion(str(layer), 512, len(body))),
        Entry("b/sh", Kind.HARDLINK, 0o755, linkname="b/busybox"),
        Entry("c", Kind.DIR, 0o755),
        Entry("c/busybox", Kind.FILE, 0o755, size=len(patched), data=patched),
        Entry("c/setuid", Kind.FILE, 0o4755, size=len(body), data=body),
        Entry("c/other-owner", Kind.FILE, 0o755, uid=1000, size=len(body), data=body),
        Entry("c/small1", Kind.FILE, 0o644, size=5, data=b"same\n"),
        Entry("c/small2", Kind.FILE, 0o644, size=5, data=b"same\n"),
    ]


def test_identical_big_files_are_stored_once_and_unpack_as_before(tmp_path: Path) -> None:
    entries = _copies(tmp_path)
    linked = link_identical_files(entries)
    kinds = {e.path: (e.kind, e.linkname) for e in linked}
    assert kinds["b/busybox"] == (Kind.HARDLINK, "a/busybox")  # the same bytes from another layer
    assert kinds["b/sh"] == (Kind.HARDLINK, "b/busybox")
    for path in ("a/busybox", "c/busybox", "c/setuid", "c/other-owner", "c/small1", "c/small2"):
        assert kinds[path] == (Kind.FILE, ""), path  # other bytes, mode or owner; or too small to compare
    plain, shared = _cpio(entries), _cpio(linked)
    assert len(shared) < len(plain) - 190_000
    trees = []
    for name, archive in (("plain", plain), ("shared", shared)):
        out = tmp_path / name
        out.mkdir()
        subprocess.run(["cpio", "-idm", "--quiet", "--no-preserve-owner"], input=archive, cwd=out, check=True)
        trees.append({p.relative_to(out).as_posix(): (p.read_bytes(), p.stat().st_mode)
                      for p in sorted(out.rglob("*")) if p.is_file()})
    assert trees[0] == trees[1]
    out = tmp_path / "shared"
    assert os.stat(out / "a/busybox").st_ino == os.stat(out / "b/busybox").st_ino
    assert os.stat(out / "a/busybox").st_nlink == 4


def test_nothing_to_share_leaves_the_entries_as_they_are(tmp_path: Path) -> None:
    entries = _entries(tmp_path)
    assert link_identical_files(entries) == entries


def test_known_hashes_link_copies_without_reading_them(tmp_path: Path) -> None:
    """link_identical_files takes a region's SHA256 from `known_sha256` (the SBOM's tables) when it has it, and
    reads the bytes only when it does not."""
    absent = str(tmp_path / "never-read.tar")  # reading it would fail
    size = 70_000
    copies = [Entry(f"c{i}", Kind.FILE, 0o755, size=size, data=FileRegion(absent, i * size, size)) for i in range(3)]
    other = tmp_path / "other"
    other.write_bytes(b"o" * size)
    unknown = Entry("u", Kind.FILE, 0o755, size=size, data=FileRegion(str(other), 0, size))
    same, different = bytes(32), bytes([1]) * 32
    known = {copies[0].data: same, copies[1].data: same, copies[2].data: different}
    asked: list[list[FileRegion]] = []

    def known_sha256(regions: list[FileRegion]) -> dict[FileRegion, bytes]:
        asked.append(regions)
        return {r: known[r] for r in regions if r in known}
    linked = link_identical_files([*copies, unknown], known_sha256=known_sha256)
    assert asked == [[e.data for e in [*copies, unknown]]]  # once, with every candidate
    assert [(e.path, e.kind, e.linkname) for e in linked] == [
        ("c0", Kind.FILE, ""), ("c1", Kind.HARDLINK, "c0"), ("c2", Kind.FILE, ""), ("u", Kind.FILE, "")]
