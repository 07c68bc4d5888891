"""Reading a layer blob from the cache: its compression (the magic bytes decide), its decompressed bytes,
and blobs a pull left in their registry, downloaded when something first reads them."""

from __future__ import annotations

import gzip
import logging
import os
import threading
import zlib
from collections.abc import Callable, Generator
from typing import BinaryIO, cast

import zstandard

from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError

try:
    from isal import igzip, isal_zlib
    ISAL_ERRORS: tuple[type[BaseException], ...] = (cast(type[BaseException], isal_zlib.error),)
except ImportError:  # no ISA-L wheel for this machine: zlib
    igzip = None  # type: ignore[assignment]
    ISAL_ERRORS = ()
# What reading a broken layer raises (OSError also covers a failed write of the unpacked tar).
CORRUPT_LAYER_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, zlib.error, zstandard.ZstdError, ValueError, *ISAL_ERRORS)

log = logging.getLogger(__name__)

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_SKIPPABLE_MAGIC = 0x184D2A50  # low 4 bits vary

# OCI image-spec layer media types (incl. the deprecated non-distributable ones) and Docker's.
_MEDIA_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}


def layer_compression(media_type: str | None, head: bytes) -> str:
    """"gzip", "zstd" or "none": the magic bytes decide; the media type only names what was promised."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    declared = _MEDIA_COMPRESSION.get(media_type or "", "none")
    if declared != "none":
        raise ValueError(f"its media type {media_type} says {declared}, but the data is not {declared}")
    return "none"


def check_zstd_frames(blob: BinaryIO) -> None:
    """Raise ValueError unless `blob` is a sequence of complete zstd frames (RFC 8878 section 3.1).

    The zstd stream decoder reports a stream cut at a block boundary as a clean end, so a
    truncated layer would otherwise pass as a shorter tar. Only headers are read.
    """
    size = os.fstat(blob.fileno()).st_size
    pos = 0

    def read(n: int) -> bytes:
        blob.seek(pos)
        data = blob.read(n)
        if len(data) != n:
            raise ValueError(f"zstd stream truncated at byte {pos + len(data)}")
        return data

    while pos < size:
        magic = int.from_bytes(read(4), "little")
        if magic & 0xFFFFFFF0 == ZSTD_SKIPPABLE_MAGIC:
            pos += 4
            pos += 4 + int.from_bytes(read(4), "little")
            continue
        if magic != int.from_bytes(ZSTD_MAGIC, "little"):
            raise ValueError(f"not a zstd frame at byte {pos}")
        pos += 4
        descriptor = read(1)[0]
        single_segment = descriptor >> 5 & 1
        fcs_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        did_size = (0, 1, 2, 4)[descriptor & 3]
        has_checksum = descriptor >> 2 & 1
        pos += 1 + (0 if single_segment else 1) + did_size + fcs_size
        last = False
        while not last:
            block_header = int.from_bytes(read(3), "little")
            last = bool(block_header & 1)
            block_type = block_header >> 1 & 3
            block_size = block_header >> 3
            if block_type == 3:
                raise ValueError(f"reserved zstd block type at byte {pos}")
            pos += 3 + (1 if block_type == 1 else block_size)
        pos += 4 * has_checksum
        if pos > size:
            raise ValueError(f"zstd stream truncated at byte {size}")


def decompressed_chunks(blob: BinaryIO, compression: str) -> Generator[bytes, None, None]:
    if compression == "gzip":
        # Both handle multi-member streams (pigz, some registries); ISA-L inflates about 2.6x faster than zlib
        # (docs/benchmarks.md) and gives the same bytes: decompression has one right answer.
        with (igzip.IGzipFile(fileobj=blob, mode="rb") if igzip else gzip.GzipFile(fileobj=blob, mode="rb")) as gz:
            while chunk := gz.read(CHUNK):
                yield chunk
    elif compression == "zstd":
        check_zstd_frames(blob)
        blob.seek(0)
        reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
        while chunk := reader.read(CHUNK):
            yield chunk
    else:
        while chunk := blob.read(CHUNK):
            yield chunk


# Blobs a pull left for later (registry/pull.py, PullHooks.later): digest -> what downloads it into the cache, once
# something reads its layer. Forgotten at the end of the build (forget_deferred_layers).
_LATER: dict[str, Callable[[], None]] = {}
_LATER_LOCK = threading.Lock()


def fetch_blobs_later(fetchers: dict[str, Callable[[], None]]) -> None:
    """Layer blobs the cache does not hold yet: each is downloaded by its function when its layer is first read."""
    with _LATER_LOCK:
        _LATER.update(fetchers)


def open_layer_blob(cache: Cache, digest: str) -> BinaryIO:
    with _LATER_LOCK:
        fetch = _LATER.get(digest)
    if fetch is not None and not cache.has_blob(digest):
        log.info("layer %s: downloading it now (first read)", digest)
        fetch()  # a failure is raised to this reader, and the next one tries again
    with _LATER_LOCK:
        _LATER.pop(digest, None)
    try:
        return open(cache.blob_path(digest), "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise UserError(f"layer {digest} is missing from the cache {cache.root}") from None




def forget_blobs_later() -> None:
    with _LATER_LOCK:
        _LATER.clear()
