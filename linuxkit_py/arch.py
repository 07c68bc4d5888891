"""Architectures: one frozen row of facts per architecture, looked up once from `--arch` and passed down.

Everything that differs between amd64 and arm64 (names, EFI file suffixes, GRUB's target, the qemu machine,
the serial console, the kernel's file, which formats exist) is a field here, so a module never asks
`if arch == "arm64"`. mkosi keeps the same facts on its Architecture enum.
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass

from linuxkit_py.errors import UserError

# The spellings users, images and uname use -> our (Debian's, OCI's) name.
ARCH_ALIASES = {
    "amd64": "amd64",
    "x86_64": "amd64",
    "arm64": "arm64",
    "aarch64": "arm64",
}


@dataclass(frozen=True)
class Arch:
    name: str  # Debian's and OCI's name: amd64, arm64
    uname: str  # the kernel's (uname -m) and qemu's name: x86_64, aarch64
    elf_machine: str  # pyelftools' e_machine: EM_X86_64, EM_AARCH64
    multiarch: str  # Debian's multiarch triplet, the library directory: x86_64-linux-gnu
    efi_suffix: str  # UEFI's removable-media name: BOOT{X64,AA64}.EFI, systemd's linux{x64,aa64}.efi.stub
    grub_target: str  # grub-mkimage -O
    kernel_file: str  # what /kernel is: bzImage (x86) or the plain Image (arm64; U-Boot's booti and the EFI stub)
    console: str  # the first serial console's device
    bios: bool  # has PC BIOS boot (SeaBIOS, syslinux): the -bios formats exist
    qemu: str  # qemu-system-* binary
    qemu_machine: tuple[str, ...]  # -machine/-cpu arguments for a VM of this architecture
    uefi_code: str  # Debian's UEFI firmware for qemu (code) and its variable store template
    uefi_vars: str
    uefi_package: str

    @property
    def efi_boot_file(self) -> str:
        """BOOTX64.EFI / BOOTAA64.EFI: the file UEFI firmware boots from removable media (UEFI 2.10 3.5.1.1)."""
        return f"BOOT{self.efi_suffix.upper()}.EFI"

    @property
    def efi_boot_path(self) -> str:
        return f"EFI/BOOT/{self.efi_boot_file}"

    def objcopy(self) -> str:
        """objcopy that writes this architecture's PE files: the host's own, or binutils' cross build."""
        return "objcopy" if self.name == host_arch() else f"{self.multiarch}-objcopy"

    @property
    def systemd_stub(self) -> str:
        """systemd-boot-efi's UKI stub for this architecture (the path inside the package)."""
        return f"usr/lib/systemd/boot/efi/linux{self.efi_suffix}.efi.stub"


ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            name="amd64", uname="x86_64", elf_machine="EM_X86_64", multiarch="x86_64-linux-gnu",
            efi_suffix="x64", grub_target="x86_64-efi", kernel_file="bzImage", console="ttyS0", bios=True,
            qemu="qemu-system-x86_64", qemu_machine=(),  # qemu's default PC (i440fx): SeaBIOS and OVMF both boot it
            uefi_code="/usr/share/OVMF/OVMF_CODE_4M.fd", uefi_vars="/usr/share/OVMF/OVMF_VARS_4M.fd",
            uefi_package="ovmf",
        ),
        Arch(
            name="arm64", uname="aarch64", elf_machine="EM_AARCH64", multiarch="aarch64-linux-gnu",
            efi_suffix="aa64", grub_target="arm64-efi", kernel_file="Image", console="ttyAMA0", bios=False,
            qemu="qemu-system-aarch64", qemu_machine=("-machine", "virt", "-cpu", "cortex-a57"),
            uefi_code="/usr/share/AAVMF/AAVMF_CODE.fd", uefi_vars="/usr/share/AAVMF/AAVMF_VARS.fd",
            uefi_package="qemu-efi-aarch64",
        ),
    )
}


def normalize_arch(arch: str | None) -> str:
    """`x86_64` -> `amd64`, `aarch64` -> `arm64`; None means the host's architecture."""
    if arch is None:
        arch = _platform.machine()
    try:
        return ARCH_ALIASES[arch.lower()]
    except KeyError:
        raise UserError(f"unsupported architecture {arch!r}",
                        hint="supported: amd64 (x86_64), arm64 (aarch64)") from None


def get_arch(arch: str | None) -> Arch:
    """The row for `arch` (any spelling; None: the host's)."""
    return ARCHES[normalize_arch(arch)]


def host_arch() -> str:
    return normalize_arch(None)


def uname_arch(arch: str) -> str:
    """The kernel's name for an architecture: amd64 -> x86_64."""
    row = ARCHES.get(arch)
    return row.uname if row else arch
