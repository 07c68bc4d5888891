"""The persisted member index of an unpacked layer (`<cache>/linuxkit-py/layers/<hex>.json`, cache/layers.py) and of
a tar inside one (`<hex>.<offset>-<size>.json`): each member as a JSON row, offsets into the layer's tar, and the
size of that tar, so that a stale index is never used. Decoded indexes are kept for the rest of the process.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from linuxkit_py.archive.entry import Entry, FileRegion, Kind, share_fields
from linuxkit_py.fsutil import replace_synced

INDEX_VERSION = 1
DEFERRED_SIZE = -2  # the tar size load_entry_index takes for a layer left packed
# The tar paths of layers left packed (cache/layers.py, defer_layer): their indexes are taken as they are.
PACKED_TARS: set[str] = set()


_KIND_CODES = {kind: kind.value for kind in Kind}
_KINDS_BY_CODE = {kind.value: kind for kind in Kind}


def _encode(entry: Entry) -> list[Any]:
    offset = entry.data.offset if isinstance(entry.data, FileRegion) else -1
    xattrs = [[name, base64.b64encode(value).decode()] for name, value in entry.xattrs]
    return [entry.path, _KIND_CODES[entry.kind], entry.mode, entry.uid, entry.gid, entry.size, entry.linkname,
            entry.devmajor, entry.devminor, offset, entry.mtime, xattrs, entry.uname, entry.gname,
            entry.source, entry.location]


def _decode(row: list[Any], tar_path: str, one: Callable[[int, int], int]) -> Entry:
    (path, kind, mode, uid, gid, size, linkname, devmajor, devminor, offset, mtime, xattrs, uname, gname,
     source, location) = row
    # No generator for the usual empty xattrs: a quarter faster, on tens of thousands of rows per image. `one`
    # gives one object per distinct mode and size (JSON makes an object of each; an int above 256 is 28 bytes),
    # share_fields one tuple per distinct owner, time, link target and origin.
    size = one(size, size)
    return Entry.made(path, _KINDS_BY_CODE[kind], one(mode, mode), size,
                      FileRegion(tar_path, offset, size) if offset >= 0 else None,
                      share_fields((uid, gid, linkname, devmajor, devminor, mtime,
                                    tuple([(name, base64.b64decode(value)) for name, value in xattrs]) if xattrs
                                    else (), source, location, uname, gname)))


# Indexes this process has decoded, by (index path, its size, mtime and inode, the tar's size): a build
# loads each layer's index while unpacking all images, then again when flattening each one.
_DECODED: dict[tuple[str, int, int, int, int], list[Entry]] = {}


def forget_decoded_indexes(tars: Iterable[str] | None = None) -> None:
    """Let the decoded indexes go (of the layers whose tars are `tars`, or all): once a build has assembled its
    root filesystem it places no layer again, and on a 230,000-entry image they hold 46 MiB of entries nothing
    else uses."""
    if tars is None:
        _DECODED.clear()
        return
    indexes = {str(Path(tar).with_suffix(".json")) for tar in tars}
    for memo in [memo for memo in _DECODED if memo[0] in indexes]:
        del _DECODED[memo]


def load_entry_index(index_path: Path, tar_path: Path) -> list[Entry] | None:
    """The persisted entries, or None when missing, stale or unreadable (then it is rebuilt). The index of a
    layer left packed (defer_layer) is taken as it is: its tar is checked against it once it is made."""
    try:
        st = index_path.stat()
        try:
            tar_size = tar_path.stat().st_size
        except FileNotFoundError:
            if str(tar_path) not in PACKED_TARS:
                return None
            tar_size = DEFERRED_SIZE
        memo = (str(index_path), st.st_size, st.st_mtime_ns, st.st_ino, tar_size)
        if memo in _DECODED:
            return list(_DECODED[memo])
        doc = json.loads(index_path.read_bytes())
        if doc.get("version") != INDEX_VERSION or tar_size != DEFERRED_SIZE and doc.get("tar_size") != tar_size:
            return None
        tar = str(tar_path)
        shared: dict[int, int] = {}
        one = shared.setdefault
        entries = [_decode(row, tar, one) for row in doc["entries"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    _DECODED[memo] = entries
    return list(entries)


def save_entry_index(index_path: Path, tar_path: Path, entries: list[Entry]) -> None:
    doc = {"version": INDEX_VERSION, "tar_size": tar_path.stat().st_size,
           "entries": [_encode(e) for e in entries]}
    replace_synced(index_path, iter([json.dumps(doc, separators=(",", ":")).encode()]))
