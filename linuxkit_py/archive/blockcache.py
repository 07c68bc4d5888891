"""Deflated blocks of earlier builds, reused when a rebuild compresses the same bytes again.

A block of the parallel gzip writer (archive/compress.py) is a pure function of the zlib-ng
version, the level, its 32 KiB dictionary and its input, so it is stored under a key that
names all four. The dictionary and the input are each a list of pieces: literal bytes
(cpio headers, generated files), which the key holds in full, and regions of files in
*content-addressed* directories (`content_addressed`: the cache's unpacked layers, each
named after the digest of the blob it was decompressed from, never rewritten with other
bytes), which the key names by (directory and file name, offset, size) without reading them. Equal
keys therefore mean equal input bytes, and a rebuild looks a block up without reading or
hashing the 456 MB it is cut from. A region of any other file (a `files: source:` on the
host, which may change) is read and keyed by its bytes (compress.py does that).

Each file holds a small header with its key, its payload's length and CRC-32 and its input's
CRC-32 and length (the gzip trailer's CRC is combined from those), so a torn, damaged or
misplaced file is a miss, never bad output. (A file forged on purpose is not detected: whoever
can write the cache can as well rewrite the layer tars every build trusts.) Files are written
without fsync (a lost one is only a miss); blocks fetched together by `build --cache-from` stay in the one
tar they came in (`packs/`, read through an index of its members made when a block has no file of its own).
The least recently used files (blocks and packs) are removed beyond
a size cap, except those the current build used or wrote: a build whose blocks alone exceed the
cap keeps them all, so that its rebuild stays warm (a 10x workload's 1.3 GB initrd against the
1 GiB cap would otherwise lose the first 40% of its blocks on every build).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import struct
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zlib_ng import zlib_ng

from linuxkit_py.archive.entry import Data, FileRegion, iter_data
from linuxkit_py.fsutil import replace_unsynced

MAGIC = b"LKPYDFL2"
# magic, the key (a file copied under another key's name is a miss), payload length, CRC-32 of the
# payload, CRC-32 of the input, input length
HEADER = struct.Struct("<8s32sIIII")
KEY_VERSION = 3  # 3: regions named by directory and file name, not by absolute path
DEFAULT_MAX_BYTES = 1 << 30
# After trimming, keep this share of the cap, so that every build does not trim again.
TRIM_TO = 0.75
# Files whose mtime is at most this much older than the cache object are the current build's (file system
# timestamps come from a coarse clock that may lag time.time_ns()).
OWN_MARGIN_NS = 2_000_000_000
# Blocks fetched together (`build --cache-from`) stay in the tar they came in, one file: `packs/<digest>.tar`;
# a build that deflates many blocks packs them the same way (`packs/<random>.tar`).
PACKS = "packs"
PACK_SUFFIX = ".tar"
KEY_RE = re.compile(r"^[0-9a-f]{64}$")
OWN_FILES = 32  # blocks a cache object stores as files of their own before it packs the rest

Piece = bytes | bytearray | FileRegion


@dataclass(frozen=True, slots=True)
class CachedBlock:
    payload: bytes  # the deflated block
    input_crc32: int  # CRC-32 of the bytes it was deflated from
    input_size: int


class ContentAddressed:
    """Directories whose files are never rewritten with other bytes: a region of one of them is named by
    (absolute path, offset, size) wherever the bytes it holds must be told apart."""

    def __init__(self, directories: Iterable[Path] = ()) -> None:
        self._prefixes = tuple(os.path.abspath(d) + os.sep for d in directories)
        self._known: dict[str, str | None] = {}  # path -> addressed(path)

    def addressed(self, path: str) -> str | None:
        """The absolute path of `path` when it is in a content-addressed directory, else None."""
        if not self._prefixes:
            return None
        known = self._known.get(path, "")
        if known == "":
            absolute = os.path.abspath(path)
            known = self._known[path] = absolute if absolute.startswith(self._prefixes) else None
        return known

    def identity(self, data: Data | None) -> bytes:
        """What names the bytes of `data`: where they are in a content-addressed file, else their sha256
        (read now: a host file may change)."""
        if isinstance(data, FileRegion):
            path = self.addressed(data.path)
            if path is not None:
                raw = path.encode("utf-8", "surrogateescape")
                return b"region %d %d %d %s" % (data.offset, data.size, len(raw), raw)
        elif data is None or isinstance(data, bytes):
            return b"sha256 " + hashlib.sha256(data or b"").hexdigest().encode()
        sha = hashlib.sha256()
        for chunk in iter_data(data):
            sha.update(chunk)
        return b"sha256 " + sha.hexdigest().encode()


@functools.lru_cache(maxsize=4096)
def _place(path: str) -> bytes:
    """The directory and file name of `path`: what names a content-addressed file in a block key."""
    head, name = os.path.split(path)
    return f"{os.path.basename(head)}/{name}".encode("utf-8", "surrogateescape")


def _write_all(fd: int, *parts: bytes) -> None:
    """Write every part, in order (os.writev, again for what a short write left)."""
    views = [memoryview(part) for part in parts if part]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][written:]


TAR_BLOCK = 512


def pack_members(path: str) -> list[tuple[str, int, int]]:
    """(key, offset, size) of each block file in the pack tar at `path`; ValueError for anything else in it.

    Packs are written by us (a ustar header and the block file per member; `build --cache-to` packs them the
    same way), so only that is accepted: a regular file named by a key, a valid header checksum, the end of the
    archive (a zero block, or the end of the file). Only the headers are read (tarfile would take 0.2 s for a
    cold build's 783 members; this takes a few ms)."""
    members: list[tuple[str, int, int]] = []
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        offset = 0
        while offset + TAR_BLOCK <= end:
            header = os.pread(fd, TAR_BLOCK, offset)
            if len(header) < TAR_BLOCK:
                break
            if header == bytes(TAR_BLOCK):
                return members
            name = header[:100].rstrip(b"\0").decode("ascii", "replace")
            if header[156:157] not in (b"0", b"\0") or header[257:263] != b"ustar\0" or header[345:500].strip(b"\0") \
                    or not KEY_RE.match(name) or not _header_checksum_ok(header):
                raise ValueError(f"unexpected member {name!r} in a pack of blocks")
            try:
                size = int(header[124:136].split(b"\0", 1)[0].strip(b" ") or b"0", 8)
            except ValueError:
                raise ValueError(f"member {name!r} of a pack of blocks has a bad size") from None
            data = offset + TAR_BLOCK
            if data + size > end:
                raise ValueError(f"member {name!r} of a pack of blocks is cut short")
            members.append((name, data, size))
            offset = data + size + (-size % TAR_BLOCK)
    return members


def _header_checksum_ok(header: bytes) -> bool:
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip(b" ") or b"-1", 8)
    except ValueError:
        return False
    return sum(header) - sum(header[148:156]) + 8 * 32 == stored


