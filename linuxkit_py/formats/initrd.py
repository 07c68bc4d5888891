"""The `kernel+initrd` and `tar-kernel-initrd` outputs.

Like LinuxKit's `initrd.CopySplitTar`: `boot/kernel` is the kernel, the contents of
`boot/cmdline` the command line and `boot/ucode.cpio` (optional) an early microcode cpio;
every other `boot/` entry is dropped, and the rest of the root filesystem becomes a
compressed newc cpio (see archive/cpio.py). For `kernel+initrd` the uncompressed ucode
cpio is prepended to the initrd, where the kernel's early microcode loader looks for it.
"""

from __future__ import annotations

import hashlib
import marshal
import operator
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from linuxkit_py.archive.blockcache import DeflateBlockCache
from linuxkit_py.archive.compress import compressed_writer
from linuxkit_py.archive.cpio import check_cpio_sizes, link_identical_files, write_cpio
from linuxkit_py.archive.entry import FIELDS as ENTRY_FIELDS
from linuxkit_py.archive.entry import ContentReader, Entry, FileRegion, Kind, read_data
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.errors import UserError
from linuxkit_py.formats import KEPT, Format, Rootfs, register

BOOT_DIR = "boot"
KERNEL_PATH = "boot/kernel"
CMDLINE_PATH = "boot/cmdline"
UCODE_PATH = "boot/ucode.cpio"
# Member names and mode in the tar-kernel-initrd tarball (LinuxKit's outputKernelInitrdTarball).
TARBALL_KERNEL = "kernel"
TARBALL_INITRD = "initrd.img"
TARBALL_CMDLINE = "cmdline"
TARBALL_UCODE = "ucode.cpio"
TARBALL_MODE = 0o644


@dataclass
class BootSplit:
    kernel: Entry  # a FILE
    cmdline: bytes
    ucode: Entry | None  # a FILE
    initrd: list[Entry]  # everything outside boot/


def _is_boot(path: str) -> bool:
    return path == BOOT_DIR or path.startswith(BOOT_DIR + "/")


def split_boot(entries: Sequence[Entry]) -> BootSplit:
    """Take the kernel, cmdline and ucode out of the root filesystem; drop the rest of boot/."""
    # path -> the FILE it names (hard links resolved), for the paths of boot/ and those hard links name only
    # (a dict of every file is 10 MiB at 230,000)
    wanted = {entry.linkname for entry in entries if entry.kind is Kind.HARDLINK}
    files: dict[str, Entry] = {}
    rest: list[Entry] = []
    moved: dict[str, str] = {}  # dropped boot/ file -> the first link outside boot/ that now holds it
    for entry in entries:
        if entry.path in wanted or _is_boot(entry.path):
            if entry.kind is Kind.FILE:
                files[entry.path] = entry
            elif entry.kind is Kind.HARDLINK and entry.linkname in files:
                files[entry.path] = files[entry.linkname]
        if _is_boot(entry.path):
            continue
        if entry.kind is Kind.HARDLINK and _is_boot(entry.linkname):
            # Its file stays out of the initrd: the first link outside boot/ becomes the file.
            holder = moved.get(entry.linkname)
            target = files.get(entry.linkname)
            if target is None:
                raise ValueError(f"hard link {entry.path} -> {entry.linkname}: no regular file before it")
            if holder is None:
                moved[entry.linkname] = entry.path
                entry = target.evolve(path=entry.path, source=entry.source, location=entry.location)
            else:
                entry = entry.evolve(linkname=holder)
        rest.append(entry)
    kernel = files.get(KERNEL_PATH)
    if kernel is None:
        raise UserError("no kernel: the root filesystem has no boot/kernel",
                        hint="kernel+initrd outputs need a `kernel: image:` in the spec")
    cmdline = files.get(CMDLINE_PATH)
    return BootSplit(kernel=kernel, cmdline=read_data(cmdline.data) if cmdline else b"",
                     ucode=files.get(UCODE_PATH), initrd=rest)


def rootfs_boot(rootfs: Rootfs) -> BootSplit:
    """split_boot(rootfs.entries), made once per Rootfs: the input digests and the writer both need it."""
    cached = rootfs.__dict__.get("_boot_split")
    if cached is None or cached[0] is not rootfs.entries:
        cached = rootfs.__dict__["_boot_split"] = (rootfs.entries, split_boot(rootfs.entries))
    return cast(BootSplit, cached[1])


def write_initrd(entries: Sequence[Entry], out: BinaryIO, epoch: int, *, compression: str = "gzip",
                 level: int | None = None, threads: int | None = None, ucode: Entry | None = None,
                 block_cache: DeflateBlockCache | None = None,
                 known_sha256: Callable[[list[FileRegion]], dict[FileRegion, bytes]] | None = None) -> None:
    """Write `entries` as a compressed newc cpio initramfs, after the uncompressed `ucode` cpio if given.

    `compression` is "gzip" (parallel, deterministic; zlib-ng, default level 4) or "zstd" (default level 3);
    gzip reuses blocks from `block_cache` (same bytes, less CPU).
    """
    check_cpio_sizes(entries)
    if ucode is not None:
        _copy(ucode, out)
    entries = link_identical_files(entries, known_sha256=known_sha256)
    sink = compressed_writer(out, compression, level, threads, block_cache)
    try:
        write_cpio(entries, sink, epoch)
        sink.close()
    except BaseException:
        sink.abort()
        raise


