"""LinuxKit's build command lines, end to end from a cache of test images (issue 10): global options before the
verb, `--o`, `--input-tar` reusing an earlier tar's unchanged sections, `--decompress-kernel`."""

from __future__ import annotations

import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from tests.bootimages import LayoutImage, load_layout_into_cache
from tests.imagetools import D, F, ImageSpec, Layout, tar_layer
from tests.integration.conftest import BUSYBOX_REF, INIT_REF, KERNEL_REF, TOOLS_REF, fill_cache, run_cli
from tests.integration.test_build import SPEC, write_spec

SIMPLE = f"""\
kernel:
  image: {KERNEL_REF}
  cmdline: "console=ttyS0"
init:
  - {INIT_REF}
onboot:
  - name: hello
    image: {BUSYBOX_REF}
services:
  - name: tools
    image: {TOOLS_REF}
files:
  - path: etc/marker
    contents: "first build"
  - path: etc/linuxkit.yml
    metadata: yaml
"""


def tar_build(cache: Path, spec: Path, output: Path, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return run_cli("-v", "1", "--cache", cache, "build", "-f", "tar", "--o", output, *args, spec, stdin=b"")


def test_global_cache_before_the_verb_and_linuxkits_o(tmp_path: Path, warm_cache: Path) -> None:
    spec = write_spec(tmp_path, SIMPLE)
    linuxkit = run_cli("--cache", warm_cache, "build", "-format", "tar", "--o", tmp_path / "a.tar", spec)
    ours = run_cli("build", "--cache", warm_cache, "-f", "tar", "-o", tmp_path / "b.tar", spec)
    assert (linuxkit.returncode, ours.returncode) == (0, 0), linuxkit.stderr.decode()
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    # The verb's own --cache wins over the global one.
    again = run_cli("--cache", tmp_path / "empty", "build", "--cache", warm_cache, "--o", tmp_path / "c.tar", spec)
    assert again.returncode == 0, again.stderr.decode()
    assert (tmp_path / "c.tar").read_bytes() == (tmp_path / "a.tar").read_bytes()


def test_input_tar_reuses_the_unchanged_sections_without_their_images(tmp_path: Path, warm_cache: Path) -> None:
    first = tmp_path / "first.tar"
    assert tar_build(warm_cache, write_spec(tmp_path, SIMPLE, "first.yml"), first).returncode == 0
    changed = write_spec(tmp_path, SIMPLE.replace("first build", "second build"), "second.yml")

    # An empty cache and no registry: every image section must come from first.tar.
    reused = tar_build(tmp_path / "empty-cache", changed, tmp_path / "reused.tar", "--input-tar", first)
    fresh = tar_build(warm_cache, changed, tmp_path / "fresh.tar")

    assert reused.returncode == 0, reused.stderr.decode()
    assert fresh.returncode == 0, fresh.stderr.decode()
    assert (tmp_path / "reused.tar").read_bytes() == (tmp_path / "fresh.tar").read_bytes()
    copied = [line for line in reused.stderr.decode().splitlines() if line.startswith("Copy ")]
    assert copied == [f"Copy init[0] files from input tar: {INIT_REF}",
                      f"Copy kernel files from input tar: {KERNEL_REF}",
                      f"Copy onboot[0] files from input tar: {BUSYBOX_REF}",
                      f"Copy services[0] files from input tar: {TOOLS_REF}"]


def test_input_tar_builds_changed_sections_again(tmp_path: Path, warm_cache: Path) -> None:
    first = tmp_path / "first.tar"
    assert tar_build(warm_cache, write_spec(tmp_path, SPEC, "first.yml"), first).returncode == 0
    text = SPEC.replace('["/bin/echo", "first"]', '["/bin/echo", "changed"]').replace("marker from", "new marker")
    changed = write_spec(tmp_path, text.replace('cmdline: "console=ttyS0 quiet"', 'cmdline: "console=ttyS0"'),
                         "second.yml")

    reused = tar_build(warm_cache, changed, tmp_path / "reused.tar", "--input-tar", first)
    fresh = tar_build(warm_cache, changed, tmp_path / "fresh.tar")

    assert (reused.returncode, fresh.returncode) == (0, 0), reused.stderr.decode()
    assert (tmp_path / "reused.tar").read_bytes() == (tmp_path / "fresh.tar").read_bytes()
    copied = [line.split()[1] for line in reused.stderr.decode().splitlines() if line.startswith("Copy ")]
    # The kernel's cmdline and onboot[0] changed; the bundles of onboot[1] and of the tools containers share
    # their image's copy with another bundle: built again. The volumes have their own copies.
    assert copied == ["init[0]", "volume[0]", "volume[1]"]


def test_input_tar_without_metadata_reuses_nothing(tmp_path: Path, warm_cache: Path) -> None:
    spec = write_spec(tmp_path, SIMPLE.replace("  - path: etc/linuxkit.yml\n    metadata: yaml\n", ""))
    first = tmp_path / "first.tar"
    assert tar_build(warm_cache, spec, first).returncode == 0
    again = tar_build(warm_cache, spec, tmp_path / "again.tar", "--input-tar", first)
    assert again.returncode == 0
    assert "Copy " not in again.stderr.decode()
    assert (tmp_path / "again.tar").read_bytes() == first.read_bytes()


def test_decompress_kernel_writes_the_uncompressed_kernel(tmp_path: Path, warm_cache: Path) -> None:
    spec = write_spec(tmp_path, SIMPLE)
    plain = run_cli("build", "--cache", warm_cache, "--dir", tmp_path / "plain", spec)
    decompressed = run_cli("build", "--cache", warm_cache, "--dir", tmp_path / "out", "--decompress-kernel", spec)
    assert (plain.returncode, decompressed.returncode) == (0, 0), decompressed.stderr.decode()

    bzimage = (tmp_path / "plain" / "system-kernel").read_bytes()
    vmlinux = (tmp_path / "out" / "system-kernel").read_bytes()
    setup_sects = bzimage[0x1F1]
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    end = offset + (setup_sects + 1) * 512 + length
    assert bzimage[0x202:0x206] == b"HdrS"
    assert vmlinux[:4] == b"\x7fELF"
    assert len(vmlinux) == struct.unpack_from("<I", bzimage, end - 4)[0]  # the size the kernel's build appended
    header = subprocess.run(["readelf", "-h", tmp_path / "out" / "system-kernel"], capture_output=True, text=True)
    assert "Advanced Micro Devices X86-64" in header.stdout
    initrds = [(tmp_path / d / "system-initrd.img").read_bytes() for d in ("plain", "out")]
    assert initrds[0] == initrds[1]  # only the kernel changes


# -- --input-tar with init images whose apk databases are merged (LinuxKit's test 060_input_tar) -----------

APK_DBS = {"a": "P:alpha\nV:1\n", "b": "P:beta\nV:2\n", "c": "P:gamma\nV:3\n"}


def apk_ref(name: str) -> str:
    return f"localhost:5000/test/apk-{name}:1"


@pytest.fixture
def apk_cache(tmp_path: Path, kernel_image: LayoutImage, init_image: LayoutImage, container_layout: Path) -> Path:
    """The test images plus three init images with an apk database each."""
    cache_dir = tmp_path / "apk-cache"
    fill_cache(cache_dir, kernel_image, init_image, container_layout)
    layout = Layout(tmp_path / "apk-layout")
    for name, db in APK_DBS.items():
        layout.add_image(name, ImageSpec(layers=[tar_layer(
            D("lib"), D("lib/apk"), D("lib/apk/db"), F("lib/apk/db/installed", db), D("etc"), F(f"etc/{name}", name))]))
        load_layout_into_cache(layout.root, name, Cache(cache_dir), apk_ref(name))
    return cache_dir


def with_inits(*names: str, command: str = "hello") -> str:
    inits = "".join(f"  - {apk_ref(n)}\n" for n in names)
    text = SIMPLE.replace(f"  - {INIT_REF}\n", f"  - {INIT_REF}\n{inits}")
    entry = f"    image: {BUSYBOX_REF}\n    command: [\"/bin/echo\", \"{command}\"]"
    return text.replace(f"    image: {BUSYBOX_REF}", entry)


def test_input_tar_extends_the_merged_apk_database(tmp_path: Path, apk_cache: Path) -> None:
    first = tmp_path / "first.tar"
    assert tar_build(apk_cache, write_spec(tmp_path, with_inits("a", "b"), "first.yml"), first).returncode == 0
    # As LinuxKit's test: one init image added at the end, one onboot entry changed.
    changed = write_spec(tmp_path, with_inits("a", "b", "c", command="changed"), "second.yml")

    reused = tar_build(apk_cache, changed, tmp_path / "reused.tar", "--input-tar", first)
    fresh = tar_build(apk_cache, changed, tmp_path / "fresh.tar")

    assert (reused.returncode, fresh.returncode) == (0, 0), reused.stderr.decode()
    assert (tmp_path / "reused.tar").read_bytes() == (tmp_path / "fresh.tar").read_bytes()
    copied = [line.split()[1] for line in reused.stderr.decode().splitlines() if line.startswith("Copy ")]
    assert copied == ["init[0]", "init[1]", "init[2]", "kernel", "services[0]"]
    with tarfile.open(tmp_path / "reused.tar") as tar:
        db = tar.extractfile("lib/apk/db/installed")
        assert db is not None and db.read() == "".join(f"{text}\n\n" for text in APK_DBS.values()).encode()


def test_input_tar_rebuilds_every_init_image_when_the_merged_database_changes(tmp_path: Path,
                                                                             apk_cache: Path) -> None:
    first = tmp_path / "first.tar"
    assert tar_build(apk_cache, write_spec(tmp_path, with_inits("a", "b"), "first.yml"), first).returncode == 0
    changed = write_spec(tmp_path, with_inits("c", "b"), "second.yml")

    reused = tar_build(apk_cache, changed, tmp_path / "reused.tar", "--input-tar", first)
    fresh = tar_build(apk_cache, changed, tmp_path / "fresh.tar")

    assert (reused.returncode, fresh.returncode) == (0, 0), reused.stderr.decode()
    assert (tmp_path / "reused.tar").read_bytes() == (tmp_path / "fresh.tar").read_bytes()
    copied = [line.split()[1] for line in reused.stderr.decode().splitlines() if line.startswith("Copy ")]
    assert copied == ["kernel", "onboot[0]", "services[0]"]
