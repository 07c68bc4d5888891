"""Disk formats made from the raw disks of formats/raw.py: `qcow2-bios`, `qcow2-efi`, `vhd`, `dynamic-vhd` and
`vmdk` with `qemu-img convert`, and `gcp`: the BIOS disk as `disk.raw` in a .tar.gz, as Compute Engine
imports images.

qemu-img writes a creation time and a random UUID into VHD footers and a random content id (CID) into
VMDK descriptors; we overwrite them with the build epoch and values derived from the disk's files, so
the same spec gives the same bytes. VHD and VMDK use the BIOS disk, as LinuxKit's (Azure, Hyper-V and
VMware boot them with a BIOS by default).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from linuxkit_py.archive.compress import compressed_writer
from linuxkit_py.archive.entry import Kind
from linuxkit_py.archive.tar import BLOCK, END_OF_ARCHIVE, TYPEFLAGS, ustar_header
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Format, Rootfs, Writer, register
from linuxkit_py.formats.raw import (
    BIOS_ARCHES,
    BIOS_TOOLS,
    EFI_ARCHES,
    EFI_ASSETS,
    EFI_TOOLS,
    GIB,
    RawDisk,
    work_directory,
    write_raw_disk,
)
from linuxkit_py.media.partitions import MIB, derived_guid
from linuxkit_py.tools import run

QEMU_IMG = "qemu-img"

# Virtual Hard Disk Image Format Specification (Microsoft, 2006), "Hard Disk Footer Format".
VHD_FOOTER_SIZE = 512
VHD_COOKIE = b"conectix"
VHD_TIME_STAMP = 24  # seconds since 2000-01-01T00:00:00Z, big-endian
VHD_CHECKSUM = 64  # one's complement of the sum of the footer's bytes, this field left out
VHD_UNIQUE_ID = 68
VHD_UUID_SIZE = 16
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z as a Unix time
# VMware "Virtual Disk Format 1.1": the sparse extent header, then the embedded text descriptor.
VMDK_MAGIC = b"KDMV"
VMDK_HEADER = struct.Struct("<4sII QQQQ")  # magic, version, flags, capacity, grainSize, descriptorOffset/Size
VMDK_SECTOR = 512
VMDK_CID = re.compile(rb"^CID=[0-9a-f]{1,8}$", re.MULTILINE)  # qemu prints it without leading zeros
VMDK_NAME = "disk.vmdk"  # the extent name inside the descriptor, as LinuxKit's vmdk output has

GCP_DISK_NAME = "disk.raw"  # the one name Compute Engine imports
GCP_MODE = 0o644
CHUNK = 1 << 20
ZEROS = bytes(CHUNK)


def vhd_footer_checksum(footer: bytes) -> int:
    without = footer[:VHD_CHECKSUM] + bytes(4) + footer[VHD_CHECKSUM + 4 :]
    return ~sum(without) & 0xFFFFFFFF


def fixed_vhd_footer(footer: bytes, *, epoch: int, unique_id: bytes) -> bytes:
    """`footer` with its time stamp, unique id and checksum set."""
    if footer[: len(VHD_COOKIE)] != VHD_COOKIE or len(footer) != VHD_FOOTER_SIZE:
        raise ValueError("not a VHD footer")
    patched = bytearray(footer)
    struct.pack_into(">I", patched, VHD_TIME_STAMP, max(0, epoch - VHD_EPOCH) & 0xFFFFFFFF)
    patched[VHD_UNIQUE_ID : VHD_UNIQUE_ID + VHD_UUID_SIZE] = unique_id
    struct.pack_into(">I", patched, VHD_CHECKSUM, vhd_footer_checksum(bytes(patched)))
    return bytes(patched)


def patch_vhd(path: Path, disk: RawDisk, epoch: int) -> None:
    """Fix the footer at the end of a VHD and, for dynamic VHDs, its copy at the start."""
    unique_id = derived_guid(disk.digest, "vhd").bytes
    with open(path, "r+b") as f:
        size = f.seek(0, 2)
        places = [size - VHD_FOOTER_SIZE]
        f.seek(0)
        if f.read(len(VHD_COOKIE)) == VHD_COOKIE:  # a dynamic disk starts with a copy of the footer
            places.append(0)
        for place in places:
            f.seek(place)
            footer = fixed_vhd_footer(f.read(VHD_FOOTER_SIZE), epoch=epoch, unique_id=unique_id)
            f.seek(place)
            f.write(footer)


def patch_vmdk(path: Path, disk: RawDisk, epoch: int) -> None:
    """Set the content id (CID) of a VMDK's embedded descriptor: a text ended and padded by NULs to its
    sectors."""
    with open(path, "r+b") as f:
        magic, _version, _flags, _capacity, _grain, offset, sectors = VMDK_HEADER.unpack(f.read(VMDK_HEADER.size))
        if magic != VMDK_MAGIC or not offset:
            raise ValueError(f"{path}: not a VMDK sparse extent with an embedded descriptor")
        f.seek(offset * VMDK_SECTOR)
        area = f.read(sectors * VMDK_SECTOR)
        cid = derived_guid(disk.digest, "vmdk-cid").hex[:8].encode()
        # The descriptor is a C string. qemu rewrites it in place with a new random CID on the first write,
        # and a CID two digits shorter than the one before leaves the old text's last bytes after the NUL:
        # whatever follows the first NUL goes, or those bytes would be in the image (1 conversion in ~250).
        text, count = VMDK_CID.subn(b"CID=" + cid, area.split(b"\0", 1)[0])
        if count != 1 or len(text) > len(area):
            raise ValueError(f"{path}: expected one CID line in a descriptor of {len(area)} bytes, found {count}")
        f.seek(offset * VMDK_SECTOR)
        f.write(text.ljust(len(area), b"\0"))


@dataclass(frozen=True)
class Conversion:
    firmware: str  # the raw disk it starts from: bios or efi
    qemu_format: str  # qemu-img's -O
    options: str = ""  # qemu-img's -o
    patch: Callable[[Path, RawDisk, int], None] | None = None
    # qemu-img writes this name into the image: convert to it in the work directory, then copy.
    internal_name: str | None = None


def qemu_img_convert(source: Path, target: Path, conversion: Conversion) -> None:
    options = ["-o", conversion.options] if conversion.options else []
    run([QEMU_IMG, "convert", "-f", "raw", "-O", conversion.qemu_format, *options, source, target], capture=True)


def _converter(conversion: Conversion, fmt: str) -> Writer:
    def write(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
        (out,) = outs
        with work_directory(out) as workdir:
            raw = workdir / "disk.img"
            disk = write_raw_disk(rootfs, raw, conversion.firmware, workdir, fmt=fmt)
            target = workdir / conversion.internal_name if conversion.internal_name else Path(out.name)
            qemu_img_convert(raw, target, conversion)
            if conversion.patch is not None:
                conversion.patch(target, disk, rootfs.epoch)
            if conversion.internal_name:
                with open(target, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
    return write


def sparse_file_chunks(path: Path) -> Iterator[bytes]:
    """The bytes of `path`, its holes (SEEK_HOLE) given as zeros without reading them."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        position = 0
        while position < size:
            try:
                data = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: only a hole up to the end
                    raise
                data = size
            while position < data:
                count = min(CHUNK, data - position)
                yield ZEROS if count == CHUNK else bytes(count)
                position += count
            hole = os.lseek(fd, position, os.SEEK_HOLE) if position < size else size
            while position < hole:
                chunk = os.pread(fd, min(CHUNK, hole - position), position)
                if not chunk:
                    raise OSError(f"{path}: shorter than {size} bytes")
                yield chunk
                position += len(chunk)


