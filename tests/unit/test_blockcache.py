"""Reusing deflated blocks across builds: same bytes as without the cache, less work when warm."""

from __future__ import annotations

import gzip
import io
import os
import random
import zlib
from pathlib import Path

import pytest

from linuxkit_py.archive.blockcache import CachedBlock, DeflateBlockCache
from linuxkit_py.archive.compress import ParallelGzipWriter, crc32_combine, crc32_combine_python
from linuxkit_py.archive.cpio import write_cpio
from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.formats.initrd import write_initrd

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


def test_a_build_larger_than_the_cap_keeps_its_own_blocks(tmp_path: Path) -> None:
    """Trimming never removes what this build used or wrote: an initrd bigger than the cap stays warm."""
    blocks, data = tmp_path / "blocks", _data(seed=1)
    cold = _gzip(data, DeflateBlockCache(blocks, max_bytes=1))
    stored = set(_files(blocks))
    assert len(stored) > 3  # all kept, though over the cap
    for path in blocks.rglob("*"):
        if path.is_file():
            os.utime(path, (1, 1))  # as if written by an earlier build
    assert _gzip(data, DeflateBlockCache(blocks, max_bytes=1)) == cold
    assert set(_files(blocks)) == stored  # every block found again (none new) and kept
    for path in blocks.rglob("*"):
        if path.is_file():
            os.utime(path, (1, 1))
    _gzip(_data(seed=2), DeflateBlockCache(blocks, max_bytes=1))
    left = set(_files(blocks))
    assert left and not left & stored  # another build's blocks, not used by this one, went


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


# -- blocks keyed by the regions they are cut from ------------------------------------------------


