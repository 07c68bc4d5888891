"""Extra disks for `run`: LinuxKit's `--disk [file=]PATH[,size=1G][,format=raw|qcow2]`, created when missing.

As in LinuxKit, a size without a unit is in GiB (`size=1G`, `size=512M`, `size=2`), a disk given only a
size gets a file in the state directory, and a missing disk with a size is created with qemu-img. The
format comes from `format=`, else from the file name (`.qcow2`, `.vmdk`, ...), else raw.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from linuxkit_py.errors import UserError
from linuxkit_py.run.image import DISK_FORMATS
from linuxkit_py.tools import run

log = logging.getLogger(__name__)

DISK_SYNTAX = "[file=]PATH[,size=1G][,format=raw|qcow2]"
# qemu block format names we attach, with the usual names users type for them.
FORMAT_NAMES = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vpc": "vpc", "vhd": "vpc", "vhdx": "vhdx"}
UNNAMED_DISK_FORMAT = "qcow2"  # LinuxKit's format for a disk given only a size
_SIZE = re.compile(r"(\d+)([MG]?)", re.IGNORECASE)


@dataclass(frozen=True)
class Disk:
    path: Path | None  # None: a file in the state directory (see name_unnamed_disks)
    format: str = "raw"  # qemu block format
    size_mib: int | None = None  # create the file with this size when it is missing


def format_for_name(path: Path) -> str:
    """The qemu format a disk file's name implies (raw when it implies none)."""
    return DISK_FORMATS.get(path.suffix.lower(), "raw")


def parse_size_mib(text: str) -> int:
    """`1G`, `512M` or `2` (GiB, as LinuxKit) -> MiB."""
    m = _SIZE.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise UserError(f"invalid disk size {text!r}", hint="use a whole number of GiB or MiB, e.g. size=1G or 512M")
    return int(m.group(1)) * (1 if m.group(2).upper() == "M" else 1024)


def parse_disk(text: str) -> Disk:
    """One `--disk` value."""
    path: Path | None = None
    size: int | None = None
    fmt: str | None = None
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            key, value = "file", part  # a bare word is the file, as in LinuxKit
        if key == "file" and value:
            path = Path(value)
        elif key == "size":
            size = parse_size_mib(value)
        elif key == "format" and value.lower() in FORMAT_NAMES:
            fmt = FORMAT_NAMES[value.lower()]
        else:
            raise UserError(f"invalid disk option {part!r} in --disk {text!r}", hint=f"use {DISK_SYNTAX}")
    if path is None and size is None:
        raise UserError(f"--disk {text!r} names no file and no size", hint=f"use {DISK_SYNTAX}")
    if fmt is None:
        fmt = format_for_name(path) if path is not None else UNNAMED_DISK_FORMAT
    return Disk(path, fmt, size)


def as_disk(disk: Disk | str | Path) -> Disk:
    """A Disk; a bare path is an existing disk in the format its name implies."""
    return disk if isinstance(disk, Disk) else Disk(Path(disk), format_for_name(Path(disk)))


def name_unnamed_disks(disks: list[Disk], state_dir: Path) -> list[Disk]:
    """Give disks without a file one in `state_dir`: disk.qcow2, disk1.qcow2, ... (LinuxKit: disk.img, disk1.img)."""
    named = []
    for index, disk in enumerate(disks):
        if disk.path is None:
            extension = "img" if disk.format == "raw" else disk.format
            disk = replace(disk, path=state_dir / f"disk{index or ''}.{extension}")
        named.append(disk)
    return named


def create_missing_disks(disks: list[Disk]) -> None:
    """Create each missing disk that has a size (sparse, with qemu-img); a missing one without a size is an error."""
    for disk in disks:
        if disk.path is None:
            raise ValueError("unnamed disk: call name_unnamed_disks first")
        if disk.path.exists():
            if disk.size_mib is not None:
                log.info("using the existing disk %s (not resized)", disk.path)
            continue
        if disk.size_mib is None:
            raise UserError(f"disk {disk.path} not found", hint="add ,size=1G to create it")
        disk.path.parent.mkdir(parents=True, exist_ok=True)
        log.info("creating disk %s (%s, %d MiB)", disk.path, disk.format, disk.size_mib)
        run(["qemu-img", "create", "-q", "-f", disk.format, disk.path, f"{disk.size_mib}M"], capture=True)
