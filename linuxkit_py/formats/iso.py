"""The ISO outputs: `iso-bios` (NAME.iso), `iso-efi` (NAME-efi.iso), `iso-efi-initrd` (NAME-efi-initrd.iso).

Each holds the kernel and the initrd from `boot_files` (and, in root-on-media mode, the root image
under the name boot_files gives it) and boots them:

* iso-bios: ISOLINUX from the El Torito BIOS entry; isohybrid, so the same file also boots as a disk.
* iso-efi: iso-bios plus an El Torito UEFI entry, a FAT image holding GRUB as EFI/BOOT/BOOTX64.EFI,
  which reads the kernel and initrd from the ISO 9660 tree; hybrid for BIOS and UEFI disks too.
* iso-efi-initrd: LinuxKit's layout (/kernel, /initrd.img, /EFI/BOOT/grub.cfg) on a UEFI-only CD,
  always with the kernel + initrd boot.

Everything is reproducible: dates are the build epoch, ids derive from a digest of the contents.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from linuxkit_py.archive.entry import ContentReader
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Format, Rootfs, register
from linuxkit_py.formats.bootfiles import BootFiles, boot_files
from linuxkit_py.formats.iso_grub import (
    EFI_IMAGE_LABEL,
    GRUB_ASSET,
    GRUB_TOOLS,
    GrubBoot,
    GrubTarget,
    grub_config,
    write_efi_boot_image,
)
from linuxkit_py.formats.raw import EFI_ASSETS
from linuxkit_py.formats.uki import stub_path, write_uki
from linuxkit_py.media import fat
from linuxkit_py.media.iso9660 import MAX_LOAD_SECTORS, SECTOR, IsoImage
from linuxkit_py.tools import require_file

VOLUME_ID = "LINUXKIT"
ISOLINUX_PACKAGE = "isolinux"
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_PACKAGE = "syslinux-common"
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")

# Where things go on the media of iso-bios and iso-efi.
KERNEL = "boot/kernel"
INITRD = "boot/initrd.img"
ISOLINUX_DIR = "isolinux"
BOOT_CATALOG = "isolinux/boot.cat"
GRUB_DIR = "boot/grub"
EFI_IMAGE = "boot/efiboot.img"
# LinuxKit's mkimage-iso-efi-initrd layout.
INITRD_ISO_KERNEL = "kernel"
INITRD_ISO_INITRD = "initrd.img"
INITRD_ISO_GRUB_DIR = "EFI/BOOT"
INITRD_ISO_EFI_IMAGE = "boot.img"
INITRD_ISO_CATALOG = "boot.catalog"


def isolinux_config(cmdline: str, kernel: str = KERNEL, initrd: str = INITRD) -> str:
    """isolinux.cfg: boot the one entry at once. APPEND passes the command line verbatim (on one line:
    a line break is a blank to the kernel, and the end of the directive to ISOLINUX)."""
    cmdline = " ".join(cmdline.splitlines())
    return (f"DEFAULT linux\nLABEL linux\n  KERNEL /{kernel}\n  INITRD /{initrd}\n"
            f"  APPEND {cmdline}\n")


def content_seed(fmt: str, bf: BootFiles) -> bytes:
    """sha256 of everything on the medium that comes from the build: the source of every id."""
    digest = hashlib.sha256(f"{fmt}\0{bf.cmdline}\0".encode())
    with ContentReader() as reader:
        for chunk in reader.chunks(bf.kernel.data):
            digest.update(chunk)
    for name, path in [("initrd", bf.initrd), *bf.extra]:
        digest.update(f"\0{name}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.digest()


@contextlib.contextmanager
def _workdir(out: BinaryIO) -> Iterator[Path]:
    """A temporary directory next to the output (same filesystem, removed at the end)."""
    name = getattr(out, "name", None)
    parent = os.path.dirname(name) if isinstance(name, str) and os.path.isabs(name) else None
    with tempfile.TemporaryDirectory(prefix=".iso-", dir=parent) as tmp:
        yield Path(tmp)


def _add_boot_files(iso: IsoImage, bf: BootFiles, kernel: str, initrd: str, signed: Path | None = None) -> None:
    """The kernel (`signed`: its signed copy), the initrd and the extra files (root image) on the ISO."""
    iso.add_file(kernel, signed or bf.kernel.data or b"")
    iso.add_file(initrd, bf.initrd)
    for name, path in bf.extra:
        iso.add_file(name, path)


def _add_isolinux(iso: IsoImage, cmdline: str) -> None:
    iso.add_file(f"{ISOLINUX_DIR}/isolinux.bin", require_file(ISOLINUX_BIN, ISOLINUX_PACKAGE))
    iso.add_file(f"{ISOLINUX_DIR}/ldlinux.c32", require_file(LDLINUX_C32, LDLINUX_PACKAGE))
    iso.add_file(f"{ISOLINUX_DIR}/isolinux.cfg", isolinux_config(cmdline).encode())
    iso.add_bios_boot(f"{ISOLINUX_DIR}/isolinux.bin", BOOT_CATALOG)


def _add_grub(iso: IsoImage, grub: GrubBoot, work: Path, rootfs: Rootfs, image: str, catalog: str,
              bf: BootFiles) -> None:
    """GRUB's config and id file in the ISO 9660 tree, and the El Torito UEFI entry for its FAT image.
    Signed (--sign-key), the FAT image holds a signed UKI of the boot files instead of GRUB: Debian's GRUB
    starts no kernel under Secure Boot without shim ("shim_lock protocol not found")."""
    iso.add_file(f"{grub.directory}/grub.cfg", grub_config(grub).encode())
    iso.add_file(grub.id_file, grub.id_file.rsplit("/", 1)[1].encode() + b"\n")
    efi_image = work / "efiboot.img"
    if rootfs.options.signer is not None:
        size = _write_uki_boot_image(efi_image, rootfs, bf)
    else:
        size = write_efi_boot_image(efi_image, grub, epoch=rootfs.epoch,
                                    target=GrubTarget.for_options(rootfs.options))
    iso.add_file(image, efi_image)
    iso.add_efi_boot(image, catalog, size)


def _write_uki_boot_image(out: Path, rootfs: Rootfs, bf: BootFiles) -> int:
    """The El Torito UEFI image of a signed ISO: a FAT holding a signed UKI at the removable-media path."""
    options = rootfs.options
    uki = out.with_name("uki.efi")
    write_uki(uki, kernel=bf.kernel.data or b"", initrd=bf.initrd, cmdline=bf.cmdline, epoch=rootfs.epoch,
              stub=stub_path(options), objcopy=options.arch_info.objcopy(), signer=options.signer)
    try:
        size = fat.fat_min_size([uki.stat().st_size], directories=2)
        if -(-size // SECTOR) > MAX_LOAD_SECTORS:
            raise UserError(f"a signed ISO boots UEFI from a UKI in its El Torito image, which holds at most "
                            f"{MAX_LOAD_SECTORS * SECTOR >> 20} MiB; this one needs {size >> 20} MiB",
                            hint="add --root squashfs (the UKI then holds only stage one), or use raw-efi")
        return fat.write_fat(out, [(options.arch_info.efi_boot_path, uki)], label=EFI_IMAGE_LABEL,
                             epoch=rootfs.epoch, size=size)
    finally:
        uki.unlink()


def _signed_kernel(rootfs: Rootfs, bf: BootFiles, work: Path) -> Path | None:
    """With --sign-key: the kernel (an EFI stub: GRUB hands it to the firmware, which checks it) signed in
    `work`; a kernel that is signed already (Debian's) keeps that signature and gets ours besides."""
    if rootfs.options.signer is None:
        return None
    path = work / "kernel.signed"
    with open(path, "wb") as f, ContentReader() as reader:
        for chunk in reader.chunks(bf.kernel.data):
            f.write(chunk)
    rootfs.options.signer.sign_pe(path)
    return path


def write_iso_bios(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    """NAME.iso: ISOLINUX (El Torito BIOS), kernel + initrd, isohybrid MBR."""
    (out,) = outs
    with _workdir(out) as work, boot_files(rootfs, "cdrom", work) as bf:
        seed = content_seed("iso-bios", bf)
        with IsoImage(volume_id=VOLUME_ID, epoch=rootfs.epoch, seed=seed) as iso:
            _add_boot_files(iso, bf, KERNEL, INITRD)
            _add_isolinux(iso, bf.cmdline)
            iso.make_hybrid()
            iso.write(out)


def write_iso_efi(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    """NAME-efi.iso: GRUB in an El Torito UEFI FAT image, ISOLINUX for BIOS (PCs only), hybrid for both."""
    bios = rootfs.options.arch_info.bios
    (out,) = outs
    with _workdir(out) as work, boot_files(rootfs, "cdrom", work) as bf:
        seed = content_seed("iso-efi", bf)
        grub = GrubBoot(directory=GRUB_DIR, kernel=KERNEL, initrd=INITRD, cmdline=bf.cmdline, seed=seed)
        with IsoImage(volume_id=VOLUME_ID, epoch=rootfs.epoch, seed=seed) as iso:
            _add_boot_files(iso, bf, KERNEL, INITRD, _signed_kernel(rootfs, bf, work))
            if bios:
                _add_isolinux(iso, bf.cmdline)  # first: the isohybrid MBR code starts the first entry
            _add_grub(iso, grub, work, rootfs, EFI_IMAGE, BOOT_CATALOG, bf)
            if bios:
                iso.make_hybrid(efi=True)
            iso.write(out)


def write_iso_efi_initrd(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    """NAME-efi-initrd.iso: as LinuxKit, /kernel and /initrd.img started by GRUB from a UEFI-only CD."""
    if rootfs.options.root != "ram":
        raise UserError(f"iso-efi-initrd always boots from its initrd, not --root {rootfs.options.root}",
                        hint="use iso-efi for the root filesystem on the medium")
    (out,) = outs
    with _workdir(out) as work, boot_files(rootfs, "cdrom", work) as bf:
        seed = content_seed("iso-efi-initrd", bf)
        grub = GrubBoot(directory=INITRD_ISO_GRUB_DIR, kernel=INITRD_ISO_KERNEL, initrd=INITRD_ISO_INITRD,
                        cmdline=bf.cmdline, seed=seed)
        with IsoImage(volume_id=VOLUME_ID, epoch=rootfs.epoch, seed=seed) as iso:
            _add_boot_files(iso, bf, INITRD_ISO_KERNEL, INITRD_ISO_INITRD, _signed_kernel(rootfs, bf, work))
            _add_grub(iso, grub, work, rootfs, INITRD_ISO_EFI_IMAGE, INITRD_ISO_CATALOG, bf)
            iso.write(out)


register(Format(
    name="iso-bios",
    suffixes=(".iso",),
    write=write_iso_bios,
    arches=("amd64",),
    description="hybrid ISO (CD or disk) booting kernel + initrd with ISOLINUX under BIOS",
))
register(Format(
    name="iso-efi",
    signs=True,
    suffixes=("-efi.iso",),
    write=write_iso_efi,
    tools=GRUB_TOOLS,
    assets=(GRUB_ASSET, *EFI_ASSETS),
    description="hybrid ISO booting kernel + initrd with GRUB under UEFI (and ISOLINUX under BIOS)",
))
register(Format(
    name="iso-efi-initrd",
    signs=True,
    suffixes=("-efi-initrd.iso",),
    write=write_iso_efi_initrd,
    tools=GRUB_TOOLS,
    assets=(GRUB_ASSET, *EFI_ASSETS),
    description="UEFI CD with /kernel and /initrd.img started by GRUB (LinuxKit's layout)",
))
