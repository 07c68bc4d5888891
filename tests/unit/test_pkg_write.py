"""oci/write.py: images we build, written into the cache deterministically and readable by umoci/skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
from pathlib import Path

import pytest

from linuxkit_py.archive.entry import Entry, FileRegion, Kind, read_data
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.cache.image import load_cached_image
from linuxkit_py.cache.layers import layer_entries, layers_dir
from linuxkit_py.cache.layout import Cache
from linuxkit_py.cache.write import write_image, write_index
from linuxkit_py.errors import UserError

EPOCH = 1492533000
REF = "docker.io/linuxkit-py/test:0123"


def entries(tmp_path: Path) -> list[Entry]:
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 8000)
    return [
        Entry("bin", Kind.DIR, 0o755),
        Entry("bin/tool", Kind.FILE, 0o755, size=big.stat().st_size, data=FileRegion(str(big), 0, big.stat().st_size)),
        Entry("bin/sh", Kind.SYMLINK, 0o777, linkname="tool"),
        Entry("etc", Kind.DIR, 0o755),
        Entry("etc/hostname", Kind.FILE, 0o644, size=4, data=b"box\n"),
    ]


CONFIG = {"Entrypoint": ["/bin/tool"], "Labels": {"org.mobyproject.config": '{"pid":"host"}'}}


def test_same_entries_give_the_same_image_in_any_cache(tmp_path: Path) -> None:
    first = write_image(Cache(tmp_path / "a"), [entries(tmp_path)], arch="amd64", config=CONFIG, epoch=EPOCH, ref=REF)
    second = write_image(Cache(tmp_path / "b"), [entries(tmp_path)], arch="amd64", config=CONFIG, epoch=EPOCH,
                         ref=REF)
    assert first.digest == second.digest
    for name in ("index.json", f"blobs/sha256/{first.digest.split(':')[1]}"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = write_image(Cache(tmp_path / "c"), [entries(tmp_path)], arch="amd64", config=CONFIG, epoch=EPOCH + 1)
    assert other.digest != first.digest


def test_layer_is_gzip_of_write_tar_with_mtime_zero(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    image = write_image(cache, [entries(tmp_path)], arch="amd64", config=CONFIG, epoch=EPOCH, ref=REF)
    [layer] = image.layers
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    blob = cache.blob_path(layer["digest"]).read_bytes()
    assert blob[4:8] == b"\0\0\0\0"  # gzip MTIME (RFC 1952 2.3.1)
    expected = io.BytesIO()
    write_tar(entries(tmp_path), expected, EPOCH)
    assert gzip.decompress(blob) == expected.getvalue()
    assert image.config == {
        "architecture": "amd64", "os": "linux", "config": CONFIG,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(expected.getvalue()).hexdigest()]},
    }
    # the uncompressed layer is already where a build looks for it
    assert (layers_dir(cache) / f"{layer['digest'].split(':')[1]}.tar").read_bytes() == expected.getvalue()
    assert not [p for p in layers_dir(cache).iterdir() if p.suffix == ".tmp"]


def test_the_cache_and_umoci_read_it_back(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    image = write_image(cache, [entries(tmp_path)], arch="amd64", config=CONFIG, epoch=EPOCH, ref=REF)
    loaded = load_cached_image(cache, REF, "amd64")
    assert loaded == image
    got = {e.path: e for e in layer_entries(cache, image.layers[0], image.config["rootfs"]["diff_ids"][0])}
    assert read_data(got["etc/hostname"].data) == b"box\n"
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{cache.root}:{REF}", str(bundle)],
                   check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    assert (rootfs / "bin" / "tool").read_bytes() == (tmp_path / "big").read_bytes()
    assert (rootfs / "bin" / "sh").readlink() == Path("tool")
    assert (rootfs / "etc" / "hostname").read_text() == "box\n"
    inspect = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{cache.root}:{REF}"], check=True,
                                        capture_output=True).stdout)
    assert inspect["Digest"] == image.digest
    assert inspect["Labels"] == CONFIG["Labels"]


def test_an_index_names_one_image_per_arch(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    amd = write_image(cache, [entries(tmp_path)], arch="amd64", config=CONFIG, epoch=EPOCH)
    arm = write_image(cache, [entries(tmp_path)[:1]], arch="arm64", config=CONFIG, epoch=EPOCH)
    assert cache.get_ref(REF) is None  # without a ref only blobs are written
    digest = write_index(cache, REF, [amd, arm])
    assert cache.get_ref(REF)["digest"] == digest  # type: ignore[index]
    assert load_cached_image(cache, REF, "amd64").digest == amd.digest  # type: ignore[union-attr]
    assert load_cached_image(cache, REF, "arm64").digest == arm.digest  # type: ignore[union-attr]
    with pytest.raises(UserError, match="no image for linux/riscv64"):
        load_cached_image(cache, REF, "riscv64")
