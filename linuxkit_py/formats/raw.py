"""Raw disk images: `raw-bios` (MBR, one active FAT partition, SYSLINUX), `raw-efi` (GPT with an EFI System
Partition holding a UKI as EFI/BOOT/BOOTX64.EFI) and `aws` (the BIOS disk in whole GiB, as LinuxKit's aws
output boots with a BIOS boot loader from an MBR disk).

Every disk: the partition starts at 1 MiB, the files come from `boot_files` (kernel, initrd, command line
and the extra files of the boot mode), sizes are whole MiB, and the file is sparse. Disk signature and
GUIDs are derived from the files on the disk; the other formats (formats/convert.py) start from these disks.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from linuxkit_py.errors import UserError
from linuxkit_py.formats import Format, FormatOptions, Rootfs, Writer, register
from linuxkit_py.formats.bootfiles import BootFiles, boot_files
from linuxkit_py.formats.uki import OBJCOPY, stub_path, write_uki
from linuxkit_py.media.fat import (
    HEADROOM,
    Source,
    content_digest,
    fat_bits,
    fat_directories,
    fat_min_size,
    source_size,
    tool_env,
    write_fat,
)
from linuxkit_py.media.fat import TOOLS as FAT_TOOLS
from linuxkit_py.media.partitions import (
    ESP_TYPE_GUID,
    MBR_BOOT_CODE_SIZE,
    MBR_TYPE_FAT12,
    MBR_TYPE_FAT16_LBA,
    MBR_TYPE_FAT32_LBA,
    MIB,
    PARTITION_ALIGNMENT,
    SECTOR,
    GptPartition,
    MbrPartition,
    align_up,
    derived_disk_signature,
    derived_guid,
    gpt_tables,
    mbr,
)
from linuxkit_py.tools import require_file, run

GIB = 1 << 30
FIRMWARES = ("bios", "efi")
SYSLINUX = "syslinux"
MATTRIB = "mattrib"  # syslinux runs mtools' mattrib and mcopy itself
SYSLINUX_PACKAGE = "syslinux-common"
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
SYSLINUX_DIRECTORY = "syslinux"  # ldlinux.sys and ldlinux.c32 go here
SYSLINUX_SPACE = 256 * 1024  # ldlinux.sys + ldlinux.c32 (about 180 KiB in syslinux 6.04)
BIOS_TOOLS = (*FAT_TOOLS, SYSLINUX, MATTRIB)
EFI_TOOLS = (*FAT_TOOLS, OBJCOPY)
BIOS_ARCHES = ("amd64",)  # SeaBIOS/syslinux: PC only
EFI_ARCHES = ("amd64", "arm64")
EFI_ASSETS = ("efi-stub", "systemd-boot")  # the UKI's systemd stub; systemd-boot for --ab (formats/ab.py)
BIOS_LABEL = "LINUXKIT"
ESP_LABEL = "EFI"
ESP_NAME = "EFI System"
KERNEL_NAME = "kernel"
INITRD_NAME = "initrd.img"
SYSLINUX_CFG = "syslinux.cfg"
FAT_MBR_TYPES = {12: MBR_TYPE_FAT12, 16: MBR_TYPE_FAT16_LBA, 32: MBR_TYPE_FAT32_LBA}
# After the ESP: the backup GPT (33 sectors), then up to the next MiB.
GPT_TAIL = MIB


@dataclass(frozen=True)
class RawDisk:
    size: int  # bytes
    digest: bytes  # sha256 of the files on the disk: the seed of its ids, and of converted formats' ids


def syslinux_cfg(cmdline: str) -> bytes:
    """Boot the kernel at once with the initrd and the command line, as LinuxKit's raw-bios does; SYSLINUX's
    own messages also go to the first serial port (the console of cloud VMs)."""
    append = f"{cmdline} initrd=/{INITRD_NAME}".strip()
    return (f"SERIAL 0 115200\nDEFAULT linux\nLABEL linux\n  KERNEL /{KERNEL_NAME}\n"
            f"  APPEND {append}\n").encode()


def _check_size(size: int, needed: int, fmt: str) -> None:
    if size % SECTOR:
        raise UserError(f"--size {size} is not a whole number of {SECTOR}-byte sectors")
    if size < needed:
        raise UserError(f"{fmt}: the image needs at least {needed // MIB} MiB; --size is {_mib(size)} MiB",
                        hint=f"give --size {needed // MIB}M or more, or leave --size out")


def _mib(size: int) -> str:
    return f"{size / MIB:.6g}"


def _partition_size(files: list[tuple[str, Source]], reserved: int, directories: tuple[str, ...], extra: int,
                    size: int | None, size_unit: int, fmt: str) -> tuple[int, int]:
    """(disk size, FAT size): the FAT fills the disk but for `reserved` bytes (tables, alignment)."""
    names = [name for name, _ in files]
    needed_fat = fat_min_size([*(source_size(s) for _, s in files), extra],
                              len(fat_directories(names, directories)))
    if size is None:
        disk = align_up(reserved + needed_fat + HEADROOM, size_unit)
    else:
        _check_size(size, reserved + needed_fat, fmt)
        disk = size
    fat = (disk - reserved) // PARTITION_ALIGNMENT * PARTITION_ALIGNMENT
    return disk, fat


def _write_at(path: Path, pieces: list[tuple[int, bytes]]) -> None:
    with open(path, "r+b") as f:
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)


def _grow(path: Path, size: int) -> None:
    """Extend `path` to `size` bytes with a hole (the disk stays sparse)."""
    with open(path, "r+b") as f:
        f.truncate(size)


def write_bios_disk(bf: BootFiles, path: Path, *, epoch: int, size: int | None = None, size_unit: int = MIB,
                    fmt: str = "raw-bios") -> RawDisk:
    """An MBR disk at `path`: one active FAT partition at 1 MiB with the kernel, initrd.img, syslinux.cfg
    and `bf.extra`, SYSLINUX installed in it, SYSLINUX's mbr.bin as boot code."""
    mbr_code = require_file(SYSLINUX_MBR, SYSLINUX_PACKAGE).read_bytes()
    files: list[tuple[str, Source]] = [
        (KERNEL_NAME, bf.kernel.data or b""),
        (INITRD_NAME, bf.initrd),
        (SYSLINUX_CFG, syslinux_cfg(bf.cmdline)),
        *bf.extra,
    ]
    directories = (SYSLINUX_DIRECTORY,)
    disk_size, fat_size = _partition_size(files, PARTITION_ALIGNMENT, directories, SYSLINUX_SPACE, size,
                                          size_unit, fmt)
    digest = content_digest(files, b"bios %d" % disk_size)
    offset = PARTITION_ALIGNMENT
    path.write_bytes(b"")
    write_fat(path, files, label=BIOS_LABEL, epoch=epoch, size=fat_size, offset=offset, directories=directories)
    # syslinux writes its boot sector into the FAT and ldlinux.sys/ldlinux.c32 into the directory.
    run([SYSLINUX, "--install", "--offset", str(offset), "--directory", f"/{SYSLINUX_DIRECTORY}", path],
        env=tool_env(epoch), capture=True)
    partition = MbrPartition(first_lba=offset // SECTOR, sectors=fat_size // SECTOR,
                             type=FAT_MBR_TYPES[fat_bits(path, offset)], active=True)
    table = mbr([partition], disk_signature=derived_disk_signature(digest),
                boot_code=mbr_code[:MBR_BOOT_CODE_SIZE])
    _write_at(path, [(0, table)])
    _grow(path, disk_size)
    return RawDisk(disk_size, digest)


