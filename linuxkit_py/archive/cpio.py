"""newc cpio archives, as the Linux kernel unpacks an initramfs.

Format: the "new ASCII" cpio format, in the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst. Each member is a 110-byte
header (the magic "070701" and 13 fields of 8 hex digits), the NUL-terminated name padded
so that header + name is a multiple of 4 bytes, then the data padded to 4 bytes. The
archive ends with a member named "TRAILER!!!".

Hard links: every name of a file has the same c_ino and c_maj/c_min and the file's
c_nlink; the data is stored once, with the first name, and the later names have
c_filesize 0. The kernel (init/initramfs.c: maybe_link) hard-links each later name to the
first one it saw with that (c_maj, c_min, c_ino); GNU `cpio -i` links names without data to
the file it already extracted with the same numbers.
"""

from __future__ import annotations

import hashlib
import stat
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from linuxkit_py.archive.entry import ContentReader, Entry, FileRegion, Kind
from linuxkit_py.errors import UserError

NEWC_MAGIC = b"070701"
HEADER_SIZE = 110
ALIGNMENT = 4
TRAILER_NAME = "TRAILER!!!"
MAX_FIELD = 0xFFFFFFFF  # every numeric field is 8 hex digits, so a file is < 4 GiB
ARCHIVE_BLOCK = 512  # cpio(1) pads the whole archive to its block size; we do the same
FIRST_INO = 1
# c_maj/c_min: the device the file lived on. One fixed value for every member, so that
# (c_maj, c_min, c_ino) identifies a file inside the archive.
ARCHIVE_DEV_MAJOR = 0
ARCHIVE_DEV_MINOR = 0
NO_CHECKSUM = 0  # c_chksum is only used by the "070702" (crc) variant

FILE_TYPE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.HARDLINK: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.CHAR: stat.S_IFCHR,
    Kind.BLOCK: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
}


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@runtime_checkable
class MarkingSink(Sink, Protocol):
    """A sink told where each member starts (archive/compress.py cuts its gzip blocks there)."""

    def mark(self, name: bytes, /) -> None: ...


@runtime_checkable
class RegionSink(Sink, Protocol):
    """A sink that takes a file's bytes as a region, to read them only when it needs them (compress.py)."""

    def write_region(self, region: FileRegion, /) -> None: ...


SHARE_MIN_SIZE = 64 * 1024  # link_identical_files compares files from this size on


def _pad(size: int) -> bytes:
    return bytes(-size % ALIGNMENT)


def newc_header(*, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, filesize: int,
                rdevmajor: int = 0, rdevminor: int = 0, namesize: int) -> bytes:
    """The 110-byte member header (buffer-format.rst, "cpio_file" header fields, in order)."""
    fields = (ino, mode, uid, gid, nlink, mtime, filesize, ARCHIVE_DEV_MAJOR, ARCHIVE_DEV_MINOR,
              rdevmajor, rdevminor, namesize, NO_CHECKSUM)
    if min(fields) < 0 or max(fields) > MAX_FIELD:
        raise ValueError(f"cpio header field out of range: {[v for v in fields if not 0 <= v <= MAX_FIELD][0]}")
    return NEWC_MAGIC + b"%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X" % fields


# newc_header's bytes as one format, with the fields that are the same for every member filled in (c_maj,
# c_min, c_chksum) and c_filesize ... c_namesize left to fill; write_cpio's hot loop uses it.
_HEADER_FORMAT = NEWC_MAGIC + b"%08X%08X%08X%08X%08X%08X%08X" + b"%08X%08X" % (ARCHIVE_DEV_MAJOR, ARCHIVE_DEV_MINOR) \
    + b"%08X%08X%08X" + b"%08X" % NO_CHECKSUM
_HEADER_FORMAT_SIZE = HEADER_SIZE
_PADS = tuple(bytes(n) for n in range(ALIGNMENT))
# after a name of length n: its NUL and the padding of header + name + NUL to ALIGNMENT (HEADER_SIZE is 2 mod 4)
_NAME_ENDS = tuple(b"\0" + _PADS[-(HEADER_SIZE + n + 1) % ALIGNMENT] for n in range(ALIGNMENT))


