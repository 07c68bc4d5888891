"""Layer blobs -> uncompressed tars + persisted entry indexes in the cache."""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from linuxkit_py.archive.entry import Entry, FileRegion, Kind, read_data
from linuxkit_py.cache.filehashes import sbom_hashes_path
from linuxkit_py.cache.layers import layer_entries, layers_dir, unpack_layers, unpacked_layer
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from tests.imagetools import D, F, H, L, Member, digest_of, tar_layer

LAYER = tar_layer(D("etc"), F("etc/hostname", "box\n"), F("etc/big", b"x" * 300_000, mode=0o600),
                  L("etc/link", "hostname"), H("etc/hard", "etc/hostname"))
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _store(cache: Cache, blob: bytes, media_type: str) -> dict[str, Any]:
    cache.ensure()
    return {"mediaType": media_type, "digest": cache.put_blob(blob), "size": len(blob)}


def _summary(entries: list[Entry]) -> list[tuple[str, Kind, int, str, bytes]]:
    return [(e.path, e.kind, e.mode, e.linkname, read_data(e.data)) for e in entries]


EXPECTED = [
    ("etc", Kind.DIR, 0o755, "", b""),
    ("etc/hostname", Kind.FILE, 0o644, "", b"box\n"),
    ("etc/big", Kind.FILE, 0o600, "", b"x" * 300_000),
    ("etc/link", Kind.SYMLINK, 0o777, "hostname", b""),
    ("etc/hard", Kind.HARDLINK, 0o644, "etc/hostname", b""),
]


@pytest.mark.parametrize(("media_type", "compress"), [
    (OCI_GZIP, lambda d: gzip.compress(d, mtime=0)),
    (OCI_ZSTD, lambda d: zstandard.ZstdCompressor().compress(d)),
    (OCI_TAR, lambda d: d),
    (DOCKER_GZIP, lambda d: gzip.compress(d, mtime=0)),
    ("application/octet-stream", lambda d: zstandard.ZstdCompressor().compress(d)),  # magic decides
    (OCI_TAR, lambda d: gzip.compress(d, mtime=0)),  # mislabelled: the gzip magic wins
])
def test_layer_entries_reads_every_compression(tmp_path: Path, media_type: str, compress: Any) -> None:
    cache = Cache(tmp_path / "cache")
    layer = _store(cache, compress(LAYER), media_type)
    assert _summary(layer_entries(cache, layer)) == EXPECTED
    tar = unpacked_layer(cache, layer)
    assert tar == layers_dir(cache) / (layer["digest"].split(":")[1] + ".tar")
    assert tar.read_bytes() == LAYER