def write_efi_disk(bf: BootFiles, path: Path, workdir: Path, *, epoch: int, size: int | None = None,
                   size_unit: int = MIB, fmt: str = "raw-efi", options: FormatOptions | None = None) -> RawDisk:
    """A GPT disk at `path`: one EFI System Partition at 1 MiB holding a UKI of the boot files at the
    removable-media path of the architecture (EFI/BOOT/BOOTX64.EFI, BOOTAA64.EFI), and `bf.extra`."""
    options = options or FormatOptions()
    boot_path = options.arch_info.efi_boot_path  # what UEFI firmware boots from removable media (UEFI 2.10 3.5.1.1)
    uki = workdir / options.arch_info.efi_boot_file
    write_uki(uki, kernel=bf.kernel.data or b"", initrd=bf.initrd, cmdline=bf.cmdline, epoch=epoch,
              stub=stub_path(options), objcopy=options.arch_info.objcopy(), signer=options.signer)
    files: list[tuple[str, Source]] = [(boot_path, uki), *bf.extra]
    disk_size, fat_size = _partition_size(files, PARTITION_ALIGNMENT + GPT_TAIL, (), 0, size, size_unit, fmt)
    disk_sectors = disk_size // SECTOR
    first_lba = PARTITION_ALIGNMENT // SECTOR
    last_lba = first_lba + fat_size // SECTOR - 1  # GPT_TAIL keeps it below the backup table
    digest = content_digest(files, b"efi %d" % disk_size)
    path.write_bytes(b"")
    write_fat(path, files, label=ESP_LABEL, epoch=epoch, size=fat_size, offset=PARTITION_ALIGNMENT)
    esp = GptPartition(type_guid=ESP_TYPE_GUID, guid=derived_guid(digest, "esp"), first_lba=first_lba,
                       last_lba=last_lba, name=ESP_NAME)
    _grow(path, disk_size)
    _write_at(path, gpt_tables(disk_sectors, [esp], derived_guid(digest, "disk")))
    return RawDisk(disk_size, digest)


