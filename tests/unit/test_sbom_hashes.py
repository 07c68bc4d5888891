"""The SBOM's file hashes are looked up one layer tar at a time, each table let go after its tar."""

from __future__ import annotations

import hashlib
from pathlib import Path

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.cache.filehashes import KnownFileHashes, hash_layer_files, sbom_hashes_path
from linuxkit_py.cache.layout import Cache
from linuxkit_py.rootfs.sbom import _files, _HashCache


def _region(tar: Path, data: bytes, offset: int) -> FileRegion:
    return FileRegion(str(tar), offset, len(data))


def test_hashes_by_tar_give_the_files_in_path_order_and_keep_no_table(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    layers = cache.derived_dir / "layers"
    layers.mkdir(parents=True)
    a, b = layers / "a.tar", layers / "b.tar"
    a.write_bytes(b"one" + b"three")
    b.write_bytes(b"two")
    entries = [  # paths interleave the tars
        Entry("x/3", Kind.FILE, 0o644, size=5, data=_region(a, b"three", 3), source="img-a"),
        Entry("x/2", Kind.FILE, 0o644, size=3, data=_region(b, b"two", 0), source="img-b"),
        Entry("x", Kind.DIR, 0o755),
        Entry("x/1", Kind.FILE, 0o644, size=3, data=_region(a, b"one", 0), source="img-a"),
        Entry("x/0", Kind.FILE, 0o644, size=4, data=b"host", source=""),
    ]
    hashes = _HashCache(cache)
    files = _files(entries, hashes)
    sources = [e.source for e in files.regular]
    expected = {"x/0": b"host", "x/1": b"one", "x/2": b"two", "x/3": b"three"}
    assert [f[0] for f in files] == ["./x/0", "./x/1", "./x/2", "./x/3"]
    for name, _, sha1, sha256 in files:
        content = expected[name.removeprefix("./")]
        assert (sha1, sha256) == (hashlib.sha1(content).hexdigest(), hashlib.sha256(content).hexdigest())
    assert sources == ["", "img-a", "img-b", "img-a"]  # of each file, in the same order
    assert hashes.loaded == {} and hashes.dirty == set()  # every table saved and let go
    assert sbom_hashes_path(cache, str(a)).is_file() and sbom_hashes_path(cache, str(b)).is_file()
    a.write_bytes(b"XXX" + b"XXXXX")  # the next build takes the hashes from the saved tables
    assert list(_files(entries, _HashCache(cache))) == list(files)


def test_verification_codes_are_spdxs_sha1_of_the_sorted_hex_sha1s(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    contents = [f"file {i}".encode() * (i % 7 + 1) for i in range(600)]  # every first byte of a SHA1, most
    entries = [Entry(f"f/{i:04d}", Kind.FILE, 0o644, size=len(c), data=c) for i, c in enumerate(contents)]
    table = _files(entries, _HashCache(cache))
    sha1s = [hashlib.sha1(c).hexdigest() for c in contents]
    assert table.verification_code(range(len(table))) == {
        "packageVerificationCodeValue": hashlib.sha1("".join(sorted(sha1s)).encode()).hexdigest()}
    some = [3, 599, 17, 250]
    assert table.verification_code(some)["packageVerificationCodeValue"] == \
        hashlib.sha1("".join(sorted(sha1s[i] for i in some)).encode()).hexdigest()
    assert [table.file_id(i) for i in some] == [table[i][1] for i in some] == list(table.file_ids(some))


def test_a_damaged_row_of_a_saved_table_is_hashed_again(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    layers = cache.derived_dir / "layers"
    layers.mkdir(parents=True)
    tar = layers / "a.tar"
    tar.write_bytes(b"one")
    entries = [Entry("x/1", Kind.FILE, 0o644, size=3, data=_region(tar, b"one", 0))]
    _files(entries, _HashCache(cache))  # saves the table
    path = sbom_hashes_path(cache, str(tar))
    path.write_text('{"0:3": ["not hex", "zz"]}')
    assert _files(entries, _HashCache(cache))[0][2:] == (hashlib.sha1(b"one").hexdigest(),
                                                          hashlib.sha256(b"one").hexdigest())


def test_the_initrds_identical_file_check_takes_sha256s_from_the_tables_rows(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    layers = cache.derived_dir / "layers"
    layers.mkdir(parents=True)
    tar = layers / "a.tar"
    tar.write_bytes(b"one" + b"three")
    one, three = _region(tar, b"one", 0), _region(tar, b"three", 3)
    hash_layer_files(cache, tar, [Entry("x/1", Kind.FILE, 0o644, size=3, data=one),
                                  Entry("x/3", Kind.FILE, 0o644, size=5, data=three)])
    absent = FileRegion(str(tar), 1, 2)  # no row
    elsewhere = FileRegion(str(layers / "b.tar"), 0, 3)  # no table
    assert KnownFileHashes(cache).sha256s([three, absent, one, elsewhere]) == {
        one: hashlib.sha256(b"one").digest(), three: hashlib.sha256(b"three").digest()}
    table = sbom_hashes_path(cache, str(tar))
    table.write_bytes(table.read_bytes().replace(hashlib.sha256(b"one").hexdigest().encode(), b"x" * 64))
    assert KnownFileHashes(cache).sha256s([one, three]) == {three: hashlib.sha256(b"three").digest()}  # damaged row
