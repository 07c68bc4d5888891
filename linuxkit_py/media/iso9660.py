"""A reproducible ISO 9660 image (Rock Ridge + Joliet, El Torito, isohybrid) written with pycdlib.

ISO 9660 (ECMA-119) level 3 names in the primary tree (files over 4 GiB become multi-extent
files), Rock Ridge (IEEE P1282, SUSP/RRIP 1.09) and Joliet carry the real names. Boot:
El Torito 1.0 catalog entries (BIOS no-emulation with a boot info table for ISOLINUX, UEFI
platform 0xEF for a FAT image) and, for hybrids, the isohybrid MBR (+ GPT) in the system area.

pycdlib is not reproducible by itself: it stamps `time.time()` (through `time.localtime`, so the
host's time zone too) into every date, draws the MBR id from `random` and the hybrid GPT's
GUIDs from `uuid.uuid4()`. `IsoImage` runs pycdlib against a clock fixed at the build epoch in
UTC and sets the MBR id and GUIDs from a content digest, so the same inputs give the same bytes.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import posixpath
import re
import threading
import time as time_module
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import pycdlib

from linuxkit_py.archive.entry import Data, FileRegion
from linuxkit_py.archive.regionfile import open_region
from linuxkit_py.media.partitions import SECTOR, derived_disk_signature, derived_guid

APPLICATION_ID = "LINUXKIT-PY"
ISO_LEVEL = 3  # ECMA-119 level 3: 30-character names, files of any size as several extents
ROCK_RIDGE_VERSION = "1.09"
# ECMA-119 §7.5.1: a file identifier is at most 30 characters (name + "." + extension) at level 2+.
MAX_FILE_ID = 30
MAX_DIR_ID = 31
D_CHARACTERS = re.compile(r"[^A-Z0-9_]")
# El Torito 1.0 §2.1: platform ids of the validation entry and section headers.
PLATFORM_X86 = 0x00
PLATFORM_EFI = 0xEF
# ISOLINUX is loaded in 4 virtual (512-byte) sectors: what BIOSes reliably load (isolinux docs).
ISOLINUX_LOAD_SECTORS = 4
MAX_LOAD_SECTORS = 0xFFFF  # El Torito 1.0 §2.2: the sector count is 16 bits
FILE_MODE = 0o100444  # Rock Ridge PX: read-only regular file
# pycdlib modules that read the clock (pycdlib.utils only uses time.gmtime, which is fine).
_CLOCK_MODULES = ("pycdlib.pycdlib", "pycdlib.headervd", "pycdlib.dates")
_clock_lock = threading.Lock()


class _FixedClock:
    """Stands in for the `time` module inside pycdlib: now is `epoch`, local time is UTC."""

    def __init__(self, epoch: int) -> None:
        self._epoch = epoch

    def time(self) -> float:
        return float(self._epoch)

    def localtime(self, seconds: float | None = None) -> time_module.struct_time:
        return time_module.gmtime(self._epoch if seconds is None else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time_module, name)


@contextlib.contextmanager
def fixed_clock(epoch: int) -> Iterator[None]:
    """While the block runs, pycdlib sees the time `epoch` in UTC (one ISO at a time per process)."""
    modules: list[ModuleType] = [importlib.import_module(name) for name in _CLOCK_MODULES]
    with _clock_lock:
        saved = [module.time for module in modules]
        for module in modules:
            setattr(module, "time", _FixedClock(epoch))  # noqa: B010 - the module's global `time`
        try:
            yield
        finally:
            for module, original in zip(modules, saved, strict=True):
                setattr(module, "time", original)  # noqa: B010


def iso9660_component(name: str, is_dir: bool) -> str:
    """One path component as an ECMA-119 identifier (d-characters, `;1` version for files)."""
    if is_dir:
        return D_CHARACTERS.sub("_", name.upper())[:MAX_DIR_ID]
    stem, dot, ext = name.upper().rpartition(".")
    if not dot:
        stem, ext = ext, ""
    stem, ext = D_CHARACTERS.sub("_", stem), D_CHARACTERS.sub("_", ext)
    ext = ext[: MAX_FILE_ID - 2]
    stem = stem[: MAX_FILE_ID - 1 - len(ext)] or "_"
    return f"{stem}.{ext};1"


class IsoImage:
    """An ISO being put together, as a context manager; `write()` it once before the block ends.

    Every date in it is `epoch` (UTC); `seed` (a digest of the contents) gives the MBR id and GUIDs.
    """

    def __init__(self, *, volume_id: str, epoch: int, seed: bytes) -> None:
        self._seed = seed
        self._open = contextlib.ExitStack()
        self._open.enter_context(fixed_clock(epoch))
        try:
            self._iso = pycdlib.PyCdlib()
            self._iso.new(interchange_level=ISO_LEVEL, vol_ident=volume_id, app_ident_str=APPLICATION_ID,
                          joliet=3, rock_ridge=ROCK_RIDGE_VERSION)
        except BaseException:
            self._open.close()
            raise
        self._open.callback(self._iso.close)
        self._dirs: dict[str, str] = {"": "/"}  # medium path -> ISO 9660 path
        self._files: dict[str, str] = {}

    def close(self) -> None:
        self._open.close()

    def __enter__(self) -> IsoImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def iso_path(self, path: str) -> str:
        """The ISO 9660 path of a file or directory added earlier under its medium path."""
        return self._files.get(path) or self._dirs[path]

    def add_directory(self, path: str) -> str:
        """`path` (e.g. "boot/grub") and its parents; returns its ISO 9660 path."""
        if path in self._dirs:
            return self._dirs[path]
        parent, name = posixpath.split(path)
        parent_iso = self.add_directory(parent)
        iso_path = posixpath.join(parent_iso, iso9660_component(name, is_dir=True))
        self._check_unique(iso_path, path)
        self._iso.add_directory(iso_path, rr_name=name, joliet_path="/" + path)
        self._dirs[path] = iso_path
        return iso_path

    def add_file(self, path: str, data: Path | Data) -> str:
        """A file at medium path `path` (parents implied) from a host file, bytes or a FileRegion;
        file contents are read only when the image is written."""
        parent, name = posixpath.split(path)
        iso_path = posixpath.join(self.add_directory(parent), iso9660_component(name, is_dir=False))
        self._check_unique(iso_path, path)
        if isinstance(data, Path):
            self._iso.add_file(str(data), iso_path, rr_name=name, joliet_path="/" + path, file_mode=FILE_MODE)
        else:
            source, length = self._source(data)
            self._iso.add_fp(source, length, iso_path, rr_name=name, joliet_path="/" + path, file_mode=FILE_MODE)
        self._files[path] = iso_path
        return iso_path

    def _source(self, data: Data) -> tuple[BinaryIO, int]:
        if isinstance(data, bytes):
            return io.BytesIO(data), len(data)
        assert isinstance(data, FileRegion)
        return self._open.enter_context(open_region(data)), data.size

    def _check_unique(self, iso_path: str, path: str) -> None:
        # Two medium names that map to one ISO 9660 name would silently shadow each other.
        taken = {**{v: k for k, v in self._dirs.items()}, **{v: k for k, v in self._files.items()}}
        if iso_path in taken:
            raise ValueError(f"{path} and {taken[iso_path]} have the same ISO 9660 name {iso_path}")

    def add_bios_boot(self, isolinux: str, catalog: str) -> None:
        """El Torito BIOS no-emulation entry for ISOLINUX at medium path `isolinux` (added before)."""
        self._iso.add_eltorito(self.iso_path(isolinux), bootcatfile=self._catalog_iso_path(catalog),
                               rr_bootcatname=posixpath.basename(catalog), joliet_bootcatfile="/" + catalog,
                               boot_load_size=ISOLINUX_LOAD_SECTORS, boot_info_table=True,
                               platform_id=PLATFORM_X86)

    def add_efi_boot(self, image: str, catalog: str, size: int) -> None:
        """El Torito UEFI entry for the FAT image at medium path `image` (`size` bytes, added before)."""
        sectors = -(-size // SECTOR)
        if sectors > MAX_LOAD_SECTORS:
            raise ValueError(f"EFI boot image of {size} bytes is over El Torito's {MAX_LOAD_SECTORS} sectors")
        self._iso.add_eltorito(self.iso_path(image), bootcatfile=self._catalog_iso_path(catalog),
                               rr_bootcatname=posixpath.basename(catalog), joliet_bootcatfile="/" + catalog,
                               boot_load_size=sectors, efi=True, platform_id=PLATFORM_EFI)

    def _catalog_iso_path(self, catalog: str) -> str:
        parent, name = posixpath.split(catalog)
        return posixpath.join(self.add_directory(parent), iso9660_component(name, is_dir=False))

    def make_hybrid(self, *, efi: bool = False) -> None:
        """isohybrid: an MBR whose code starts ISOLINUX (the first boot entry) when the ISO is a disk, its
        partition 1 spanning the ISO. With `efi`, partition 2 is the El Torito UEFI image (type 0xEF), which
        UEFI firmware boots from a disk, partition 1 gets type 0 (so firmware skips it rather than reject
        the overlap), and a GPT describes both, as xorriso's -isohybrid-gpt-basdat does."""
        self._iso.add_isohybrid(mbr_id=derived_disk_signature(self._seed, "isohybrid-mbr-id"), efi=efi)
        if efi:
            hybrid: Any = self._iso.isohybrid_mbr
            disk_guid = derived_guid(self._seed, "isohybrid-gpt-disk")
            # pycdlib gives the primary and the backup GPT different random GUIDs; both must agree.
            for gpt in (hybrid.primary_gpt, hybrid.secondary_gpt):
                gpt.header.disk_guid = disk_guid
                for index, part in enumerate(gpt.parts):
                    part.part_guid = derived_guid(self._seed, f"isohybrid-gpt-partition-{index}")

    def write(self, out: BinaryIO) -> None:
        self._iso.write_fp(out)
        hybrid: Any = self._iso.isohybrid_mbr
        if hybrid is not None and hybrid.efi:
            _rewrite_gpt_headers(hybrid, out)


def _rewrite_gpt_headers(hybrid: Any, out: BinaryIO) -> None:
    """pycdlib's GPT headers carry the CRC32 of the used partition entries only; UEFI 2.10 §5.3.2 wants
    the CRC32 of the whole entry array (NumberOfPartitionEntries * SizeOfPartitionEntry bytes)."""
    for gpt in (hybrid.primary_gpt, hybrid.secondary_gpt):
        header = gpt.header
        entries = b"".join(part.record() for part in gpt.parts)
        entries = entries.ljust(header.num_parts * header.size_of_partition_entries, b"\0")
        out.seek(header.current_lba * SECTOR)
        out.write(header.record(zlib.crc32(entries)))
    out.seek(0, io.SEEK_END)
