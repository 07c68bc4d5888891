"""A read-only, seekable file object over a byte range of a file (an ELF in a tar, a member of a .deb)."""

from __future__ import annotations

import io
import os
from typing import BinaryIO

from linuxkit_py.archive.entry import Data, FileRegion, open_content


class RegionFile(io.RawIOBase):
    """`size` bytes of the file at `path` from `offset`, read with pread (the fd is never shared)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__()
        self._fd = open_content(path)
        self._start = offset
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        wanted = min(len(buffer), self._size - self._pos)
        if wanted <= 0:
            return 0
        data = os.pread(self._fd, wanted, self._start + self._pos)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def open_region(region: FileRegion) -> BinaryIO:
    return io.BufferedReader(RegionFile(region.path, region.offset, region.size))


def open_data(data: Data | None) -> BinaryIO:
    """A binary file object over an entry's contents (bytes, a FileRegion or nothing)."""
    if isinstance(data, FileRegion):
        return open_region(data)
    return io.BytesIO(data or b"")
