"""The `tar` output: read back by Python's tarfile, GNU tar and our own tar index."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from linuxkit_py.archive.entry import Entry, FileRegion, Kind, read_data
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.archive.tarindex import read_tar_entries
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Rootfs, get_format

EPOCH = 1_700_000_000
LONG = "usr/share/" + "/".join(["deeply-nested-directory"] * 8) + "/file"


def _rootfs(tmp_path: Path) -> list[Entry]:
    blob = tmp_path / "blob"
    blob.write_bytes(b"HEADER" + b"kernel-bytes" * 1000 + b"TRAILER")
    return [
        Entry("boot", Kind.DIR, 0o755, source="linuxkit/kernel:6.6", location="kernel"),
        Entry("boot/kernel", Kind.FILE, 0o644, size=12000, data=FileRegion(str(blob), 6, 12000),
              source="linuxkit/kernel:6.6", location="kernel"),
        Entry("bin", Kind.DIR, 0o755, mtime=5),
        Entry("bin/busybox", Kind.FILE, 0o4755, size=3, data=b"bb\n",
              xattrs=(("security.capability", b"\x01\x00\xff"),),
              source="linuxkit/init:v1", location="init[0]"),
        Entry("bin/sh", Kind.HARDLINK, 0o4755, linkname="bin/busybox"),
        Entry("bin/ls", Kind.SYMLINK, 0o777, linkname="busybox"),
        Entry("dev", Kind.DIR, 0o755),
        Entry("dev/console", Kind.CHAR, 0o600, devmajor=5, devminor=1),
        Entry("dev/loop0", Kind.BLOCK, 0o660, gid=6, devmajor=7, devminor=0, gname="disk"),
        Entry("run", Kind.DIR, 0o755),
        Entry("run/fifo", Kind.FIFO, 0o644),
        Entry(LONG.rsplit("/", 1)[0], Kind.DIR, 0o755),
        Entry(LONG, Kind.FILE, 0o600, uid=2_500_000, gid=1000, size=4, data=b"long",
              uname="a-very-long-user-name-of-40-characters-x"),
        Entry("etc/é-unicode", Kind.SYMLINK, 0o777, linkname="/" + "t" * 150),
    ]


def _write(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    write_tar(entries, buf, EPOCH)
    return buf.getvalue()


def test_python_tarfile_reads_everything_back(tmp_path: Path) -> None:
    entries = _rootfs(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(_write(entries))) as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == [e.path for e in entries]
        for m, e in zip(members, entries, strict=True):
            assert m.mtime == EPOCH
            assert m.mode == e.mode
            assert (m.uid, m.gid, m.uname, m.gname) == (e.uid, e.gid, e.uname, e.gname)
            if e.kind is Kind.FILE:
                f = tf.extractfile(m)
                assert f is not None and f.read() == read_data(e.data)
        by_name = {m.name: m for m in members}
        assert by_name["boot/kernel"].pax_headers == {"LINUXKIT.source": "linuxkit/kernel:6.6",
                                                      "LINUXKIT.location": "kernel"}
        busybox = by_name["bin/busybox"].pax_headers
        assert busybox["LINUXKIT.source"] == "linuxkit/init:v1"
        capability = busybox["SCHILY.xattr.security.capability"]
        assert capability.encode("utf-8", "surrogateescape") == b"\x01\x00\xff"
        assert by_name["bin/sh"].islnk() and by_name["bin/sh"].linkname == "bin/busybox"
        assert by_name["bin/ls"].issym() and by_name["bin/ls"].linkname == "busybox"
        console = by_name["dev/console"]
        assert console.ischr() and (console.devmajor, console.devminor) == (5, 1)
        assert by_name["dev/loop0"].isblk() and by_name["run/fifo"].isfifo()
        assert by_name["etc/é-unicode"].linkname == "/" + "t" * 150
        assert "LINUXKIT.source" not in by_name["dev"].pax_headers


def test_gnu_tar_lists_it(tmp_path: Path) -> None:
    tar = tmp_path / "out.tar"
    tar.write_bytes(_write(_rootfs(tmp_path)))
    listing = subprocess.run(["tar", "-tvf", tar, "--numeric-owner", "--full-time"], check=True,
                             capture_output=True, text=True, env={**os.environ, "TZ": "UTC"})
    lines = listing.stdout.splitlines()
    assert lines[0] == "drwxr-xr-x 0/0               0 2023-11-14 22:13:20 boot/"
    assert lines[1] == "-rw-r--r-- 0/0           12000 2023-11-14 22:13:20 boot/kernel"
    assert lines[4] == "hrwsr-xr-x 0/0               0 2023-11-14 22:13:20 bin/sh link to bin/busybox"
    assert lines[7] == "crw------- 0/0             5,1 2023-11-14 22:13:20 dev/console"
    assert lines[12] == f"-rw------- 2500000/1000      4 2023-11-14 22:13:20 {LONG}"
    assert len(lines) == 14


def test_gnu_tar_extracts_contents_links_and_xattrs(tmp_path: Path) -> None:
    entries = [e for e in _rootfs(tmp_path) if e.kind not in (Kind.CHAR, Kind.BLOCK)]
    tar = tmp_path / "out.tar"
    tar.write_bytes(_write(entries))
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xpf", tar, "-C", out], check=True, capture_output=True)
    assert (out / "boot/kernel").read_bytes() == b"kernel-bytes" * 1000
    assert os.stat(out / "bin/sh").st_ino == os.stat(out / "bin/busybox").st_ino
    assert os.readlink(out / "bin/ls") == "busybox"
    assert (out / LONG).read_bytes() == b"long"
    assert os.stat(out / "bin/busybox").st_mode & 0o7777 == 0o4755


def test_round_trip_through_our_index(tmp_path: Path) -> None:
    entries = _rootfs(tmp_path)
    tar = tmp_path / "out.tar"
    tar.write_bytes(_write(entries))
    back = read_tar_entries(tar, "out.tar")
    assert [(e.path, e.kind, e.mode, e.uid, e.gid, e.linkname, e.devmajor, e.devminor, e.xattrs, e.source,
             e.location, e.uname, e.gname, e.mtime, read_data(e.data)) for e in back] == [
        (e.path, e.kind, e.mode, e.uid, e.gid, e.linkname, e.devmajor, e.devminor, e.xattrs, e.source,
         e.location, e.uname, e.gname, EPOCH, read_data(e.data)) for e in entries]


def test_deterministic(tmp_path: Path) -> None:
    assert _write(_rootfs(tmp_path)) == _write(_rootfs(tmp_path))


def test_format_row_writes_the_whole_rootfs(tmp_path: Path) -> None:
    fmt = get_format("tar")
    assert (fmt.suffixes, fmt.streamable) == ((".tar",), True)
    entries = _rootfs(tmp_path)
    buf = io.BytesIO()
    fmt.write(Rootfs(entries, EPOCH), [buf])
    assert buf.getvalue() == _write(entries)


def test_source_that_changed_size_is_a_user_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"short")
    entry = Entry("f", Kind.FILE, 0o644, size=100, data=FileRegion(str(src), 0, 5))
    with pytest.raises(UserError, match="f: its source has 5 bytes, expected 100"):
        _write([entry])