def _layer(directory: Path, seed: int = 3, files: int = 120) -> tuple[Path, list[tuple[int, int]]]:
    """A stand-in for an unpacked layer tar: file bodies back to back, and (offset, size) of each."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    bodies = [_data(seed=seed * 1000 + i, size=rng.randint(2_000, 40_000)) for i in range(files)]
    path = directory / f"{seed:064x}.tar"
    path.write_bytes(b"".join(bodies))
    spans, offset = [], 0
    for body in bodies:
        spans.append((offset, len(body)))
        offset += len(body)
    return path, spans


def _layer_tree(layer: Path, spans: list[tuple[int, int]], config: bytes = b"{}",
                host: Path | None = None) -> list[Entry]:
    entries = [Entry("usr", Kind.DIR, 0o755)]
    for i, (offset, size) in enumerate(spans):
        entries.append(Entry(f"usr/f{i:03d}", Kind.FILE, 0o644, size=size,
                             data=FileRegion(str(layer), offset, size)))
        if i == len(spans) // 2:  # a generated file in the middle, as config.json is
            entries.append(Entry("usr/config.json", Kind.FILE, 0o644, size=len(config), data=config))
    if host is not None:
        size = host.stat().st_size
        entries.append(Entry("etc/motd", Kind.FILE, 0o644, size=size, data=FileRegion(str(host), 0, size)))
    return entries


def _initrd(entries: list[Entry], cache: DeflateBlockCache | None) -> bytes:
    buf = io.BytesIO()
    write_initrd(entries, buf, 0, threads=2, block_cache=cache)
    return buf.getvalue()


def test_blocks_of_content_addressed_regions_are_found_without_reading_them(tmp_path: Path) -> None:
    layers = tmp_path / "layers"
    layer, spans = _layer(layers)
    entries = _layer_tree(layer, spans)
    plain = _initrd(entries, None)
    cache = DeflateBlockCache(tmp_path / "blocks", content_addressed=[layers])
    assert _initrd(entries, cache) == plain
    assert gzip.decompress(plain)[:6] == b"070701"
    stored = set(_files(tmp_path / "blocks"))
    layer.write_bytes(bytes(layer.stat().st_size))  # its bytes are not read again: every block is a hit
    assert _initrd(entries, cache) == plain
    assert set(_files(tmp_path / "blocks")) == stored


def test_an_edit_rebuild_gives_the_bytes_of_a_build_from_an_empty_cache(tmp_path: Path) -> None:
    layers = tmp_path / "layers"
    layer, spans = _layer(layers)
    host = tmp_path / "motd.txt"
    host.write_text("welcome\n")
    cache = DeflateBlockCache(tmp_path / "blocks", content_addressed=[layers])
    _initrd(_layer_tree(layer, spans, host=host), cache)
    before = set(_files(tmp_path / "blocks"))
    # a generated file that grows, in the middle
    edited = _layer_tree(layer, spans, config=b'{"args": ["/bin/sleep", "3600"]}', host=host)
    assert _initrd(edited, cache) == _initrd(edited, None)
    assert 1 <= len(set(_files(tmp_path / "blocks")) - before) <= 3
    # a host file (not content-addressed) changed in place, same size and mtime: its new bytes
    st = host.stat()
    host.write_text("WELCOME\n")
    os.utime(host, ns=(st.st_atime_ns, st.st_mtime_ns))
    rebuilt = _initrd(_layer_tree(layer, spans, host=host), cache)
    assert rebuilt == _initrd(_layer_tree(layer, spans, host=host), None)
    assert gzip.decompress(rebuilt).count(b"WELCOME\n") == 1
    # a region of a file outside the content-addressed directories is read, never keyed by place
    other, other_spans = _layer(tmp_path / "elsewhere", seed=5)
    _initrd(_layer_tree(other, other_spans), cache)
    other.write_bytes(bytes(reversed(other.read_bytes())))
    assert _initrd(_layer_tree(other, other_spans), cache) == _initrd(_layer_tree(other, other_spans), None)


@pytest.mark.parametrize("damage", ["flipped payload byte", "flipped header byte", "truncated", "empty",
                                    "copied from another block"])
def test_a_corrupt_block_file_never_reaches_the_output(tmp_path: Path, damage: str) -> None:
    layers = tmp_path / "layers"
    layer, spans = _layer(layers)
    entries = _layer_tree(layer, spans)
    plain = _initrd(entries, None)
    cache = DeflateBlockCache(tmp_path / "blocks", content_addressed=[layers])
    _initrd(entries, cache)
    paths = sorted(p for p in (tmp_path / "blocks").rglob("*") if p.is_file())
    assert len(paths) >= 3
    for i, path in enumerate(paths):
        data = bytearray(path.read_bytes())
        if damage == "flipped payload byte":
            data[-1 - i % 50] ^= 0x01
        elif damage == "flipped header byte":
            data[8 + i % 40] ^= 0x01
        elif damage == "truncated":
            del data[len(data) // 2 :]
        elif damage == "empty":
            data.clear()
        else:
            data = bytearray(paths[(i + 1) % len(paths)].read_bytes())
        path.write_bytes(bytes(data))
    assert _initrd(entries, cache) == plain
    assert _initrd(entries, cache) == plain  # rewritten good on the way


def test_crc32_combine_is_the_crc_of_the_concatenation() -> None:
    rng = random.Random(11)
    for length in (0, 1, 7, 4096, 300_001, 1 << 20):
        a, b = rng.randbytes(rng.randint(0, 5000)), rng.randbytes(length)
        whole = zlib.crc32(a + b)
        assert crc32_combine_python(zlib.crc32(a), zlib.crc32(b), len(b)) == whole
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == whole


def test_a_region_is_keyed_by_its_file_not_by_where_the_cache_lives(tmp_path: Path) -> None:
    """Two builders' caches at different paths name the same unpacked layer alike: they share blocks (--cache-from)."""
    keys = []
    for machine in ("a", "b"):
        layer = tmp_path / machine / "cache" / "linuxkit-py" / "layers" / ("ab" * 32 + ".tar")
        layer.parent.mkdir(parents=True)
        layer.write_bytes(b"x" * 4096)
        keys.append(DeflateBlockCache.key(5, [b"dict"], [b"head", FileRegion(str(layer), 512, 1024)]))
    assert keys[0] == keys[1]
    other = DeflateBlockCache.key(5, [b"dict"], [b"head", FileRegion(str(tmp_path / "layers" / "cd.tar"), 512, 1024)])
    assert other != keys[0]


def test_a_shared_block_file_is_taken_only_whole_and_under_its_own_key(tmp_path: Path) -> None:
    source, target = DeflateBlockCache(tmp_path / "source"), DeflateBlockCache(tmp_path / "target")
    key, other = "1" * 64, "2" * 64
    source.put(key, CachedBlock(b"deflated", 1234, 5678))
    data = source.read_file(key)
    assert data is not None
    assert not target.put_file(other, data)  # copied under another key's name
    assert not target.put_file(key, data[:-1])  # torn
    assert not target.put_file(key, data[:-1] + bytes([data[-1] ^ 1]))  # damaged
    assert target.get(key) is None and target.get(other) is None
    assert target.put_file(key, data)
    assert target.get(key) == CachedBlock(b"deflated", 1234, 5678)


def _pack(tmp_path: Path, data: bytes) -> tuple[Path, dict[str, bytes]]:
    """The blocks of `data` as `build --cache-to` shares them: one tar of block files named by their keys."""
    from linuxkit_py.registry.buildcache import _items_tar

    source = DeflateBlockCache(tmp_path / "source")
    _gzip(data, source)
    files = {p.name: p.read_bytes() for p in (tmp_path / "source").glob("??/*")}
    blob = tmp_path / "items.tar"
    with open(blob, "wb") as f:
        _items_tar(files, files.get, f)
    return blob, files


