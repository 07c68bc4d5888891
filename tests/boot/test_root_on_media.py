"""Root on media: the root filesystem as a squashfs/erofs image and a stage-one initramfs that mounts it.

`kernel+squashfs` and `kernel+erofs` boot with the image as a virtio disk, `--root squashfs` ISOs and disks with
the image as a file on the CD's ISO 9660 or the ESP's FAT. One image is larger than the VM's memory, which a
RAM-disk root cannot boot. Every boot reads the onboot and service lines on the console (specs/minimal.yml's
containers); two builds give the same bytes.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.pkg.debs import debs_dir
from linuxkit_py.run.image import BootImage, detect_image
from linuxkit_py.run.qemu import QemuOptions, boot_image
from tests.boot.test_specs import LEASE, REPO, cache_dir, package, write_spec
from tests.debstore import DEB_STORE, link_files
from tests.imagetools import file_sha256
from tests.integration.conftest import run_cli

__all__ = ["cache_dir"]  # the module-scoped cache fixture, shared with test_specs' builds

MEM_MIB = 256
BIG_FILE_MIB = 320  # incompressible, so the root image is larger than the VM's memory
GETTY = "service getty: started"
STAGE1_ROOT = re.compile(r"stage1: root: (\S+)(?: on (\S+))? \((squashfs|erofs), read-only\) under a tmpfs overlay; "
                         r"starting /sbin/init")
MEDIA_FORMATS = ("kernel+squashfs", "kernel+erofs", "iso-bios", "raw-efi")


def minimal_spec(path: Path, files: list[dict[str, str]] | None = None, dmsetup: bool = False) -> Path:
    """specs/minimal.yml, with our packages named by absolute path (the spec lives in a temporary directory);
    `dmsetup`: with pkg/dmsetup in init too, which a --verity build needs."""
    spec: dict[str, object] = {
        "kernel": {"image": f"@pkg:{REPO / 'kernels' / 'cloud-amd64'}",
                   "cmdline": "console=ttyS0"},
        "init": [package("init"), package("runc"), *([package("dmsetup")] if dmsetup else [])],
        "onboot": [{"name": "dhcpcd", "image": package("dhcpcd"),
                    "command": ["/sbin/udhcpc", "-i", "eth0", "-q", "-n", "-t", "5", "-T", "1"]}],
        "services": [{"name": "getty", "image": package("getty"), "env": ["INSECURE=true"]}],
    }
    if files:
        spec["files"] = files
    return write_spec(path, spec)


def build(cache: Path, out: Path, name: str, spec: Path, *formats: str, root: str = "ram") -> Path:
    args = [a for fmt in formats for a in ("-f", fmt)]
    result = run_cli("build", "--cache", cache, "--dir", out, "--name", name, "--root", root, *args, spec, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    return out / name




@pytest.fixture(scope="module")
def small_outputs(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """minimal.yml as kernel+squashfs, kernel+erofs, and iso-bios and raw-efi with a squashfs root."""
    work = tmp_path_factory.mktemp("root-on-media")
    return build(cache_dir, work / "out", "minimal", minimal_spec(work / "minimal.yml"), *MEDIA_FORMATS,
                 root="squashfs")


def boot_until_getty(image: BootImage, mem: int = MEM_MIB, uefi: bool = False) -> str:
    """Boot until getty runs, press the power button, read on until qemu exits; the console."""
    result = boot_image(image, QemuOptions(accel="tcg", mem=mem, uefi=uefi), timeout=240,
                        powerdown_on=lambda output: GETTY in output)
    assert result.exit_code == 0 and not result.timed_out, result.output[-3000:]
    return result.output


def check_boot(console: str, source: str, device: str | None, fs: str) -> None:
    """Stage one mounted `source` (on `device`), then the system came up, ran its containers and powered off."""
    match = STAGE1_ROOT.search(console)
    assert match, console[-3000:]
    assert match.groups() == (source, device, fs)
    marks = ["stage1: root: ", LEASE, GETTY, "reboot: Power down"]
    positions = [console.find(mark) for mark in marks]
    assert -1 not in positions and positions == sorted(positions), (dict(zip(marks, positions, strict=True)),
                                                                    console[-3000:])


# -- larger than memory --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """BIG_FILE_MIB of random bytes; the sha256 (hex, 16 digits) of its first and last MiB. Removed after the
    tests (pytest keeps its last temporary directories)."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    generator = random.Random(2713)  # LinuxKit issue 2713: images larger than memory
    with open(path, "wb") as f:
        for _ in range(BIG_FILE_MIB):
            f.write(generator.randbytes(1 << 20))
    with open(path, "rb") as f:
        head = f.read(1 << 20)
        f.seek(-(1 << 20), 2)
        tail = f.read()
    yield path, hashlib.sha256(head).hexdigest()[:16], hashlib.sha256(tail).hexdigest()[:16]
    path.unlink()


