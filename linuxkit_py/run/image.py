"""What to boot: tell an output's kind from the path named on the command line, like `linuxkit run qemu`.

A path that exists is a file whose name says its kind (`.iso`, a disk image, `.efi`), or one file of a
kernel output (`NAME-kernel`, `NAME-initrd.img`, ...). A path that does not exist is the prefix of a
kernel output: `PATH-kernel` with `PATH-initrd.img`, `PATH-squashfs.img` or `PATH-erofs.img` next to it.
A squashfs/erofs root boots with its stage-one initramfs (`PATH-squashfs-initrd.img`, `PATH-erofs-initrd.img`)
when there is one, else (LinuxKit's outputs, a kernel with the drivers built in) with `root=/dev/vda`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from linuxkit_py.errors import UserError

KERNEL_SUFFIX = "-kernel"
CMDLINE_SUFFIX = "-cmdline"
# Root filesystems that boot with PREFIX-kernel, in LinuxKit's order of preference (squashfs first).
ROOT_SUFFIXES = {"-squashfs.img": "kernel+squashfs", "-erofs.img": "kernel+erofs", "-initrd.img": "kernel+initrd"}
# The stage-one initramfs that mounts a squashfs/erofs root (formats/rootimage.py).
STAGE1_SUFFIXES = {"-squashfs-initrd.img": "-squashfs.img", "-erofs-initrd.img": "-erofs.img"}
# Stage-one names end in -initrd.img too: they are matched first.
KERNEL_OUTPUT_SUFFIXES = (KERNEL_SUFFIX, CMDLINE_SUFFIX, *STAGE1_SUFFIXES, *ROOT_SUFFIXES)

ISO_SUFFIX = ".iso"
UKI_SUFFIX = ".efi"
# Disk image suffix -> qemu block format.
DISK_FORMATS = {".img": "raw", ".raw": "raw", ".qcow2": "qcow2", ".vhd": "vpc", ".vhdx": "vhdx", ".vmdk": "vmdk"}
# A name with this in it was built for UEFI (NAME-efi.iso, NAME-efi.img, NAME-efi.qcow2, NAME-efi-initrd.iso).
UEFI_MARK = "-efi"
# A Raspberry Pi SD-card image (raw-rpi): booted on qemu's raspi3b from its own boot partition (run/rpi.py).
RPI_SUFFIX = "-rpi.img"
RPI_ARCH = "arm64"


@dataclass(frozen=True)
class BootImage:
    kind: str  # kernel+initrd, kernel+squashfs, kernel+erofs, iso, disk, uki, rpi
    prefix: Path  # the output's path without its suffix (names the default state directory)
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""  # the contents of PREFIX-cmdline, if any
    image: Path | None = None  # the squashfs/erofs root, the ISO, the disk or the UKI
    image_format: str = "raw"  # qemu block format of `image`
    uefi: bool = False  # the file name says the output boots with UEFI only
    arch: str | None = None  # the architecture the file name says the output is for (NAME-rpi.img: arm64)

    @property
    def boots_kernel(self) -> bool:
        return self.kernel is not None


def kernel_image(kernel: Path, initrd: Path, cmdline: str = "") -> BootImage:
    """A kernel + initrd boot from explicit files."""
    prefix = kernel.with_name(kernel.name.removesuffix(KERNEL_SUFFIX))
    return BootImage("kernel+initrd", prefix, kernel=kernel, initrd=initrd, cmdline=cmdline)


def _read_cmdline(prefix: Path) -> str:
    path = _with_suffix(prefix, CMDLINE_SUFFIX)
    return path.read_text().strip() if path.is_file() else ""


def _with_suffix(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def _kernel_output(prefix: Path, named_root: str | None = None) -> BootImage:
    """PREFIX-kernel with the root filesystem named on the command line, else LinuxKit's first one found."""
    kernel = _with_suffix(prefix, KERNEL_SUFFIX)
    order = [named_root] if named_root in ROOT_SUFFIXES else []
    order += [suffix for suffix in ROOT_SUFFIXES if suffix != named_root]
    for suffix in order:
        root = _with_suffix(prefix, suffix)
        if root.is_file():
            kind = ROOT_SUFFIXES[suffix]
            cmdline = _read_cmdline(prefix)
            if kind == "kernel+initrd":
                return BootImage(kind, prefix, kernel=kernel, initrd=root, cmdline=cmdline)
            stage1 = next(_with_suffix(prefix, name) for name, image in STAGE1_SUFFIXES.items() if image == suffix)
            return BootImage(kind, prefix, kernel=kernel, initrd=stage1 if stage1.is_file() else None,
                             image=root, cmdline=cmdline)
    raise UserError(f"{kernel} has no root filesystem next to it: looked for "
                    + ", ".join(str(_with_suffix(prefix, suffix)) for suffix in reversed(ROOT_SUFFIXES)))


def _file_image(path: Path) -> BootImage | None:
    """The kind of an existing file, from its name; None when the name says nothing we boot."""
    suffix = path.suffix.lower()
    prefix = path.with_name(path.name[: len(path.name) - len(suffix)])
    uefi = UEFI_MARK in path.name.lower()
    if path.name.lower().endswith(RPI_SUFFIX):
        return BootImage("rpi", prefix, image=path, arch=RPI_ARCH)
    if suffix == ISO_SUFFIX:
        return BootImage("iso", prefix, image=path, uefi=uefi)
    if suffix in DISK_FORMATS:
        return BootImage("disk", prefix, image=path, image_format=DISK_FORMATS[suffix], uefi=uefi)
    if suffix == UKI_SUFFIX:
        return BootImage("uki", prefix, image=path, uefi=True)
    return None


def _disk_suffixes() -> str:
    return ", ".join(DISK_FORMATS)


