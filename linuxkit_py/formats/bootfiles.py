"""What a bootable medium (ISO, disk, UKI) carries: kernel, initrd, command line, and in root-on-media mode
the root filesystem image. Every medium format gets these from `boot_files`, so all of them boot the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from linuxkit_py.errors import UserError
from linuxkit_py.formats import Rootfs
from linuxkit_py.formats.initrd import _block_cache, split_boot, write_initrd
from linuxkit_py.rootfs.entry import Entry

MEDIA = ("cdrom", "disk")


@dataclass
class BootFiles:
    kernel: Entry  # the kernel (a FILE entry: its data is a FileRegion or bytes)
    initrd: Path  # the complete initrd (ucode cpio first, when the kernel image has one)
    cmdline: str  # the spec's command line plus what the boot mode needs (e.g. root=...)
    extra: list[tuple[str, Path]] = field(default_factory=list)  # (name on the medium, file) e.g. the root image


@contextlib.contextmanager
def boot_files(rootfs: Rootfs, medium: str, workdir: Path) -> Iterator[BootFiles]:
    """Write the initrd (and root image) into `workdir` and describe what goes on the medium."""
    if medium not in MEDIA:
        raise ValueError(f"unknown medium {medium!r}")
    boot = split_boot(rootfs.entries)
    cmdline = boot.cmdline.decode(errors="replace").strip()
    if rootfs.options.root != "ram":
        raise UserError(f"--root {rootfs.options.root} is not supported by this format yet")
    initrd = workdir / "initrd.img"
    with open(initrd, "wb") as out:
        write_initrd(boot.initrd, out, rootfs.epoch, ucode=boot.ucode, block_cache=_block_cache(rootfs))
    yield BootFiles(kernel=boot.kernel, initrd=initrd, cmdline=cmdline)