@contextlib.contextmanager
def work_directory(out: BinaryIO) -> Iterator[Path]:
    """A temporary directory next to the output (same filesystem: big sparse files stay cheap)."""
    name = getattr(out, "name", None)
    directory = os.path.dirname(name) if isinstance(name, str) and os.path.isabs(name) else None
    with tempfile.TemporaryDirectory(prefix=".linuxkit-py-disk-", dir=directory) as tmp:
        yield Path(tmp)


def write_raw_disk(rootfs: Rootfs, path: Path, firmware: str, workdir: Path, *, size_unit: int = MIB,
                   fmt: str) -> RawDisk:
    """The BIOS or EFI disk of `rootfs` at `path`, `rootfs.options.size` bytes or what fits (in `size_unit`s)."""
    if firmware not in FIRMWARES:
        raise ValueError(f"unknown firmware {firmware!r}")
    if firmware == "bios" and rootfs.options.arch != "amd64":
        raise UserError(f"{fmt}: SYSLINUX boots amd64 BIOS machines, not {rootfs.options.arch}",
                        hint="use raw-efi or qcow2-efi")
    boot = workdir / "boot"  # boot_files' own files, apart from ours
    boot.mkdir()
    if firmware == "efi" and rootfs.options.ab is not None:
        from linuxkit_py.formats.ab import write_ab_disk  # ab.py builds on this module

        return write_ab_disk(rootfs, path, workdir, size_unit=size_unit, fmt=fmt)
    with boot_files(rootfs, "disk", boot) as bf:
        if firmware == "bios":
            return write_bios_disk(bf, path, epoch=rootfs.epoch, size=rootfs.options.size, size_unit=size_unit,
                                   fmt=fmt)
        return write_efi_disk(bf, path, workdir, epoch=rootfs.epoch, size=rootfs.options.size,
                              size_unit=size_unit, fmt=fmt, options=rootfs.options)


def _disk_writer(firmware: str, fmt: str, size_unit: int = MIB) -> Writer:
    def write(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
        (out,) = outs
        with work_directory(out) as workdir:
            write_raw_disk(rootfs, Path(out.name), firmware, workdir, size_unit=size_unit, fmt=fmt)
    return write


register(Format(
    name="raw-bios",
    suffixes=("-bios.img",),
    write=_disk_writer("bios", "raw-bios"),
    tools=BIOS_TOOLS,
    arches=BIOS_ARCHES,
    description="MBR disk, one active FAT partition with kernel, initrd and SYSLINUX",
))
register(Format(
    name="raw-efi",
    signs=True,
    suffixes=("-efi.img",),
    write=_disk_writer("efi", "raw-efi"),
    tools=EFI_TOOLS,
    arches=EFI_ARCHES,
    assets=EFI_ASSETS,
    description="GPT disk with an EFI System Partition holding a UKI as EFI/BOOT/BOOTX64.EFI (BOOTAA64.EFI)",
))
register(Format(
    name="aws",
    suffixes=(".raw",),
    write=_disk_writer("bios", "aws", GIB),
    tools=BIOS_TOOLS,
    arches=BIOS_ARCHES,
    description="the raw-bios disk in whole GiB, for an EBS snapshot import",
))
