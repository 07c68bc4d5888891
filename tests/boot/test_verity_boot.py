"""--verity booted under TCG: the root image carries its dm-verity tree, stage one verifies it before mounting.

specs/minimal.yml (as tests/boot/test_root_on_media.py builds it) with pkg/dmsetup in init, as --verity needs, is
built once for this module as raw-efi with a squashfs root, signed for Secure Boot with a `keys create` db key, and
kernel+erofs, both with --verity. Both boot to the services (raw-efi under plain OVMF, and under OVMF with Secure
Boot enforced and the key enrolled: the root hash is in the signed UKI's command line); the kernel+erofs image with
one byte flipped (in its data, in its tree) or with another root hash on the command line stops at stage one with
one line and powers off. Two builds give the same bytes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from linuxkit_py.run.image import BootImage, detect_image
from linuxkit_py.run.qemu import QemuOptions, boot_image
from tests.boot.test_root_on_media import MEM_MIB, boot_until_getty, check_boot, minimal_spec
from tests.boot.test_specs import cache_dir
from tests.imagetools import file_sha256
from tests.integration.conftest import run_cli

__all__ = ["cache_dir"]  # the module-scoped, deb-seeded cache of test_specs

NAME = "verity"
FORMATS = ("raw-efi", "kernel+erofs")
VERIFIED = re.compile(r"^stage1: dm-verity: (\S+) verified \(root hash ([0-9a-f]{16})\)$", re.M)
CHANGED = "stage1: error: the root image fails dm-verity verification: it was changed after the build"
OTHER_HASH = ("stage1: error: the root image fails dm-verity verification: linuxkit.verity= on the kernel command "
              "line is not its root hash (the command line or the image was changed after the build)")
NO_HASH = ("stage1: error: the kernel command line has no linuxkit.verity= root hash: the root image is not mounted "
           "unverified")
POWERING_OFF = "stage1: powering off (linuxkit.stage1=shell on the kernel command line gives a shell instead)"
BLOCK = 4096
MIB = 1 << 20
SECURE_BOOT_ON = "secureboot: Secure boot enabled"


def build_verity(cache: Path, out: Path, spec: Path, keys: Path) -> Path:
    args = [a for fmt in FORMATS for a in ("-f", fmt)]
    result = run_cli("build", "--cache", cache, "--dir", out, "--name", NAME, "--root", "squashfs", "--verity",
                     "--sign-key", keys / "db.key", "--sign-cert", keys / "db.crt", *args, spec, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    return out / NAME


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return minimal_spec(tmp_path_factory.mktemp("verity-spec") / "minimal.yml", dmsetup=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `keys create` directory: db.key/db.crt sign, OVMF_VARS_4M.fd has them enrolled."""
    directory = tmp_path_factory.mktemp("verity-keys") / "keys"
    result = run_cli("keys", "create", directory, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    return directory


@pytest.fixture(scope="module")
def outputs(cache_dir: Path, spec: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prefix of the module's verity build (raw-efi --root squashfs, signed; kernel+erofs)."""
    return build_verity(cache_dir, tmp_path_factory.mktemp("verity") / "out", spec, keys)


def root_hash(prefix: Path) -> str:
    (value,) = re.findall(r"linuxkit\.verity=([0-9a-f]{64})", Path(f"{prefix}-cmdline").read_text())
    return value


@pytest.mark.boot
def test_verity_raw_efi_boots_to_the_services_under_ovmf(outputs: Path, tmp_path: Path) -> None:
    disk = Path(f"{outputs}-efi.img")
    console = boot_until_getty(detect_image(Path(shutil.copyfile(disk, tmp_path / disk.name))))

    verified = VERIFIED.search(console)
    assert verified and verified.group(1) == "/medium/rootfs.squashfs", console[-3000:]
    check_boot(console, "/dev/mapper/linuxkit-root", "/dev/vda1", "squashfs")
    assert console.find("stage1: dm-verity: ") < console.find("stage1: root: ")


def uki_cmdline(disk: Path, work: Path) -> str:
    """The .cmdline section of the UKI on the disk's ESP (EFI/BOOT/BOOTX64.EFI)."""
    uki, cmdline = work / "BOOTX64.EFI", work / "cmdline"
    subprocess.run(["mcopy", "-n", "-i", f"{disk}@@{MIB}", "::/EFI/BOOT/BOOTX64.EFI", str(uki)], check=True,
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    subprocess.run(["objcopy", "--dump-section", f".cmdline={cmdline}", str(uki), str(work / "unused.efi")],
                   check=True)
    return cmdline.read_bytes().rstrip(b"\0").decode()


@pytest.mark.boot
def test_signed_verity_raw_efi_boots_with_secure_boot_enforced_and_the_root_hash_in_the_signed_uki(
        outputs: Path, keys: Path, tmp_path: Path) -> None:
    disk = Path(f"{outputs}-efi.img")
    (squashfs_hash,) = re.findall(r"^linuxkit\.verity=([0-9a-f]{64})$", uki_cmdline(disk, tmp_path).replace(" ", "\n"),
                                  re.M)
    assert squashfs_hash != root_hash(outputs)  # NAME-cmdline is kernel+erofs's: another image, another hash
    copy = Path(shutil.copyfile(disk, tmp_path / disk.name))  # the guest may write to its disk

    result = boot_image(detect_image(copy), QemuOptions(accel="tcg", mem=512, secure_boot=True,
                                                        fw_vars=keys / "OVMF_VARS_4M.fd"),
                        timeout=240, powerdown_on=lambda output: "service getty: started" in output)

    assert result.exit_code == 0 and not result.timed_out, result.output[-3000:]
    assert SECURE_BOOT_ON in result.output
    verified = VERIFIED.search(result.output)
    assert verified and verified.groups() == ("/medium/rootfs.squashfs", squashfs_hash[:16])
    check_boot(result.output, "/dev/mapper/linuxkit-root", "/dev/vda1", "squashfs")


@pytest.mark.boot
def test_verity_kernel_erofs_boots_with_the_root_hash_from_its_cmdline(outputs: Path) -> None:
    image = detect_image(Path(f"{outputs}-erofs.img"))
    assert f"linuxkit.verity={root_hash(outputs)}" in image.cmdline.split()

    console = boot_until_getty(image)

    verified = VERIFIED.search(console)
    assert verified and verified.groups() == ("/dev/vda", root_hash(outputs)[:16]), console[-3000:]
    check_boot(console, "/dev/mapper/linuxkit-root", None, "erofs")


def boot_to_refusal(image: BootImage) -> str:
    """Boot an image stage one must refuse: it powers off by itself; the console."""
    result = boot_image(image, QemuOptions(accel="tcg", mem=MEM_MIB), timeout=120)
    assert result.exit_code == 0 and not result.timed_out, result.output[-3000:]  # qemu exited: power off
    console = result.output
    assert POWERING_OFF in console.splitlines() and "reboot: Power down" in console, console[-3000:]
    assert "stage1: root: " not in console and "service " not in console and "onboot " not in console
    return console


def flipped_copy(image: Path, target: Path, offset: int) -> Path:
    shutil.copyfile(image, target)
    with open(target, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    return target


# a byte of a file's data far from the superblock (stage one must still find the image by its first 4 KiB),
# and a byte of the hash tree's lowest level
@pytest.mark.boot
@pytest.mark.parametrize("where", ["data", "tree"])
def test_one_flipped_byte_stops_the_boot_at_stage_one(outputs: Path, tmp_path: Path, where: str) -> None:
    image = Path(f"{outputs}-erofs.img")
    size = image.stat().st_size
    offset = (size // 2) // BLOCK * BLOCK + 1234 if where == "data" else size - BLOCK + 7
    bad = flipped_copy(image, tmp_path / "bad-erofs.img", offset)
    assert file_sha256(bad) != file_sha256(image)

    console = boot_to_refusal(dataclasses.replace(detect_image(image), image=bad))

    assert CHANGED in console.splitlines()
    assert [line for line in console.splitlines() if line.startswith("stage1: error: ")] == [CHANGED]
    assert "device-mapper: verity: " in console and " is corrupted" in console  # the kernel's own account


@pytest.mark.boot
@pytest.mark.parametrize("change", ["other", "none"])
def test_a_changed_or_missing_root_hash_on_the_command_line_stops_at_stage_one(outputs: Path, change: str) -> None:
    image = detect_image(Path(f"{outputs}-erofs.img"))
    good = root_hash(outputs)
    other = good[:-1] + ("0" if good[-1] != "0" else "1")
    cmdline = image.cmdline.replace(f"linuxkit.verity={good}", f"linuxkit.verity={other}" if change == "other" else "")

    console = boot_to_refusal(dataclasses.replace(image, cmdline=cmdline))

    assert (OTHER_HASH if change == "other" else NO_HASH) in console.splitlines()


def test_two_verity_builds_give_the_same_bytes(outputs: Path, cache_dir: Path, spec: Path, keys: Path,
                                               tmp_path: Path) -> None:
    again = build_verity(cache_dir, tmp_path / "out", spec, keys)
    names = sorted(path.name for path in outputs.parent.iterdir())
    assert names == sorted(path.name for path in again.parent.iterdir())
    assert {f"{NAME}-efi.img", f"{NAME}-erofs.img", f"{NAME}-erofs-initrd.img", f"{NAME}-cmdline"} <= set(names)
    for name in names:
        assert file_sha256(outputs.parent / name) == file_sha256(again.parent / name), name