def parse_block(key: str, data: bytes) -> CachedBlock | None:
    """The block in the bytes of a block file of `key`, or None when they are not one (torn, damaged, or
    the file of another key)."""
    if len(data) < HEADER.size:
        return None
    magic, stored_key, length, crc, input_crc, input_size = HEADER.unpack_from(data)
    payload = data[HEADER.size :]
    try:
        expected = bytes.fromhex(key)
    except ValueError:
        return None
    if magic != MAGIC or stored_key != expected or length != len(payload) or zlib_ng.crc32(payload) != crc:
        return None
    return CachedBlock(payload, input_crc, input_size)


class DeflateBlockCache:
    """Compressed blocks under `directory`, at most about `max_bytes` of them.

    Regions of files under `content_addressed` directories are keyed by where they are (see above). With
    `used`, the key of every block looked up is added to it (what `build --cache-to` shares).
    """

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 content_addressed: Iterable[Path] | ContentAddressed = (), used: set[str] | None = None) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.used = used
        # blocks used (get touches them) or written from now on are this build's: trim keeps them
        self.since_ns = time.time_ns() - OWN_MARGIN_NS
        self._content = (content_addressed if isinstance(content_addressed, ContentAddressed)
                         else ContentAddressed(content_addressed))
        self.addressed = self._content.addressed
        self._made: set[Path] = set()  # directories put() made or found
        self._packs: dict[str, tuple[str, int, int]] | None = None  # _pack_index
        self._touched: set[str] = set()  # the packs this build read from (marked used once)
        self._lock = threading.Lock()
        self._puts = 0
        self._pack_fd, self._pack_tmp = -1, ""  # this object's pack being written (-2: it could not be)

    @staticmethod
    def key(level: int, dictionary: Sequence[Piece], block: Sequence[Piece]) -> str:
        """What decides the deflated bytes of `block`: zlib-ng's version, level, dictionary, input.

        Regions must be of content-addressed files (`addressed`). A region is named by its offset, its
        size and the last two parts of its path: the directory and the file name, which for the cache's
        content-addressed files is the digest of what they hold (`layers/<digest>.tar`), so two builders
        whose caches live at different paths share blocks (`build --cache-from`)."""
        sha = hashlib.sha256(f"deflate v{KEY_VERSION} zlib-ng {zlib_ng.ZLIBNG_VERSION} {level}\n".encode())
        for part, pieces in ((b"dictionary", dictionary), (b"block", block)):
            sha.update(b"%s %d\n" % (part, len(pieces)))
            for piece in pieces:
                if isinstance(piece, FileRegion):
                    path = _place(piece.path)
                    sha.update(b"region %d %d %d %s\n" % (piece.offset, piece.size, len(path), path))
                else:
                    sha.update(b"bytes %d\n" % len(piece))
                    sha.update(piece)
        return sha.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / key

    def get(self, key: str) -> CachedBlock | None:
        """The stored block, or None when absent or damaged."""
        if self.used is not None:
            self.used.add(key)
        data = self._read(key)
        return None if data is None else parse_block(key, data)

    def read_file(self, key: str) -> bytes | None:
        """The file of block `key` as stored (what another cache can take with `put_file`), or None."""
        if self.used is not None:
            self.used.add(key)
        data = self._read(key)
        return data if data is not None and parse_block(key, data) is not None else None

    def has(self, key: str) -> bool:
        """Whether a block of `key` is stored (not whether it is undamaged: get says that)."""
        return self.path(key).is_file() or key in self._pack_index()

    def _read(self, key: str) -> bytes | None:
        """The stored file of `key`, from its own file or a pack; what is read is marked recently used."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        else:
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: trimmed last
            return data
        where = self._pack_index().get(key)
        if where is None:
            return None
        pack, offset, size = where
        try:
            fd = os.open(pack, os.O_RDONLY)
            try:
                data = os.pread(fd, size, offset)
            finally:
                os.close(fd)
        except OSError:
            return None
        if pack not in self._touched:
            self._touched.add(pack)
            with contextlib.suppress(OSError):
                os.utime(pack)
        return data

    def _pack_index(self) -> dict[str, tuple[str, int, int]]:
        """key -> (pack, offset, size) of every block in a pack, read once (only when a block has no file)."""
        index = self._packs
        if index is None:
            index = {}
            with contextlib.suppress(OSError):
                for item in sorted(os.scandir(self.directory / PACKS), key=lambda item: item.name):
                    if item.name.endswith(PACK_SUFFIX):
                        with contextlib.suppress(OSError, ValueError, tarfile.TarError):
                            for key, offset, size in pack_members(item.path):
                                index.setdefault(key, (item.path, offset, size))
            self._packs = index
        return index

    def adopt_pack(self, blob: Path, name: str) -> list[str]:
        """Keep the tar `blob` of block files (named by their keys, as `build --cache-to` packs them) as it is,
        moved into the cache under `name`: one file instead of one per block. Every block is checked first
        (ValueError for anything in the tar that is not a whole, undamaged block of its name, and then
        nothing is kept); the keys, in the tar's order. A cache that cannot be written keeps nothing."""
        members = pack_members(str(blob))
        with open(blob, "rb") as f:
            for key, offset, size in members:
                if parse_block(key, os.pread(f.fileno(), size, offset)) is None:
                    raise ValueError(f"block {key} is damaged")
        with contextlib.suppress(OSError):
            (self.directory / PACKS).mkdir(parents=True, exist_ok=True)
            os.replace(blob, self.directory / PACKS / f"{name}{PACK_SUFFIX}")
            self._packs = None  # read again, with this one
        return [key for key, _, _ in members]

    def put_file(self, key: str, data: bytes) -> bool:
        """Store the file of block `key` another cache wrote (`read_file`): False, and nothing stored, when
        it is not a whole, undamaged block of that key."""
        block = parse_block(key, data)
        if block is None:
            return False
        self.put(key, block)
        return True

    def put(self, key: str, block: CachedBlock) -> None:
        """Store `block` (from any thread); a cache that cannot be written is skipped, never an error. The first
        OWN_FILES blocks get files of their own (a rebuild after an edit writes a few), the rest go into one pack
        for this cache object, kept when it is trimmed (a cold build's hundreds: one file to make, not hundreds)."""
        payload = block.payload
        head = HEADER.pack(MAGIC, bytes.fromhex(key), len(payload), zlib_ng.crc32(payload), block.input_crc32,
                           block.input_size)
        with self._lock:
            self._puts += 1
            if self._puts > OWN_FILES:
                self._append(key, head, payload)
                return
        path = self.path(key)
        with contextlib.suppress(OSError):
            if path.parent not in self._made:  # once per directory: 783 blocks, 256 directories
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(path.parent)
            replace_unsynced(path, head, payload)

    def _append(self, key: str, head: bytes, payload: bytes) -> None:
        """Add a block file to this object's pack (a temporary file until finish_pack); under self._lock."""
        if self._pack_fd == -2:
            return  # it could not be written: the rest of this build's blocks are not kept
        try:
            if self._pack_fd == -1:
                (self.directory / PACKS).mkdir(parents=True, exist_ok=True)
                self._pack_fd, self._pack_tmp = tempfile.mkstemp(prefix=".", suffix=".tmp",
                                                                 dir=self.directory / PACKS)
            info = tarfile.TarInfo(key)
            info.size, info.mode = len(head) + len(payload), 0o644
            padding = b"\0" * (-info.size % tarfile.BLOCKSIZE)
            _write_all(self._pack_fd, info.tobuf(tarfile.USTAR_FORMAT), head, payload, padding)  # no copy of it
        except OSError:
            self._drop_pack()

    def finish_pack(self) -> None:
        """Put the pack of this object's blocks in place (packs/<random>.tar), readable from now on."""
        with self._lock:
            if self._pack_fd < 0:
                return
            try:
                _write_all(self._pack_fd, bytes(2 * tarfile.BLOCKSIZE))
                os.close(self._pack_fd)
                self._pack_fd = -1
                os.replace(self._pack_tmp, self.directory / PACKS / f"{uuid.uuid4().hex}{PACK_SUFFIX}")
                self._packs = None  # read again, with this one
            except OSError:
                self._drop_pack()

    def _drop_pack(self) -> None:
        if self._pack_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pack_fd)
        self._pack_fd = -2
        with contextlib.suppress(OSError):
            os.unlink(self._pack_tmp)

    def trim(self) -> None:
        """Remove the least recently used blocks while the cache holds more than `max_bytes`, never one this
        build used or wrote (its mtime is at least `since_ns`). This object's pack is put in place first."""
        self.finish_pack()
        files: list[tuple[int, int, str]] = []
        total = 0
        with contextlib.suppress(OSError):
            for sub in os.scandir(self.directory):
                if not sub.is_dir(follow_symlinks=False):
                    continue
                for item in os.scandir(sub.path):
                    with contextlib.suppress(OSError):
                        st = item.stat(follow_symlinks=False)
                        files.append((st.st_mtime_ns, st.st_size, item.path))
                        total += st.st_size
        if total <= self.max_bytes:
            return
        files.sort()
        target = int(self.max_bytes * TRIM_TO)
        for mtime, size, path in files:
            if total <= target or mtime >= self.since_ns:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
