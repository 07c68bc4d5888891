"""Unified kernel images (UKI): systemd's EFI stub with the kernel, initrd, command line and os-release as
PE sections, one file that UEFI firmware boots directly (as EFI/BOOT/BOOTX64.EFI) or from systemd-boot.

Debian 12 has no ukify: like systemd-stub(7) shows, objcopy adds the sections `.osrel`, `.cmdline`,
`.linux` and `.initrd` at virtual addresses past the stub's own sections, each 4 KiB aligned. The
addresses come from the stub's PE headers (Microsoft PE/COFF specification: "MS-DOS stub" e_lfanew at
0x3C, "COFF File Header", "Optional Header", "Section Table").

The `uki` format (NAME.efi) is this file alone.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from linuxkit_py.archive.entry import ContentReader, Data
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Format, FormatOptions, Rootfs, register
from linuxkit_py.formats.bootfiles import boot_files
from linuxkit_py.sign import Signer
from linuxkit_py.sign.pe import update_checksum
from linuxkit_py.tools import require, require_file, run

OBJCOPY = "objcopy"
STUB_PACKAGE = "systemd-boot-efi"
HOST_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")  # amd64's, when the build names none
# What the boot menu of systemd-boot shows for the image (LinuxKit's UKIs have the same NAME).
OS_RELEASE = b'NAME="LinuxKit"\nID=linuxkit\n'
SECTION_ALIGNMENT = 0x1000
# In this order, as systemd-stub(7) and ukify lay them out.
SECTIONS = (".osrel", ".cmdline", ".linux", ".initrd")

# PE/COFF offsets.
DOS_E_LFANEW = 0x3C
PE_SIGNATURE = b"PE\0\0"
COFF_HEADER_SIZE = 20
COFF_NUMBER_OF_SECTIONS = 2  # within the COFF header
COFF_TIME_DATE_STAMP = 4
COFF_SIZE_OF_OPTIONAL_HEADER = 16
OPTIONAL_MAGIC_PE32_PLUS = 0x20B
OPTIONAL_IMAGE_BASE = 24  # PE32+: 8 bytes
OPTIONAL_CHECKSUM = 64
SECTION_HEADER_SIZE = 40
SECTION_VIRTUAL_SIZE = 8
SECTION_VIRTUAL_ADDRESS = 12


@dataclass(frozen=True)
class PeLayout:
    image_base: int
    end_of_sections: int  # the highest section's VirtualAddress + VirtualSize (an RVA)
    time_stamp_offset: int  # file offsets of TimeDateStamp and CheckSum
    checksum_offset: int


def pe_layout(header: bytes) -> PeLayout:
    """Image base and end of the last section of a PE32+ image, from the first bytes of the file."""
    (pe_offset,) = struct.unpack_from("<I", header, DOS_E_LFANEW)
    if header[pe_offset : pe_offset + 4] != PE_SIGNATURE:
        raise ValueError("not a PE image: no PE signature")
    coff = pe_offset + 4
    (sections,) = struct.unpack_from("<H", header, coff + COFF_NUMBER_OF_SECTIONS)
    (optional_size,) = struct.unpack_from("<H", header, coff + COFF_SIZE_OF_OPTIONAL_HEADER)
    optional = coff + COFF_HEADER_SIZE
    (magic,) = struct.unpack_from("<H", header, optional)
    if magic != OPTIONAL_MAGIC_PE32_PLUS:
        raise ValueError(f"not a PE32+ image (optional header magic {magic:#x})")
    (image_base,) = struct.unpack_from("<Q", header, optional + OPTIONAL_IMAGE_BASE)
    table = optional + optional_size
    end = 0
    for index in range(sections):
        entry = table + index * SECTION_HEADER_SIZE
        size, address = struct.unpack_from("<II", header, entry + SECTION_VIRTUAL_SIZE)
        end = max(end, address + size)
    return PeLayout(image_base, end, coff + COFF_TIME_DATE_STAMP, optional + OPTIONAL_CHECKSUM)


def set_pe_time_stamp(path: Path, epoch: int) -> None:
    """Set the PE TimeDateStamp (objcopy 2.40 writes the current time there) and fix the checksum."""
    with open(path, "r+b") as f:
        layout = pe_layout(f.read(4096))
        f.seek(layout.time_stamp_offset)
        f.write(struct.pack("<I", epoch & 0xFFFFFFFF))
    update_checksum(path, layout.checksum_offset)


def section_addresses(layout: PeLayout, sizes: list[int]) -> list[int]:
    """Virtual addresses (VMAs, image base included) for new sections of `sizes`, in order, each
    SECTION_ALIGNMENT-aligned past the stub's sections and the section before."""
    addresses = []
    next_rva = layout.end_of_sections
    for size in sizes:
        rva = -(-next_rva // SECTION_ALIGNMENT) * SECTION_ALIGNMENT
        addresses.append(layout.image_base + rva)
        next_rva = rva + size
    return addresses


def stub_path(options: FormatOptions | None = None) -> Path:
    """The systemd stub for the build's architecture: the one the build fetched, else the host's."""
    if options is None:
        return require_file(HOST_STUB, STUB_PACKAGE)
    return require_file(options.asset("efi-stub", Path("/") / options.arch_info.systemd_stub), STUB_PACKAGE)


def write_uki(out: BinaryIO | Path, *, kernel: Data, initrd: Path, cmdline: str,
              os_release: bytes = OS_RELEASE, epoch: int = 0, stub: Path | None = None,
              objcopy: str = OBJCOPY, signer: Signer | None = None) -> None:
    """Write a UKI of `kernel`, `initrd`, `cmdline` and `os_release` to `out` (a file or an open file);
    its PE time stamp is `epoch`; `stub` is systemd's EFI stub (default: the host's amd64 one), `objcopy`
    one that knows the stub's architecture (Arch.objcopy()); `signer` signs it for Secure Boot (which
    covers the command line and initrd inside: systemd-stub ignores a command line given by the loader
    when Secure Boot is on)."""
    stub = stub or stub_path()
    require(objcopy)
    with tempfile.TemporaryDirectory(prefix="linuxkit-py-uki-") as tmp:
        work = Path(tmp)
        kernel_file = work / "linux"
        with open(kernel_file, "wb") as f, ContentReader() as reader:
            for chunk in reader.chunks(kernel):
                f.write(chunk)
        (work / "osrel").write_bytes(os_release)
        (work / "cmdline").write_bytes(cmdline.encode())
        files = {".osrel": work / "osrel", ".cmdline": work / "cmdline", ".linux": kernel_file, ".initrd": initrd}
        with open(stub, "rb") as f:
            layout = pe_layout(f.read(4096))
        addresses = section_addresses(layout, [files[name].stat().st_size for name in SECTIONS])
        argv: list[str | Path] = [objcopy]
        for name, address in zip(SECTIONS, addresses, strict=True):
            argv += ["--add-section", f"{name}={files[name]}", "--change-section-vma", f"{name}={address:#x}"]
        target = out if isinstance(out, Path) else work / "uki.efi"
        run([*argv, stub, target], capture=True, env={**os.environ, "LC_ALL": "C", "TZ": "UTC"})
        set_pe_time_stamp(target, epoch)
        if signer is not None:
            signer.sign_pe(target)
        if not isinstance(out, Path):
            with open(target, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)


def write_uki_format(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    """`uki`: NAME.efi."""
    (out,) = outs
    with tempfile.TemporaryDirectory(prefix="linuxkit-py-uki-") as tmp, \
            boot_files(rootfs, "disk", Path(tmp)) as bf:
        if bf.extra:
            names = ", ".join(name for name, _ in bf.extra)
            raise UserError(f"a UKI is one file and cannot carry {names}",
                            hint="use raw-efi, whose ESP holds the UKI and these files")
        write_uki(out, kernel=bf.kernel.data or b"", initrd=bf.initrd, cmdline=bf.cmdline,
                  epoch=rootfs.epoch, stub=stub_path(rootfs.options), objcopy=rootfs.options.arch_info.objcopy(),
                  signer=rootfs.options.signer)


register(Format(
    name="uki",
    signs=True,
    suffixes=(".efi",),
    write=write_uki_format,
    tools=(OBJCOPY,),
    assets=("efi-stub",),
    description="a unified kernel image: systemd's EFI stub with kernel, initrd, command line and os-release",
))