# LinuxKit's `run qemu --kernel/--squashfs/--iso`: how PATH is read, whatever its name says.
FORCED_KINDS = {"kernel": "-initrd.img", "squashfs": "-squashfs.img", "iso": ISO_SUFFIX}


def forced_image(path: Path, kind: str) -> BootImage:
    """`path` read as `kind` (a FORCED_KINDS key): a kernel output with that root, or an ISO."""
    path = Path(path)
    if kind == "iso":
        if not path.is_file():
            raise UserError(f"--iso: {path} is not a file")
        prefix = path.with_name(path.name.removesuffix(ISO_SUFFIX))
        return BootImage("iso", prefix, image=path, uefi=UEFI_MARK in path.name.lower())
    root = FORCED_KINDS[kind]
    prefix = next((path.with_name(path.name.removesuffix(suffix)) for suffix in KERNEL_OUTPUT_SUFFIXES
                   if path.is_file() and path.name.endswith(suffix)), path)
    for needed in (KERNEL_SUFFIX, root):
        if not _with_suffix(prefix, needed).is_file():
            raise UserError(f"--{kind}: {_with_suffix(prefix, needed)} not found")
    return _kernel_output(prefix, named_root=root)


def detect_image(path: Path) -> BootImage:
    """The output at `path` (a file or a kernel output prefix), or a UserError saying what was looked for."""
    path = Path(path)
    if path.is_file():
        for suffix in KERNEL_OUTPUT_SUFFIXES:
            prefix = path.with_name(path.name.removesuffix(suffix))
            if path.name.endswith(suffix) and _with_suffix(prefix, KERNEL_SUFFIX).is_file():
                return _kernel_output(prefix, named_root=STAGE1_SUFFIXES.get(suffix, suffix))
        image = _file_image(path)
        if image is None:
            raise UserError(f"cannot tell how to boot {path}: the name ends in none of {KERNEL_SUFFIX}, "
                            f"-initrd.img, {ISO_SUFFIX}, {_disk_suffixes()}, {UKI_SUFFIX}")
        return image
    if _with_suffix(path, KERNEL_SUFFIX).is_file():
        return _kernel_output(path)
    raise UserError(f"nothing to run at {path}: looked for {path}{KERNEL_SUFFIX} with {path}-initrd.img, "
                    f"-squashfs.img or -erofs.img, and for {path} itself as a file ending in "
                    f"{ISO_SUFFIX}, {_disk_suffixes()} or {UKI_SUFFIX}")


# What an output's bytes say about its architecture (`run` without --arch boots it on the right qemu).
ARM64_IMAGE_MAGIC = (56, b"ARM\x64")  # Documentation/arch/arm64/booting.rst: the Image header's magic
X86_BOOT_MAGIC = (0x202, b"HdrS")  # Documentation/arch/x86/boot.rst: the bzImage setup header
PE_MACHINES = {0x8664: "amd64", 0xAA64: "arm64"}  # PE/COFF Machine of a UKI
# The FAT short names of the removable-media loaders (UEFI 2.10 3.5.1.1), as an ESP's directory stores them:
# found in a disk image, an ISO's El Torito image or a qcow2 (uncompressed clusters).
EFI_LOADER_NAMES = {b"BOOTAA64EFI": "arm64", b"BOOTX64 EFI": "amd64"}
SCAN_CHUNK = 1 << 20
SCAN_LIMIT = 256 << 20  # read at most this much of a disk looking for the loader's name


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _kernel_arch(kernel: Path) -> str | None:
    for (offset, magic), arch in ((ARM64_IMAGE_MAGIC, "arm64"), (X86_BOOT_MAGIC, "amd64")):
        if _read_at(kernel, offset, len(magic)) == magic:
            return arch
    return None


def _pe_arch(path: Path) -> str | None:
    head = _read_at(path, 0, 4096)
    if head[:2] != b"MZ" or len(head) < 0x40:
        return None
    pe = int.from_bytes(head[0x3C:0x40], "little")
    if head[pe:pe + 4] != b"PE\0\0":
        return None
    return PE_MACHINES.get(int.from_bytes(head[pe + 4:pe + 6], "little"))


def _loader_arch(path: Path) -> str | None:
    """The architecture of the first EFI loader name in the first SCAN_LIMIT bytes of `path`."""
    keep = max(len(name) for name in EFI_LOADER_NAMES) - 1
    tail = b""
    with open(path, "rb") as f:
        for _ in range(SCAN_LIMIT // SCAN_CHUNK):
            chunk = f.read(SCAN_CHUNK)
            if not chunk:
                return None
            window = tail + chunk
            found = [(window.find(name), arch) for name, arch in EFI_LOADER_NAMES.items() if name in window]
            if found:
                return min(found)[1]
            tail = window[-keep:]
    return None


def arch_in_bytes(image: BootImage) -> tuple[Path, str] | None:
    """The file of the output whose bytes show its architecture (kernel header, UKI machine, EFI loader name),
    and that architecture; None when they show none (a Raspberry Pi card: its run ignores --arch)."""
    if image.kind == "rpi":
        return None
    read: Callable[[Path], str | None]
    if image.kernel is not None:
        path, read = image.kernel, _kernel_arch
    elif image.image is not None:
        path, read = image.image, _pe_arch if image.kind == "uki" else _loader_arch
    else:
        return None
    try:
        arch = read(path)
    except OSError:
        return None
    return None if arch is None else (path, arch)


def sniff_arch(image: BootImage) -> str | None:
    """The architecture the output's name (NAME-rpi.img) or its own bytes show, or None."""
    if image.arch is not None:
        return image.arch
    found = arch_in_bytes(image)
    return None if found is None else found[1]
