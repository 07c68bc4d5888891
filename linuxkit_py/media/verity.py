"""The dm-verity hash tree of a root image, computed in Python and appended to the image file.

The layout is the kernel's (Documentation/admin-guide/device-mapper/verity.rst) and `veritysetup format
--no-superblock`'s (cryptsetup, lib/verity/verity_hash.c): format version 1, sha256, 4096-byte data and
hash blocks. Every data block's digest is sha256(salt || block); the digests are packed 128 to a hash
block, the last one padded with zeros; each level is hashed the same way into the next, until one block
is left, whose sha256(salt || block) is the root hash. The levels are stored top first, right after the
data at a 4096-aligned offset, so one file (or partition) carries data and tree:

    | data blocks 0 .. N-1 | top level | ... | level 0 (hashes of the data blocks) |
    0                      hash_offset

No superblock: the kernel never reads one (the table gives every parameter), and stage one builds its
table from its stage1.conf and the kernel command line, which a signed UKI covers, rather than from
bytes on the medium. `veritysetup verify --no-superblock --hash-offset ... --data-blocks ... --salt ...`
checks the result. The salt is the sha256 of the data, so the same image gives the same tree.

Memory is bounded: one block per level is pending at a time, the data is read once for the salt and
once for the tree.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

VERITY_VERSION = 1  # the kernel table's <version>: salt prepended, hash blocks zero-padded
HASH_ALGORITHM = "sha256"
DIGEST_SIZE = 32
BLOCK_SIZE = 4096  # data and hash block size
DIGESTS_PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE  # 128
SECTOR = 512  # the table counts the data device in 512-byte sectors
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class VerityTree:
    """What a dm-verity table needs to open the image (sizes and offsets in bytes unless named blocks)."""

    root_hash: str  # hex
    salt: str  # hex
    data_blocks: int  # data size / BLOCK_SIZE
    hash_offset: int  # where the tree starts in the file; data_blocks * BLOCK_SIZE
    hash_blocks: int  # the tree's size in blocks

    @property
    def hash_start_block(self) -> int:
        """The table's <hash_start_block>: the tree's offset in hash blocks."""
        return self.hash_offset // BLOCK_SIZE

    def table(self, data_device: str, hash_device: str) -> str:
        """The device-mapper table line (`dmsetup create --table`) of the verity target."""
        return (f"0 {self.data_blocks * BLOCK_SIZE // SECTOR} verity {VERITY_VERSION} {data_device} {hash_device} "
                f"{BLOCK_SIZE} {BLOCK_SIZE} {self.data_blocks} {self.hash_start_block} {HASH_ALGORITHM} "
                f"{self.root_hash} {self.salt}")


def level_sizes(data_blocks: int) -> list[int]:
    """The number of hash blocks of each level, level 0 (the data's hashes) first; [] for one data block
    (its hash is the root hash). As cryptsetup's hash_levels()."""
    sizes: list[int] = []
    blocks = data_blocks
    while blocks > 1:
        blocks = -(-blocks // DIGESTS_PER_BLOCK)
        sizes.append(blocks)
    return sizes


def _digest(salt: bytes, block: bytes | memoryview) -> bytes:
    digest = hashlib.sha256(salt)
    digest.update(block)
    return digest.digest()


class _Level:
    """One level being built: collects digests, writes each full hash block at its place and passes its
    digest on to the next level (`emit`)."""

    def __init__(self, out: BinaryIO, offset: int, salt: bytes, emit: Callable[[bytes], None]) -> None:
        self._out, self._offset, self._salt, self._emit = out, offset, salt, emit
        self._pending: list[bytes] = []

    def add(self, digest: bytes) -> None:
        self._pending.append(digest)
        if len(self._pending) == DIGESTS_PER_BLOCK:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        block = b"".join(self._pending).ljust(BLOCK_SIZE, b"\0")
        self._pending = []
        self._out.seek(self._offset)
        self._out.write(block)
        self._offset += BLOCK_SIZE
        self._emit(_digest(self._salt, block))


def content_salt(path: Path, size: int) -> bytes:
    """The salt: the sha256 of the first `size` bytes of `path` (the data), so it follows the content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = size
        while remaining and (chunk := f.read(min(READ_CHUNK, remaining))):
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.digest()


def append_verity_tree(path: Path, salt: bytes | None = None) -> VerityTree:
    """Pad the image at `path` with zeros to a whole number of blocks and append its hash tree; the
    salt is `content_salt` unless given (tests compare with veritysetup's for the same salt)."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: an empty image has no dm-verity tree")
    data_blocks = -(-size // BLOCK_SIZE)
    hash_offset = data_blocks * BLOCK_SIZE
    os.truncate(path, hash_offset)  # zeros up to the block boundary: part of the verified data
    if salt is None:
        salt = content_salt(path, hash_offset)
    sizes = level_sizes(data_blocks)
    # The levels' places: the top level right at hash_offset, level 0 last.
    offsets = [hash_offset + sum(sizes[i + 1:]) * BLOCK_SIZE for i in range(len(sizes))]
    roots: list[bytes] = []
    with open(path, "r+b") as out, open(path, "rb") as data:
        levels: list[_Level] = []
        emit: Callable[[bytes], None] = roots.append
        for offset in reversed(offsets):  # top first, so each level can pass to the one above it
            level = _Level(out, offset, salt, emit)
            levels.insert(0, level)
            emit = level.add
        remaining = hash_offset
        while remaining:
            chunk = data.read(min(READ_CHUNK, remaining))
            remaining -= len(chunk)
            view = memoryview(chunk)
            for start in range(0, len(chunk), BLOCK_SIZE):
                emit(_digest(salt, view[start:start + BLOCK_SIZE]))
        for level in levels:  # bottom up: each partial block goes up before the level above closes
            level.flush()
        out.truncate(hash_offset + sum(sizes) * BLOCK_SIZE)
    (root,) = roots
    return VerityTree(root_hash=root.hex(), salt=salt.hex(), data_blocks=data_blocks, hash_offset=hash_offset,
                      hash_blocks=sum(sizes))