def _copy(entry: Entry, out: BinaryIO) -> None:
    with ContentReader() as reader:
        for chunk in reader.chunks(entry.data):
            out.write(chunk)


def write_kernel_initrd(rootfs: Rootfs, outs: list[BinaryIO], compression: str = "gzip") -> None:
    """`kernel+initrd`: NAME-kernel, NAME-initrd.img (ucode first, if any), NAME-cmdline (each skipped when KEPT)."""
    kernel_out, initrd_out, cmdline_out = outs
    boot = rootfs_boot(rootfs)
    if kernel_out is not KEPT:
        _copy(boot.kernel, kernel_out)
    if initrd_out is not KEPT:
        write_initrd(boot.initrd, initrd_out, rootfs.epoch, compression=compression, ucode=boot.ucode,
                     block_cache=rootfs.block_cache(), known_sha256=rootfs.known_sha256)
    if cmdline_out is not KEPT:
        cmdline_out.write(boot.cmdline)


def kernel_initrd_digests(rootfs: Rootfs) -> list[str | None]:
    """What NAME-kernel, NAME-initrd.img and NAME-cmdline are made of (Format.input_digests): the kernel's
    bytes, every initrd entry (metadata and bytes) with the ucode, the command line."""
    boot = rootfs_boot(rootfs)
    addresses = rootfs.addresses
    identity, addressed = addresses.identity, addresses.addressed
    initrd = hashlib.sha256(b"ucode " + (identity(boot.ucode.data) if boot.ucode is not None else b"none"))
    dumps, update = marshal.dumps, initrd.update
    # Per entry: its kind, its other fields and what names its bytes: the bytes themselves when held in
    # memory, (path, offset, size) in a content-addressed file, else ("sha256", digest), read now.
    # marshal (format 2: no back-references, so the bytes depend on the values only) is the quickest
    # exact encoding of them; the tool's code digest, part of every key, names the Python.
    for entry in boot.initrd:
        data = entry.data
        named: Any
        if data is None or data.__class__ is bytes:
            named = data
        elif isinstance(data, FileRegion) and (path := addressed(data.path)) is not None:
            named = (path, data.offset, data.size)
        else:
            named = ("sha256", identity(data))
        update(dumps((entry.kind.value, _metadata(entry), named), 2))
    return [identity(boot.kernel.data).decode("utf-8", "surrogateescape"), initrd.hexdigest(),
            hashlib.sha256(boot.cmdline).hexdigest()]


# every field of an entry but its kind and data
_metadata = operator.attrgetter(*(name for name in ENTRY_FIELDS if name not in ("kind", "data")))


def write_tar_kernel_initrd(rootfs: Rootfs, outs: list[BinaryIO], compression: str = "gzip") -> None:
    """`tar-kernel-initrd`: NAME-initrd.tar holding kernel, initrd.img, cmdline and ucode.cpio.

    As in LinuxKit, initrd.img here has no ucode in front (ucode.cpio is its own member), and an
    empty cmdline is left out.
    """
    (out,) = outs
    boot = split_boot(rootfs.entries)
    # A tar header needs the size first: compress the initrd to a temporary file next to the output.
    name = getattr(out, "name", None)
    directory = os.path.dirname(name) if isinstance(name, str) and os.path.isabs(name) else None
    with tempfile.NamedTemporaryFile(prefix=".initrd-", suffix=".tmp", dir=directory) as initrd:
        write_initrd(boot.initrd, cast(BinaryIO, initrd), rootfs.epoch, compression=compression,
                     block_cache=rootfs.block_cache(), known_sha256=rootfs.known_sha256)
        initrd.flush()
        size = initrd.tell()
        members = [
            _tarball_member(TARBALL_KERNEL, boot.kernel.data, boot.kernel.size),
            _tarball_member(TARBALL_INITRD, FileRegion(initrd.name, 0, size), size),
        ]
        if boot.cmdline:
            members.append(_tarball_member(TARBALL_CMDLINE, boot.cmdline, len(boot.cmdline)))
        if boot.ucode is not None:
            members.append(_tarball_member(TARBALL_UCODE, boot.ucode.data, boot.ucode.size))
        write_tar(members, out, rootfs.epoch)


def _tarball_member(name: str, data: bytes | FileRegion | None, size: int) -> Entry:
    return Entry(name, Kind.FILE, TARBALL_MODE, size=size, data=data)


register(Format(
    name="kernel+initrd",
    suffixes=("-kernel", "-initrd.img", "-cmdline"),
    write=write_kernel_initrd,
    input_digests=kernel_initrd_digests,
    description="kernel, gzip newc cpio initramfs (ucode first) and command line",
))
register(Format(
    name="tar-kernel-initrd",
    suffixes=("-initrd.tar",),
    write=write_tar_kernel_initrd,
    description="a tar of kernel, initrd.img, cmdline and ucode.cpio",
))
