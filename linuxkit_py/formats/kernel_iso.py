"""The `kernel+iso` output, as LinuxKit's (output.go, tools/mkimage-iso): NAME-kernel, NAME-cmdline and NAME.iso.

NAME.iso is a plain, non-bootable ISO 9660 image of the root filesystem: everything but boot/* (the kernel,
cmdline, ucode and dtbs go nowhere else; the empty `boot` directory stays), with Rock Ridge names, modes,
owners and symbolic links, and a Joliet tree, volume id `LinuxKit`. It holds no kernel, initrd or boot
loader, and no initrd is written: LinuxKit's `run qemu` cannot boot these files either (it boots NAME-kernel
with NAME-initrd.img); they are for a machine whose own boot path mounts the ISO as its root.

Differences from LinuxKit's genisoimage run (docs/formats.md): Joliet names are cut to 64 characters (103
with its -joliet-long), every date is the build epoch, hard links are separate copies, and device nodes,
FIFOs and sockets are left out with a warning (pycdlib writes no Rock Ridge PN records). The same entries
give the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
from typing import BinaryIO

from linuxkit_py.archive.entry import ContentReader, Entry, Kind
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Format, Rootfs, register
from linuxkit_py.formats.initrd import BOOT_DIR, split_boot
from linuxkit_py.media.iso9660 import IsoImage

log = logging.getLogger(__name__)

VOLUME_ID = "LinuxKit"  # genisoimage -V LinuxKit
ROOT_MODE = 0o755  # the root of LinuxKit's extracted tree (a directory mktemp'd by make-iso)
SUFFIXES = ("-kernel", "-cmdline", ".iso")
UNSUPPORTED = (Kind.CHAR, Kind.BLOCK, Kind.FIFO)


def iso_entries(rootfs: Rootfs) -> list[Entry]:
    """What NAME.iso holds: the root filesystem minus boot/*, keeping the `boot` directory itself."""
    boot_dir = [e for e in rootfs.entries if e.path == BOOT_DIR and e.kind is Kind.DIR]
    return boot_dir + split_boot(rootfs.entries).initrd


def write_rootfs_iso(entries: list[Entry], out: BinaryIO, epoch: int) -> None:
    """`entries` as a Rock Ridge ISO 9660 image (see the module docstring for what is left out)."""
    files: dict[str, Entry] = {}
    skipped: list[str] = []
    with IsoImage(volume_id=VOLUME_ID, epoch=epoch, seed=hashlib.sha256(b"kernel+iso").digest(),
                  mangle=True) as iso:
        iso.set_owner("", 0, 0, ROOT_MODE)
        for entry in entries:
            path = entry.path
            if entry.kind is Kind.DIR:
                iso.add_directory(path, entry.mode)
            elif entry.kind is Kind.FILE or entry.kind is Kind.HARDLINK:
                target = files.get(entry.linkname) if entry.kind is Kind.HARDLINK else entry
                if target is None:
                    raise ValueError(f"hard link {path} -> {entry.linkname}: no regular file before it")
                files[path] = entry = target  # a hard link: a copy with the file's metadata
                iso.add_file(path, entry.data or b"", entry.mode)
            elif entry.kind is Kind.SYMLINK:
                iso.add_symlink(path, entry.linkname)
            else:
                skipped.append(path)
                continue
            iso.set_owner(path, entry.uid, entry.gid, None if entry.kind is Kind.SYMLINK else entry.mode)
        if skipped:
            log.warning("kernel+iso: %d device node(s)/FIFO(s) left out of the ISO (ISO 9660 cannot hold them "
                        "here), e.g. /%s", len(skipped), skipped[0])
        iso.write(out)


def write_kernel_iso(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    """`kernel+iso`: NAME-kernel, NAME-cmdline and the root filesystem as NAME.iso."""
    if rootfs.options.root != "ram":
        raise UserError(f"kernel+iso always writes the root filesystem as NAME.iso, not --root {rootfs.options.root}",
                        hint="use kernel+squashfs or kernel+erofs for a root image that boots")
    kernel_out, cmdline_out, iso_out = outs
    boot = split_boot(rootfs.entries)
    with ContentReader() as reader:
        for chunk in reader.chunks(boot.kernel.data):
            kernel_out.write(chunk)
    cmdline_out.write(boot.cmdline)
    write_rootfs_iso(iso_entries(rootfs), iso_out, rootfs.epoch)


register(Format(
    name="kernel+iso",
    suffixes=SUFFIXES,
    write=write_kernel_iso,
    description="kernel, command line and the root filesystem as a plain (not bootable) Rock Ridge ISO, "
                "as LinuxKit's",
))
