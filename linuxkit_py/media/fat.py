"""FAT filesystems (ESPs, SYSLINUX boot partitions) written into an image file without mounting: mkfs.vfat
makes the filesystem at a byte offset of the file, mtools copies the files in.

Reproducible: the volume id is derived from the content, mkfs runs with `--invariant`, and mtools stamps
every file and directory with SOURCE_DATE_EPOCH. mkfs chooses FAT12/16/32 from the size (FAT32 below its
minimum cluster count would break mtools, so the type is never forced).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from linuxkit_py.archive.entry import ContentReader, Data, FileRegion
from linuxkit_py.errors import UserError
from linuxkit_py.tools import run

MKFS = "mkfs.vfat"
MMD = "mmd"
MCOPY = "mcopy"
TOOLS = (MKFS, MMD, MCOPY)

SECTOR = 512
KIB = 1024
MIB = 1 << 20
LABEL_CHARS = 11
# Size estimate (see fat_min_size): what a file or directory can cost beyond its bytes (at most one
# cluster of slack, 32 KiB in every FAT mkfs.vfat makes here), the allocation tables (two copies, up to
# 4 bytes per 512-byte cluster: 1.6%), and boot sector, root directory and FSInfo.
CLUSTER_SLACK = 32 * KIB
TABLES_PER_MILLE = 16
FIXED_OVERHEAD = 256 * KIB
# Room left free in a FAT sized by default, as LinuxKit's mkimage scripts leave.
HEADROOM = MIB

# The BIOS Parameter Block (Microsoft "FAT: General Overview of On-Disk Format", section 3.1), as
# struct fields from BPB_BytsPerSec (offset 11) to BPB_FATSz32 (offset 36).
BPB_OFFSET = 11
BPB_FORMAT = "<HBHBHHBHHHII"
# Section 3.5: the FAT type is decided by the count of data clusters, nothing else.
FAT12_MAX_CLUSTERS = 4084
FAT16_MAX_CLUSTERS = 65524
# The smallest FAT32 mkfs.vfat makes with 512-byte clusters: 65525 clusters, two tables of 4 bytes per
# cluster, 32 reserved sectors, rounded up to whole MiB.
FAT32_MIN_SIZE = 34 * MIB

Source = Data | Path


def fat_min_size(sizes: Sequence[int], directories: int = 0) -> int:
    """The smallest FAT size (a whole MiB) that holds files of `sizes` bytes in `directories` directories."""
    data = sum(size + CLUSTER_SLACK for size in sizes) + directories * CLUSTER_SLACK
    total = data + data * TABLES_PER_MILLE // 1000 + FIXED_OVERHEAD
    return -(-total // MIB) * MIB


def fat_directories(names: Sequence[str], directories: Sequence[str] = ()) -> list[str]:
    """Every directory that files `names` and `directories` need, parents first, in order of first appearance."""
    seen: dict[str, None] = {}
    paths = [*(PurePosixPath(name).parent for name in names), *map(PurePosixPath, directories)]
    for path in paths:
        for parent in [*reversed(path.parents), path][1:]:  # without "."
            seen.setdefault(str(parent))
    return list(seen)


def _check_names(names: Sequence[str]) -> None:
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or not name or any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(f"bad name on a FAT filesystem: {name!r}")
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"names given twice: {sorted(duplicates)}")


def source_size(source: Source) -> int:
    if isinstance(source, Path):
        return source.stat().st_size
    if isinstance(source, bytes):
        return len(source)
    return source.size


def _chunks(source: Source, reader: ContentReader) -> Iterator[bytes]:
    if isinstance(source, Path):
        yield from reader.chunks(FileRegion(str(source), 0, source.stat().st_size))
    else:
        yield from reader.chunks(source)


def content_digest(files: Sequence[tuple[str, Source]], salt: bytes = b"") -> bytes:
    """sha256 of `salt`, the names, sizes and contents of `files`: the seed of every id derived from them."""
    digest = hashlib.sha256(salt)
    with ContentReader() as reader:
        for name, source in files:
            digest.update(b"\0%s\0%d\0" % (name.encode(), source_size(source)))
            for chunk in _chunks(source, reader):
                digest.update(chunk)
    return digest.digest()


def _host_file(source: Source, scratch: Path, index: int, reader: ContentReader) -> Path:
    """A file mcopy can read: `source` itself when it is one, else a copy in `scratch`."""
    if isinstance(source, Path):
        return source
    if isinstance(source, FileRegion) and source.offset == 0 and os.path.getsize(source.path) == source.size:
        return Path(source.path)
    path = scratch / f"file{index}"
    with open(path, "wb") as out:
        for chunk in _chunks(source, reader):
            out.write(chunk)
    return path


def tool_env(epoch: int) -> dict[str, str]:
    """The environment of mkfs.vfat and mtools: UTC, C locale, the build epoch, no user mtools config."""
    return {**os.environ, "TZ": "UTC", "LC_ALL": "C", "SOURCE_DATE_EPOCH": str(epoch),
            "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": os.devnull}


def mtools_image(path: Path, offset: int) -> str:
    """mtools' `-i` argument for a filesystem at byte `offset` of `path`."""
    return f"{path}@@{offset}" if offset else str(path)


