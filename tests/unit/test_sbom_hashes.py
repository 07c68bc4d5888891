"""The SBOM's file hashes are looked up one layer tar at a time, each table let go after its tar."""

from __future__ import annotations

import hashlib
from pathlib import Path

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.cache.filehashes import sbom_hashes_path
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
    files, sources = _files(entries, hashes)
    expected = {"x/0": b"host", "x/1": b"one", "x/2": b"two", "x/3": b"three"}
    assert [f[0] for f in files] == ["./x/0", "./x/1", "./x/2", "./x/3"]
    for name, _, sha1, sha256 in files:
        content = expected[name.removeprefix("./")]
        assert (sha1, sha256) == (hashlib.sha1(content).hexdigest(), hashlib.sha256(content).hexdigest())
    assert sources == ["", "img-a", "img-b", "img-a"]  # of each file, in the same order
    assert hashes.loaded == {} and hashes.dirty == set()  # every table saved and let go
    assert sbom_hashes_path(cache, str(a)).is_file() and sbom_hashes_path(cache, str(b)).is_file()
    a.write_bytes(b"XXX" + b"XXXXX")  # the next build takes the hashes from the saved tables
    assert _files(entries, _HashCache(cache))[0] == files
