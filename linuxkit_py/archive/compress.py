"""Deterministic streaming compressors for outputs: parallel gzip (like pigz/pgzip) and zstd.

gzip (RFC 1952) holds one deflate stream (RFC 1951). We cut the input into fixed-size
blocks and deflate each on a worker thread (zlib releases the GIL), primed with the last
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

from linuxkit_py.archive.blockcache import DeflateBlockCache

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
# Level 5: on a 448 MB cpio of kernel modules and binaries it gave 157.5 MB, 5% smaller than
# LinuxKit's pgzip at its default level (165.5 MB), in 60% of level 6's CPU time (155.9 MB).
GZIP_DEFAULT_LEVEL = 5
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
        compressor = zlib.compressobj(level, zlib.DEFLATED, RAW_DEFLATE, zdict=dictionary)
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, RAW_DEFLATE)
    return compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _final_empty_block() -> bytes:
    compressor = zlib.compressobj(0, zlib.DEFLATED, RAW_DEFLATE)
    return compressor.flush(zlib.Z_FINISH)


class ParallelGzipWriter:
    """Write one gzip member to `out`, compressing fixed-size blocks on `threads` threads."""

    def __init__(self, out: BinaryIO, level: int = GZIP_DEFAULT_LEVEL, block_size: int = GZIP_BLOCK_SIZE,
                 threads: int | None = None, block_cache: DeflateBlockCache | None = None) -> None:
        self._out = out
        self._level = level
        self._block_cache = block_cache
        self._block_size = block_size
        self._threads = max(1, threads or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="gzip")
        self._pending: deque[Future[bytes]] = deque()
        self._buffer = bytearray()
        self._dictionary = b""
        self._crc = 0
        self._size = 0
        out.write(gzip_header())

    def write(self, data: bytes) -> None:
        # Whole blocks are cut straight out of `data`: each byte is copied once into a block
        # (twice when it straddles a write), never moved along the buffer.
        view = memoryview(data)
        if self._buffer:
            need = self._block_size - len(self._buffer)
            self._buffer += view[:need]
            view = view[need:]
            if len(self._buffer) < self._block_size:
                return
            self._submit(bytes(self._buffer))
            self._buffer.clear()
        while len(view) >= self._block_size:
            self._submit(bytes(view[: self._block_size]))
            view = view[self._block_size :]
        self._buffer += view

    def mark(self, name: bytes) -> None:
        """A member named `name` starts at this point of the input: the block may end here."""
        if len(self._buffer) >= MARK_MIN_BLOCK and zlib.crc32(name) % MARK_CUT_MODULUS == 0:
            self._submit(bytes(self._buffer))
            self._buffer.clear()

    def _submit(self, block: bytes) -> None:
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)
        self._pending.append(self._pool.submit(self._deflate, block, self._dictionary))
        self._dictionary = block[-DEFLATE_WINDOW:]
        # Bounded memory: at most two blocks per thread in flight.
        while len(self._pending) > 2 * self._threads:
            self._out.write(self._pending.popleft().result())

    def close(self) -> None:
        try:
            if self._buffer:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
            while self._pending:
                self._out.write(self._pending.popleft().result())
            self._out.write(_final_empty_block())
            self._out.write(gzip_trailer(self._crc, self._size))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._block_cache is not None:
            self._block_cache.trim()

    def _deflate(self, block: bytes, dictionary: bytes) -> bytes:
        """deflate_block, or the same bytes from the block cache (runs on a worker thread)."""
        if self._block_cache is None:
            return deflate_block(block, dictionary, self._level)
        key = self._block_cache.key(self._level, dictionary, block)
        data = self._block_cache.get(key)
        if data is None:
            data = deflate_block(block, dictionary, self._level)
            self._block_cache.put(key, data)
        return data

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


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
