"""PAX tar writing: the bytes of the `tar` format, of image layers and of kernel.tar.

Format: POSIX.1-2001 pax interchange format (IEEE Std 1003.1, `pax` utility, "pax
Interchange Format"): 512-byte ustar headers, each preceded by an `x` extended header when
a value does not fit ustar (long or non-ASCII names, big sizes or ids) or when the entry
carries xattrs (`SCHILY.xattr.NAME`) or LinuxKit's `LINUXKIT.source`/`LINUXKIT.location`
records. Every entry gets mtime = the build epoch. Data is streamed in bounded memory;
the same entries always give the same bytes.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import BinaryIO

from linuxkit_py.archive.entry import ContentReader, Entry, Kind
from linuxkit_py.errors import UserError

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
USTAR_MAGIC = b"ustar\0"
USTAR_VERSION = b"00"
NAME_SIZE = 100
PREFIX_SIZE = 155
LINKNAME_SIZE = 100
OWNER_NAME_SIZE = 32
MAX_OCTAL_8 = 0o7777777  # 7 octal digits + NUL in the 8-byte fields
MAX_OCTAL_12 = 0o77777777777  # 11 octal digits + NUL in size and mtime
PAX_HEADER_TYPE = b"x"
PAX_HEADER_MODE = 0o644
PAX_HEADER_DIR = "PaxHeaders.0"
XATTR_PREFIX = "SCHILY.xattr."

TYPEFLAGS = {
    Kind.FILE: b"0",
    Kind.HARDLINK: b"1",
    Kind.SYMLINK: b"2",
    Kind.CHAR: b"3",
    Kind.BLOCK: b"4",
    Kind.DIR: b"5",
    Kind.FIFO: b"6",
}


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _numeric(value: int, width: int) -> bytes:
    """Octal, NUL-terminated; GNU base-256 when it does not fit (only device numbers get there)."""
    if value < 0:
        raise ValueError(f"negative value {value} in a tar header")
    if value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for a ustar header, or None if `name` cannot be stored there."""
    if not name.isascii():
        return None
    if len(name) <= NAME_SIZE:
        return b"", name
    # The split must be at a '/': prefix <= 155 bytes, the rest <= 100 bytes.
    cut = name.rfind(b"/", 0, PREFIX_SIZE + 1)
    while cut > 0:
        if len(name) - cut - 1 <= NAME_SIZE:
            return name[:cut], name[cut + 1 :]
        cut = name.rfind(b"/", 0, cut)
    return None


def ustar_header(*, name: bytes, prefix: bytes = b"", mode: int, uid: int, gid: int, size: int, mtime: int,
                 typeflag: bytes, linkname: bytes = b"", uname: bytes = b"", gname: bytes = b"",
                 devmajor: int = 0, devminor: int = 0) -> bytes:
    """One 512-byte ustar header block (POSIX pax, "ustar Interchange Format")."""
    fields = [
        name.ljust(100, b"\0"),
        _numeric(mode, 8),
        _numeric(uid, 8),
        _numeric(gid, 8),
        _numeric(size, 12),
        _numeric(mtime, 12),
        b" " * 8,  # checksum, computed below over the header with these 8 spaces
        typeflag,
        linkname.ljust(100, b"\0"),
        USTAR_MAGIC,
        USTAR_VERSION,
        uname.ljust(32, b"\0"),
        gname.ljust(32, b"\0"),
        _numeric(devmajor, 8),
        _numeric(devminor, 8),
        prefix.ljust(155, b"\0"),
    ]
    header = b"".join(fields).ljust(BLOCK, b"\0")
    assert len(header) == BLOCK, len(header)
    checksum = b"%06o\0 " % sum(header)
    return header[:148] + checksum + header[156:]


def pax_records(records: list[tuple[str, bytes]]) -> bytes:
    """`LENGTH KEY=VALUE\\n` records; LENGTH counts the whole record, its own digits included."""
    out = []
    for key, value in records:
        body = b" " + _encode(key) + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        out.append(str(length).encode() + body)
    return b"".join(out)


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


