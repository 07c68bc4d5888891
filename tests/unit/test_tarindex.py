"""Indexing tar archives (files and byte ranges of files) into Entries."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from linuxkit_py.archive.entry import Entry, FileRegion, Kind, read_data
from linuxkit_py.archive.tarindex import read_tar_entries, read_tar_region
from linuxkit_py.errors import UserError
from tests.imagetools import FIXED_MTIME, D, F, H, L, Member, tar_layer

LONG_DIR = "usr/lib/" + "/".join(["a-rather-long-directory-name"] * 6)
LONG_FILE = LONG_DIR + "/" + "f" * 120


def _tarfile_bytes(fmt: int, members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, FIXED_MTIME
    return info


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_and_links(tmp_path: Path, fmt: int) -> None:
    tar = tmp_path / "t.tar"
    tar.write_bytes(_tarfile_bytes(fmt, [
        (_info(LONG_FILE), b"payload"),
        (_info("short-link", tarfile.SYMTYPE, "../" + LONG_FILE, 0o777), b""),
        (_info(LONG_FILE + "-hard", tarfile.LNKTYPE, LONG_FILE), b""),
    ]))
    entries = read_tar_entries(tar, "t.tar")
    assert [(e.path, e.kind, e.linkname) for e in entries] == [
        (LONG_FILE, Kind.FILE, ""),
        ("short-link", Kind.SYMLINK, "../" + LONG_FILE),
        (LONG_FILE + "-hard", Kind.HARDLINK, LONG_FILE),
    ]
    assert read_data(entries[0].data) == b"payload"


def test_gnu_tar_written_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    deep = src / LONG_DIR
    deep.mkdir(parents=True)
    (deep / ("f" * 120)).write_bytes(b"gnu")
    (src / "usr" / "short").symlink_to("lib")
    (src / "usr" / "lib" / "hard").hardlink_to(deep / ("f" * 120))
    for fmt in ("gnu", "posix"):
        tar = tmp_path / f"{fmt}.tar"
        subprocess.run(["tar", f"--format={fmt}", "-cf", tar, "-C", src, "./usr"], check=True)
        entries = {e.path: e for e in read_tar_entries(tar, fmt)}
        assert read_data(entries[LONG_FILE].data) == b"gnu"
        assert entries["usr/short"].linkname == "lib"
        hard = [e for e in entries.values() if e.kind is Kind.HARDLINK]
        assert len(hard) == 1 and {hard[0].path, hard[0].linkname} == {LONG_FILE, "usr/lib/hard"}


def test_pax_metadata(tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    tar.write_bytes(tar_layer(
        Member("dev/console", "char", mode=0o600, devmajor=5, devminor=1),
        Member("dev/sda", "block", mode=0o660, devmajor=8, devminor=0, gid=6),
        Member("run/fifo", "fifo", mode=0o644),
        Member("bin/ping", "file", b"elf", mode=0o4755, uid=3_000_000,
               pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "uname": "someone",
                    "LINUXKIT.source": "docker.io/x:1", "LINUXKIT.location": "init[0]"}),
    ))
    e = {x.path: x for x in read_tar_entries(tar, "t.tar")}
    assert (e["dev/console"].kind, e["dev/console"].devmajor, e["dev/console"].devminor) == (Kind.CHAR, 5, 1)
    assert (e["dev/sda"].kind, e["dev/sda"].devmajor, e["dev/sda"].gid) == (Kind.BLOCK, 8, 6)
    assert e["run/fifo"].kind is Kind.FIFO
    ping = e["bin/ping"]
    assert (ping.mode, ping.uid, ping.uname) == (0o4755, 3_000_000, "someone")
    assert ping.xattrs == (("security.capability", b"\x01\x00\x00\x02"),)
    assert (ping.source, ping.location, ping.mtime) == ("docker.io/x:1", "init[0]", FIXED_MTIME)


def test_paths_are_normalised_and_the_root_entry_dropped(tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    tar.write_bytes(tar_layer(D("./"), D("./etc/"), F("/etc//passwd"), F("./etc/./group"),
                              H("./x", "/etc/passwd")))
    entries = read_tar_entries(tar, "t.tar")
    assert [(e.path, e.linkname) for e in entries] == [
        ("etc", ""), ("etc/passwd", ""), ("etc/group", ""), ("x", "etc/passwd")]


@pytest.mark.parametrize(("member", "message"), [
    (F("../evil"), "t.tar: refusing tar entry '../evil': its path leaves the root"),
    (F("a/../../evil"), "t.tar: refusing tar entry 'a/../../evil': its path leaves the root"),
    (H("x", "../../etc/shadow"),
     "t.tar: refusing hard link 'x' -> '../../etc/shadow': its target leaves the root"),
    (F("./"), "t.tar: refusing tar entry './': empty path"),
    (L("/", "x"), "t.tar: refusing tar entry '/': empty path"),
])
def test_unsafe_paths_are_refused(tmp_path: Path, member: Member, message: str) -> None:
    tar = tmp_path / "t.tar"
    tar.write_bytes(tar_layer(F("ok"), member))
    with pytest.raises(UserError) as err:
        read_tar_entries(tar, "t.tar")
    assert str(err.value) == message


def test_tar_inside_a_file_region(tmp_path: Path) -> None:
    inner = tar_layer(D("lib/modules/6.1"), F("lib/modules/6.1/modules.dep", "a.ko:\n"),
                      F("lib/modules/6.1/" + "m" * 130 + ".ko", b"\x7fELF" * 1000))
    layer = tmp_path / "layer.tar"
    layer.write_bytes(tar_layer(F("kernel", b"bzImage" * 100), F("kernel.tar", inner)))
    outer = {e.path: e for e in read_tar_entries(layer, "layer")}
    region = outer["kernel.tar"].data
    assert isinstance(region, FileRegion)
    entries = read_tar_region(region, "kernel.tar")
    assert [e.path for e in entries] == ["lib/modules/6.1", "lib/modules/6.1/modules.dep",
                                         "lib/modules/6.1/" + "m" * 130 + ".ko"]
    assert all(isinstance(e.data, FileRegion) and e.data.path == str(layer) for e in entries[1:])
    assert read_data(entries[1].data) == b"a.ko:\n"
    assert read_data(entries[2].data) == b"\x7fELF" * 1000


def test_truncated_region_is_an_error(tmp_path: Path) -> None:
    inner = tar_layer(F("a", b"x" * 5000))
    layer = tmp_path / "layer.tar"
    layer.write_bytes(inner)
    with pytest.raises(UserError, match=r"^kernel.tar: not a valid tar archive: truncated"):
        read_tar_region(FileRegion(str(layer), 0, 3000), "kernel.tar")


def test_bad_checksum_is_an_error(tmp_path: Path) -> None:
    raw = bytearray(tar_layer(F("a", "x")))
    raw[10] ^= 0x40
    tar = tmp_path / "t.tar"
    tar.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="t.tar: not a valid tar archive: bad header checksum at byte 0"):
        read_tar_entries(tar, "t.tar")


def test_sparse_files_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "sparse"
    with open(src, "wb") as f:
        f.truncate(1 << 20)
        f.write(b"data")
    tar = tmp_path / "t.tar"
    subprocess.run(["tar", "--sparse", "--format=posix", "-cf", tar, "-C", tmp_path, "sparse"], check=True)
    with pytest.raises(UserError, match="t.tar: sparse: sparse files in tar archives are not supported"):
        read_tar_entries(tar, "t.tar")


def test_entries_are_plain_values(tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    tar.write_bytes(tar_layer(F("a", "x")))
    (entry,) = read_tar_entries(tar, "t.tar")
    assert entry == Entry("a", Kind.FILE, 0o644, size=1, data=FileRegion(str(tar), 512, 1), mtime=FIXED_MTIME)