def write_fat(path: Path, files: list[tuple[str, Source]], *, label: str, epoch: int, size: int | None = None,
              offset: int = 0, directories: Sequence[str] = (), bits: int | None = None) -> int:
    """Write a FAT filesystem holding `files` (name on the filesystem, contents) and the (empty)
    `directories` at byte `offset` of `path` (created or extended, never shortened); returns its size.

    `size` None: the smallest whole MiB that fits plus HEADROOM. A `size` too small is a UserError.
    `bits` 32 forces FAT32 (for firmware that wants it); the size is then at least FAT32_MIN_SIZE.
    """
    names = [name for name, _ in files]
    _check_names([*names, *directories])
    directories = fat_directories(names, directories)
    needed = fat_min_size([source_size(source) for _, source in files], len(directories))
    if bits == 32:
        needed = max(needed, FAT32_MIN_SIZE)
    if size is None:
        size = needed + HEADROOM
    elif size < needed:
        raise UserError(f"the files need a FAT filesystem of at least {needed // MIB} MiB; "
                        f"only {size / MIB:g} MiB is available", hint="give a larger --size")
    if size % KIB or offset % SECTOR:
        raise ValueError(f"FAT size {size} must be whole KiB and offset {offset} whole sectors")
    label = label.upper()
    if len(label) > LABEL_CHARS or not label.isascii():
        raise ValueError(f"FAT label {label!r}: at most {LABEL_CHARS} ASCII characters")
    env = tool_env(epoch)
    image = mtools_image(path, offset)
    with ContentReader() as reader, tempfile.TemporaryDirectory(prefix="linuxkit-py-fat-") as scratch:
        volume_id = content_digest(files, label.encode()).hex()[:8]
        with open(path, "ab") as grow:
            # mkfs.vfat writes only the metadata: the file must already span the filesystem.
            if grow.tell() < offset + size:
                grow.truncate(offset + size)
        fat_type = ["-F", str(bits)] if bits else []
        run([MKFS, "--invariant", *fat_type, "-i", volume_id, "-n", label, f"--offset={offset // SECTOR}",
             "-h", str(offset // SECTOR), str(path), str(size // KIB)], env=env, capture=True)
        for directory in directories:
            run([MMD, "-i", image, f"::/{directory}"], env=env, capture=True)
        for index, (name, source) in enumerate(files):
            host = _host_file(source, Path(scratch), index, reader)
            result = run([MCOPY, "-i", image, "-o", str(host), f"::/{name}"], env=env, capture=True, check=False)
            if result.returncode != 0:
                detail = result.stderr.decode(errors="replace").strip()
                if "Disk full" in detail:
                    raise UserError(f"the files do not fit a FAT filesystem of {size / MIB:g} MiB",
                                    hint="give a larger --size")
                raise UserError(f"mcopy failed with exit status {result.returncode}: {detail}")
    return size


def fat_bits(path: Path, offset: int = 0) -> int:
    """12, 16 or 32: the FAT type of the filesystem at `offset` of `path`, from its count of clusters."""
    with open(path, "rb") as f:
        f.seek(offset)
        boot = f.read(SECTOR)
    (bytes_per_sector, sectors_per_cluster, reserved, fats, root_entries, total_16, _media, fat_size_16,
     _per_track, _heads, _hidden, total_32) = struct.unpack_from(BPB_FORMAT, boot, BPB_OFFSET)
    fat_size = fat_size_16 or struct.unpack_from("<I", boot, BPB_OFFSET + struct.calcsize(BPB_FORMAT))[0]
    total = total_16 or total_32
    root_sectors = -(-root_entries * 32 // bytes_per_sector)
    clusters = (total - reserved - fats * fat_size - root_sectors) // sectors_per_cluster
    if clusters <= FAT12_MAX_CLUSTERS:
        return 12
    return 16 if clusters <= FAT16_MAX_CLUSTERS else 32


def read_fat_file(path: Path, name: str, offset: int = 0, epoch: int = 0) -> bytes | None:
    """The contents of `name` on the FAT filesystem at byte `offset` of `path` (mtools), None if absent."""
    result = run([MCOPY, "-i", mtools_image(path, offset), "-n", f"::/{name}", "-"], env=tool_env(epoch),
                 capture=True, check=False)
    return bytes(result.stdout) if result.returncode == 0 else None


def copy_fat_file(path: Path, name: str, target: Path, offset: int = 0) -> bool:
    """Copy `name` off the FAT filesystem at `offset` of `path` to `target`; False when it is not there."""
    result = run([MCOPY, "-i", mtools_image(path, offset), "-n", "-o", f"::/{name}", str(target)],
                 env=tool_env(0), capture=True, check=False)
    return result.returncode == 0 and target.is_file()
