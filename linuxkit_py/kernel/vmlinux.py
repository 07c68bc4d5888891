"""The uncompressed kernel (vmlinux, or arm64's Image) inside a compressed kernel file, for
`build --decompress-kernel` (what LinuxKit's does, with more compressors than its gzip only).

Two layouts, as LinuxKit recognises them:

* a whole compressed file (arm64's gzip'ed Image): it starts with the compressor's magic;
* an x86 bzImage (Documentation/arch/x86/boot.rst, boot protocol 2.08+): the 0xAA55 boot flag at 0x1fe,
  "HdrS" at 0x202, setup_sects at 0x1f1; the compressed payload starts payload_offset (0x248) bytes after the
  real-mode setup code ((setup_sects + 1) * 512) and is payload_length (0x24c) bytes long. The kernel's build
  appends the uncompressed size (le32) to the payload; it is checked against what comes out.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import struct
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from linuxkit_py.errors import UserError
from linuxkit_py.tools import start

BOOT_FLAG_OFFSET, BOOT_FLAG = 0x1FE, 0xAA55
HEADER_OFFSET, HEADER_MAGIC = 0x202, b"HdrS"
VERSION_OFFSET, MIN_VERSION = 0x206, 0x0208  # payload_offset/length exist from protocol 2.08
SETUP_SECTS_OFFSET = 0x1F1
PAYLOAD_OFFSET, PAYLOAD_LENGTH = 0x248, 0x24C
SECTOR = 512
HEADER_SIZE = 0x250
CHUNK = 1 << 20

GZIP, XZ, ZSTD, LZ4, BZIP2, LZMA = "gzip", "xz", "zstd", "lz4", "bzip2", "lzma"
MAGICS = (  # Linux's own list (lib/decompress.c), most common first
    (b"\x1f\x8b", GZIP), (b"\xfd7zXZ\x00", XZ), (b"\x28\xb5\x2f\xfd", ZSTD),
    (b"\x02\x21\x4c\x18", LZ4), (b"BZh", BZIP2), (b"\x5d\x00\x00", LZMA),
)


@dataclass(frozen=True)
class Payload:
    offset: int
    size: int
    compression: str
    expected_size: int | None  # the uncompressed size appended by the kernel's build (bzImage only)


def _compression(head: bytes) -> str | None:
    return next((name for magic, name in MAGICS if head.startswith(magic)), None)


def _read(source: BinaryIO, offset: int, size: int) -> bytes:
    source.seek(offset)
    return source.read(size)


def find_payload(source: BinaryIO, size: int, what: str) -> Payload:
    """Where the compressed kernel is in the seekable `source` (`size` bytes), or a UserError naming `what`."""
    head = _read(source, 0, min(size, HEADER_SIZE))
    whole = _compression(head)
    if whole is not None:
        return Payload(0, size, whole, None)
    if len(head) < HEADER_SIZE or struct.unpack_from("<H", head, BOOT_FLAG_OFFSET)[0] != BOOT_FLAG \
            or head[HEADER_OFFSET:HEADER_OFFSET + 4] != HEADER_MAGIC:
        raise UserError(f"{what}: not a compressed kernel (neither a bzImage nor a compressed file)")
    major, minor = head[VERSION_OFFSET + 1], head[VERSION_OFFSET]
    if (major << 8 | minor) < MIN_VERSION:
        raise UserError(f"{what}: bzImage boot protocol {major}.{minor:02d} has no payload fields (needs 2.08)")
    offset, length = struct.unpack_from("<II", head, PAYLOAD_OFFSET)
    offset += (head[SETUP_SECTS_OFFSET] + 1) * SECTOR
    if offset + length > size or length < 8:
        raise UserError(f"{what}: the bzImage payload runs past the end of the file")
    compression = _compression(_read(source, offset, 8))
    if compression is None:
        raise UserError(f"{what}: unsupported bzImage payload format at offset {offset}")
    (expected,) = struct.unpack("<I", _read(source, offset + length - 4, 4))
    # The appended size is not part of the compressed stream: lz4's legacy format would read it as a block.
    return Payload(offset, length - 4, compression, expected)


def _chunks(source: BinaryIO, payload: Payload) -> Iterator[bytes]:
    for at in range(payload.offset, payload.offset + payload.size, CHUNK):
        yield _read(source, at, min(CHUNK, payload.offset + payload.size - at))


def _decompressor(compression: str) -> Callable[[bytes], bytes]:
    if compression == GZIP:
        return zlib.decompressobj(wbits=31).decompress  # data after the gzip member is left unused
    if compression in (XZ, LZMA):
        return lzma.LZMADecompressor(lzma.FORMAT_XZ if compression == XZ else lzma.FORMAT_ALONE).decompress
    if compression == BZIP2:
        return bz2.BZ2Decompressor().decompress
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress


def _lz4(source: BinaryIO, payload: Payload, out: BinaryIO, what: str) -> int:
    proc = start(["lz4", "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def feed(stdin: BinaryIO) -> None:
        with contextlib.suppress(BrokenPipeError), stdin:
            for chunk in _chunks(source, payload):
                stdin.write(chunk)

    feeder = threading.Thread(target=feed, args=(proc.stdin,), daemon=True)
    feeder.start()
    written = 0
    while chunk := proc.stdout.read(CHUNK):
        out.write(chunk)
        written += len(chunk)
    feeder.join()
    error = proc.stderr.read().decode(errors="replace").strip().splitlines()
    if proc.wait() != 0:
        raise UserError(f"{what}: lz4 could not decompress the kernel: {error[-1] if error else 'failed'}")
    return written


def decompress_kernel(source: BinaryIO, size: int, out: BinaryIO, what: str) -> int:
    """Write the uncompressed kernel of the seekable `source` (`size` bytes) to `out`; returns its size."""
    payload = find_payload(source, size, what)
    written = 0
    try:
        if payload.compression == LZ4:  # no lz4 in Python's standard library: the lz4 tool streams it
            written = _lz4(source, payload, out, what)
        else:
            decompress = _decompressor(payload.compression)
            for chunk in _chunks(source, payload):
                data = decompress(chunk)
                out.write(data)
                written += len(data)
    except (OSError, zlib.error, lzma.LZMAError, ValueError, EOFError) as exc:
        raise UserError(f"{what}: the {payload.compression} kernel payload is corrupt: {exc}") from exc
    if payload.expected_size is not None and written != payload.expected_size:
        raise UserError(f"{what}: decompressed to {written} bytes, the bzImage says {payload.expected_size}")
    return written


__all__ = ["decompress_kernel", "find_payload"]
