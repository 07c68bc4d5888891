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
S_IFDIR, S_IFREG, S_IFLNK = 0o040000, 0o100000, 0o120000
# Joliet (Microsoft's 1995 specification): names of at most 64 characters (pycdlib counts UTF-8 bytes) without
# these characters.
JOLIET_MAX_NAME = 64
JOLIET_FORBIDDEN = re.compile(r"[*/:;?\\\x00-\x1f]")
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


def _cut_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, at a character boundary."""
    return text.encode()[:limit].decode(errors="ignore")


def _numbered(identifier: str, n: int) -> str:
    """`identifier` (a directory name or `STEM.EXT;1`) with its stem's end replaced by the number `n`."""
    number = str(n)
    if ";" not in identifier:
        return identifier[: MAX_DIR_ID - len(number)] + number
    stem, _, ext = identifier[:-2].rpartition(".")
    return f"{stem[: MAX_FILE_ID - 1 - len(ext) - len(number)]}{number}.{ext};1"


class IsoImage:
    """An ISO being put together, as a context manager; `write()` it once before the block ends.

    Every date in it is `epoch` (UTC); `seed` (a digest of the contents) gives the MBR id and GUIDs.
    `joliet`: also a Joliet tree (names up to 64 characters). `mangle`: two names that map to one ISO 9660
    identifier get numbered identifiers (as genisoimage does; Rock Ridge keeps the real names) instead of
    being an error.
    """

    def __init__(self, *, volume_id: str, epoch: int, seed: bytes, joliet: bool = True, mangle: bool = False) -> None:
        self._seed = seed
        self._joliet = joliet
        self._mangle = mangle
        self._open = contextlib.ExitStack()
        self._open.enter_context(fixed_clock(epoch))
        try:
            import pycdlib  # 40 ms to import: only builds that write an ISO pay for it

            self._iso = pycdlib.PyCdlib()
            self._iso.new(interchange_level=ISO_LEVEL, vol_ident=volume_id, app_ident_str=APPLICATION_ID,
                          joliet=3 if joliet else None, rock_ridge=ROCK_RIDGE_VERSION)
        except BaseException:
            self._open.close()
            raise
        self._open.callback(self._iso.close)
        self._dirs: dict[str, str] = {"": "/"}  # medium path -> ISO 9660 path
        self._files: dict[str, str] = {}
        self._taken: dict[str, str] = {"/": ""}  # ISO 9660 path -> medium path
        self._joliet_paths: dict[str, str] = {}  # medium path -> Joliet path (when mangling)
        self._joliet_taken: set[str] = set()  # Joliet paths in use
        # medium path -> (uid, gid, mode bits to set or None, file type bits to set or None), applied by write():
        # looking a record up makes pycdlib lay out the whole image again, so it is done once, at the end.
        self._attributes: dict[str, tuple[int, int, int | None, int | None]] = {}

    def close(self) -> None:
        self._open.close()

    def __enter__(self) -> IsoImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def iso_path(self, path: str) -> str:
        """The ISO 9660 path of a file or directory added earlier under its medium path."""
        return self._files.get(path) or self._dirs[path]

    def _joliet_path(self, path: str) -> str | None:
        """The Joliet path of medium path `path`: the same names, or, when mangling, each name cut to Joliet's
        64 bytes, its forbidden characters replaced and numbered on a clash within its directory."""
        if not self._joliet:
            return None
        if not self._mangle:
            return "/" + path
        if path in self._joliet_paths:
            return self._joliet_paths[path]
        parent, name = posixpath.split(path)
        parent_path = self._joliet_paths.get(parent, "") if parent else ""
        base = JOLIET_FORBIDDEN.sub("_", name)
        candidate, n = _cut_utf8(base, JOLIET_MAX_NAME), 0
        while f"{parent_path}/{candidate}" in self._joliet_taken:
            n += 1
            candidate = _cut_utf8(base, JOLIET_MAX_NAME - len(str(n)) - 1) + f"~{n}"
        joliet_path = f"{parent_path}/{candidate}"
        self._joliet_taken.add(joliet_path)
        self._joliet_paths[path] = joliet_path
        return joliet_path

    def add_directory(self, path: str, mode: int | None = None) -> str:
        """`path` (e.g. "boot/grub") and its parents; returns its ISO 9660 path. `mode`: its permission
        bits in Rock Ridge (default 0555); a parent implied here gets the default."""
        if path in self._dirs:
            return self._dirs[path]
        parent, name = posixpath.split(path)
        parent_iso = self.add_directory(parent)
        iso_path = self._claim(parent_iso, iso9660_component(name, is_dir=True), path)
        self._iso.add_directory(iso_path, rr_name=name, joliet_path=self._joliet_path(path),
                                file_mode=None if mode is None else S_IFDIR | mode)
        self._dirs[path] = iso_path
        return iso_path

    def add_file(self, path: str, data: Path | Data, mode: int | None = None) -> str:
        """A file at medium path `path` (parents implied) from a host file, bytes or a FileRegion;
        file contents are read only when the image is written. `mode`: permission bits (default 0444)."""
        parent, name = posixpath.split(path)
        iso_path = self._claim(self.add_directory(parent), iso9660_component(name, is_dir=False), path)
        file_mode = FILE_MODE if mode is None else S_IFREG | mode
        if isinstance(data, Path):
            self._iso.add_file(str(data), iso_path, rr_name=name, joliet_path=self._joliet_path(path),
                               file_mode=file_mode)
        else:
            source, length = self._source(data)
            self._iso.add_fp(source, length, iso_path, rr_name=name, joliet_path=self._joliet_path(path),
                             file_mode=file_mode)
        self._files[path] = iso_path
        return iso_path

    def add_symlink(self, path: str, target: str) -> str:
        """A Rock Ridge symbolic link at medium path `path` to `target` (written as given)."""
        parent, name = posixpath.split(path)
        iso_path = self._claim(self.add_directory(parent), iso9660_component(name, is_dir=False), path)
        self._iso.add_symlink(iso_path, rr_symlink_name=name, rr_path=target,
                              joliet_path=self._joliet_path(path))
        self._files[path] = iso_path
        self._attributes[path] = (0, 0, 0o777, S_IFLNK)
        return iso_path

    def set_owner(self, path: str, uid: int, gid: int, mode: int | None = None) -> None:
        """Rock Ridge owner (and permission bits) of an entry added earlier ("" is the root directory)."""
        _, _, old_mode, file_type = self._attributes.get(path, (0, 0, None, None))
        self._attributes[path] = (uid, gid, old_mode if mode is None else mode, file_type)

    def _apply_attributes(self) -> None:
        for path, (uid, gid, mode, file_type) in self._attributes.items():
            for px in self._px_records(path):
                px.posix_user_id, px.posix_group_id = uid, gid
                if file_type is not None:
                    px.posix_file_mode = file_type | (px.posix_file_mode & 0o7777)
                if mode is not None:
                    px.posix_file_mode = (px.posix_file_mode & ~0o7777) | mode

    def _px_records(self, path: str) -> list[Any]:
        """The PX records of `path`: its directory record, and a directory's "." record too."""
        record: Any = self._iso.get_record(iso_path=self.iso_path(path))
        records = [record, record.children[0]] if record.is_dir() else [record]
        out = []
        for rec in records:
            rock_ridge = rec.rock_ridge
            if rock_ridge is not None:
                out.append(rock_ridge.dr_entries.px_record or rock_ridge.ce_entries.px_record)
        return out

    def _claim(self, parent_iso: str, identifier: str, path: str) -> str:
        """The ISO 9660 path for medium path `path`: its identifier, numbered on a clash when mangling."""
        iso_path = posixpath.join(parent_iso, identifier)
        n = 0
        while iso_path in self._taken:
            if not self._mangle:
                raise ValueError(f"{path} and {self._taken[iso_path]} have the same ISO 9660 name {iso_path}")
            n += 1
            iso_path = posixpath.join(parent_iso, _numbered(identifier, n))
        self._taken[iso_path] = path
        return iso_path

    def _source(self, data: Data) -> tuple[BinaryIO, int]:
        if isinstance(data, bytes):
            return io.BytesIO(data), len(data)
        assert isinstance(data, FileRegion)
        return self._open.enter_context(open_region(data)), data.size

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
        self._apply_attributes()
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
