"""GRUB as the UEFI loader of the EFI ISOs: BOOTX64.EFI in a small FAT image (the El Torito UEFI entry),
reading grub.cfg, the kernel and the initrd from the ISO 9660 tree.

BOOTX64.EFI is made by `grub-mkimage` (Debian's grub-efi-amd64-bin modules, built in, so nothing is
loaded from the medium) with an embedded early config that finds this very ISO by a file named after
the content digest and sets $prefix there; GRUB's normal mode then reads $prefix/grub.cfg. The same
inputs give the same bytes (grub-mkimage stamps no time), and the FAT image is reproducible.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from linuxkit_py.errors import UserError
from linuxkit_py.formats import FormatOptions
from linuxkit_py.media import fat
from linuxkit_py.tools import require_file, run

GRUB_MKIMAGE = "grub-mkimage"
GRUB_PACKAGE = "grub-efi-amd64-bin"
GRUB_PLATFORM = "x86_64-efi"
GRUB_MODULE_DIR = Path("/usr/lib/grub") / GRUB_PLATFORM
GRUB_ASSET = "grub-efi"  # the target architecture's GRUB modules (pkg/bootassets.py)
# Built into BOOTX64.EFI: the menu, the loader, finding the ISO (also on a hybrid disk's partitions),
# reading ISO 9660, and a framebuffer for kernels that want one.
GRUB_MODULES = ("normal", "configfile", "echo", "test", "linux", "search", "search_fs_file", "iso9660",
                "part_msdos", "part_gpt", "efi_gop")
EFI_LOADER = "EFI/BOOT/BOOTX64.EFI"  # UEFI 2.10 §3.5.1.1: the removable-media boot path on x64
EFI_IMAGE_LABEL = "EFIBOOT"
GRUB_TOOLS = (GRUB_MKIMAGE, *fat.TOOLS)
ID_CHARS = 16
MENU_TITLE = "linuxkit-py"
# Arguments needing no quotes in GRUB's script language (anything else is single-quoted).
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_.,:=/+@%^-]+")


@dataclass(frozen=True)
class GrubTarget:
    """Which GRUB to build: grub-mkimage's platform, its module directory and where the loader goes."""

    platform: str = GRUB_PLATFORM
    module_dir: Path = GRUB_MODULE_DIR
    loader: str = EFI_LOADER  # the removable-media path of the architecture (BOOTX64.EFI, BOOTAA64.EFI)

    @classmethod
    def for_options(cls, options: FormatOptions) -> GrubTarget:
        arch = options.arch_info
        default = Path("/usr/lib/grub") / arch.grub_target
        return cls(arch.grub_target, options.asset(GRUB_ASSET, default), arch.efi_boot_path)


@dataclass(frozen=True)
class GrubBoot:
    """What GRUB boots: medium paths (no leading /) and the kernel command line."""

    directory: str  # holds grub.cfg and the id file; $prefix
    kernel: str
    initrd: str
    cmdline: str
    seed: bytes  # content digest: names the id file that tells this ISO from any other medium

    @property
    def id_file(self) -> str:
        return f"{self.directory}/{self.seed.hex()[:ID_CHARS]}.id"


def kernel_arguments(cmdline: str) -> list[str]:
    """Split a command line the way the kernel does (lib/cmdline.c next_arg): at blanks outside double
    quotes; the quotes around a whole argument or a whole value are not part of it."""
    args: list[str] = []
    current, in_quote, started = "", False, False
    for char in cmdline:
        if char.isspace() and not in_quote:
            if started:
                args.append(current)
            current, started = "", False
            continue
        if char == '"':
            in_quote = not in_quote
        current += char
        started = True
    if started:
        args.append(current)
    return [_unquote_argument(arg, cmdline) for arg in args]


def _unquote_argument(arg: str, cmdline: str) -> str:
    name, equals, value = arg.partition("=")
    if equals and not name.startswith('"') and value.startswith('"') and value.endswith('"') and len(value) > 1:
        arg = f"{name}={value[1:-1]}"
    elif arg.startswith('"') and arg.endswith('"') and len(arg) > 1:
        arg = arg[1:-1]
    if any(char in arg for char in "\"'\\"):
        # GRUB hands the kernel \" \' \\ for these, which the kernel does not unescape.
        raise UserError(f"kernel argument {arg!r} cannot pass through GRUB unchanged "
                        f"(quotes or backslashes inside it): {cmdline}",
                        hint="use iso-bios, raw-efi or uki, which pass the command line verbatim")
    return arg


def grub_word(text: str) -> str:
    """`text` as one word of GRUB's script language."""
    if _PLAIN_WORD.fullmatch(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def grub_config(grub: GrubBoot) -> str:
    """grub.cfg: boot the one entry at once. An argument with blanks reaches the kernel as
    "name=a b" (GRUB quotes it so), which the kernel reads as name="a b"."""
    args = "".join(" " + grub_word(arg) for arg in kernel_arguments(grub.cmdline))
    return (f"set timeout=0\n"
            f"menuentry '{MENU_TITLE}' {{\n"
            f"\tlinux /{grub.kernel}{args}\n"
            f"\tinitrd /{grub.initrd}\n"
            f"}}\n")


def grub_early_config(grub: GrubBoot) -> str:
    """Embedded in BOOTX64.EFI: find the ISO holding the id file (as a CD: the whole disc; as a disk:
    the whole disk, not the FAT partition GRUB was started from) and read grub.cfg there."""
    return (f"search --no-floppy --set=root --file /{grub.id_file}\n"
            f"set prefix=($root)/{grub.directory}\n")


def write_grub_efi(out: Path, grub: GrubBoot, epoch: int, target: GrubTarget | None = None) -> None:
    """BOOTX64.EFI (BOOTAA64.EFI): GRUB with its modules and the early config of `grub` built in."""
    target = target or GrubTarget()
    require_file(target.module_dir / "linux.mod", GRUB_PACKAGE)
    with tempfile.TemporaryDirectory(prefix="linuxkit-py-grub-") as tmp:
        config = Path(tmp) / "early.cfg"
        config.write_text(grub_early_config(grub))
        run([GRUB_MKIMAGE, "--format", target.platform, "--directory", target.module_dir,
             "--prefix", f"/{grub.directory}", "--config", config, "--output", out, *GRUB_MODULES],
            env=fat.tool_env(epoch), capture=True)


def write_efi_boot_image(out: Path, grub: GrubBoot, *, epoch: int, target: GrubTarget | None = None) -> int:
    """The El Torito UEFI boot image: a FAT filesystem holding only GRUB as EFI/BOOT/BOOTX64.EFI
    (BOOTAA64.EFI on arm64). Returns its size."""
    target = target or GrubTarget()
    loader = out.with_name(out.name + ".efi")
    write_grub_efi(loader, grub, epoch, target)
    try:
        size = fat.fat_min_size([loader.stat().st_size], directories=2)
        return fat.write_fat(out, [(target.loader, loader)], label=EFI_IMAGE_LABEL, epoch=epoch, size=size)
    finally:
        loader.unlink()
