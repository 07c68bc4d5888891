"""`build --decompress-kernel`: the image's boot/kernel replaced by the kernel it holds uncompressed
(kernel/vmlinux.py), kept in the cache's derived data under the compressed kernel's sha256, so a rebuild
decompresses nothing and memory stays bounded."""

from __future__ import annotations

import hashlib
from pathlib import Path

from linuxkit_py.archive.entry import Entry, FileRegion, Kind, iter_data
from linuxkit_py.archive.regionfile import open_data
from linuxkit_py.fsutil import atomic_output
from linuxkit_py.kernel.vmlinux import decompress_kernel

KERNEL_PATH = "boot/kernel"  # where assemble puts the kernel image's kernel
ELF_MAGIC = b"\x7fELF"
DERIVED_SUBDIR = "vmlinux"


def _digest(entry: Entry) -> str:
    sha = hashlib.sha256()
    for chunk in iter_data(entry.data):
        sha.update(chunk)
    return sha.hexdigest()


def _decompressed(entry: Entry, derived_dir: Path) -> Entry:
    with open_data(entry.data) as source:
        if source.read(len(ELF_MAGIC)) == ELF_MAGIC:
            return entry  # already uncompressed (a kernel reused by --input-tar from such a build)
    target = derived_dir / DERIVED_SUBDIR / _digest(entry)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_data(entry.data) as source, atomic_output(target) as out:
            decompress_kernel(source, entry.size, out, f"{entry.source or 'the kernel image'}: kernel")
    size = target.stat().st_size
    return entry.evolve(size=size, data=FileRegion(str(target), 0, size))


def decompressed_kernel(entries: list[Entry], derived_dir: Path) -> list[Entry]:
    """`entries` with boot/kernel uncompressed."""
    return [_decompressed(e, derived_dir) if e.path == KERNEL_PATH and e.kind == Kind.FILE else e for e in entries]
