"""The disk formats (raw-bios, raw-efi, uki, qcow2-bios, qcow2-efi, vhd, dynamic-vhd, vmdk, gcp, aws) of
specs/minimal.yml: reproducible from a warm and an empty cache, accepted by the partition, filesystem and
image checkers, and booted with `linuxkit-py run` under the firmware each targets (TCG).

Every format is built once per module (timed: docs/formats-disk.md has the numbers); the boots use copies,
so that nothing a guest writes can change what the other tests compare.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.formats import get_format
from linuxkit_py.pkg.debs import debs_dir
from tests.boot.test_specs import LEASE, SPECS, line_numbers
from tests.boot.test_specs import cache_dir as cache_dir  # the module-scoped, deb-seeded cache
from tests.debstore import DEB_STORE, link_files
from tests.imagetools import file_sha256
from tests.integration.conftest import run_cli

NAME = "minimal"
SPEC = SPECS / "minimal.yml"
CMDLINE = "console=ttyS0 console=ttyAMA0"  # minimal.yml's
MIB = 1 << 20
GIB = 1 << 30
FORMATS = ["raw-bios", "raw-efi", "uki", "qcow2-bios", "qcow2-efi", "vhd", "dynamic-vhd", "vmdk", "gcp", "aws"]
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
ONBOOT_DONE = "onboot dhcpcd: done in "
SERVICE_STARTED = "service getty: started"


@dataclass
class Built:
    root: Path
    kernel: Path  # the kernel+initrd build of the same spec
    initrd: Path
    seconds: dict[str, float]  # format -> wall time of `linuxkit-py build -f FORMAT` (warm cache)
    baseline: float  # the same for kernel+initrd

    def output(self, fmt: str) -> Path:
        (suffix,) = get_format(fmt).suffixes
        return self.root / fmt / f"{NAME}{suffix}"


def _build(cache: Path, out: Path, *formats: str, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    result = run_cli("build", "--cache", cache, "--dir", out, "--name", NAME, "-f", ",".join(formats), SPEC,
                     env=env, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    return time.monotonic() - started


@pytest.fixture(scope="module")
def built(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("disk-formats")
    _build(cache_dir, root / "kernel+initrd", "kernel+initrd")  # builds the packages: not part of the timings
    baseline = _build(cache_dir, root / "kernel+initrd", "kernel+initrd")
    # one directory per format: vhd and dynamic-vhd are both NAME.vhd, as in LinuxKit
    seconds = {fmt: _build(cache_dir, root / fmt, fmt) for fmt in FORMATS}
    return Built(root, root / "kernel+initrd" / f"{NAME}-kernel", root / "kernel+initrd" / f"{NAME}-initrd.img",
                 seconds, baseline)




def _digests(root: Path, formats: list[str]) -> dict[str, str]:
    outputs = {fmt: root / fmt / f"{NAME}{get_format(fmt).suffixes[0]}" for fmt in formats}
    return {fmt: file_sha256(path) for fmt, path in outputs.items()}


def _build_each(cache: Path, root: Path, env: dict[str, str] | None = None) -> None:
    # all formats but dynamic-vhd in one build (its NAME.vhd is vhd's), then dynamic-vhd
    everything = [fmt for fmt in FORMATS if fmt != "dynamic-vhd"]
    _build(cache, root / "all", *everything, env=env)
    for fmt in everything:
        (root / fmt).mkdir()
        for suffix in get_format(fmt).suffixes:
            (root / "all" / f"{NAME}{suffix}").rename(root / fmt / f"{NAME}{suffix}")
    _build(cache, root / "dynamic-vhd", "dynamic-vhd", env=env)


def test_every_disk_format_is_the_same_from_a_warm_and_an_empty_cache(
        built: Built, cache_dir: Path, tmp_path: Path) -> None:
    expected = _digests(built.root, FORMATS)
    _build_each(cache_dir, tmp_path / "warm")
    empty = tmp_path / "empty-cache"
    debs = debs_dir(Cache(empty))
    link_files(DEB_STORE, debs)  # only the downloaded .debs: every image is built again
    _build_each(empty, tmp_path / "cold")

    assert _digests(tmp_path / "warm", FORMATS) == expected
    assert _digests(tmp_path / "cold", FORMATS) == expected


def test_source_date_epoch_sets_the_file_times(built: Built, cache_dir: Path, tmp_path: Path) -> None:
    _build(cache_dir, tmp_path, "raw-bios", env={"SOURCE_DATE_EPOCH": "1700000000"})
    disk = tmp_path / f"{NAME}-bios.img"
    listing = _mtools("mdir", "-i", f"{disk}@@{MIB}", "::/")
    assert re.search(r"^kernel +\d+ 2023-11-14  22:13 $", listing, re.MULTILINE), listing
    assert file_sha256(disk) != file_sha256(built.output("raw-bios"))


# -- structure -------------------------------------------------------------------------------------------


def _mtools(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, env=MTOOLS_ENV)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _partitions(disk: Path) -> dict[str, Any]:
    result = subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, text=True, check=True)
    table: dict[str, Any] = json.loads(result.stdout)["partitiontable"]
    return table


def _extract_partition(disk: Path, part: dict[str, Any], out: Path) -> Path:
    with open(disk, "rb") as src, open(out, "wb") as dst:
        src.seek(part["start"] * 512)
        dst.write(src.read(part["size"] * 512))
    return out


def _fsck(partition: Path) -> None:
    result = subprocess.run(["fsck.vfat", "-n", str(partition)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _fat_file(partition: Path | str, name: str, out: Path) -> bytes:
    _mtools("mcopy", "-n", "-i", str(partition), f"::/{name}", str(out))
    return out.read_bytes()


@pytest.mark.parametrize("fmt", ["raw-bios", "aws"])
def test_bios_disk_has_an_active_fat_partition_with_syslinux(built: Built, tmp_path: Path, fmt: str) -> None:
    disk = built.output(fmt)
    table = _partitions(disk)
    [part] = table["partitions"]
    fat = f"{disk}@@{part['start'] * 512}"  # mtools reads the partition in place

    assert table["label"] == "dos" and re.fullmatch(r"0x[0-9a-f]{8}", table["id"])
    assert (part["start"], part.get("bootable"), part["type"] in ("e", "c")) == (2048, True, True)
    with open(disk, "rb") as f:
        assert f.read(440) == SYSLINUX_MBR.read_bytes()[:440]
    assert disk.stat().st_size == (GIB if fmt == "aws" else (part["start"] + part["size"]) * 512)
    if fmt == "raw-bios":  # (fsck.vfat takes no offset: the 1 GiB partition of aws is not copied out)
        _fsck(_extract_partition(disk, part, tmp_path / "partition.img"))
    assert _fat_file(fat, "kernel", tmp_path / "kernel") == built.kernel.read_bytes()
    # the same initrd as the kernel+initrd output
    assert _fat_file(fat, "initrd.img", tmp_path / "initrd") == built.initrd.read_bytes()
    assert _fat_file(fat, "syslinux.cfg", tmp_path / "cfg").decode() == (
        "SERIAL 0 115200\nDEFAULT linux\nLABEL linux\n  KERNEL /kernel\n"
        f"  APPEND {CMDLINE} initrd=/initrd.img\n")
    installed = _mtools("mdir", "-a", "-i", fat, "::/syslinux")
    assert "ldlinux  sys" in installed and "ldlinux  c32" in installed


def test_efi_disk_is_a_valid_gpt_with_the_uki_on_its_esp(built: Built, tmp_path: Path) -> None:
    disk = built.output("raw-efi")
    verify = subprocess.run(["sgdisk", "-v", str(disk)], capture_output=True, text=True)
    table = _partitions(disk)
    [part] = table["partitions"]
    esp = _extract_partition(disk, part, tmp_path / "esp.img")

    assert verify.returncode == 0 and "No problems found" in verify.stdout, verify.stdout
    assert table["label"] == "gpt"
    assert (part["start"], part["type"], part["name"]) == (2048, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                                                           "EFI System")
    assert part["size"] % 2048 == 0 and disk.stat().st_size % MIB == 0
    _fsck(esp)
    # the boot loader is the UKI the `uki` format writes
    assert _fat_file(esp, "EFI/BOOT/BOOTX64.EFI", tmp_path / "BOOTX64.EFI") == built.output("uki").read_bytes()


def test_gcp_is_disk_raw_of_whole_gib_in_a_deterministic_tar_gz(built: Built) -> None:
    archive = built.output("gcp")
    with open(archive, "rb") as f:
        gzip_header = f.read(10)
    with gzip.open(archive) as stream:
        member = tarfile.TarInfo.frombuf(stream.read(512), "utf-8", "strict")
        digest, left = hashlib.sha256(), member.size
        while left:
            chunk = stream.read(min(1 << 22, left))
            digest.update(chunk)
            left -= len(chunk)
        rest = stream.read()

    assert (member.name, member.size, member.mode, member.uid, member.gid) == ("disk.raw", GIB, 0o644, 0, 0)
    assert rest == bytes(1024)  # the end of the archive: nothing after disk.raw
    assert gzip_header[4:8] == bytes(4)  # MTIME unset
    assert digest.hexdigest() == file_sha256(built.output("aws"))  # the same BIOS disk as aws


def _qemu_img(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize(("fmt", "qemu_format", "raw"), [
    ("qcow2-bios", "qcow2", "raw-bios"), ("qcow2-efi", "qcow2", "raw-efi"), ("vmdk", "vmdk", "raw-bios"),
    ("vhd", "vpc", "raw-bios"), ("dynamic-vhd", "vpc", "raw-bios")])
def test_converted_images_check_and_hold_the_raw_disk(built: Built, fmt: str, qemu_format: str, raw: str) -> None:
    image = built.output(fmt)
    if qemu_format != "vpc":  # qemu-img has no check for VHD; opening it verifies the footer checksum
        check = _qemu_img("check", "-f", qemu_format, image)
        assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout + check.stderr
    info = json.loads(_qemu_img("info", "--output", "json", "-f", qemu_format, image).stdout)
    compare = _qemu_img("compare", "-f", qemu_format, "-F", "raw", image, built.output(raw))

    assert info["virtual-size"] == built.output(raw).stat().st_size
    assert compare.returncode == 0 and compare.stdout == "Images are identical.\n", compare.stdout + compare.stderr
    if fmt == "vmdk":
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    if fmt == "dynamic-vhd":
        data = image.read_bytes()
        assert data[:512] == data[-512:] and data[:8] == b"conectix"  # the footer and its copy agree


# -- boots ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def boot_seconds() -> Iterator[dict[str, float]]:
    seconds: dict[str, float] = {}
    yield seconds
    if seconds:
        print("\nseconds from `linuxkit-py run` to the getty service under TCG: "
              + ", ".join(f"{fmt} {value:.1f}" for fmt, value in seconds.items()))


# firmware each one boots under, and what the boot loader prints on the serial console before Linux
BOOTS = {
    "raw-bios": ("SeaBIOS", "SYSLINUX 6.04"),
    "qcow2-bios": ("SeaBIOS", "SYSLINUX 6.04"),
    "vmdk": ("SeaBIOS", "SYSLINUX 6.04"),
    "raw-efi": ("OVMF", "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path"),
    "qcow2-efi": ("OVMF", "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path"),
    "uki": ("OVMF", "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path"),
}


@pytest.mark.boot
@pytest.mark.parametrize("fmt", list(BOOTS))
def test_disk_format_boots_to_the_onboot_and_service_lines(
        built: Built, tmp_path: Path, fmt: str, boot_seconds: dict[str, float],
        record_property: Callable[[str, object], None]) -> None:
    firmware, loader_line = BOOTS[fmt]
    image = tmp_path / built.output(fmt).name
    shutil.copyfile(built.output(fmt), image)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "linuxkit_py", "run", "--accel", "tcg", "--timeout", "150",
                             "--until", SERVICE_STARTED, str(image)],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=200)
    seconds = time.monotonic() - started
    console = result.stdout.decode(errors="replace").replace("\r\n", "\n")

    assert result.returncode == 0, (result.stderr.decode(), console[-3000:])
    assert ("BdsDxe: starting Boot" in console) == (firmware == "OVMF"), console[:2000]
    loader, lease, done, service = line_numbers(console, loader_line, LEASE, ONBOOT_DONE, SERVICE_STARTED)
    assert loader < lease < done < service
    boot_seconds[fmt] = seconds
    record_property("service_up_seconds", round(seconds, 2))


def test_build_time_and_size_per_format(built: Built, record_property: Callable[[str, object], None]) -> None:
    rows = []
    for fmt in FORMATS:
        path = built.output(fmt)
        size, allocated = path.stat().st_size, path.stat().st_blocks * 512
        rows.append(f"| {fmt} | {path.name} | {built.seconds[fmt]:.2f} | {size / MIB:.1f} | {allocated / MIB:.1f} |")
        record_property(f"{fmt}_build_seconds", round(built.seconds[fmt], 2))
        record_property(f"{fmt}_bytes", size)
        assert built.seconds[fmt] < 30  # the aim is seconds; this only catches a pathological slowdown
    print(f"\nkernel+initrd build (warm): {built.baseline:.2f} s\n| format | file | build s | MiB | MiB on disk |\n"
          + "\n".join(rows))
