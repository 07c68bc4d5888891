"""The boot-test OCI images: what they contain, skopeo reads them, and they load into a Cache."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

from linuxkit_py.cache.image import load_cached_image
from linuxkit_py.cache.layout import Cache
from tests.bootimages import INIT_SCRIPT, KERNEL_MODULES, LayoutImage
from tests.debian import DebianKernel


def layer_tar(cache: Cache, image_ref: str) -> tarfile.TarFile:
    image = load_cached_image(cache, image_ref, "amd64")
    assert image is not None
    [layer] = image.layers
    return tarfile.open(fileobj=io.BytesIO(gzip.decompress(cache.read_blob(layer["digest"]))))


def member_bytes(layer: tarfile.TarFile, name: str) -> bytes:
    f = layer.extractfile(name)
    assert f is not None, f"{name} is not a regular file"
    return f.read()


def test_kernel_image_holds_the_bzimage_and_a_modules_tar(
    kernel_image: LayoutImage, debian_kernel: DebianKernel, tmp_path: Path
) -> None:
    cache = Cache(tmp_path / "cache")
    descriptor = kernel_image.load_into(cache, "test/kernel:1")

    assert descriptor["digest"] == kernel_image.digest
    with layer_tar(cache, "test/kernel:1") as layer:
        assert layer.getnames() == ["kernel", "kernel.tar"]
        assert member_bytes(layer, "kernel") == debian_kernel.bzimage.read_bytes()
        with tarfile.open(fileobj=io.BytesIO(member_bytes(layer, "kernel.tar"))) as kernel_tar:
            files = [m.name for m in kernel_tar if m.isfile()]
    prefix = f"lib/modules/{debian_kernel.version}/"
    assert sorted(files) == sorted(prefix + rel for rel in
                                   (*KERNEL_MODULES, "modules.builtin", "modules.builtin.modinfo"))


def test_init_image_holds_busybox_and_an_executable_init(
    init_image: LayoutImage, busybox_static: Path, tmp_path: Path
) -> None:
    cache = Cache(tmp_path / "cache")
    init_image.load_into(cache, "test/init:1")
    init_image.load_into(cache, "test/init:1")  # loading again is harmless

    with layer_tar(cache, "test/init:1") as layer:
        init = layer.getmember("init")
        assert (init.isfile(), init.mode) == (True, 0o755)
        assert member_bytes(layer, "init").decode() == INIT_SCRIPT
        sh = layer.getmember("bin/sh")
        assert (sh.issym(), sh.linkname) == (True, "busybox")
        assert member_bytes(layer, "bin/busybox") == busybox_static.read_bytes()
    assert [name for name, _ in cache.refs()] == ["test/init:1"]


def test_skopeo_reads_both_layouts(kernel_image: LayoutImage, init_image: LayoutImage) -> None:
    for image in (kernel_image, init_image):
        out = subprocess.run(["skopeo", "inspect", f"oci:{image.layout}:{image.tag}"],
                             check=True, capture_output=True).stdout
        doc = json.loads(out)
        assert (doc["Architecture"], doc["Os"], doc["Digest"]) == ("amd64", "linux", image.digest)