def test_multi_member_gzip_layer(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    half = len(LAYER) // 2
    blob = gzip.compress(LAYER[:half], mtime=0) + gzip.compress(LAYER[half:], mtime=0)
    layer = _store(cache, blob, OCI_GZIP)
    assert _summary(layer_entries(cache, layer)) == EXPECTED


def test_warm_call_uses_the_index_without_reading_the_blob_or_the_tar(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    layer = _store(cache, gzip.compress(LAYER, mtime=0), OCI_GZIP)
    first = layer_entries(cache, layer)
    index = layers_dir(cache) / (layer["digest"].split(":")[1] + ".json")
    assert json.loads(index.read_bytes())["entries"]
    cache.blob_path(layer["digest"]).unlink()
    tar = unpacked_layer(cache, layer)
    # Break every tar header (keeping the size): only a re-parse would notice.
    raw = bytearray(tar.read_bytes())
    raw[0:512] = bytes(512)
    tar.write_bytes(bytes(raw))
    assert [e.path for e in layer_entries(cache, layer)] == [e.path for e in first]


def test_stale_index_is_rebuilt(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    layer = _store(cache, LAYER, OCI_TAR)
    layer_entries(cache, layer)
    index = layers_dir(cache) / (layer["digest"].split(":")[1] + ".json")
    index.write_text("{not json")
    assert _summary(layer_entries(cache, layer)) == EXPECTED
    assert json.loads(index.read_bytes())["version"] == 1


def test_no_temporary_files_left(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    layer = _store(cache, gzip.compress(LAYER, mtime=0), OCI_GZIP)
    layer_entries(cache, layer)
    hexdigest = layer["digest"].split(":")[1]
    assert sorted(p.name for p in layers_dir(cache).iterdir()) == sorted(
        [f"{hexdigest}.tar", f"{hexdigest}.json", f"{hexdigest}.lock"])


@pytest.mark.parametrize(("blob", "media_type", "message"), [
    (gzip.compress(LAYER, mtime=0)[:-100], OCI_GZIP, "is corrupt: Compressed file ended"),
    (zstandard.ZstdCompressor().compress(LAYER)[:-50], OCI_ZSTD, "is corrupt: zstd stream truncated"),
    (b"\x1f\x8b\x08\x00" + bytes(40), OCI_GZIP, "is corrupt"),
    (LAYER, OCI_GZIP, "is corrupt: its media type application/vnd.oci.image.layer.v1.tar+gzip says gzip"),
    (LAYER[:2000], OCI_TAR, "not a valid tar archive: truncated"),
])
def test_corrupt_layer_is_a_user_error_naming_the_digest(tmp_path: Path, blob: bytes, media_type: str,
                                                         message: str) -> None:
    cache = Cache(tmp_path / "cache")
    layer = _store(cache, blob, media_type)
    with pytest.raises(UserError) as err:
        layer_entries(cache, layer)
    assert f"layer {layer['digest']}" in str(err.value)
    assert message in str(err.value)
    assert not any(p.suffix == ".tmp" for p in layers_dir(cache).iterdir())


def test_diff_id_mismatch_is_refused(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    layer = _store(cache, gzip.compress(LAYER, mtime=0), OCI_GZIP)
    wrong = digest_of(b"something else")
    with pytest.raises(UserError, match=f"the image config says {wrong}"):
        layer_entries(cache, layer, wrong)
    assert not (layers_dir(cache) / (layer["digest"].split(":")[1] + ".tar")).exists()
    assert _summary(layer_entries(cache, layer, digest_of(LAYER))) == EXPECTED


def test_missing_blob(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cache.ensure()
    layer = {"mediaType": OCI_GZIP, "digest": digest_of(b"nothing"), "size": 7}
    with pytest.raises(UserError, match=f"layer {layer['digest']} is missing from the cache"):
        layer_entries(cache, layer)


def _unpack_in_process(args: tuple[str, dict[str, Any]]) -> list[str]:
    root, layer = args
    return [e.path for e in layer_entries(Cache(Path(root)), layer)]


def test_concurrent_builds_share_one_unpacked_layer(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    big = tar_layer(*[F(f"f{i}", bytes([i % 256]) * 20_000) for i in range(300)])
    layer = _store(cache, gzip.compress(big, mtime=0), OCI_GZIP)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_unpack_in_process, [(str(cache.root), layer)] * 4)
    assert all(r == [f"f{i}" for i in range(300)] for r in results)
    assert unpacked_layer(cache, layer).read_bytes() == big
    assert not any(p.suffix == ".tmp" for p in layers_dir(cache).iterdir())


def test_unpack_layers_in_parallel_gives_what_layer_entries_gives(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    other = tar_layer(*[F(f"f{i}", bytes([i]) * 5_000) for i in range(50)])
    first = _store(cache, gzip.compress(LAYER, mtime=0), OCI_GZIP)
    second = _store(cache, zstandard.ZstdCompressor().compress(other), OCI_ZSTD)
    got = unpack_layers(cache, [(first, digest_of(LAYER)), (second, digest_of(other)), (first, None)], workers=2)
    assert set(got) == {first["digest"], second["digest"]}  # the repeated layer is unpacked once
    assert _summary(got[first["digest"]]) == EXPECTED
    assert [(e.path, read_data(e.data)) for e in got[second["digest"]]] == [
        (f"f{i}", bytes([i]) * 5_000) for i in range(50)]
    assert unpacked_layer(cache, second).read_bytes() == other


def test_unpack_layers_reports_the_corrupt_layer(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    good = _store(cache, gzip.compress(LAYER, mtime=0), OCI_GZIP)
    bad = _store(cache, gzip.compress(LAYER, mtime=0)[:-100], OCI_GZIP)
    with pytest.raises(UserError, match=f"layer {bad['digest']} is corrupt"):
        unpack_layers(cache, [(good, None), (bad, None)], workers=2)
    assert not any(p.suffix == ".tmp" for p in layers_dir(cache).iterdir())


def test_the_index_gives_back_every_field_of_every_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    xattr = Member("etc/caps", "file", b"c", 0o755, 7, 8, pax={"SCHILY.xattr.security.capability": "\x01\x02",
                                                               "uname": "seven", "gname": "eight"})
    blob = tar_layer(D("etc"), xattr, F("etc/plain", "p"), Member("dev-null", "char", devmajor=1, devminor=3),
                     L("etc/link", "plain"), H("etc/hard", "etc/plain"))
    layer = _store(cache, blob, OCI_TAR)
    parsed = layer_entries(cache, layer)  # cold: read from the tar, then indexed
    assert parsed[1].xattrs and parsed[1].uname == "seven"
    assert layer_entries(cache, layer) == parsed  # warm: decoded from the index


def test_unpacking_with_hash_files_keeps_the_sbom_hashes_of_every_file(tmp_path: Path) -> None:
    """A cold build hashes each layer's files for the SBOM as the layer is unpacked (hash_files=True);
    the SBOM then reads those hashes instead of the files: they must be the files' real checksums."""
    cache = Cache(tmp_path / "cache")
    layers = [_store(cache, gzip.compress(LAYER, mtime=0), OCI_GZIP),
              _store(cache, gzip.compress(tar_layer(F("a", b"y" * 2_500_000), F("empty", b"")), mtime=0), OCI_GZIP)]
    unpacked = unpack_layers(cache, [(layer, None) for layer in layers], workers=2, hash_files=True)
    for layer in layers:
        tar = unpacked_layer(cache, layer)
        table = json.loads(sbom_hashes_path(cache, str(tar)).read_bytes())
        files = [e for e in unpacked[layer["digest"]] if e.kind is Kind.FILE and isinstance(e.data, FileRegion)]
        assert files and len(table) == len(files)
        for entry in files:
            data = read_data(entry.data)
            assert table[f"{entry.data.offset}:{entry.data.size}"] == [  # type: ignore[union-attr]
                hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest()], entry.path
    # without hash_files (a build with --no-sbom, or one whose --cache-from brings the hashes) none is made
    other = Cache(tmp_path / "other")
    layer = _store(other, gzip.compress(LAYER, mtime=0), OCI_GZIP)
    unpack_layers(other, [(layer, None)])
    assert not sbom_hashes_path(other, str(unpacked_layer(other, layer))).exists()


def test_a_tar_inside_a_layer_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel image's kernel.tar (a tar inside the layer) is indexed once, beside the layer's own index."""
    import linuxkit_py.cache.layerindex as layerindex
    import linuxkit_py.cache.layers as layers
    from linuxkit_py.archive.tarindex import read_tar_region

    inner = tar_layer(D("lib"), F("lib/a.ko", b"a" * 5000), F("lib/b.ko", b"b" * 70_000), L("lib/c", "a.ko"))
    cache = Cache(tmp_path / "cache")
    layer = _store(cache, gzip.compress(tar_layer(F("kernel", b"k" * 1000), F("kernel.tar", inner)), mtime=0),
                   OCI_GZIP)
    (region,) = [e.data for e in layer_entries(cache, layer) if e.path == "kernel.tar"]
    assert isinstance(region, FileRegion)
    first = layers.region_entries(cache, region, "kernel.tar")
    assert [(e.path, e.kind, read_data(e.data)) for e in first] == [
        (e.path, e.kind, read_data(e.data)) for e in read_tar_region(region, "kernel.tar")]
    assert (layers_dir(cache) / f"{Path(region.path).stem}.{region.offset}-{region.size}.json").is_file()

    def no_parsing(*_: object) -> None:
        raise AssertionError("parsed again")
    monkeypatch.setattr(layers, "read_tar_region", no_parsing)
    layerindex._DECODED.clear()
    assert layers.region_entries(cache, region, "kernel.tar") == first


def _big_layer(first: Member) -> bytes:
    """A layer of about 12 MiB (many 1 MiB chunks as it is inflated) and 3,000 members after `first`."""
    return tar_layer(first, *[F(f"d/f{i}", bytes([i % 251]) * (i % 9000)) for i in range(3000)],
                     F("d/big", bytes(range(256)) * 4096 * 2))


def test_a_cold_layer_is_indexed_while_it_is_written(tmp_path: Path) -> None:
    """The index made while the tar is inflated (on a second thread, from the growing file) is the index of
    the finished tar, and the one kept for the next build."""
    from linuxkit_py.archive.tarindex import read_tar_entries

    cache = Cache(tmp_path / "cache")
    blob = _big_layer(D("d"))
    layer = _store(cache, gzip.compress(blob, mtime=0), OCI_GZIP)
    entries = layer_entries(cache, layer, digest_of(blob))
    tar = unpacked_layer(cache, layer)
    assert tar.read_bytes() == blob
    assert entries == read_tar_entries(tar, "again")
    assert len(entries) == 3002
    hexdigest = layer["digest"].split(":")[1]
    assert sorted(p.name for p in layers_dir(cache).iterdir()) == sorted(
        [f"{hexdigest}.tar", f"{hexdigest}.json", f"{hexdigest}.lock"])


def test_a_member_refused_early_stops_the_unpacking_and_leaves_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    layer = _store(cache, gzip.compress(_big_layer(F("../escape", b"x")), mtime=0), OCI_GZIP)
    with pytest.raises(UserError, match=r"refusing tar entry '\.\./escape': its path leaves the root"):
        layer_entries(cache, layer)
    assert [p.name for p in layers_dir(cache).iterdir()] == [layer["digest"].split(":")[1] + ".lock"]


def _kernel_layer_left_packed(tmp_path: Path, region_tar_size: int | None = None, modules: int = 5000,
                              kernel_size: int | None = None) -> tuple[Cache, dict[str, Any], FileRegion]:
    """A kernel image's layer indexed (with its kernel.tar's index) and then removed, as `--cache-from` brings
    the indexes of a layer whose tar this machine never made; left packed (defer_layer). `kernel_size`: what
    the index says of the kernel's size."""
    import linuxkit_py.cache.layerindex as layerindex
    import linuxkit_py.cache.layers as layers

    inner = tar_layer(D("lib"), F("lib/a.ko", b"a" * 5000), F("lib/b.ko", random.Random(1).randbytes(modules)))
    cache = Cache(tmp_path / "cache")
    layer = _store(cache, gzip.compress(tar_layer(F("kernel", b"k" * 1000), F("kernel.tar", inner)), mtime=0),
                   OCI_GZIP)
    (region,) = [e.data for e in layer_entries(cache, layer) if e.path == "kernel.tar"]
    assert isinstance(region, FileRegion)
    layers.region_entries(cache, region, "kernel.tar")
    tar = Path(region.path)
    region_index = tar.with_name(f"{tar.stem}.{region.offset}-{region.size}.json")
    if region_tar_size is not None:
        doc = json.loads(region_index.read_bytes())
        doc["tar_size"] = region_tar_size
        region_index.write_text(json.dumps(doc))
    if kernel_size is not None:
        index = tar.with_suffix(".json")
        doc = json.loads(index.read_bytes())
        assert doc["entries"][0][0] == "kernel"
        doc["entries"][0][5] = kernel_size
        index.write_text(json.dumps(doc))
    tar.unlink()
    layerindex._DECODED.clear()
    assert layers.defer_layer(cache, layer, None)
    return cache, layer, region


def test_a_packed_kernel_layer_places_its_modules_without_decompressing_and_is_prefetched(tmp_path: Path) -> None:
    import linuxkit_py.cache.layers as layers

    cache, layer, region = _kernel_layer_left_packed(tmp_path)
    try:
        modules = layers.region_entries(cache, region, "kernel.tar")  # from the kernel.tar's index alone
        assert [e.path for e in modules] == ["lib", "lib/a.ko", "lib/b.ko"]
        assert not Path(region.path).exists()
        thread = layers.prefetch_deferred_layer(cache, layer)
        assert thread is not None
        thread.join()
        assert Path(region.path).is_file()  # decompressed meanwhile, its diff and sizes checked
        (ko,) = [e for e in modules if e.path == "lib/a.ko"]
        assert read_data(ko.data) == b"a" * 5000
        assert layers.prefetch_deferred_layer(cache, {**layer, "digest": "sha256:" + "0" * 64}) is None
    finally:
        layers.forget_deferred_layers()


def _every_reader_fails(cache: Cache, layer: dict[str, Any], name: str | None, read: Callable[[], object],
                        error: str) -> None:
    """The prefetch of `layer` (of its file `name`) fails quietly, and then `read()` fails with `error`, twice."""
    import linuxkit_py.cache.layers as layers

    thread = layers.prefetch_deferred_layer(cache, layer, name)
    assert thread is not None
    thread.join()  # it failed quietly: the error is the readers'
    for _ in range(2):
        with pytest.raises(UserError, match=error):
            read()


def test_a_packed_layer_s_kernel_is_read_from_the_head_of_its_tar(tmp_path: Path) -> None:
    """The kernel before a large kernel.tar: reading it decompresses the blob up to the kernel's end only, and
    makes no tar; the modules' bytes make it after all, and both are the layer's."""
    import linuxkit_py.cache.layers as layers

    cache, layer, region = _kernel_layer_left_packed(tmp_path, modules=1 << 20)
    try:
        (kernel,) = [e for e in layer_entries(cache, layer) if e.path == "kernel"]
        thread = layers.prefetch_deferred_layer(cache, layer, "kernel")
        assert thread is not None
        thread.join()
        assert read_data(kernel.data) == b"k" * 1000
        assert not Path(region.path).exists()  # nor its 1 MiB: only the head was decompressed, into memory
        (ko,) = [e for e in layers.region_entries(cache, region, "kernel.tar") if e.path == "lib/b.ko"]
        assert read_data(ko.data) == random.Random(1).randbytes(1 << 20)
        assert Path(region.path).is_file()
        assert read_data(kernel.data) == b"k" * 1000
    finally:
        layers.forget_deferred_layers()


def test_a_kernel_where_the_index_says_none_is_fails_every_reader(tmp_path: Path) -> None:
    """An index (from --cache-from) whose kernel is a byte longer than the tar's: the head's headers tell, and every
    reader gets one line naming the layer; the index is removed, so the next build indexes the layer itself."""
    import linuxkit_py.cache.layers as layers

    cache, layer, region = _kernel_layer_left_packed(tmp_path, modules=1 << 20, kernel_size=1001)
    try:
        (kernel,) = [e for e in layer_entries(cache, layer) if e.path == "kernel"]
        assert isinstance(kernel.data, FileRegion)
        data = kernel.data
        _every_reader_fails(cache, layer, "kernel", lambda: read_data(data),
                            rf"^layer {layer['digest']}: its index \(from --cache-from\) places a 1001-byte file at "
                            rf"byte {data.offset} of its tar, which has none there \(hint: the index was removed: "
                            r"build again\)$")
        assert not Path(region.path).with_suffix(".json").exists()
        assert not Path(region.path).exists()
    finally:
        layers.forget_deferred_layers()


def test_a_packed_layer_whose_inner_index_does_not_fit_fails_every_reader(tmp_path: Path) -> None:
    """A kernel.tar index of a tar of another size (a cache pushed by a broken builder): the prefetch finds it,
    and then every reader of the layer gets the error, naming the layer and the index, which is removed."""
    import linuxkit_py.cache.layers as layers
    from linuxkit_py.archive.entry import open_content

    cache, layer, region = _kernel_layer_left_packed(tmp_path, region_tar_size=512)
    try:
        _every_reader_fails(cache, layer, None, lambda: open_content(region.path),
                            rf"^layer {layer['digest']}: the index of the tar at {region.offset}-{region.size} in it "
                            r"\(from --cache-from\) is of a 512-byte tar, the layer's is \d+ bytes \(hint: the index "
                            r"was")
        tar = Path(region.path)
        assert not tar.with_name(f"{tar.stem}.{region.offset}-{region.size}.json").exists()
    finally:
        layers.forget_deferred_layers()
