"""Read a tar archive into Entries without extracting it.

File contents become FileRegions pointing into the archive itself, so a tar inside a
file (a kernel image's `kernel.tar` inside a layer) is indexed the same way as a whole
file. Understands ustar, POSIX pax (`x`/`g` records: path, linkpath, size, uid, gid,
uname, gname, mtime, `SCHILY.xattr.*`, `LINUXKIT.source`/`LINUXKIT.location`) and GNU
long names (`L`/`K`); refuses sparse files and paths that climb out of the root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from linuxkit_py.archive.entry import Entry, FileRegion, Kind, open_content
from linuxkit_py.errors import UserError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

# ustar header fields: (offset, length)
_NAME = (0, 100)
_MODE = (100, 8)
_UID = (108, 8)
_GID = (116, 8)
_SIZE = (124, 12)
_MTIME = (136, 12)
_CHKSUM = (148, 8)
_TYPEFLAG = 156
_LINKNAME = (157, 100)
_MAGIC = (257, 6)
_UNAME = (265, 32)
_GNAME = (297, 32)
_DEVMAJOR = (329, 8)
_DEVMINOR = (337, 8)
_PREFIX = (345, 155)
POSIX_MAGIC = b"ustar\0"

_KINDS = {
    b"0": Kind.FILE,
    b"\0": Kind.FILE,
    b"7": Kind.FILE,  # contiguous file: a regular file everywhere that matters
    b"1": Kind.HARDLINK,
    b"2": Kind.SYMLINK,
    b"3": Kind.CHAR,
    b"4": Kind.BLOCK,
    b"5": Kind.DIR,
    b"6": Kind.FIFO,
}
PAX_HEADER = b"x"
PAX_GLOBAL = b"g"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"
GNU_SPARSE = b"S"
GNU_VOLUME = b"V"
XATTR_PREFIX = "SCHILY.xattr."

# Limits on what one archive may hold: a hostile layer must not exhaust memory or disk.
MAX_ENTRIES_ENV = "LINUXKIT_PY_MAX_LAYER_ENTRIES"
DEFAULT_MAX_ENTRIES = 1_000_000  # big distro images hold a few hundred thousand files
_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def env_limit(name: str, default: int) -> int:
    """The positive integer in environment variable `name` (suffix K, M, G or T: powers of 1024), or `default`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    number, suffix = raw[:-1], raw[-1].upper()
    if suffix.isdigit():
        number, suffix = raw, ""
    if not number.isdigit() or suffix not in _SIZE_SUFFIXES or int(number) == 0:
        raise UserError(f"{name}={raw!r} is not a positive number (e.g. 1000000, 512M or 16G)")
    return int(number) * _SIZE_SUFFIXES[suffix]


class _Corrupt(Exception):
    """The archive is not a well-formed tar (turned into a UserError naming its source)."""


def normalize_path(raw: str) -> str:
    """`./a//b/` -> `a/b`; `/` and `./` -> ``. Raises ValueError for a `..` component."""
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(raw)
    return "/".join(parts)


def _field(header: bytes, where: tuple[int, int]) -> bytes:
    start, length = where
    return header[start : start + length].split(b"\0", 1)[0]


