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
from dataclasses import dataclass
from types import TracebackType
from typing import Any

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


# Entry's fields in order (its constructor's positional order, and what equality compares).
FIELDS = ("path", "kind", "mode", "uid", "gid", "size", "linkname", "devmajor", "devminor", "data", "mtime",
          "xattrs", "source", "location", "uname", "gname")
# The fields most entries share with many others (owner, time, the image they come from; link targets and
# devices are rare): kept together in one tuple that equal entries share, so that an entry is 9 words
# smaller. At 230,000 entries that is 15 MiB.
SHARED_FIELDS = ("uid", "gid", "linkname", "devmajor", "devminor", "mtime", "xattrs", "source", "location",
                 "uname", "gname")
SharedFields = tuple[int, int, str, int, int, int, tuple[tuple[str, bytes], ...], str, str, str, str]
_SHARED_INDEX = {name: i for i, name in enumerate(SHARED_FIELDS)}
_DEFAULT_SHARED: SharedFields = (0, 0, "", 0, 0, 0, (), "", "", "", "")
_MAX_SHARED = 1 << 14
_shared: dict[SharedFields, SharedFields] = {_DEFAULT_SHARED: _DEFAULT_SHARED}
_set = object.__setattr__


def share_fields(values: SharedFields) -> SharedFields:
    """`values`, or an equal tuple made earlier (one object for the entries of an image that share them)."""
    known = _shared.get(values)
    if known is not None:
        return known
    if len(_shared) >= _MAX_SHARED:  # bounded: a long-lived process forgets, and only shares less
        _shared.clear()
        _shared[_DEFAULT_SHARED] = _DEFAULT_SHARED
    _shared[values] = values
    return values


def forget_shared_fields() -> None:
    """Let go of the tuples share_fields kept (those entries still hold stay theirs): after the layers of a cold
    build are indexed, so that the tuples of entries already dropped do not hold on to their memory."""
    _shared.clear()
    _shared[_DEFAULT_SHARED] = _DEFAULT_SHARED


class FrozenEntryError(AttributeError):
    """An entry's fields cannot be assigned: make a changed copy with evolve()."""


def _shared_field(index: int) -> property:
    def get(entry: Entry) -> Any:
        return entry._shared[index]

    return property(get)


