"""Root filesystem images (formats/rootimage.py): what unsquashfs, dump.erofs and fsck.erofs read back."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
from pathlib import Path

import pytest

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Rootfs
from linuxkit_py.formats.rootimage import erofs_uuid, root_entries, root_image_id, write_root_image
from linuxkit_py.tools import require, run

EPOCH = 1492533000  # 2017-04-18 16:30:00 UTC
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
LONG_DIR = "long/" + "d" * 120
LONG_FILE = LONG_DIR + "/" + "f" * 150

ENTRIES = [
    Entry("bin", Kind.DIR, 0o755),
    Entry("bin/tool", Kind.FILE, 0o4755, size=5, data=b"hello"),
    Entry("bin/link", Kind.HARDLINK, 0o4755, linkname="bin/tool"),
    Entry("bin/sym", Kind.SYMLINK, 0o777, linkname="tool"),
    Entry("bin/abs", Kind.SYMLINK, 0o777, linkname="/etc/passwd"),
    Entry("boot", Kind.DIR, 0o755),
    Entry("boot/kernel", Kind.FILE, 0o644, size=6, data=b"kernel"),
    Entry("boot/cmdline", Kind.FILE, 0o644, size=13, data=b"console=ttyS0"),
    Entry("caps", Kind.FILE, 0o755, size=2, data=b"#!", xattrs=(("security.capability", CAPABILITY),
                                                                   ("user.note", b"hi"))),
    Entry("dev", Kind.DIR, 0o755),
    Entry("dev/console", Kind.CHAR, 0o600, devmajor=5, devminor=1),
    Entry("dev/sda", Kind.BLOCK, 0o660, gid=6, devmajor=8, devminor=0),
    Entry("dev/fifo", Kind.FIFO, 0o644),
    Entry("home", Kind.DIR, 0o755),
    Entry("home/user", Kind.DIR, 0o700, uid=1000, gid=1000),
    Entry("home/user/secret", Kind.FILE, 0o000, uid=1000, gid=1000, size=3, data=b"abc"),
    Entry("long", Kind.DIR, 0o755),
    Entry(LONG_DIR, Kind.DIR, 0o755),
    Entry(LONG_FILE, Kind.FILE, 0o644, size=4, data=b"long", source="docker.io/x:1", location="/f"),
    Entry("ro", Kind.DIR, 0o555),
    Entry("ro/file", Kind.FILE, 0o444, uid=123456, gid=654321, size=1, data=b"x"),
]
# What the image must hold, boot/ left out: path -> (mode with type, uid, gid, size or (major, minor)).
EXPECTED: dict[str, tuple[int, int, int, int | tuple[int, int]]] = {
    "": (stat.S_IFDIR | 0o755, 0, 0, 0),
    "bin": (stat.S_IFDIR | 0o755, 0, 0, 0),
    "bin/abs": (stat.S_IFLNK | 0o777, 0, 0, len("/etc/passwd")),
    "bin/link": (stat.S_IFREG | 0o4755, 0, 0, 5),
    "bin/sym": (stat.S_IFLNK | 0o777, 0, 0, len("tool")),
    "bin/tool": (stat.S_IFREG | 0o4755, 0, 0, 5),
    "caps": (stat.S_IFREG | 0o755, 0, 0, 2),
    "dev": (stat.S_IFDIR | 0o755, 0, 0, 0),
    "dev/console": (stat.S_IFCHR | 0o600, 0, 0, (5, 1)),
    "dev/fifo": (stat.S_IFIFO | 0o644, 0, 0, 0),
    "dev/sda": (stat.S_IFBLK | 0o660, 0, 6, (8, 0)),
    "home": (stat.S_IFDIR | 0o755, 0, 0, 0),
    "home/user": (stat.S_IFDIR | 0o700, 1000, 1000, 0),
    "home/user/secret": (stat.S_IFREG, 1000, 1000, 3),
    "long": (stat.S_IFDIR | 0o755, 0, 0, 0),
    LONG_DIR: (stat.S_IFDIR | 0o755, 0, 0, 0),
    LONG_FILE: (stat.S_IFREG | 0o644, 0, 0, 4),
    "ro": (stat.S_IFDIR | 0o555, 0, 0, 0),
    "ro/file": (stat.S_IFREG | 0o444, 123456, 654321, 1),
}
UTC = {**os.environ, "TZ": "UTC"}


def rootfs(entries: list[Entry] = ENTRIES) -> Rootfs:
    return Rootfs(entries, EPOCH)


# -- squashfs: unsquashfs -lln lists what the tar had --------------------------------------------------------

_LLN = re.compile(r"^(\S{10}) (\d+)/(\d+) +(\d+|\d+, +\d+) 2017-04-18 16:30 squashfs-root(/\S+)?(?: -> .*)?$")


def squashfs_listing(image: Path) -> dict[str, tuple[int, int, int, int | tuple[int, int]]]:
    out = run(["unsquashfs", "-lln", image], capture=True, env=UTC).stdout.decode()
    listing: dict[str, tuple[int, int, int, int | tuple[int, int]]] = {}
    for line in out.splitlines():
        m = _LLN.match(line)
        assert m, f"unexpected unsquashfs line: {line!r}"
        mode_text, uid, gid, size_text, path = m.groups()
        mode = _parse_filemode(mode_text)
        size: int | tuple[int, int]
        if "," in size_text:
            major, minor = size_text.split(",")
            size = (int(major), int(minor))
        else:
            size = 0 if stat.S_ISDIR(mode) else int(size_text)
        listing[(path or "").lstrip("/")] = (mode, int(uid), int(gid), size)
    return listing


def _parse_filemode(text: str) -> int:
    """The inverse of stat.filemode for what unsquashfs prints."""
    for mode in range(0o10000):
        for kind in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
            if stat.filemode(kind | mode) == text:
                return kind | mode
    raise AssertionError(f"cannot parse mode {text}")


def test_squashfs_holds_owners_modes_links_devices_and_long_names_without_boot(tmp_path: Path) -> None:
    image = tmp_path / "root.squashfs"
    write_root_image(rootfs(), image, "squashfs")

    assert squashfs_listing(image) == EXPECTED
    lines = run(["unsquashfs", "-lln", image], capture=True, env=UTC).stdout.decode().splitlines()
    assert [line.split(" ", 1)[1].split("squashfs-root/", 1)[1] for line in lines if " -> " in line] == [
        "bin/abs -> /etc/passwd", "bin/sym -> tool"]
    assert run(["unsquashfs", "-cat", image, "home/user/secret"], capture=True).stdout == b"abc"
    stats = run(["unsquashfs", "-stat", image], capture=True, env=UTC).stdout.decode()
    assert "Creation or last append time Tue Apr 18 16:30:00 2017" in stats
    assert "Number of inodes 18\n" in stats  # 19 paths: bin/link is bin/tool's inode
    assert "Number of xattr ids 1\n" in stats  # caps' two xattrs


def test_squashfs_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "root.img", tmp_path / "b" / "root.img"
    first.parent.mkdir()
    second.parent.mkdir()
    write_root_image(rootfs(), first, "squashfs")
    write_root_image(rootfs(), second, "squashfs")
    assert first.read_bytes() == second.read_bytes()
    assert root_image_id(first) == hashlib.sha256(first.read_bytes()[:4096]).hexdigest()


def test_squashfs_ignores_a_source_date_epoch_in_the_environment(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # mksquashfs refuses SOURCE_DATE_EPOCH next to its time options; the build epoch wins.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    image = tmp_path / "root.img"
    write_root_image(rootfs(), image, "squashfs")
    assert "Tue Apr 18 16:30:00 2017" in run(["unsquashfs", "-stat", image], capture=True, env=UTC).stdout.decode()


def test_missing_mksquashfs_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("linuxkit_py.tools._SBIN_DIRS", ())
    with pytest.raises(UserError) as err:
        write_root_image(rootfs(), tmp_path / "root.img", "squashfs")
    assert str(err.value) == "mksquashfs not found (hint: apt-get install squashfs-tools)"


# -- erofs: extracted under fakeroot, read back with dump.erofs and the on-disk inodes -----------------------

_DUMP_FIELD = re.compile(r"(NID|Links|Uid|Gid|Xattr size|Size): (\d+)")


def erofs_inode(image: Path, path: str) -> dict[str, int]:
    """dump.erofs' view of `path` plus the on-disk i_mode and i_u (rdev) of its inode."""
    out = run(["dump.erofs", f"--path=/{path}", image], capture=True, env=UTC).stdout.decode()
    fields = {key: int(value) for key, value in _DUMP_FIELD.findall(out)}
    assert "Timestamp: 2017-04-18 16:30:00.000000000" in out, out
    data = image.read_bytes()
    superblock = 1024
    blkszbits = data[superblock + 12]
    (meta_blkaddr,) = struct.unpack_from("<I", data, superblock + 40)
    inode = (meta_blkaddr << blkszbits) + fields["NID"] * 32
    # on-disk inode (compact and extended alike): i_format u16, i_xattr_icount u16, i_mode u16, ...,
    # and i_u (the device number for devices) at byte 16
    (fields["mode"],) = struct.unpack_from("<H", data, inode + 4)
    (fields["rdev"],) = struct.unpack_from("<I", data, inode + 16)
    return fields


