"""One filesystem entry of an image or of the assembled root filesystem.

Entries carry metadata only. File contents are either small inline bytes or a
FileRegion: a byte range of a file on disk (an uncompressed layer tar in the
cache, a host file named by `files: source:`). Nothing is ever extracted onto
the host filesystem.
"""

from __future__ import annotations

import enum
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, cast

CHUNK = 1 << 20


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


@dataclass(frozen=True, slots=True)
class FileRegion:
    """`size` bytes of the file at `path`, starting at `offset`."""

    path: str
    offset: int
    size: int


Data = bytes | FileRegion


@dataclass(frozen=True, slots=True)
class Entry:
    """A filesystem entry.

    path: relative POSIX path with no leading '/' or './' and no trailing '/'.
    mode: permission bits only (0o7777), the type is `kind`.
    linkname: symlink target (verbatim) or, for HARDLINK, the rootfs-relative path of the
      entry it links to (which comes earlier in the same stream).
    data: contents of a FILE (None means empty).
    source/location: LinuxKit's PAX records (`LINUXKIT.source`, `LINUXKIT.location`).
    """

    path: str
    kind: Kind
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    data: Data | None = None
    mtime: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    source: str = ""
    location: str = ""
    uname: str = ""
    gname: str = ""

    def evolve(self, **changes: object) -> Entry:
        """A copy with `changes`, like dataclasses.replace but about twice as fast (hot in assembling big
        images). Entries have slots, not a __dict__: a quarter of the memory, for images of 100,000s of files."""
        new = _copy(self)
        for name, value in changes.items():
            _set(new, name, value)
        return new

    def with_path(self, path: str) -> Entry:
        return self.evolve(path=path)


_FIELDS = tuple(f.name for f in fields(Entry))
_set = object.__setattr__


def _make_copy() -> Callable[[Entry], Entry]:
    """A function copying every field of an Entry, written out field by field (as dataclasses writes its
    __init__): twice as fast as a loop over the fields, and evolve runs once per file of every image."""
    lines = ["def copy(entry):", "    new = new_entry(Entry)"]
    lines += [f"    set_field(new, {name!r}, entry.{name})" for name in _FIELDS]
    lines.append("    return new")
    namespace: dict[str, Any] = {"new_entry": object.__new__, "Entry": Entry, "set_field": _set}
    exec("\n".join(lines), namespace)  # noqa: S102 - our own field names only
    return cast(Callable[[Entry], Entry], namespace["copy"])


_copy = _make_copy()


def iter_data(data: Data | None, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield the contents described by `data` in chunks of at most `chunk` bytes."""
    with ContentReader() as reader:
        yield from reader.chunks(data, chunk)


def read_data(data: Data | None) -> bytes:
    """All contents of `data` in memory (only for small files)."""
    return b"".join(iter_data(data))


MAX_OPEN_FILES = 64

# Files made when something first reads them (cache/layers.py leaves a layer packed until then, in a
# `build --cache-from` that brought the layer's index): path -> what makes the file.
_MADE_ON_READ: dict[str, Callable[[], None]] = {}


def make_on_read(path: str, make: Callable[[], None]) -> None:
    """Have open_content(path) call `make()` (which must create `path`, and may be called from any thread,
    more than once) when the file does not exist yet."""
    _MADE_ON_READ[path] = make


def forget_made_on_read() -> None:
    _MADE_ON_READ.clear()


def open_content(path: str) -> int:
    """os.open(path, O_RDONLY), making the file first if it is one make_on_read named."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        make = _MADE_ON_READ.get(path)
        if make is None:
            raise
    make()
    return os.open(path, os.O_RDONLY)


class ContentReader:
    """`chunks(data)` yields the bytes of an entry's data; use as a context manager.

    Thousands of small files live in the same few layer tars: keeping those files open and reading
    with pread saves an open/close per entry.
    """

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
        fd = open_content(path)
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
