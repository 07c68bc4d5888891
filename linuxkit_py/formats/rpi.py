"""Raspberry Pi outputs (arm64): `raw-rpi`, a flashable SD-card image, and LinuxKit's `rpi3`, the same boot
partition's files as a tar to copy onto a FAT-formatted card.

The boot partition holds what the Pi's GPU firmware reads (boards.py): the firmware itself from Debian's
raspi-firmware (bootcode.bin, start.elf, fixup.dat for the BCM2837 boards; start4.elf, fixup4.dat for
the BCM2711), config.txt, cmdline.txt, every board's device tree from the kernel image (boot/dtb/), the
kernel as kernel8.img and the initramfs as initrd.img. The firmware boots the kernel directly: no U-Boot.

raw-rpi: an MBR with one active FAT32 partition (type 0x0c) from 4 MiB. 4 MiB because SD cards erase and map
in allocation units of (commonly) 4 MiB, so a partition on a unit boundary never shares a unit with the
table, as Raspberry Pi OS and Debian's raspi images lay their cards out. FAT32 because the firmware reads
FAT16 and FAT32 and every card tool expects FAT32 there. With `--root squashfs|erofs` the root image is a
second partition (type 0x83) right after the FAT, on a 4 MiB boundary too, and initrd.img is stage one, which
finds the partition by the image's content id (stage1.py); otherwise the FAT fills the image. rpi3 has no
partition table to add to: its root image is one more file among the boot files (rootfs.squashfs), found
on the FAT as on every other disk (formats/bootfiles.py). Ids (disk signature, volume id) derive from the
files; every timestamp is the build epoch.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.boards import BOARDS, CMDLINE_TXT, CONFIG_TXT, INITRD_FILE, KERNEL_FILE, Board, cmdline_txt, config_txt
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Format, Rootfs, register
from linuxkit_py.formats.bootfiles import BootFiles, boot_files
from linuxkit_py.formats.initrd import split_boot
from linuxkit_py.formats.raw import work_directory
from linuxkit_py.formats.rootimage import IMAGE_NAMES, ROOT_FILESYSTEMS, root_location, write_root_image
from linuxkit_py.formats.stage1 import verity_cmdline, write_stage1_initrd
from linuxkit_py.media.fat import (
    FAT32_MIN_SIZE,
    HEADROOM,
    Source,
    content_digest,
    fat_directories,
    fat_min_size,
    source_size,
    write_fat,
)
from linuxkit_py.media.fat import TOOLS as FAT_TOOLS
from linuxkit_py.media.partitions import (
    MBR_MAX_LBA,
    MBR_TYPE_FAT32_LBA,
    MIB,
    SECTOR,
    MbrPartition,
    align_up,
    derived_disk_signature,
    mbr,
)

log = logging.getLogger(__name__)

RPI_ARCHES = ("arm64",)  # the boards' kernels here are 64-bit (arm_64bit=1)
RPI_ASSETS = ("raspi-firmware",)
FIRMWARE_PACKAGE = "raspi-firmware"
PARTITION_START = 4 * MIB  # one SD allocation unit (see the module docstring)
ALIGNMENT = 4 * MIB  # every partition starts and ends on an allocation unit
MBR_TYPE_LINUX = 0x83
ROOT_MEDIUM = "virtio"  # stage one's name for "the image is a whole block device" (here a partition)
CHUNK = 1 << 20
LABEL = "LINUXKIT"
DTB_DIR = "boot/dtb/"  # where kernel images keep device trees (kernel.tar)


def board_dtbs(rootfs: Rootfs, boards: list[Board]) -> dict[Board, Entry]:
    """The device tree of each board the kernel image has one for (boot/dtb/ of its kernel.tar). A board
    without one is left off the card with a warning (an older kernel, e.g. without the Zero 2 W's);
    none at all is a UserError."""
    by_path = {e.path: e for e in rootfs.entries if e.kind is Kind.FILE and e.path.startswith(DTB_DIR)}
    found = {board: by_path[DTB_DIR + board.dtb] for board in boards if DTB_DIR + board.dtb in by_path}
    if not found:
        raise UserError(f"the kernel image has no Raspberry Pi device tree: looked for /{DTB_DIR}{boards[0].dtb} "
                        f"and {len(boards) - 1} more", hint="use a kernel with the Raspberry Pi device trees in "
                                                          "its kernel.tar, such as kernels/rpi-arm64")
    for board in boards:
        if board not in found:
            log.warning("the kernel image has no /%s%s: the card will not boot the %s", DTB_DIR, board.dtb,
                        board.model)
    return found


def _firmware(rootfs: Rootfs, boards: list[Board]) -> list[tuple[str, Source]]:
    directory = rootfs.options.assets.get(FIRMWARE_PACKAGE)
    if directory is None:
        raise UserError("raw-rpi and rpi3 need the Raspberry Pi firmware (Debian's raspi-firmware), which the build "
                        "did not fetch")
    names = list(dict.fromkeys(name for board in boards for name in board.firmware))
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise UserError(f"{directory} has no {', '.join(missing)}", hint=f"is it Debian's {FIRMWARE_PACKAGE}?")
    return [(name, directory / name) for name in names]


def boot_partition_files(rootfs: Rootfs, bf: BootFiles, boards: list[Board] | None = None) -> list[tuple[str, Source]]:
    """The files of the boot partition, in the order they are written (firmware first)."""
    dtbs = board_dtbs(rootfs, boards or list(BOARDS.values()))
    boards = list(dtbs)
    return [
        *_firmware(rootfs, boards),
        (CONFIG_TXT, config_txt(boards)),
        (CMDLINE_TXT, cmdline_txt(bf.cmdline, boards)),
        *((board.dtb_file, entry.data or b"") for board, entry in dtbs.items()),
        (KERNEL_FILE, bf.kernel.data or b""),
        (INITRD_FILE, bf.initrd),
        *bf.extra,
    ]


def _sizes(files: list[tuple[str, Source]], root_size: int, size: int | None) -> tuple[int, int, int]:
    """(image size, FAT size, root partition size): the FAT from PARTITION_START in whole MiB, filling what
    the root partition (a whole number of allocation units, 0 without one) leaves."""
    names = [name for name, _ in files]
    needed = max(fat_min_size([source_size(s) for _, s in files], len(fat_directories(names))), FAT32_MIN_SIZE)
    root = align_up(root_size, ALIGNMENT)
    if size is None:
        fat = align_up(needed + HEADROOM, ALIGNMENT) if root else needed + HEADROOM
        return PARTITION_START + fat + root, fat, root
    if size % SECTOR:
        raise UserError(f"--size {size} is not a whole number of {SECTOR}-byte sectors")
    if size > MBR_MAX_LBA * SECTOR:
        raise UserError(f"raw-rpi: an MBR card holds at most 2 TiB; --size is {size // MIB} MiB")
    least = PARTITION_START + (align_up(needed, ALIGNMENT) if root else needed) + root
    if size < least:
        raise UserError(f"raw-rpi: the image needs at least {least // MIB} MiB; --size is {size / MIB:.6g} MiB",
                        hint=f"give --size {least // MIB}M or more, or leave --size out")
    unit = ALIGNMENT if root else MIB
    return size, (size - PARTITION_START - root) // unit * unit, root


def write_rpi_image(files: list[tuple[str, Source]], path: Path, *, epoch: int, size: int | None = None,
                    root_image: Path | None = None) -> int:
    """The SD-card image at `path`: MBR, one active FAT32 partition at PARTITION_START with `files`, and
    `root_image` as a second partition after it."""
    root_size = root_image.stat().st_size if root_image else 0
    disk_size, fat_size, root_part = _sizes(files, root_size, size)
    digest = content_digest([*files, *([("root", root_image)] if root_image else [])], b"rpi %d" % disk_size)
    path.write_bytes(b"")
    write_fat(path, files, label=LABEL, epoch=epoch, size=fat_size, offset=PARTITION_START, bits=32)
    partitions = [MbrPartition(first_lba=PARTITION_START // SECTOR, sectors=fat_size // SECTOR,
                               type=MBR_TYPE_FAT32_LBA, active=True)]
    with open(path, "r+b") as f:
        if root_image:
            root_start = PARTITION_START + fat_size
            partitions.append(MbrPartition(first_lba=root_start // SECTOR, sectors=root_part // SECTOR,
                                           type=MBR_TYPE_LINUX))
            f.seek(root_start)
            with open(root_image, "rb") as src:
                shutil.copyfileobj(src, f, CHUNK)
        f.seek(0)
        f.write(mbr(partitions, disk_signature=derived_disk_signature(digest)))
        f.truncate(disk_size)  # a hole up to the end: the image stays sparse
    return disk_size


@contextlib.contextmanager
def card_boot_files(rootfs: Rootfs, workdir: Path) -> Iterator[tuple[BootFiles, Path | None]]:
    """The boot files of raw-rpi and, with --root squashfs|erofs, the root image for its second partition
    (then the initrd is stage one, looking for the image as a whole block device)."""
    root = rootfs.options.root
    if root == "ram":
        with boot_files(rootfs, "disk", workdir) as bf:
            yield bf, None
        return
    if root not in ROOT_FILESYSTEMS:
        raise UserError(f"unknown root mode {root!r}", hint="use ram, squashfs or erofs")
    image = workdir / IMAGE_NAMES[root]
    write_root_image(rootfs, image, root)
    initrd = workdir / INITRD_FILE
    with open(initrd, "wb") as out:
        location = root_location(rootfs, image, root)  # with --verity, the hash tree appended
        write_stage1_initrd(rootfs, out, location=location, medium=ROOT_MEDIUM)
    boot = split_boot(rootfs.entries)
    cmdline = verity_cmdline(boot.cmdline.decode(errors="replace").strip(), location)
    yield BootFiles(kernel=boot.kernel, initrd=initrd, cmdline=cmdline), image


def _write_raw_rpi(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    (out,) = outs
    with work_directory(out) as workdir, card_boot_files(rootfs, workdir) as (bf, root_image):
        write_rpi_image(boot_partition_files(rootfs, bf), Path(out.name), epoch=rootfs.epoch,
                        size=rootfs.options.size, root_image=root_image)


def _tar_entry(name: str, source: Source) -> Entry:
    size = source_size(source)
    data = FileRegion(str(source), 0, size) if isinstance(source, Path) else source
    return Entry(name, Kind.FILE, 0o644, size=size, data=data)


def _write_rpi3(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    (out,) = outs
    with work_directory(out) as workdir, boot_files(rootfs, "disk", workdir) as bf:
        write_tar([_tar_entry(name, source) for name, source in boot_partition_files(rootfs, bf)], out,
                  rootfs.epoch)


register(Format(
    name="raw-rpi",
    suffixes=("-rpi.img",),
    write=_write_raw_rpi,
    tools=FAT_TOOLS,
    arches=RPI_ARCHES,
    assets=RPI_ASSETS,
    description="Raspberry Pi 3/4 SD-card image: MBR, FAT32 boot partition with firmware, kernel and initrd",
))
register(Format(
    name="rpi3",
    suffixes=(".tar",),
    write=_write_rpi3,
    arches=RPI_ARCHES,
    assets=RPI_ASSETS,
    description="the raw-rpi boot partition's files as a tar, to copy onto a FAT32 SD card (LinuxKit's rpi3)",
))
