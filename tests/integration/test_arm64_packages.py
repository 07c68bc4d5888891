"""Packages for another architecture on this amd64 host: arm64 .debs through a private apt state under the
cache (the host's apt untouched, no dpkg --add-architecture), a tag per architecture, and the one-line
errors for what cannot be built: an unknown --arch, a BIOS format on arm64, an amd64 binary in an arm64 image."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from linuxkit_py.cache.image import load_cached_image
from linuxkit_py.cache.layers import layer_entries
from linuxkit_py.cache.layout import Cache
from linuxkit_py.pkg.debs import debs_dir
from tests.debstore import DEB_STORE, link_files
from tests.integration.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
EM_AARCH64 = 183

@pytest.fixture
def cache(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    if DEB_STORE.is_dir():
        link_files(DEB_STORE, debs_dir(Cache(root)))
    return root


def _host_apt_snapshot() -> tuple[str, list[str]]:
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True,
                             check=True).stdout
    lists = sorted(p.name for p in Path("/var/lib/apt/lists").iterdir())
    return foreign, lists


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    return int.from_bytes(data[18:20], "little")


def test_pkg_build_for_arm64_uses_a_private_apt_state_and_leaves_the_hosts_apt_alone(cache: Path) -> None:
    before = _host_apt_snapshot()
    built = run_cli("pkg", "build", "--arch", "arm64", "--cache", cache, REPO / "pkg" / "init")
    assert built.returncode == 0, built.stderr.decode()
    name = built.stdout.decode().strip()

    assert _host_apt_snapshot() == before  # no foreign architecture, no new package lists on the host
    state = cache / "linuxkit-py" / "apt" / "arm64"
    assert any("binary-arm64_Packages" in p.name for p in (state / "state" / "lists").iterdir())
    assert "non-free-firmware" in (state / "sources.list").read_text()
    image = load_cached_image(Cache(cache), f"docker.io/{name}", "arm64")
    assert image is not None and image.config["architecture"] == "arm64"
    [busybox] = [e for layer in image.layers for e in layer_entries(Cache(cache), layer) if e.path == "bin/busybox"]
    with open(busybox.data.path, "rb") as f:  # type: ignore[union-attr]
        f.seek(busybox.data.offset)  # type: ignore[union-attr]
        assert _elf_machine(f.read(64)) == EM_AARCH64


def test_each_architecture_and_each_set_of_them_has_its_own_tag(cache: Path) -> None:
    tags = {}
    for arches in ("amd64", "arm64", "amd64,arm64", "linux/arm64"):
        shown = run_cli("pkg", "show-tag", "--arch", arches, "--cache", cache, REPO / "pkg" / "runc")
        assert shown.returncode == 0, shown.stderr.decode()
        tags[arches] = shown.stdout.decode().strip()
    assert tags["linux/arm64"] == tags["arm64"]  # LinuxKit's platform spelling
    assert len({tags["amd64"], tags["arm64"], tags["amd64,arm64"]}) == 3
    # a per-architecture directory names another package on each
    default = {arch: run_cli("pkg", "show-tag", "--arch", arch, "--cache", cache, REPO / "kernels" / "default")
               for arch in ("amd64", "arm64")}
    assert default["amd64"].stdout.decode().startswith("linuxkit-py/kernel-cloud-amd64:")
    assert default["arm64"].stdout.decode().startswith("linuxkit-py/kernel-rpi-arm64:")
    both = run_cli("pkg", "show-tag", "--arch", "amd64,arm64", "--cache", cache, REPO / "kernels" / "default")
    assert both.returncode == 1
    assert both.stderr.decode() == (
        f"linuxkit-py: {REPO / 'kernels' / 'default'}: amd64, arm64 are different packages here "
        f"({REPO / 'kernels' / 'cloud-amd64'}, {REPO / 'kernels' / 'rpi-arm64'}) "
        "(hint: build them one --arch at a time)\n")


def test_an_amd64_binary_in_an_arm64_image_is_refused_naming_the_file(cache: Path, tmp_path: Path) -> None:
    directory = tmp_path / "badarch"
    directory.mkdir()
    shutil.copy("/bin/busybox", directory / "tool")  # busybox-static: x86-64, no library needed
    (directory / "build.yml").write_text(
        "image: test/badarch\narches: [amd64, arm64]\npackages: [busybox-static]\nlibraries: none\n"
        'include: ["bin/busybox"]\nfiles:\n  - source: tool\n    path: /usr/bin/tool\n    mode: "0755"\n')
    result = run_cli("pkg", "build", "--arch", "arm64", "--cache", cache, directory)
    assert (result.returncode, result.stdout) == (1, b"")
    # the error is the last line (a first run on this machine says first which Debian packages it downloads)
    *before, error = result.stderr.decode().splitlines()
    assert error == (f"linuxkit-py: {directory}/build.yml: /usr/bin/tool is an ELF file for x86_64, "
                     "but the image is for arm64")
    assert all(line.startswith("downloading ") for line in before), before
    assert [name for name, _ in Cache(cache).refs() if "badarch" in name] == []  # nothing half-built
    # the same file is right for amd64
    assert run_cli("pkg", "build", "--arch", "amd64", "--cache", cache, directory).returncode == 0


@pytest.mark.parametrize("arch", ["armhf", "s390x", "riscv64"])
def test_an_unknown_arch_is_one_line_listing_the_supported_ones(tmp_path: Path, arch: str) -> None:
    result = run_cli("build", "--arch", arch, "--cache", tmp_path / "cache", "--dir", tmp_path / "out",
                     REPO / "specs" / "minimal.yml")
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == (f"linuxkit-py: unsupported architecture {arch!r} "
                                      "(hint: supported: amd64 (x86_64), arm64 (aarch64))\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["raw-bios", "iso-bios", "qcow2-bios", "vhd", "vmdk", "gcp", "aws"])
def test_a_bios_format_on_arm64_is_one_line_before_anything_is_built(tmp_path: Path, fmt: str) -> None:
    result = run_cli("build", "--arch", "arm64", "-f", fmt, "--cache", tmp_path / "cache",
                     "--dir", tmp_path / "out", REPO / "specs" / "minimal.yml")
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == (f"linuxkit-py: format {fmt} has no arm64 image: it is built for amd64 "
                                      "(hint: BIOS boot exists on x86 only: use the -efi formats)\n"
                                      if "bios" in fmt else
                                      f"linuxkit-py: format {fmt} has no arm64 image: it is built for amd64\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_an_arm64_kernel_tar_carries_the_pi_device_trees(cache: Path, tmp_path: Path) -> None:
    built = run_cli("pkg", "build", "--arch", "arm64", "--cache", cache, REPO / "kernels" / "rpi-arm64")
    assert built.returncode == 0, built.stderr.decode()
    image = load_cached_image(Cache(cache), f"docker.io/{built.stdout.decode().strip()}", "arm64")
    assert image is not None
    entries = {e.path: e for layer in image.layers for e in layer_entries(Cache(cache), layer)}
    kernel_tar = entries["kernel.tar"].data
    with open(kernel_tar.path, "rb") as f:  # type: ignore[union-attr]
        f.seek(kernel_tar.offset)  # type: ignore[union-attr]
        data = f.read(kernel_tar.size)  # type: ignore[union-attr]
    (tmp_path / "k.tar").write_bytes(data)
    with tarfile.open(tmp_path / "k.tar") as tar:
        names = set(tar.getnames())
    assert {"boot/dtb/broadcom/bcm2837-rpi-3-b.dtb", "boot/dtb/broadcom/bcm2837-rpi-3-b-plus.dtb",
            "boot/dtb/broadcom/bcm2711-rpi-4-b.dtb"} <= names
    assert any(n.endswith("/modules.dep") for n in names)
    kernel = entries["kernel"].data
    with open(kernel.path, "rb") as f:  # type: ignore[union-attr]
        f.seek(kernel.offset + 56)  # type: ignore[union-attr]
        assert f.read(4) == b"ARM\x64"  # the plain arm64 Image (booti and the EFI stub take it)


def test_every_package_in_pkg_builds_for_arm64(cache: Path) -> None:
    """The ELF checks pass for each (interpreter and libraries found, all aarch64) and each image is arm64."""
    directories = sorted(p.parent for p in (REPO / "pkg").glob("*/build.yml"))
    built = run_cli("pkg", "build", "--arch", "arm64", "--cache", cache, *directories)
    assert built.returncode == 0, built.stderr.decode()
    names = built.stdout.decode().split()
    assert len(names) == len(directories)
    for name in names:
        image = load_cached_image(Cache(cache), f"docker.io/{name}", "arm64")
        assert image is not None and image.config["architecture"] == "arm64", name