def write_disk_tar(path: Path, name: str, out: BinaryIO, epoch: int) -> None:
    """A tar of one member, the file `path` as `name`: what formats/tar.write_tar writes for it, but the
    file's holes (most of a GiB-sized disk) are not read."""
    size = os.path.getsize(path)
    out.write(ustar_header(name=name.encode(), mode=GCP_MODE, uid=0, gid=0, size=size, mtime=epoch,
                           typeflag=TYPEFLAGS[Kind.FILE]))
    for chunk in sparse_file_chunks(path):
        out.write(chunk)
    out.write(bytes(-size % BLOCK))
    out.write(END_OF_ARCHIVE)


def write_gcp(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    """`gcp`: NAME.img.tar.gz, a gzip tar of one member, disk.raw: the BIOS disk in whole GiB."""
    (out,) = outs
    if rootfs.options.size is not None and rootfs.options.size % GIB:
        raise UserError(f"gcp: --size {rootfs.options.size / MIB:.6g} MiB is not a whole number of GiB",
                        hint="Compute Engine imports disks of whole GiB: e.g. --size 1G")
    with work_directory(out) as workdir:
        raw = workdir / GCP_DISK_NAME
        write_raw_disk(rootfs, raw, "bios", workdir, size_unit=GIB, fmt="gcp")
        # Most of the disk is zeros: blocks deflated once come from the cache after.
        sink = compressed_writer(out, "gzip", block_cache=rootfs.block_cache())
        try:
            write_disk_tar(raw, GCP_DISK_NAME, cast(BinaryIO, sink), rootfs.epoch)
            sink.close()
        except BaseException:
            sink.abort()
            raise


def _register_conversion(name: str, suffix: str, conversion: Conversion, description: str) -> None:
    bios = conversion.firmware == "bios"
    register(Format(name=name, suffixes=(suffix,), write=_converter(conversion, name),
                    tools=(*(BIOS_TOOLS if bios else EFI_TOOLS), QEMU_IMG), description=description,
                    arches=BIOS_ARCHES if bios else EFI_ARCHES, assets=() if bios else EFI_ASSETS, signs=not bios))


_register_conversion("qcow2-bios", ".qcow2", Conversion("bios", "qcow2"), "the raw-bios disk as qcow2")
_register_conversion("qcow2-efi", "-efi.qcow2", Conversion("efi", "qcow2"), "the raw-efi disk as qcow2")
_register_conversion("vhd", ".vhd", Conversion("bios", "vpc", "subformat=fixed,force_size", patch_vhd),
                     "the raw-bios disk as a fixed VHD (Azure, Hyper-V)")
# LinuxKit names this one NAME.vhd too: building both vhd formats into one directory keeps the last.
_register_conversion("dynamic-vhd", ".vhd", Conversion("bios", "vpc", "subformat=dynamic,force_size", patch_vhd),
                     "the raw-bios disk as a dynamic VHD")
_register_conversion("vmdk", ".vmdk",
                     Conversion("bios", "vmdk", "adapter_type=lsilogic,subformat=streamOptimized,compat6",
                                patch_vmdk, internal_name=VMDK_NAME),
                     "the raw-bios disk as a stream-optimized VMDK (VMware)")
register(Format(
    name="gcp",
    suffixes=(".img.tar.gz",),
    write=write_gcp,
    tools=BIOS_TOOLS,
    arches=BIOS_ARCHES,
    description="the raw-bios disk in whole GiB as disk.raw in a .tar.gz, for a Compute Engine image import",
))
