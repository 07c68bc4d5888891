"""What a bootable medium (ISO, disk, UKI) carries: kernel, initrd, command line, and in root-on-media mode
the root filesystem image. Every medium format gets these from `boot_files`, so all of them boot the same way.

`--root ram` (default): the initrd is the whole root filesystem, as kernel+initrd's. `--root squashfs|erofs`:
the root filesystem is an image file on the medium (`extra`: rootfs.squashfs or rootfs.erofs at the top of
the medium) and the initrd is the small stage-one initramfs (formats/stage1.py) that finds the image by
its content id, loop-mounts it under a tmpfs overlay and switch_roots; the command line is the spec's
(with `--verity`, plus `linuxkit.verity=ROOTHASH`: the image carries its dm-verity tree, formats/stage1.py).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from linuxkit_py.archive.entry import Entry
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Rootfs
from linuxkit_py.formats.initrd import split_boot, write_initrd
from linuxkit_py.formats.rootimage import IMAGE_NAMES, ROOT_FILESYSTEMS, file_sha256, root_location, write_root_image
from linuxkit_py.formats.stage1 import verity_cmdline, write_stage1_initrd

MEDIA = ("cdrom", "disk")
# The formats whose medium carries the root image with --root squashfs|erofs (all through boot_files or,
# raw-rpi, the same root_location), so --verity protects it.
ROOT_MEDIA_FORMATS = frozenset({"iso-bios", "iso-efi", "raw-bios", "raw-efi", "aws", "qcow2-bios", "qcow2-efi",
                                "vhd", "dynamic-vhd", "vmdk", "gcp", "raw-rpi", "rpi3", "update"})


@dataclass
class BootFiles:
    kernel: Entry  # the kernel (a FILE entry: its data is a FileRegion or bytes)
    initrd: Path  # ram: the whole root filesystem; squashfs/erofs: stage one (ucode cpio first, if any)
    cmdline: str  # the spec's command line plus what the boot mode needs (e.g. root=...)
    extra: list[tuple[str, Path]] = field(default_factory=list)  # (name on the medium, file) e.g. the root image


@contextlib.contextmanager
def boot_files(rootfs: Rootfs, medium: str, workdir: Path, *, whole_image_id: bool = False) -> Iterator[BootFiles]:
    """Write the initrd (and root image) into `workdir` and describe what goes on the medium. With
    `whole_image_id` stage one also checks the sha256 of the whole image (A/B slots: formats/ab.py)."""
    if medium not in MEDIA:
        raise ValueError(f"unknown medium {medium!r}")
    boot = split_boot(rootfs.entries)
    cmdline = boot.cmdline.decode(errors="replace").strip()
    initrd = workdir / "initrd.img"
    root = rootfs.options.root
    if root == "ram":
        with open(initrd, "wb") as out:
            write_initrd(boot.initrd, out, rootfs.epoch, ucode=boot.ucode, block_cache=rootfs.block_cache())
        yield BootFiles(kernel=boot.kernel, initrd=initrd, cmdline=cmdline)
        return
    if root not in ROOT_FILESYSTEMS:
        raise UserError(f"unknown root mode {root!r}", hint="use ram, squashfs or erofs")
    name = IMAGE_NAMES[root]
    image = workdir / name
    write_root_image(rootfs, image, root)
    location = root_location(rootfs, image, root, image_path=name)  # with --verity, the tree appended
    cmdline = verity_cmdline(cmdline, location)
    if whole_image_id and location.verity is not None:  # the tree's top block names the version
        with open(image, "rb") as f:
            f.seek(location.verity.hash_offset)
            top = hashlib.sha256(f.read(4096)).hexdigest()
        location = replace(location, probe_offset=location.verity.hash_offset, probe_sha256=top)
    elif whole_image_id:
        location = replace(location, size=image.stat().st_size, sha256=file_sha256(image))
    with open(initrd, "wb") as out:
        write_stage1_initrd(rootfs, out, location=location, medium=medium)
    yield BootFiles(kernel=boot.kernel, initrd=initrd, cmdline=cmdline, extra=[(name, image)])
