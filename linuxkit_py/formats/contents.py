"""Read the contents of entries for output writers, in bounded memory.

Thousands of small files live in the same few layer tars: keeping those files open and
reading with pread saves an open/close per entry.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from types import TracebackType

from linuxkit_py.rootfs.entry import Data, FileRegion

CHUNK = 1 << 20
MAX_OPEN_FILES = 64


class ContentReader:
    """`chunks(data)` yields the bytes of an entry's data; use as a context manager."""

    def __init__(self) -> None:
        self._fds: OrderedDict[str, int] = OrderedDict()

    def __enter__(self) -> ContentReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        fd = os.open(path, os.O_RDONLY)
        self._fds[path] = fd
        if len(self._fds) > MAX_OPEN_FILES:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def chunks(self, data: Data | None, chunk: int = CHUNK) -> Iterator[bytes]:
        if data is None:
            return
        if isinstance(data, bytes):
            for i in range(0, len(data), chunk):
                yield data[i : i + chunk]
            return
        yield from self._region(data, chunk)

    def _region(self, region: FileRegion, chunk: int) -> Iterator[bytes]:
        offset, remaining = region.offset, region.size
        while remaining > 0:
            # Looked up each time: a caller reading other files in between may have evicted it.
            block = os.pread(self._fd(region.path), min(chunk, remaining), offset)
            if not block:
                raise OSError(f"{region.path}: truncated (wanted {remaining} more bytes at {offset})")
            offset += len(block)
            remaining -= len(block)
            yield block
