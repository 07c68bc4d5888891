"""Flattened images, kept.

An image's flattened root filesystem is a pure function of its layers (each named by its digest) and of
this tool's code: rootfs/flatten.py keeps it under `derived/flat/<key>.marshal`, so that a warm build
loads one file per image instead of every layer's index and the overlay of them. marshal: the quickest
load there is for rows of plain values, and the file is this machine's own, made by this same Python
(the key names the tool's code and Python version; a file another machine wrote is never read, and a
damaged or torn one fails its CRC-32 and is a miss).
"""

from __future__ import annotations

import marshal
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.archive.tarindex import DEFAULT_MAX_ENTRIES, MAX_ENTRIES_ENV, env_limit
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.fsutil import replace_unsynced

FLAT_MAGIC = b"LKPYFLT1"
_FLAT_HEADER = struct.Struct("<8sII")  # magic, CRC-32 of the payload, its length
_KIND_CODES = {kind: kind.value for kind in Kind}
_KINDS_BY_CODE = {kind.value: kind for kind in Kind}


def flat_memo_path(cache: Cache, key: str) -> Path:
    return cache.derived_dir / "flat" / f"{key}.marshal"


def save_flat_memo(path: Path, entries: list[Entry], tars: list[str], counts: list[int]) -> None:
    """Keep the flattened `entries` of an image whose layers are the unpacked `tars` (each with `counts`
    members); nothing is kept when an entry holds bytes outside those tars, or the cache cannot be written."""
    index = {tar: i for i, tar in enumerate(tars)}
    # one object per distinct mode and size, which marshal then writes once and loads as one (an int above 256
    # is otherwise an object of its own: 13 MiB at 230k files); the entries' shared fields are shared tuples
    # already (archive/entry.py, share_fields), which marshal writes once each too
    share: dict[int, int] = {}
    one = share.setdefault
    rows = []
    for e in entries:
        data = e.data
        if data is None:
            where, offset = -1, -1
        elif isinstance(data, FileRegion) and data.path in index and data.size == e.size:
            where, offset = index[data.path], data.offset
        else:
            return
        rows.append((e.path, _KIND_CODES[e.kind], one(e.mode, e.mode), one(e.size, e.size), where, offset,
                     e.shared_fields))
    try:
        sizes = [os.stat(tar).st_size for tar in tars]
        payload = marshal.dumps((list(zip(tars, sizes, strict=True)), counts, rows), 4)
        path.parent.mkdir(parents=True, exist_ok=True)
        # no fsync: a lost or torn file is a miss
        replace_unsynced(path, _FLAT_HEADER.pack(FLAT_MAGIC, zlib.crc32(payload), len(payload)), payload)
    except OSError:
        return


def load_flat_memo(path: Path, tars: list[str], layers: list[dict[str, Any]]) -> list[Entry] | None:
    """The entries save_flat_memo kept for these layers, or None when there are none, they are damaged, or a
    tar is not the size it was. A layer over the entry limit (lowered since it was indexed) is refused."""
    try:
        data = path.read_bytes()
        magic, crc, length = _FLAT_HEADER.unpack_from(data)
        payload = memoryview(data)[_FLAT_HEADER.size:]
        if magic != FLAT_MAGIC or length != len(payload) or zlib.crc32(payload) != crc:
            return None
        kept, counts, rows = marshal.loads(payload)
        if [tar for tar, _ in kept] != tars or any(os.stat(tar).st_size != size for tar, size in kept):
            return None
    except (OSError, ValueError, EOFError, TypeError, struct.error):
        return None
    limit = env_limit(MAX_ENTRIES_ENV, DEFAULT_MAX_ENTRIES)
    for count, layer in zip(counts, layers, strict=True):
        if count > limit:
            raise UserError(f"layer {layer['digest']}: more than {limit} entries (set by {MAX_ENTRIES_ENV}); "
                            "refusing it")
    kinds = _KINDS_BY_CODE
    made = Entry.made
    return [made(path_, kinds[kind], mode, size, FileRegion(tars[where], offset, size) if where >= 0 else None,
                 shared)
            for (path_, kind, mode, size, where, offset, shared) in rows]
