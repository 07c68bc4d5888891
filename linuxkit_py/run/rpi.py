"""Booting a Raspberry Pi SD-card image (`NAME-rpi.img`) on qemu's model of a board (raspi3b).

qemu cannot run the Pi's GPU firmware, so this does the firmware's part from the image itself: it reads
the boot partition's config.txt for the board (boards.config_files), takes the kernel, initramfs,
device tree and cmdline.txt it names off the FAT with mtools, and hands them to qemu, which starts the
kernel as the firmware would (64-bit, at the kernel's load address, the device tree's address in x0).
The card itself is attached too, through a qcow2 overlay whose size is the next power of two (qemu's SD
card wants one): the user's file is never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from linuxkit_py.boards import Board, config_files
from linuxkit_py.errors import UserError
from linuxkit_py.media.fat import copy_fat_file, read_fat_file
from linuxkit_py.media.partitions import SECTOR, read_mbr
from linuxkit_py.tools import run

QEMU_IMG = "qemu-img"
FAT_TYPES = (0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E)  # FAT12/16/32 MBR types the firmware reads


@dataclass(frozen=True)
class PiBoot:
    kernel: Path
    initrd: Path | None
    dtb: Path | None
    cmdline: str
    card: Path  # the overlay qemu attaches as the SD card (qcow2)


def boot_partition_offset(image: Path) -> int:
    """Byte offset of the first FAT partition of the MBR image: where the firmware looks for its files."""
    with open(image, "rb") as f:
        partitions = read_mbr(f.read(SECTOR))
    for partition in partitions:
        if partition.type in FAT_TYPES:
            return partition.first_lba * SECTOR
    raise UserError(f"{image} has no FAT partition in an MBR: it is not a Raspberry Pi SD-card image")


def _power_of_two(size: int) -> int:
    return 1 << max(size - 1, 1).bit_length()


def card_overlay(image: Path, target: Path) -> Path:
    """A qcow2 file backed by `image` (read only) with a power-of-two size, for qemu's SD card."""
    size = _power_of_two(image.stat().st_size)
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(image.resolve()), "-F", "raw", str(target), str(size)],
        capture=True)
    return target


def prepare_pi_boot(image: Path, board: Board, run_dir: Path) -> PiBoot:
    """The files `board`'s firmware would load from `image`, copied into `run_dir`, and the card overlay."""
    offset = boot_partition_offset(image)
    config = read_fat_file(image, "config.txt", offset)
    if config is None:
        raise UserError(f"{image} has no config.txt on its boot partition")
    wanted = config_files(config.decode(errors="replace"), board)

    def take(name: str | None, what: str) -> Path | None:
        if name is None:
            return None
        target = run_dir / f"rpi-{what.replace(' ', '-')}"
        if not copy_fat_file(image, name, target, offset):
            raise UserError(f"{image}: config.txt names {what} {name}, which is not on the boot partition")
        return target

    kernel = take(wanted.kernel, "kernel")
    assert kernel is not None
    cmdline = read_fat_file(image, wanted.cmdline_file, offset) or b""
    return PiBoot(kernel=kernel, initrd=take(wanted.initrd, "initramfs"), dtb=take(wanted.dtb, "device tree"),
                  cmdline=cmdline.decode(errors="replace").strip(), card=card_overlay(image, run_dir / "card.qcow2"))