@pytest.mark.boot
def test_kernel_squashfs_larger_than_memory_boots(cache_dir: Path, tmp_path: Path, big_file: tuple[Path, str, str],
                                                  record_property: Callable[[str, object], None]) -> None:
    data, head, tail = big_file
    # an rc.init hook: the file's size and the hashes of both ends, read through the squashfs on the disk
    check = ("#!/bin/sh\n"
             'echo "big: $(stat -c %s /big.bin) bytes, head $(head -c 1048576 /big.bin | sha256sum | cut -c1-16),'
             ' tail $(tail -c 1048576 /big.bin | sha256sum | cut -c1-16)"\n')
    spec = minimal_spec(tmp_path / "big.yml", files=[
        {"path": "big.bin", "source": str(data), "mode": "0644"},
        {"path": "etc/init.d/015-big", "contents": check, "mode": "0755"}])
    try:
        prefix = build(cache_dir, tmp_path / "out", "big", spec, "kernel+squashfs")
        image = Path(f"{prefix}-squashfs.img")
        size = image.stat().st_size
        assert size > (MEM_MIB << 20) + (32 << 20)

        console = boot_until_getty(detect_image(prefix))
    finally:
        shutil.rmtree(tmp_path / "out", ignore_errors=True)

    check_boot(console, "/dev/vda", None, "squashfs")
    assert f"big: {BIG_FILE_MIB << 20} bytes, head {head}, tail {tail}" in console.splitlines()
    assert "Out of memory" not in console
    record_property("root_image_bytes", size)


# -- kernel+squashfs/erofs, ISO and disk ---------------------------------------------------------------------


@pytest.mark.boot
def test_kernel_erofs_boots_with_linuxkit_py_run(small_outputs: Path) -> None:
    result = run_cli("run", "--accel", "tcg", "--mem", str(MEM_MIB), "--timeout", "180", "--poweroff-on", GETTY,
                     f"{small_outputs}-erofs.img", stdin=b"")
    console = result.stdout.decode(errors="replace").replace("\r\n", "\n")
    assert result.returncode == 0, (result.stderr.decode(), console[-3000:])
    check_boot(console, "/dev/vda", None, "erofs")


@pytest.mark.boot
def test_kernel_squashfs_boots_with_the_image_as_a_disk(small_outputs: Path) -> None:
    console = boot_until_getty(detect_image(small_outputs))  # PREFIX: squashfs is preferred, as LinuxKit does
    check_boot(console, "/dev/vda", None, "squashfs")


@pytest.mark.boot
def test_iso_with_a_squashfs_root_boots_from_the_cd(small_outputs: Path) -> None:
    console = boot_until_getty(detect_image(Path(f"{small_outputs}.iso")))
    check_boot(console, "/medium/rootfs.squashfs", "/dev/sr0", "squashfs")


@pytest.mark.boot
def test_efi_disk_with_a_squashfs_root_boots_from_the_esp(small_outputs: Path) -> None:
    console = boot_until_getty(detect_image(Path(f"{small_outputs}-efi.img")))
    check_boot(console, "/medium/rootfs.squashfs", "/dev/vda1", "squashfs")


@pytest.mark.boot
def test_stage_one_without_its_disk_says_what_it_looked_for_and_powers_off(small_outputs: Path) -> None:
    stage1 = Path(f"{small_outputs}-squashfs-initrd.img")
    image = BootImage("kernel+initrd", small_outputs, kernel=Path(f"{small_outputs}-kernel"), initrd=stage1,
                      cmdline="console=ttyS0 linuxkit.root_wait=1")
    root_id = hashlib.sha256(Path(f"{small_outputs}-squashfs.img").read_bytes()[:4096]).hexdigest()

    result = boot_image(image, QemuOptions(accel="tcg", mem=MEM_MIB), timeout=60)

    assert result.exit_code == 0 and not result.timed_out, result.output[-3000:]
    lines = result.output.splitlines()
    assert f"stage1: waiting up to 1s for the squashfs root image (id {root_id[:12]})" in lines
    assert f"stage1: error: no block device holds the squashfs root image (id {root_id[:12]})" in lines
    assert "stage1: powering off (linuxkit.stage1=shell on the kernel command line gives a shell instead)" in lines
    assert "reboot: Power down" in result.output


# -- reproducible ---------------------------------------------------------------------------------------------


def test_two_builds_from_warm_and_empty_caches_give_the_same_bytes(small_outputs: Path,
                                                                   tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    if DEB_STORE.is_dir():  # an empty cache: images and kernel.tar built again (from the stored .debs)
        link_files(DEB_STORE, debs_dir(Cache(cache)))
    again = build(cache, tmp_path / "out", "minimal", minimal_spec(tmp_path / "minimal.yml"), *MEDIA_FORMATS,
                  root="squashfs")
    names = sorted(path.name for path in small_outputs.parent.iterdir())
    assert names == sorted(path.name for path in again.parent.iterdir())
    assert {"minimal-squashfs.img", "minimal-squashfs-initrd.img", "minimal-erofs.img",
            "minimal-erofs-initrd.img"} <= set(names)
    for name in names:
        assert file_sha256(small_outputs.parent / name) == file_sha256(again.parent / name), name