def newc_member_head(name: str | bytes, **fields: int) -> bytes:
    """Header + NUL-terminated name + padding: everything of a member before its data."""
    raw = (name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")) + b"\0"
    return newc_header(namesize=len(raw), **fields) + raw + _pad(HEADER_SIZE + len(raw))


def newc_trailer(mtime: int = 0) -> bytes:
    """The end-of-archive member."""
    return newc_member_head(TRAILER_NAME, ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=mtime, filesize=0)


def check_cpio_sizes(entries: Sequence[Entry]) -> None:
    """UserError for a file newc cannot hold (4 GiB and over), before anything is written."""
    for entry in entries:
        if entry.kind is Kind.FILE and entry.size > MAX_FIELD:
            raise UserError(f"{entry.path}: {entry.size} bytes is too big for an initramfs "
                            f"(a newc cpio member holds at most {MAX_FIELD} bytes)",
                            hint="ship it on a disk image instead of in the initrd")


class _Links:
    """Hard-link groups and directory link counts, from a pass over the whole list (lists indexed by entry, not
    dicts: at 230,000 entries a dict per entry costs 20 MiB each)."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.target: dict[int, int] = {}  # index of a HARDLINK -> index of its FILE
        self.names = array("I", bytes(4 * len(entries)))  # index of a FILE -> number of names
        linked = {e.linkname for e in entries if e.kind is Kind.HARDLINK}  # the paths hard links name
        current: dict[str, int] = {}  # such a path -> index of the FILE it names so far
        for i, entry in enumerate(entries):
            if entry.kind is Kind.FILE:
                self.names[i] = 1
                if entry.path in linked:
                    current[entry.path] = i
            elif entry.kind is Kind.HARDLINK:
                t = current.get(entry.linkname)
                if t is None:
                    raise ValueError(f"hard link {entry.path} -> {entry.linkname}: no regular file before it")
                self.target[i] = t
                self.names[t] += 1
                if entry.path in linked:
                    current[entry.path] = t
            elif entry.path in linked:
                current.pop(entry.path, None)
        dirs = {e.path for e in entries if e.kind is Kind.DIR}
        self.subdirs = Counter(path.rpartition("/")[0] for path in dirs)


def link_identical_files(entries: Sequence[Entry], min_size: int = SHARE_MIN_SIZE,
                         known_sha256: Callable[[list[FileRegion]], dict[FileRegion, bytes]] | None = None
                         ) -> list[Entry]:
    """`entries` with each later copy of a regular file turned into a hard link to the first copy.

    A copy has the same bytes, permission bits, owner and group (a newc member carries nothing more
    but the mtime, which is the same for every member). Only files of at least `min_size` bytes are
    compared: the ones worth the read (the busybox each container image brings, 1.9 MB a copy).
    An initramfs that holds one name per copy unpacks the same files; the initrd holds the bytes
    once. Nothing writes to a file of the image through one name and reads another: rc.init makes
    the root read-only, and containers see their root through overlay or read-only mounts.
    `known_sha256` gives the SHA256s it knows of the regions it is given without reading them (the others are
    read).
    """
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, entry in enumerate(entries):
        if entry.kind is Kind.FILE and entry.size >= min_size:
            groups.setdefault((entry.size, entry.mode, entry.uid, entry.gid), []).append(i)
    candidates = [entries[i].data for members in groups.values() if len(members) > 1 for i in members]
    known = known_sha256([d for d in candidates if isinstance(d, FileRegion)]) if known_sha256 is not None else {}
    first: dict[tuple[tuple[int, int, int, int], bytes], str] = {}
    links: dict[int, str] = {}
    with ContentReader() as reader:
        for key, members in groups.items():
            if len(members) < 2:
                continue
            for i in members:
                data = entries[i].data
                sha256 = known.get(data) if isinstance(data, FileRegion) else None
                if sha256 is None:
                    digest = hashlib.sha256()
                    for chunk in reader.chunks(data):
                        digest.update(chunk)
                    sha256 = digest.digest()
                target = first.setdefault((key, sha256), entries[i].path)
                if target != entries[i].path:
                    links[i] = target
    if not links:
        return list(entries)
    return [entry.evolve(kind=Kind.HARDLINK, size=0, data=None, linkname=links[i]) if i in links else entry
            for i, entry in enumerate(entries)]


def write_cpio(entries: Sequence[Entry], out: Sink, mtime: int) -> None:
    """Write `entries` (parents before children, hard links after their file) as a newc archive.

    Every member gets `mtime`; inode numbers count up from FIRST_INO in entry order. A sink
    with a `mark` method is told each member's name where the member starts; one with
    `write_region` is given file contents as regions of their files.
    """
    check_cpio_sizes(entries)
    mark = out.mark if isinstance(out, MarkingSink) else None
    write = out.write
    write_region = out.write_region if isinstance(out, RegionSink) else None
    links = _Links(entries)
    target_of, names, subdirs = links.target.get, links.names, links.subdirs
    # index of a FILE with other names -> its inode number (other members' numbers are given and forgotten:
    # an int per member is 6 MiB at 230,000)
    inos: dict[int, int] = {}
    next_ino = FIRST_INO
    written = 0
    FILE, HARDLINK, DIR, SYMLINK = Kind.FILE, Kind.HARDLINK, Kind.DIR, Kind.SYMLINK  # noqa: N806 - hot loop
    with ContentReader() as reader:
        for i, entry in enumerate(entries):
            t = target_of(i, i)
            source = entries[t] if t != i else entry
            kind = entry.kind
            if t != i:
                ino = inos[t]
            else:
                ino = next_ino
                next_ino += 1
                if kind is FILE and names[i] > 1:
                    inos[i] = ino
            data: bytes | FileRegion | None = None
            filesize = 0
            if kind is FILE:
                nlink = names[t]
                data, filesize = entry.data, entry.size
            elif kind is DIR:
                nlink = 2 + subdirs[entry.path]
            elif kind is HARDLINK:
                nlink = names[t]
            else:
                nlink = 1
                if kind is SYMLINK:
                    data = entry.linkname.encode("utf-8", "surrogateescape")
                    filesize = len(data)
            name = entry.path.encode("utf-8", "surrogateescape")
            # newc_member_head written out (it runs once per member): header, name, NUL, padding
            head = _HEADER_FORMAT % (ino, FILE_TYPE_BITS[kind] | (source.mode & 0o7777), source.uid, source.gid,
                                     nlink, mtime, filesize, entry.devmajor, entry.devminor, len(name) + 1)
            if len(head) != _HEADER_FORMAT_SIZE or b"-" in head:  # a field outside 0..MAX_FIELD: say which
                newc_header(ino=ino, mode=FILE_TYPE_BITS[kind] | (source.mode & 0o7777), uid=source.uid,
                            gid=source.gid, nlink=nlink, mtime=mtime, filesize=filesize,
                            rdevmajor=entry.devmajor, rdevminor=entry.devminor, namesize=len(name) + 1)
            head += name + _NAME_ENDS[len(name) & 3]
            if mark is not None:
                mark(name)
            padding = -filesize % ALIGNMENT
            written += len(head) + filesize + padding
            if data is None or isinstance(data, bytes) and len(data) == filesize:
                write(head + data + _PADS[padding] if data else head)  # one write for a member held in memory
                continue
            write(head)
            if write_region is not None and isinstance(data, FileRegion):
                if data.size != filesize:
                    raise UserError(f"{entry.path}: its source has {data.size} bytes, expected {filesize}")
                write_region(data)
            else:
                copied = 0
                for chunk in reader.chunks(data):
                    copied += len(chunk)
                    write(chunk)
                if copied != filesize:
                    raise UserError(f"{entry.path}: its source has {copied} bytes, expected {filesize} "
                                    "(did it change during the build?)")
            if padding:
                write(_PADS[padding])
    trailer = newc_trailer()
    out.write(trailer)
    written += len(trailer)
    out.write(bytes(-written % ARCHIVE_BLOCK))
