"""Reusing deflated blocks across builds: same bytes as without the cache, less work when warm."""

from __future__ import annotations

import gzip
import io
import os
import random
from pathlib import Path

from linuxkit_py.archive.blockcache import DeflateBlockCache
from linuxkit_py.archive.compress import ParallelGzipWriter
from linuxkit_py.archive.cpio import write_cpio
from linuxkit_py.archive.entry import Entry, Kind

BLOCK = 64 * 1024


def _data(seed: int = 1, size: int = 600_000) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghij /\n", k=rng.randint(3, 12))) for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) if rng.random() < 0.9 else rng.randbytes(64)
    return bytes(out[:size])


def _gzip(data: bytes, cache: DeflateBlockCache | None, level: int = 5) -> bytes:
    buf = io.BytesIO()
    writer = ParallelGzipWriter(buf, level, block_size=BLOCK, threads=2, block_cache=cache)
    for i in range(0, len(data), 10_000):
        writer.write(data[i : i + 10_000])
    writer.close()
    return buf.getvalue()


def _files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def test_cold_and_warm_output_is_the_uncached_output(tmp_path: Path) -> None:
    data = _data()
    plain = _gzip(data, None)
    cache = DeflateBlockCache(tmp_path / "blocks")
    assert _gzip(data, cache) == plain
    stored = _files(tmp_path / "blocks")
    assert len(stored) == -(-len(data) // BLOCK)  # one file per block
    for path in (tmp_path / "blocks").rglob("*"):
        if path.is_file():
            os.utime(path, ns=(0, 0))
    assert _gzip(data, cache) == plain
    assert gzip.decompress(plain) == data
    after = _files(tmp_path / "blocks")
    assert after.keys() == stored.keys()  # nothing deflated again
    assert all(mtime > 0 for mtime in after.values())  # every block was used


def test_a_change_at_the_end_reuses_the_blocks_before_it(tmp_path: Path) -> None:
    data = _data()
    cache = DeflateBlockCache(tmp_path / "blocks")
    _gzip(data, cache)
    before = set(_files(tmp_path / "blocks"))
    changed = data[:-100] + b"x" * 100
    assert _gzip(changed, cache) == _gzip(changed, None)
    assert len(set(_files(tmp_path / "blocks")) - before) == 1  # only the last block is new


def test_a_damaged_block_is_a_miss_not_bad_output(tmp_path: Path) -> None:
    data = _data()
    plain = _gzip(data, None)
    cache = DeflateBlockCache(tmp_path / "blocks")
    _gzip(data, cache)
    paths = sorted(p for p in (tmp_path / "blocks").rglob("*") if p.is_file())
    paths[0].write_bytes(paths[0].read_bytes()[:-1])  # torn write
    damaged = bytearray(paths[1].read_bytes())
    damaged[-1] ^= 0xFF  # flipped bit
    paths[1].write_bytes(bytes(damaged))
    paths[2].write_bytes(b"")
    assert _gzip(data, cache) == plain
    assert _gzip(data, DeflateBlockCache(tmp_path / "blocks")) == plain  # and they were rewritten


def test_levels_do_not_share_blocks(tmp_path: Path) -> None:
    data = _data()
    cache = DeflateBlockCache(tmp_path / "blocks")
    _gzip(data, cache, level=5)
    assert _gzip(data, cache, level=1) == _gzip(data, None, level=1)


def test_least_recently_used_blocks_are_trimmed_beyond_the_cap(tmp_path: Path) -> None:
    blocks = tmp_path / "blocks"
    _gzip(_data(seed=1), DeflateBlockCache(blocks))
    old = set(_files(blocks))
    for path in blocks.rglob("*"):
        if path.is_file():
            os.utime(path, (1, 1))
    size = sum(p.stat().st_size for p in blocks.rglob("*") if p.is_file())
    cache = DeflateBlockCache(blocks, max_bytes=int(size * 1.5))
    _gzip(_data(seed=2), cache)
    left = set(_files(blocks))
    assert sum(p.stat().st_size for p in blocks.rglob("*") if p.is_file()) <= cache.max_bytes
    assert left - old and not old <= left  # new blocks kept, old ones went first


def test_an_unwritable_cache_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "blocks").write_text("a file where the directory should be")
    data = _data()
    assert _gzip(data, DeflateBlockCache(tmp_path / "blocks")) == _gzip(data, None)


def _cpio_gz(entries: list[Entry], cache: DeflateBlockCache, marks: bool = True) -> bytes:
    buf = io.BytesIO()
    writer = ParallelGzipWriter(buf, threads=2, block_cache=cache)
    if marks:
        write_cpio(entries, writer, 0)
    else:
        class NoMarks:  # the same writer, not told where members start
            write = writer.write
        write_cpio(entries, NoMarks(), 0)
    writer.close()
    return buf.getvalue()


def _tree(grow: int = 0) -> list[Entry]:
    rng = random.Random(7)
    entries = [Entry("lib", Kind.DIR, 0o755)]
    for i in range(400):
        body = _data(seed=i, size=rng.randint(4_000, 60_000))
        if i == 150:
            body += b"x" * grow  # the edited file, about a third of the way in
        entries.append(Entry(f"lib/mod{i:04d}.ko", Kind.FILE, 0o644, size=len(body), data=body))
    return entries


def test_an_edit_in_the_middle_rebuilds_only_the_blocks_around_it(tmp_path: Path) -> None:
    """A member that grows moves every later byte; cuts at member starts keep the later blocks."""
    cache = DeflateBlockCache(tmp_path / "blocks")
    first = _cpio_gz(_tree(), cache)
    before = set(_files(tmp_path / "blocks"))
    assert len(before) >= 20
    edited = _cpio_gz(_tree(grow=100), cache)
    new = set(_files(tmp_path / "blocks")) - before
    assert 1 <= len(new) <= 2
    assert gzip.decompress(edited) != gzip.decompress(first)
    # The same edit with fixed-size blocks only: every block after it is new.
    fixed = DeflateBlockCache(tmp_path / "fixed")
    _cpio_gz(_tree(), fixed, marks=False)
    fixed_before = set(_files(tmp_path / "fixed"))
    _cpio_gz(_tree(grow=100), fixed, marks=False)
    assert len(set(_files(tmp_path / "fixed")) - fixed_before) > len(fixed_before) // 2


def test_cuts_at_member_starts_do_not_depend_on_the_thread_count(tmp_path: Path) -> None:
    outputs = set()
    for threads in (1, 3):
        buf = io.BytesIO()
        writer = ParallelGzipWriter(buf, threads=threads)
        write_cpio(_tree(), writer, 0)
        writer.close()
        outputs.add(buf.getvalue())
    assert len(outputs) == 1