def test_blocks_kept_in_their_pack_give_the_same_bytes_and_stay_one_file(tmp_path: Path) -> None:
    data = _data(seed=7)
    blob, files = _pack(tmp_path, data)
    cache = DeflateBlockCache(tmp_path / "blocks")
    assert sorted(cache.adopt_pack(blob, "abc")) == sorted(files)
    assert not blob.exists()  # moved, not copied
    assert [p.relative_to(tmp_path / "blocks").as_posix() for p in (tmp_path / "blocks").rglob("*") if p.is_file()] \
        == ["packs/abc.tar"]
    assert all(cache.has(key) and cache.read_file(key) == file for key, file in files.items())
    warm = DeflateBlockCache(tmp_path / "blocks")
    assert _gzip(data, warm) == _gzip(data, None)
    assert not list((tmp_path / "blocks").glob("??/*"))  # every block came from the pack: none deflated again


def test_a_pack_with_a_damaged_block_is_refused_whole(tmp_path: Path) -> None:
    blob, files = _pack(tmp_path, _data(seed=8))
    raw = bytearray(blob.read_bytes())
    raw[raw.index(files[sorted(files)[1]]) + 100] ^= 1  # one bit of the second block's payload
    blob.write_bytes(bytes(raw))
    cache = DeflateBlockCache(tmp_path / "blocks")
    with pytest.raises(ValueError, match=f"block {sorted(files)[1]} is damaged"):
        cache.adopt_pack(blob, "abc")
    assert not (tmp_path / "blocks").exists() and not any(cache.has(key) for key in files)


def test_an_unused_pack_is_trimmed_like_a_block_and_a_used_one_kept(tmp_path: Path) -> None:
    blocks = tmp_path / "blocks"
    for seed, name in ((9, "old"), (10, "used")):
        blob, _ = _pack(tmp_path, _data(seed=seed))
        DeflateBlockCache(blocks).adopt_pack(blob, name)
        os.utime(blocks / "packs" / f"{name}.tar", (1, 1))
    size = sum(p.stat().st_size for p in blocks.rglob("*") if p.is_file())
    cache = DeflateBlockCache(blocks, max_bytes=int(size * 0.6))
    _gzip(_data(seed=10), cache)  # reads every block of "used"
    cache.trim()
    assert sorted(p.name for p in (blocks / "packs").iterdir()) == ["used.tar"]


def test_a_build_that_deflates_many_blocks_packs_all_but_its_first(tmp_path: Path) -> None:
    """A cold build's hundreds of new blocks: OWN_FILES files, the rest one pack; a rebuild finds them all."""
    from linuxkit_py.archive.blockcache import OWN_FILES, pack_members

    data = _data(seed=11, size=(OWN_FILES + 20) * BLOCK)
    plain = _gzip(data, None)
    blocks = tmp_path / "blocks"
    assert _gzip(data, DeflateBlockCache(blocks)) == plain
    own = list(blocks.glob("??/*"))
    (pack,) = blocks.glob("packs/*")
    assert pack.suffix == ".tar" and len(own) == OWN_FILES
    assert len(pack_members(str(pack))) == -(-len(data) // BLOCK) - OWN_FILES
    before = {p: p.stat().st_size for p in blocks.rglob("*") if p.is_file()}
    assert _gzip(data, DeflateBlockCache(blocks)) == plain
    assert {p: p.stat().st_size for p in blocks.rglob("*") if p.is_file()} == before  # nothing deflated again


def test_a_pack_is_read_from_its_headers_and_anything_but_block_files_is_refused(tmp_path: Path) -> None:
    """pack_members reads the ustar headers alone (a cold build's 783 in a few ms) and gives what tarfile
    would; a member that is not a block file, a bad header checksum or a member cut short is refused."""
    import tarfile

    from linuxkit_py.archive.blockcache import pack_members

    blob, files = _pack(tmp_path, _data(seed=12))
    with tarfile.open(blob) as tar:
        assert pack_members(str(blob)) == [(m.name, m.offset_data, m.size) for m in tar]
    raw = blob.read_bytes()
    cases = {"checksum": bytearray(raw), "cut": bytearray(raw[: raw.index(files[sorted(files)[-1]]) + 10])}
    second = 512 + 512 * ((len(files[sorted(files)[0]]) + 511) // 512)
    cases["checksum"][second + 140] ^= 1  # a byte of the second header's mtime: only its checksum tells
    for case, data in cases.items():
        path = tmp_path / f"{case}.tar"
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match="unexpected member|cut short"):
            pack_members(str(path))
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(str(tmp_path / "checksum.tar"), "passwd")
    with pytest.raises(ValueError, match="unexpected member 'passwd'"):
        pack_members(str(other))
