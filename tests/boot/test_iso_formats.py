"""iso-bios, iso-efi and iso-efi-initrd of specs/minimal.yml, booted under TCG the way a user boots them
(`linuxkit-py run NAME.iso`): as CDs and, the hybrid ones, as disks, under the firmware each targets. Each
boot must reach the onboot container's lease and the getty service. One qemu at a time.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.pkg.debs import debs_dir
from linuxkit_py.run.image import BootImage
from linuxkit_py.run.qemu import QemuOptions, boot_image
from tests.boot.test_specs import LEASE, SPECS, line_numbers, write_spec
from tests.debstore import DEB_STORE, link_files
from tests.imagetools import file_sha256
from tests.integration.conftest import run_cli

FORMATS = ("iso-bios", "iso-efi", "iso-efi-initrd", "docker")
OUTPUTS = ("minimal.iso", "minimal-efi.iso", "minimal-efi-initrd.iso", "minimal.docker")
# A value with a blank in it: ISOLINUX passes it verbatim, GRUB re-quotes the whole argument.
CMDLINE = 'console=ttyS0 lkp.note="two words"'
SERVICE = "service getty: started"
BOOT_TIMEOUT = 150


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache for this module's builds, seeded with the stored .debs; what it downloads is stored."""
    cache = _seeded_cache(tmp_path_factory.mktemp("iso") / "cache")
    yield cache
    debs = debs_dir(Cache(cache))
    if debs.is_dir():
        link_files(debs, DEB_STORE)


def _seeded_cache(cache: Path) -> Path:
    debs = debs_dir(Cache(cache))
    if DEB_STORE.is_dir():
        link_files(DEB_STORE, debs)
    return cache


def _build(cache: Path, out: Path, spec: Path) -> float:
    """`linuxkit-py build` of minimal.yml with CMDLINE into every ISO format (and docker); its seconds."""
    formats = [arg for fmt in FORMATS for arg in ("-f", fmt)]
    started = time.monotonic()
    result = run_cli("build", "--cache", cache, "--dir", out, "--name", "minimal", *formats, SPECS / "minimal.yml",
                     spec, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    return time.monotonic() - started


@pytest.fixture(scope="module")
def cmdline_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec(tmp_path_factory.mktemp("iso-spec") / "cmdline.yml", {"kernel": {"cmdline": CMDLINE}})


@pytest.fixture(scope="module")
def built(cache_dir: Path, cmdline_spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iso-out")
    _build(cache_dir, out, cmdline_spec)
    return out




def _run(image: Path) -> str:
    """`linuxkit-py run IMAGE` until getty starts; the console."""
    result = run_cli("run", "qemu", image, "--accel", "tcg", "--until", SERVICE, "--timeout", str(BOOT_TIMEOUT),
                     stdin=b"")
    console = result.stdout.decode(errors="replace").replace("\r\n", "\n")
    assert result.returncode == 0, (result.stderr.decode(), console[-3000:])
    return console


def _check_boot(console: str, command_line: str) -> None:
    """The kernel got the command line, the onboot container leased an address, then getty started."""
    kernel, lease, done, service = line_numbers(console, "[    0.000000] Command line: ", LEASE,
                                                "onboot dhcpcd: done in ", SERVICE)
    assert kernel < lease < done < service
    [line] = [line for line in console.splitlines() if line.startswith("[    0.000000] Command line: ")]
    assert line.endswith(command_line), line


def _as_disk(iso: Path, name: str) -> Path:
    """The ISO under a disk image name (`linuxkit-py run` boots NAME.img as a virtio disk)."""
    disk = iso.with_name(name)
    if not disk.exists():
        os.symlink(iso.name, disk)
    return disk


ISOLINUX_CMDLINE = 'BOOT_IMAGE=/boot/kernel console=ttyS0 lkp.note="two words" initrd=/boot/initrd.img'
GRUB_CMDLINE = 'BOOT_IMAGE=/boot/kernel console=ttyS0 "lkp.note=two words"'


@pytest.mark.boot
def test_iso_bios_boots_as_a_cd_and_as_a_disk_under_seabios(built: Path) -> None:
    iso = built / "minimal.iso"
    cd = _run(iso)
    disk = _run(_as_disk(iso, "minimal-hybrid.img"))

    for console in (cd, disk):
        _check_boot(console, ISOLINUX_CMDLINE)
        assert "BdsDxe" not in console  # SeaBIOS, not OVMF
    assert "ata2.00: ATAPI: QEMU DVD-ROM" in cd


@pytest.mark.boot
def test_iso_efi_boots_as_a_cd_and_as_a_disk_under_ovmf(built: Path) -> None:
    iso = built / "minimal-efi.iso"
    cd = _run(iso)
    disk = _run(_as_disk(iso, "minimal-hybrid-efi.img"))

    for console in (cd, disk):
        _check_boot(console, GRUB_CMDLINE)
    assert 'BdsDxe: starting Boot0001 "UEFI QEMU DVD-ROM' in cd
    assert 'BdsDxe: starting Boot0001 "UEFI Misc Device"' in disk  # the virtio disk's EFI partition


@pytest.mark.boot
def test_iso_efi_also_boots_under_bios(built: Path) -> None:
    """The name says UEFI, so `run` picks OVMF; the qemu runner boots it with SeaBIOS, through ISOLINUX."""
    iso = built / "minimal-efi.iso"
    image = BootImage("iso", iso.with_suffix(""), image=iso, uefi=False)

    result = boot_image(image, QemuOptions(accel="tcg"), timeout=BOOT_TIMEOUT, until=lambda out: SERVICE in out)

    assert result.matched, result.output[-3000:]
    _check_boot(result.output, ISOLINUX_CMDLINE)


@pytest.mark.boot
def test_iso_efi_initrd_boots_as_a_cd_under_ovmf(built: Path) -> None:
    console = _run(built / "minimal-efi-initrd.iso")

    _check_boot(console, 'BOOT_IMAGE=/kernel console=ttyS0 "lkp.note=two words"')
    assert 'BdsDxe: starting Boot0001 "UEFI QEMU DVD-ROM' in console


def test_same_bytes_again_and_from_an_empty_cache(built: Path, cache_dir: Path, cmdline_spec: Path,
                                                  tmp_path: Path,
                                                  record_property: Callable[[str, object], None]) -> None:
    first = {name: file_sha256(built / name) for name in OUTPUTS}

    warm = _build(cache_dir, tmp_path / "warm", cmdline_spec)
    cold = _build(_seeded_cache(tmp_path / "cache"), tmp_path / "cold", cmdline_spec)

    for out in (tmp_path / "warm", tmp_path / "cold"):
        assert {name: file_sha256(out / name) for name in OUTPUTS} == first, out
    record_property("warm_build_seconds", round(warm, 2))
    record_property("cold_build_seconds", round(cold, 2))
    shutil.rmtree(tmp_path / "cold")