class TarWriter:
    """Write entries as a PAX tar to `out`; `finish()` writes the end-of-archive blocks."""

    def __init__(self, out: BinaryIO, epoch: int) -> None:
        self._out = out
        self._epoch = epoch
        self._reader = ContentReader()

    def add(self, entry: Entry) -> None:
        out = self._out
        name = _encode(entry.path) + (b"/" if entry.kind is Kind.DIR else b"")
        linkname = _encode(entry.linkname) if entry.kind in (Kind.SYMLINK, Kind.HARDLINK) else b""
        uname, gname = _encode(entry.uname), _encode(entry.gname)
        size = entry.size if entry.kind is Kind.FILE else 0
        records: list[tuple[str, bytes]] = []
        split = _split_ustar_name(name)
        if split is None:
            records.append(("path", name))
            split = (b"", _ascii_stub(name, NAME_SIZE))
        if len(linkname) > LINKNAME_SIZE or not linkname.isascii():
            records.append(("linkpath", linkname))
            linkname = _ascii_stub(linkname, LINKNAME_SIZE)
        if size > MAX_OCTAL_12:
            records.append(("size", str(size).encode()))
        if entry.uid > MAX_OCTAL_8:
            records.append(("uid", str(entry.uid).encode()))
        if entry.gid > MAX_OCTAL_8:
            records.append(("gid", str(entry.gid).encode()))
        if len(uname) > OWNER_NAME_SIZE or not uname.isascii():
            records.append(("uname", uname))
            uname = b""
        if len(gname) > OWNER_NAME_SIZE or not gname.isascii():
            records.append(("gname", gname))
            gname = b""
        records.extend((XATTR_PREFIX + key, value) for key, value in entry.xattrs)
        if entry.source:
            records.append(("LINUXKIT.source", _encode(entry.source)))
        if entry.location:
            records.append(("LINUXKIT.location", _encode(entry.location)))
        if records:
            # Names that are not UTF-8 go into the records byte for byte, without POSIX's
            # hdrcharset=BINARY: GNU tar and Python's tarfile read them back as they were.
            self._write_pax(name, sorted(records))
        out.write(ustar_header(
            name=split[1], prefix=split[0], mode=entry.mode & 0o7777,
            uid=min(entry.uid, MAX_OCTAL_8), gid=min(entry.gid, MAX_OCTAL_8),
            size=min(size, MAX_OCTAL_12), mtime=self._epoch, typeflag=TYPEFLAGS[entry.kind],
            linkname=linkname, uname=uname, gname=gname,
            devmajor=entry.devmajor, devminor=entry.devminor))
        if size:
            written = 0
            for chunk in self._reader.chunks(entry.data):
                written += len(chunk)
                out.write(chunk)
            if written != size:
                raise UserError(f"{entry.path}: its source has {written} bytes, expected {size} "
                                "(did it change during the build?)")
            out.write(_padding(size))

    def _write_pax(self, name: bytes, records: list[tuple[str, bytes]]) -> None:
        payload = pax_records(records)
        directory, base = posixpath.split(name.rstrip(b"/"))
        pax_name = posixpath.join(directory, PAX_HEADER_DIR.encode(), base)
        self._out.write(ustar_header(
            name=_ascii_stub(pax_name, NAME_SIZE), mode=PAX_HEADER_MODE, uid=0, gid=0, size=len(payload),
            mtime=self._epoch, typeflag=PAX_HEADER_TYPE))
        self._out.write(payload)
        self._out.write(_padding(len(payload)))

    def finish(self) -> None:
        self._out.write(END_OF_ARCHIVE)
        self.close()

    def close(self) -> None:
        """Release open source files (finish() does it too)."""
        self._reader.close()


def _ascii_stub(name: bytes, size: int) -> bytes:
    """What goes in a ustar field whose real value is in a pax record: ASCII, truncated."""
    return bytes(b if b < 0x80 else 0x5F for b in name[:size])


def write_tar(entries: Iterable[Entry], out: BinaryIO, epoch: int) -> None:
    """Write `entries` to `out` as a PAX tar, every entry with mtime `epoch`."""
    writer = TarWriter(out, epoch)
    try:
        for entry in entries:
            writer.add(entry)
        writer.finish()
    finally:
        writer.close()

