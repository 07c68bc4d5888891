"""The SHA1 and SHA256 of the files of each unpacked layer tar, kept for the SBOM (rootfs/sbom.py) and for the
initrd's identical-file check, and shared with other builders by `--cache-to` (registry/buildcache.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.fsutil import atomic_output

CHUNK = 1 << 20
# a row of a table as hash_layer_files writes it (compact JSON): "offset:size":["sha1","sha256"]
_ROW = re.compile(rb'"([0-9]+:[0-9]+)":\["[0-9a-f]{40}","([0-9a-f]{64})"\]')


def sbom_hashes_path(cache: Cache, tar_path: str) -> Path:
    """Where rootfs/sbom.py keeps the SHA1/SHA256 of the files of the unpacked layer tar `tar_path`."""
    return cache.derived_dir / "sbom" / (hashlib.sha256(tar_path.encode()).hexdigest()[:32] + ".json")


def hash_layer_files(cache: Cache, tar_path: Path, entries: list[Entry]) -> None:
    """SHA1 and SHA256 of every regular file of an unpacked layer, kept where rootfs/sbom.py looks for
    them (offset:size -> [sha1, sha256]), unless they are there already.

    Run while other layers are still being unpacked (`unpack_layers(hash_files=True)`), the hashing of a
    cold build's SBOM uses the cores that inflating and indexing leave idle. Only a speed-up: a table
    that cannot be written is left to the SBOM, which hashes what it does not find.
    """
    target = sbom_hashes_path(cache, str(tar_path))
    if target.exists():
        return
    table: dict[str, list[str]] = {}
    with open(tar_path, "rb", buffering=0) as f:
        fd = f.fileno()
        for entry in entries:
            data = entry.data
            if entry.kind is not Kind.FILE or not isinstance(data, FileRegion):
                continue
            sha1, sha256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
            offset, left = data.offset, data.size
            while left > 0:
                chunk = os.pread(fd, min(CHUNK, left), offset)
                if not chunk:
                    return  # shorter than its index says: the SBOM reads it and reports it
                sha1.update(chunk)
                sha256.update(chunk)
                offset += len(chunk)
                left -= len(chunk)
            table[f"{data.offset}:{data.size}"] = [sha1.hexdigest(), sha256.hexdigest()]
    with contextlib.suppress(OSError, UserError), atomic_output(target) as out:
        out.write(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())


class KnownFileHashes:
    """The SHA256s of regions of unpacked layer tars, from the SBOM's tables of those layers (hash_layer_files;
    fetched by `--cache-from`), without reading the files. Each table is loaded, looked up and let go: at 10x the
    tables of all layers would be 70 MiB."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    def sha256s(self, regions: list[FileRegion]) -> dict[FileRegion, bytes]:
        """The SHA256s the tables give of `regions`. A table's rows are scanned, not decoded: decoded, the
        table of a big layer is 8 MiB of objects, for the few files looked up in it."""
        by_tar: dict[str, dict[bytes, FileRegion]] = {}
        for region in regions:
            by_tar.setdefault(region.path, {})[b"%d:%d" % (region.offset, region.size)] = region
        known: dict[FileRegion, bytes] = {}
        for path, wanted in by_tar.items():
            try:
                raw = sbom_hashes_path(self._cache, path).read_bytes()
            except OSError:
                continue
            for row in _ROW.finditer(raw):
                if (found := wanted.get(row[1])) is not None:
                    known[found] = bytes.fromhex(row[2].decode())
        return known
