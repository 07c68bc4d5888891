"""Deterministic streaming compressors for outputs: parallel gzip (like pigz/pgzip) and zstd.

gzip (RFC 1952) holds one deflate stream (RFC 1951). We cut the input into fixed-size
blocks and deflate each on a worker thread (zlib-ng releases the GIL), primed with the last
32 KiB of the previous block as a preset dictionary and ended with a sync flush, so the
blocks concatenate into one valid deflate stream. Block boundaries and dictionaries depend
only on the input, never on the number of threads: the bytes are always the same. That
also makes each block reusable: with a DeflateBlockCache (archive/blockcache.py) a rebuild
takes unchanged blocks from the cache instead of deflating them again.

Where the blocks end decides what a rebuild can reuse. With fixed-size blocks, one member that
grows by a byte moves every later boundary and no later block repeats. A writer of an archive
therefore calls `mark(name)` where each member starts: a block also ends at a member whose
name's CRC-32 is divisible by MARK_CUT_MODULUS once it holds MARK_MIN_BLOCK bytes (cuts
defined by content, as in content-defined chunking, but at member starts, so no rolling hash
runs over the data). The next such member after an edit ends the block there as it did before,
and every block from it on is the same bytes again. Inside a long member, blocks still end
every `block_size` bytes, counted from the last cut.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import zstandard
from zlib_ng import zlib_ng

from linuxkit_py.archive.blockcache import CachedBlock, DeflateBlockCache, Piece
from linuxkit_py.archive.entry import ContentReader, FileRegion, read_data

GZIP_MAGIC = b"\x1f\x8b"
GZIP_METHOD_DEFLATE = 8
GZIP_FLAGS_NONE = 0
GZIP_MTIME_UNSET = 0  # "no time stamp available": reproducible
GZIP_XFL_NONE = 0
GZIP_OS_UNKNOWN = 255
DEFLATE_WINDOW = 32 * 1024
RAW_DEFLATE = -15  # zlib wbits for a headerless deflate stream

GZIP_BLOCK_SIZE = 1 << 20
# Content-defined cuts at member starts (see the module docstring): about one member in eight
# may end a block, and not before the block holds 256 KiB (blocks of a few KiB would cost ratio
# and per-block overhead).
MARK_MIN_BLOCK = 256 * 1024
MARK_CUT_MODULUS = 8
# Deflate is zlib-ng's (PyPI zlib-ng, pinned in pyproject.toml): its output is a function of its
# version and level only (the same bytes from its SSE2, SSE4.2, AVX2 and AVX-512 code paths,
# docs/benchmarks.md), and it deflates about 1.7x faster than zlib 1.2.13 at the same level.
# Level 4 here: see docs/benchmarks.md for the sizes and times of levels 3-6.
GZIP_DEFAULT_LEVEL = 4
ZSTD_DEFAULT_LEVEL = 3
# zstd in multi-threaded mode gives the same bytes for any number of workers >= 1, so a
# fixed worker count of 1 would also do; using the host's cores is only faster.
ZSTD_THREADS = -1  # one per core


def gzip_header() -> bytes:
    """The 10-byte member header (RFC 1952 section 2.3): no name, no mtime."""
    return GZIP_MAGIC + struct.pack("<BBIBB", GZIP_METHOD_DEFLATE, GZIP_FLAGS_NONE, GZIP_MTIME_UNSET,
                                    GZIP_XFL_NONE, GZIP_OS_UNKNOWN)


def gzip_trailer(crc32: int, size: int) -> bytes:
    """CRC32 and size modulo 2^32 of the uncompressed data (RFC 1952 section 2.3.1)."""
    return struct.pack("<II", crc32 & 0xFFFFFFFF, size & 0xFFFFFFFF)


def deflate_block(block: bytes, dictionary: bytes, level: int) -> bytes:
    """Deflate `block` as a non-final, byte-aligned piece of a larger stream."""
    if dictionary:
        compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, RAW_DEFLATE, zdict=dictionary)
    else:
        compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, RAW_DEFLATE)
    return compressor.compress(block) + compressor.flush(zlib_ng.Z_SYNC_FLUSH)


def _final_empty_block() -> bytes:
    compressor = zlib_ng.compressobj(0, zlib_ng.DEFLATED, RAW_DEFLATE)
    return compressor.flush(zlib_ng.Z_FINISH)


class ParallelGzipWriter:
    """Write one gzip member to `out`, compressing fixed-size blocks on `threads` threads.

    Input comes as bytes (`write`) or as regions of files (`write_region`). With a block cache, a
    region of a content-addressed file stays a reference until its block misses the cache, so a
    rebuild reads none of the bytes of the blocks it reuses; every other region is read at once.
    """

    def __init__(self, out: BinaryIO, level: int = GZIP_DEFAULT_LEVEL, block_size: int = GZIP_BLOCK_SIZE,
                 threads: int | None = None, block_cache: DeflateBlockCache | None = None) -> None:
        self._out = out
        self._level = level
        self._block_cache = block_cache
        self._addressed = block_cache.addressed if block_cache is not None else None
        self._block_size = block_size
        self._threads = max(1, threads or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="gzip")
        self._pending: deque[tuple[Future[CachedBlock] | CachedBlock, int]] = deque()
        self._pieces: list[Piece] = []  # the block being filled, before `_literal`
        self._literal = bytearray()  # bytes written since the last region
        self._filled = 0  # bytes in the block being filled
        self._dictionary: list[Piece] = []  # the last DEFLATE_WINDOW bytes of the previous block
        self._reader = ContentReader()
        self._crc = 0
        self._size = 0
        out.write(gzip_header())

    def write(self, data: bytes) -> None:
        if self._filled + len(data) < self._block_size:  # the usual case (a cpio header): no block ends
            self._literal += data
            self._filled += len(data)
            return
        view = memoryview(data)
        while len(view) > 0:
            room = self._block_size - self._filled
            self._literal += view[:room]
            taken = min(room, len(view))
            self._filled += taken
            view = view[taken:]
            if self._filled == self._block_size:
                self._submit()

    def write_region(self, region: FileRegion) -> None:
        """The bytes of `region`, as `write(read_data(region))` would add them."""
        path = self._addressed(region.path) if self._addressed is not None else None
        if path is None:
            for chunk in self._reader.chunks(region):
                self.write(chunk)
            return
        offset, remaining = region.offset, region.size
        if 0 < remaining < self._block_size - self._filled:  # the usual case: it fits in the block
            if self._literal:
                self._pieces.append(self._literal)
                self._literal = bytearray()
            self._pieces.append(region if path == region.path else FileRegion(path, offset, remaining))
            self._filled += remaining
            return
        while remaining > 0:
            take = min(remaining, self._block_size - self._filled)
            self._end_literal()
            self._pieces.append(FileRegion(path, offset, take))
            self._filled += take
            offset += take
            remaining -= take
            if self._filled == self._block_size:
                self._submit()

    def mark(self, name: bytes) -> None:
        """A member named `name` starts at this point of the input: the block may end here."""
        if self._filled >= MARK_MIN_BLOCK and zlib.crc32(name) % MARK_CUT_MODULUS == 0:
            self._submit()

    def _end_literal(self) -> None:
        if self._literal:
            self._pieces.append(self._literal)
            self._literal = bytearray()

    def _submit(self) -> None:
        self._end_literal()
        block, size, dictionary = self._pieces, self._filled, self._dictionary
        self._pieces, self._filled = [], 0
        self._dictionary = _tail(block, DEFLATE_WINDOW)
        self._size += size
        key = None
        if self._block_cache is not None:
            key = self._block_cache.key(self._level, dictionary, block)
            # A hit is looked up here, not on a worker: reading one small file is quicker than handing
            # the GIL to a thread and back (the usual rebuild hits all but a few blocks).
            cached = self._block_cache.get(key)
            if cached is not None and cached.input_size == size:
                self._pending.append((cached, size))
                self._drain()
                return
        self._pending.append((self._pool.submit(self._deflate, key, dictionary, block, size), size))
        self._drain()

    def _drain(self) -> None:
        # Bounded memory: at most two blocks per thread in flight.
        while len(self._pending) > 2 * self._threads:
            self._write_next()

    def _write_next(self) -> None:
        pending, size = self._pending.popleft()
        block = pending if isinstance(pending, CachedBlock) else pending.result()
        self._out.write(block.payload)
        self._crc = crc32_combine(self._crc, block.input_crc32, size)

    def close(self) -> None:
        try:
            if self._filled:
                self._submit()
            while self._pending:
                self._write_next()
            self._out.write(_final_empty_block())
            self._out.write(gzip_trailer(self._crc, self._size))
        finally:
            self.abort()
        if self._block_cache is not None:
            self._block_cache.trim()

    def _deflate(self, key: str | None, dictionary: list[Piece], block: list[Piece], size: int) -> CachedBlock:
        """deflate_block, stored in the block cache under `key` (runs on a worker thread)."""
        data = _read_pieces(block)
        if len(data) != size:
            raise OSError(f"a gzip block read {len(data)} bytes, expected {size} (did an input change?)")
        deflated = CachedBlock(deflate_block(data, _read_pieces(dictionary), self._level), zlib_ng.crc32(data), size)
        if key is not None and self._block_cache is not None:
            self._block_cache.put(key, deflated)
        return deflated

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reader.close()


def _tail(pieces: list[Piece], size: int) -> list[Piece]:
    """The pieces of the last `size` bytes of `pieces` (all of them when shorter)."""
    tail: list[Piece] = []
    for piece in reversed(pieces):
        length = piece.size if isinstance(piece, FileRegion) else len(piece)
        if length >= size:
            if isinstance(piece, FileRegion):
                tail.append(FileRegion(piece.path, piece.offset + length - size, size))
            else:
                tail.append(bytes(piece[length - size :]))
            break
        tail.append(piece)
        size -= length
    tail.reverse()
    return tail


def _read_pieces(pieces: list[Piece]) -> bytes:
    return b"".join(read_data(p) if isinstance(p, FileRegion) else p for p in pieces)


# CRC-32 of a concatenation from the CRC-32s of its parts (zlib's crc32_combine, which Python's zlib
# does not expose; ISA-L's binding does). CRC_POLY is the reflected polynomial of gzip's CRC-32.
CRC_POLY = 0xEDB88320


def _multiply_mod_poly(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial, in the reflected bit order CRCs use (zlib's multmodp)."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ CRC_POLY if b & 1 else b >> 1


def _x_to_2n_table() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multiply_mod_poly(p, p)
    return table


_X2N = _x_to_2n_table()  # x^(2^n) modulo the polynomial


def _shift_operator(length: int) -> int:
    """x^(8 * length) modulo the polynomial: what appending `length` bytes does to a CRC."""
    p, k, n = 1 << 31, 3, length  # x^0; a byte is 2^3 bits
    while n:
        if n & 1:
            p = _multiply_mod_poly(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine_python(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of A + B from crc32(A), crc32(B) and len(B)."""
    return _multiply_mod_poly(_shift_operator(length2), crc1) ^ crc2