def _number(header: bytes, where: tuple[int, int]) -> int:
    start, length = where
    raw = header[start : start + length]
    if raw[0] & 0x80:  # GNU base-256 for values that do not fit in octal
        if raw[0] == 0xFF:
            raise _Corrupt("negative number in a header field")
        value = raw[0] & 0x7F
        for byte in raw[1:]:
            value = (value << 8) | byte
        return value
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise _Corrupt(f"bad octal number {text!r} in a header field") from None


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header, _CHKSUM)
    rest = header[:148] + b"        " + header[156:]
    if sum(rest) == stored:
        return True
    # Some old writers summed signed chars.
    return sum(b - 256 if b > 127 else b for b in rest) == stored


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, bytes]:
    """Parse `LEN KEY=VALUE\\n` records (POSIX.1-2001 pax extended header)."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        if space < 0:
            raise _Corrupt("malformed pax record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise _Corrupt("malformed pax record length") from None
        record = data[space + 1 : pos + length]
        if length <= space - pos or not record.endswith(b"\n") or b"=" not in record:
            raise _Corrupt("malformed pax record")
        key, _, value = record[:-1].partition(b"=")
        records[_text(key)] = value
        pos += length
    return records


def _pax_int(records: dict[str, bytes], key: str) -> int | None:
    raw = records.get(key)
    if not raw:
        return None
    try:
        return int(raw.split(b".", 1)[0])  # mtime may carry a fraction
    except ValueError:
        raise _Corrupt(f"bad pax {key} value {raw!r}") from None


@dataclass
class _Pending:
    """Extension headers that apply to the next real entry."""

    pax: dict[str, bytes] = field(default_factory=dict)
    long_name: bytes | None = None
    long_link: bytes | None = None


class _Reader:
    def __init__(self, fd: int, path: str, start: int, end: int, label: str, max_entries: int,
                 available: Callable[[int], int] | None = None, until: int | None = None) -> None:
        self.fd, self.path, self.start, self.end, self.label = fd, path, start, end, label
        self.max_entries = max_entries
        self.available = available  # a file still being written: waits until it holds N bytes, gives its size
        self.until = until  # stop at the first header at or after this byte (the head of an archive)

    def _reaches(self, offset: int) -> bool:
        """Whether the archive holds byte `offset - 1` (waiting for a file still being written to grow)."""
        if offset > self.end and self.available is not None:
            self.end = self.available(offset)
        return offset <= self.end

    def read(self, offset: int, size: int) -> bytes:
        if not self._reaches(offset + size):
            raise _Corrupt(f"truncated at byte {self.end - self.start} (an entry needs {size} bytes "
                           f"at byte {offset - self.start})")
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise _Corrupt(f"file ends at byte {offset - self.start + len(data)}, inside an entry")
        return data

    def entries(self) -> list[Entry]:
        out: list[Entry] = []
        global_pax: dict[str, bytes] = {}
        pending = _Pending()
        pos = self.start
        while self._reaches(pos + 1) and (self.until is None or pos < self.until):
            if not self._reaches(pos + BLOCK):
                raise _Corrupt(f"truncated header at byte {pos - self.start}")
            header = self.read(pos, BLOCK)
            if header == ZERO_BLOCK:
                break  # end-of-archive marker
            if not _checksum_ok(header):
                raise _Corrupt(f"bad header checksum at byte {pos - self.start}")
            typeflag = header[_TYPEFLAG : _TYPEFLAG + 1]
            size = _number(header, _SIZE)
            data_at = pos + BLOCK
            is_extension = typeflag in (PAX_HEADER, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK)
            if is_extension:
                payload = self.read(data_at, size)
                if typeflag == PAX_HEADER:
                    pending.pax.update(_pax_records(payload))
                elif typeflag == PAX_GLOBAL:
                    for key, value in _pax_records(payload).items():
                        if value:
                            global_pax[key] = value
                        else:
                            global_pax.pop(key, None)
                elif typeflag == GNU_LONGNAME:
                    pending.long_name = payload.split(b"\0", 1)[0]
                else:
                    pending.long_link = payload.split(b"\0", 1)[0]
                pos = data_at + _round_up(size)
                continue
            pax = {**global_pax, **pending.pax}
            pax_size = _pax_int(pax, "size")
            if pax_size is not None:
                size = pax_size
            kind = _KINDS.get(typeflag)
            has_data = kind is Kind.FILE or kind is None
            if has_data and not self._reaches(data_at + size):
                raise _Corrupt(f"truncated: an entry at byte {pos - self.start} needs {size} bytes of data")
            entry = self._entry(header, typeflag, kind, size, data_at, pax, pending)
            if entry is not None:
                if len(out) >= self.max_entries:
                    raise UserError(f"{self.label}: more than {self.max_entries} entries, refusing at {entry.path!r} "
                                    f"(limit set by {MAX_ENTRIES_ENV})")
                out.append(entry)
            pending = _Pending()
            pos = data_at + (_round_up(size) if has_data else 0)
        return out

    def _entry(self, header: bytes, typeflag: bytes, kind: Kind | None, size: int, data_at: int,
               pax: dict[str, bytes], pending: _Pending) -> Entry | None:
        name = self._name(header, pax, pending)
        if typeflag == GNU_SPARSE or any(k.startswith("GNU.sparse.") for k in pax):
            raise UserError(f"{self.label}: {name}: sparse files in tar archives are not supported")
        if typeflag == GNU_VOLUME:
            return None
        if kind is None:
            raise UserError(f"{self.label}: {name}: unsupported tar entry type {typeflag!r}")
        if kind is Kind.FILE and typeflag == b"\0" and name.endswith("/"):
            kind = Kind.DIR  # pre-POSIX archives mark directories by a trailing slash only
        try:
            path = normalize_path(name)
        except ValueError:
            raise UserError(f"{self.label}: refusing tar entry {name!r}: its path leaves the root") from None
        if not path:
            if kind is Kind.DIR:
                return None  # the root directory itself ("./"): nothing to record
            raise UserError(f"{self.label}: refusing tar entry {name!r}: empty path")
        linkname = ""
        if kind in (Kind.SYMLINK, Kind.HARDLINK):
            raw_link = pax.get("linkpath") or pending.long_link or _field(header, _LINKNAME)
            linkname = _text(raw_link)
            if kind is Kind.HARDLINK:
                try:
                    linkname = normalize_path(linkname)
                except ValueError:
                    raise UserError(f"{self.label}: refusing hard link {path!r} -> {linkname!r}: "
                                    "its target leaves the root") from None
                if not linkname:
                    raise UserError(f"{self.label}: refusing hard link {path!r}: empty target")
        uid = _pax_int(pax, "uid")
        gid = _pax_int(pax, "gid")
        mtime = _pax_int(pax, "mtime")
        xattrs = tuple(sorted((key[len(XATTR_PREFIX):], value) for key, value in pax.items()
                              if key.startswith(XATTR_PREFIX)))
        is_file = kind is Kind.FILE
        return Entry(
            path=path,
            kind=kind,
            mode=_number(header, _MODE) & 0o7777,
            uid=_number(header, _UID) if uid is None else uid,
            gid=_number(header, _GID) if gid is None else gid,
            size=size if is_file else 0,
            linkname=linkname,
            devmajor=_number(header, _DEVMAJOR) if kind in (Kind.CHAR, Kind.BLOCK) else 0,
            devminor=_number(header, _DEVMINOR) if kind in (Kind.CHAR, Kind.BLOCK) else 0,
            data=FileRegion(self.path, data_at, size) if is_file and size else None,
            mtime=_number(header, _MTIME) if mtime is None else mtime,
            xattrs=xattrs,
            source=_text(pax.get("LINUXKIT.source", b"")),
            location=_text(pax.get("LINUXKIT.location", b"")),
            uname=_text(pax["uname"]) if "uname" in pax else _text(_field(header, _UNAME)),
            gname=_text(pax["gname"]) if "gname" in pax else _text(_field(header, _GNAME)),
        )

    @staticmethod
    def _name(header: bytes, pax: dict[str, bytes], pending: _Pending) -> str:
        if pax.get("GNU.sparse.name"):  # GNU tar's pax sparse format keeps the real name here
            return _text(pax["GNU.sparse.name"])
        if pax.get("path"):
            return _text(pax["path"])
        if pending.long_name is not None:
            return _text(pending.long_name)
        name = _field(header, _NAME)
        if header[_MAGIC[0] : _MAGIC[0] + _MAGIC[1]] == POSIX_MAGIC:
            prefix = _field(header, _PREFIX)
            if prefix:
                name = prefix + b"/" + name
        return _text(name)


def _round_up(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def read_tar_entries(source: str | Path | FileRegion, label: str, max_entries: int | None = None) -> list[Entry]:
    """The members of the tar at `source` (a file, or a byte range of one) as Entries, in archive order.

    Regular files get FileRegion data into that same file. `label` names the archive in
    errors (a layer digest, a file name). A malformed archive, or one with more than
    `max_entries` members (default: $LINUXKIT_PY_MAX_LAYER_ENTRIES or 1000000), raises UserError.
    """
    if max_entries is None:
        max_entries = env_limit(MAX_ENTRIES_ENV, DEFAULT_MAX_ENTRIES)
    if isinstance(source, FileRegion):
        path, start, end = source.path, source.offset, source.offset + source.size
    else:
        path, start, end = str(source), 0, -1
    try:
        fd = open_content(path)
    except OSError as exc:
        raise UserError(f"{label}: cannot read {path}: {exc.strerror}") from exc
    try:
        if end < 0:
            end = os.fstat(fd).st_size
        return _Reader(fd, path, start, end, label, max_entries).entries()
    except _Corrupt as exc:
        raise UserError(f"{label}: not a valid tar archive: {exc}") from None
    finally:
        os.close(fd)


def read_growing_tar_entries(fd: int, path: str, label: str, available: Callable[[int], int]) -> list[Entry]:
    """read_tar_entries of a tar still being written to `fd`: `available(n)` returns once the file holds `n`
    bytes or is complete, with its size then. Entries name `path` (where the file will be)."""
    try:
        return _Reader(fd, path, 0, 0, label, env_limit(MAX_ENTRIES_ENV, DEFAULT_MAX_ENTRIES), available).entries()
    except _Corrupt as exc:
        raise UserError(f"{label}: not a valid tar archive: {exc}") from None


def read_tar_head_entries(fd: int, path: str, label: str, end: int, until: int) -> list[Entry]:
    """The members of the first `end` bytes of a tar at `fd` whose headers start before byte `until`: the
    head of an archive, as read_tar_entries gives them (every one within those bytes, or UserError)."""
    try:
        return _Reader(fd, path, 0, end, label, env_limit(MAX_ENTRIES_ENV, DEFAULT_MAX_ENTRIES), until=until).entries()
    except _Corrupt as exc:
        raise UserError(f"{label}: not a valid tar archive: {exc}") from None


def read_tar_region(region: FileRegion, label: str) -> list[Entry]:
    """The members of a tar stored as a byte range of a file (e.g. `kernel.tar` inside a layer)."""
    return read_tar_entries(region, label)
