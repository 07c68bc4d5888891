"""Deflated blocks of earlier builds, reused when a rebuild compresses the same bytes again.

A block of the parallel gzip writer (archive/compress.py) is a pure function of the zlib
library, the level, its 32 KiB dictionary and its input, so it is stored under the sha256
of all four: a hit is byte for byte what deflating would give, and hashing a block costs
about 1/25 of deflating it. A warm rebuild of an unchanged spec writes the same cpio, and
a changed one still reuses every block before its first change (the kernel's modules come
first).

Each file holds a small header with its payload's length and CRC-32, so a torn or damaged
file is a miss, never bad output. Files are written without fsync (a lost one is only a
miss) and the least recently used ones are removed beyond a size cap.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
import zlib
from pathlib import Path

MAGIC = b"LKPYDFL1"
HEADER = struct.Struct("<8sII")  # magic, payload length, CRC-32 of the payload
DEFAULT_MAX_BYTES = 1 << 30
# After trimming, keep this share of the cap, so that every build does not trim again.
TRIM_TO = 0.75


class DeflateBlockCache:
    """Compressed blocks under `directory`, at most about `max_bytes` of them."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES, used: set[str] | None = None) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.used = used  # when given, the key of every block looked up is added (what --cache-to shares)

    @staticmethod
    def key(level: int, dictionary: bytes, block: bytes) -> str:
        """What decides the deflated bytes of `block`: zlib's version, level, dictionary, input."""
        sha = hashlib.sha256(f"{zlib.ZLIB_RUNTIME_VERSION} {level} {len(dictionary)} {len(block)}\n".encode())
        sha.update(dictionary)
        sha.update(block)
        return sha.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / key

    def get(self, key: str) -> bytes | None:
        """The stored payload, or None when absent or damaged."""
        if self.used is not None:
            self.used.add(key)
        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if len(data) < HEADER.size:
            return None
        magic, length, crc = HEADER.unpack_from(data)
        payload = data[HEADER.size :]
        if magic != MAGIC or length != len(payload) or zlib.crc32(payload) != crc:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: trimmed last
        return payload

    def put(self, key: str, payload: bytes) -> None:
        """Store `payload`; a cache that cannot be written is skipped, never an error."""
        path = self.path(key)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)))
                    f.write(payload)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def trim(self) -> None:
        """Remove the least recently used blocks while the cache holds more than `max_bytes`."""
        files: list[tuple[float, int, str]] = []
        total = 0
        with contextlib.suppress(OSError):
            for sub in os.scandir(self.directory):
                if not sub.is_dir(follow_symlinks=False):
                    continue
                for item in os.scandir(sub.path):
                    with contextlib.suppress(OSError):
                        st = item.stat(follow_symlinks=False)
                        files.append((st.st_mtime, st.st_size, item.path))
                        total += st.st_size
        if total <= self.max_bytes:
            return
        files.sort()
        target = int(self.max_bytes * TRIM_TO)
        for _, size, path in files:
            if total <= target:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