def _xattr_body_size(xattrs: tuple[tuple[str, bytes], ...]) -> int:
    """Inline xattr body (EROFS on-disk format): a 12-byte header, then per xattr a 4-byte entry, the name
    without its prefix and the value, 4-byte aligned."""
    size = 12
    for key, value in xattrs:
        name = key.split(".", 1)[1]
        size += -(-(4 + len(name) + len(value)) // 4) * 4
    return size


def test_erofs_holds_owners_modes_links_devices_and_xattrs_without_boot(tmp_path: Path) -> None:
    image = tmp_path / "root.erofs"
    write_root_image(rootfs(), image, "erofs")

    run(["fsck.erofs", image], capture=True)
    listing = run(["dump.erofs", "--ls", "--path=/", image], capture=True).stdout.decode()
    assert [line.split()[-1] for line in listing.splitlines()[-8:]] == [
        ".", "..", "bin", "caps", "dev", "home", "long", "ro"]  # no boot
    for path, (mode, uid, gid, size) in EXPECTED.items():
        inode = erofs_inode(image, path)
        assert (inode["mode"], inode["Uid"], inode["Gid"]) == (mode, uid, gid), path
        if isinstance(size, tuple):
            major, minor = size
            assert inode["rdev"] == (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12), path
        elif not stat.S_ISDIR(mode):
            assert inode["Size"] == size, path
    tool, link = erofs_inode(image, "bin/tool"), erofs_inode(image, "bin/link")
    assert (tool["NID"], tool["Links"]) == (link["NID"], 2)
    assert erofs_inode(image, "caps")["Xattr size"] == _xattr_body_size(ENTRIES[8].xattrs) == 60
    assert erofs_inode(image, "bin/tool")["Xattr size"] == 0


def test_erofs_is_the_same_bytes_every_time_with_a_uuid_from_the_content(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "root.img", tmp_path / "b" / "root.img"
    first.parent.mkdir()
    second.parent.mkdir()
    write_root_image(rootfs(), first, "erofs")
    write_root_image(rootfs(), second, "erofs")
    assert first.read_bytes() == second.read_bytes()
    tar = io.BytesIO()
    write_tar(root_entries(rootfs()), tar, EPOCH)
    superblock = run(["dump.erofs", "-s", first], capture=True, env=UTC).stdout.decode()
    assert f"UUID:                              {erofs_uuid(hashlib.sha256(tar.getvalue()).digest())}\n" in superblock
    assert "Filesystem created:                           Tue Apr 18 16:30:00 2017\n" in superblock
    assert not list(tmp_path.glob("*/.erofs-*"))  # the extracted tree is gone


def test_erofs_uuid_is_a_version_4_uuid_of_the_digest() -> None:
    assert erofs_uuid(bytes(range(32))) == "00010203-0405-4607-8809-0a0b0c0d0e0f"


def test_erofs_needs_fakeroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mkfs.erofs").symlink_to(require("mkfs.erofs"))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr("linuxkit_py.tools._SBIN_DIRS", ())
    with pytest.raises(UserError) as err:
        write_root_image(rootfs(), tmp_path / "root.img", "erofs")
    assert str(err.value) == "fakeroot not found (hint: apt-get install fakeroot)"


def test_a_source_file_that_shrank_stops_mksquashfs(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.write_bytes(b"12345")
    entries = [ENTRIES[6], Entry("data", Kind.FILE, 0o644, size=10, data=FileRegion(str(source), 0, 10))]
    with pytest.raises(OSError, match="truncated"):
        write_root_image(rootfs(entries), tmp_path / "root.img", "squashfs")
    assert not list(tmp_path.glob(".squashfs-*"))  # mksquashfs stopped, its work directory removed