class Entry:
    """A filesystem entry (immutable; equal when every field is).

    path: relative POSIX path with no leading '/' or './' and no trailing '/'.
    mode: permission bits only (0o7777), the type is `kind`.
    linkname: symlink target (verbatim) or, for HARDLINK, the rootfs-relative path of the
      entry it links to (which comes earlier in the same stream).
    data: contents of a FILE (None means empty).
    source/location: LinuxKit's PAX records (`LINUXKIT.source`, `LINUXKIT.location`).

    The SHARED_FIELDS live in one tuple shared by the entries that have the same values (share_fields).
    """

    __slots__ = ("path", "kind", "mode", "size", "data", "_shared")
    path: str
    kind: Kind
    mode: int
    size: int
    data: Data | None
    _shared: SharedFields

    def __init__(self, path: str, kind: Kind, mode: int, uid: int = 0, gid: int = 0, size: int = 0,
                 linkname: str = "", devmajor: int = 0, devminor: int = 0, data: Data | None = None,
                 mtime: int = 0, xattrs: tuple[tuple[str, bytes], ...] = (), source: str = "",
                 location: str = "", uname: str = "", gname: str = "") -> None:
        _set(self, "path", path)
        _set(self, "kind", kind)
        _set(self, "mode", mode)
        _set(self, "size", size)
        _set(self, "data", data)
        _set(self, "_shared", share_fields((uid, gid, linkname, devmajor, devminor, mtime, xattrs, source,
                                            location, uname, gname)))

    uid: int = _shared_field(0)  # type: ignore[assignment]
    gid: int = _shared_field(1)  # type: ignore[assignment]
    linkname: str = _shared_field(2)  # type: ignore[assignment]
    devmajor: int = _shared_field(3)  # type: ignore[assignment]
    devminor: int = _shared_field(4)  # type: ignore[assignment]
    mtime: int = _shared_field(5)  # type: ignore[assignment]
    xattrs: tuple[tuple[str, bytes], ...] = _shared_field(6)  # type: ignore[assignment]
    source: str = _shared_field(7)  # type: ignore[assignment]
    location: str = _shared_field(8)  # type: ignore[assignment]
    uname: str = _shared_field(9)  # type: ignore[assignment]
    gname: str = _shared_field(10)  # type: ignore[assignment]

    @classmethod
    def made(cls, path: str, kind: Kind, mode: int, size: int, data: Data | None, shared: SharedFields) -> Entry:
        """An entry from its own fields and a tuple of the shared ones (already shared: share_fields)."""
        new = _new_entry(cls)
        _set(new, "path", path)
        _set(new, "kind", kind)
        _set(new, "mode", mode)
        _set(new, "size", size)
        _set(new, "data", data)
        _set(new, "_shared", shared)
        return new

    @property
    def shared_fields(self) -> SharedFields:
        return self._shared

    def evolve(self, **changes: Any) -> Entry:
        """A copy with `changes` (any of FIELDS), like dataclasses.replace but several times faster (hot in
        assembling big images)."""
        new = _new_entry(Entry)
        _set(new, "path", changes.pop("path", self.path))
        _set(new, "kind", changes.pop("kind", self.kind))
        _set(new, "mode", changes.pop("mode", self.mode))
        _set(new, "size", changes.pop("size", self.size))
        _set(new, "data", changes.pop("data", self.data))
        shared = self._shared
        if changes:
            values = list(shared)
            for name, value in changes.items():
                index = _SHARED_INDEX.get(name)
                if index is None:
                    raise TypeError(f"Entry has no field {name!r}")
                values[index] = value
            shared = share_fields(tuple(values))  # type: ignore[arg-type]
        _set(new, "_shared", shared)
        return new

    def with_path(self, path: str) -> Entry:
        return self.evolve(path=path)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenEntryError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenEntryError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Entry:
            return NotImplemented
        assert isinstance(other, Entry)
        return (self.path == other.path and self.kind is other.kind and self.mode == other.mode
                and self.size == other.size and self.data == other.data and self._shared == other._shared)

    def __hash__(self) -> int:
        return hash((self.path, self.kind, self.mode, self.size, self.data, self._shared))

    def __repr__(self) -> str:
        return "Entry(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Entry, self._values())


_new_entry = object.__new__


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
    """Have open_content(path) call `make()` before it opens the file: `make` must create `path` when it does not
    exist yet, or raise why it cannot be read (again to every reader); it may be called from any thread, more
    than once."""
    _MADE_ON_READ[path] = make


# Byte ranges of such files that can be read before the file is made (cache/layers.py: the head of a layer's
# tar, decompressed into memory, holds a kernel image's kernel): path -> for (offset, size), a descriptor of a
# file that holds those bytes at the same offsets, or None when the file must be made for them.
_READ_BEFORE_MADE: dict[str, Callable[[int, int], int | None]] = {}


def read_before_made(path: str, read: Callable[[int, int], int | None]) -> None:
    """Have ContentReader ask `read(offset, size)` where to read a range of `path` before it makes or opens the
    file: a descriptor (which stays open until forget_made_on_read), or None."""
    _READ_BEFORE_MADE[path] = read


def forget_made_on_read() -> None:
    _MADE_ON_READ.clear()
    _READ_BEFORE_MADE.clear()


def open_content(path: str) -> int:
    """os.open(path, O_RDONLY), making the file first if it is one make_on_read named."""
    make = _MADE_ON_READ.get(path)
    if make is not None:
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
        early = None
        if _READ_BEFORE_MADE and (before := _READ_BEFORE_MADE.get(region.path)) is not None:
            early = before(region.offset, region.size)
        offset, remaining = region.offset, region.size
        while remaining > 0:
            # Looked up each time: a caller reading other files in between may have evicted it.
            block = os.pread(self._fd(region.path) if early is None else early, min(chunk, remaining), offset)
            if not block:
                raise OSError(f"{region.path}: truncated (wanted {remaining} more bytes at {offset})")
            offset += len(block)
            remaining -= len(block)
            yield block