crc32_combine: Callable[[int, int, int], int]
try:
    from isal.isal_zlib import crc32_combine
except ImportError:  # no ISA-L wheel for this platform
    crc32_combine = crc32_combine_python


class ZstdWriter:
    """Write one zstd frame to `out` (multi-threaded; same bytes for any number of threads)."""

    def __init__(self, out: BinaryIO, level: int = ZSTD_DEFAULT_LEVEL, threads: int | None = None) -> None:
        # Content checksum on: the kernel's decompressor verifies it when present.
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads or ZSTD_THREADS, write_checksum=True)
        self._writer = zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        pass


COMPRESSIONS = ("gzip", "zstd")


def compressed_writer(out: BinaryIO, compression: str, level: int | None = None, threads: int | None = None,
                      block_cache: DeflateBlockCache | None = None) -> ParallelGzipWriter | ZstdWriter:
    """A writer that compresses into `out`; `close()` finishes the stream (it does not close `out`).

    `block_cache` lets gzip reuse blocks deflated by earlier builds (zstd is fast enough without).
    """
    makers: dict[str, Callable[[], ParallelGzipWriter | ZstdWriter]] = {
        "gzip": lambda: ParallelGzipWriter(out, GZIP_DEFAULT_LEVEL if level is None else level,
                                           threads=threads, block_cache=block_cache),
        "zstd": lambda: ZstdWriter(out, ZSTD_DEFAULT_LEVEL if level is None else level, threads=threads),
    }
    try:
        return makers[compression]()
    except KeyError:
        raise ValueError(f"unknown compression {compression!r} (known: {', '.join(COMPRESSIONS)})") from None
