"""Debian packages in the cache: downloaded once with `apt-get download`, read in Python.

`<cache>/linuxkit-py/debs/NAME_VERSION_ARCH.deb` are the packages as apt-get download names them
(kept: a second build downloads nothing). A .deb is an ar archive (deb(5)): `debian-binary`,
`control.tar.*`, `data.tar.*`; its data tar is decompressed once into
`<cache>/linuxkit-py/debs/unpacked/NAME_VERSION_ARCH.tar`, with an index of its members next to it,
so a warm build neither decompresses nor re-parses a package. Nothing is installed or extracted
on the host.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import logging
import lzma
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import zstandard

from linuxkit_py.archive.entry import Entry, FileRegion
from linuxkit_py.archive.regionfile import open_region
from linuxkit_py.archive.tarindex import read_tar_entries
from linuxkit_py.cache.layerindex import load_entry_index, save_entry_index
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.fsutil import atomic_output
from linuxkit_py.pkg.apt import APT_TIMEOUT, Deb
from linuxkit_py.pkg.aptstate import AptState
from linuxkit_py.tools import run

log = logging.getLogger(__name__)

CHUNK = 1 << 20
AR_MAGIC = b"!<arch>\n"
AR_HEADER_SIZE = 60
AR_NAME = (0, 16)
AR_SIZE = (48, 10)
AR_END = (58, 2)
AR_END_MAGIC = b"`\n"
DATA_MEMBER = "data.tar"


def debs_dir(cache: Cache) -> Path:
    return cache.derived_dir / "debs"


def unpacked_dir(cache: Cache) -> Path:
    return debs_dir(cache) / "unpacked"


def resolution_dir(cache: Cache) -> Path:
    return debs_dir(cache) / "resolved"


# -- download ------------------------------------------------------------------------------------

def _verify(path: Path, deb: Deb) -> None:
    if deb.size and path.stat().st_size != deb.size:
        raise UserError(f"{path.name}: apt-get download gave {path.stat().st_size} bytes, the index says {deb.size}")
    if deb.sha256:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                sha.update(chunk)
        if sha.hexdigest() != deb.sha256:
            raise UserError(f"{path.name}: its sha256 is not the one apt's index gives")


def download_debs(cache: Cache, debs: Sequence[Deb], state: AptState) -> dict[Deb, Path]:
    """The .deb file of each package, downloading (in one apt-get call) those the cache lacks."""
    directory = debs_dir(cache)
    paths = {deb: directory / deb.file_name for deb in debs}
    missing = list(dict.fromkeys(deb for deb, path in paths.items() if not path.is_file()))
    if not missing:
        return paths
    try:
        directory.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".download-", dir=directory))
    except OSError as exc:
        raise UserError(f"cannot write to the cache directory {directory}: {exc.strerror}") from exc
    try:
        log.warning("downloading %d Debian package(s): %s", len(missing), " ".join(d.pin for d in missing))
        run(state.command("apt-get", "download", "-q", *(f"{d.name}:{state.arch}={d.version}" for d in missing)),
            capture=True, cwd=work, timeout=APT_TIMEOUT)
        for deb in missing:
            got = work / deb.file_name
            if not got.is_file():
                raise UserError(f"apt-get download {deb.pin} wrote no {deb.file_name}")
            _verify(got, deb)
            os.replace(got, paths[deb])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return paths


# -- reading -------------------------------------------------------------------------------------

def _ar_number(header: bytes, where: tuple[int, int]) -> int:
    start, length = where
    text = header[start : start + length].strip()
    if not text.isdigit():
        raise ValueError(f"bad number {text!r} in an ar member header")
    return int(text)


def ar_members(f: BinaryIO) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each member of an ar archive (the common format, as deb(5) uses it)."""
    if f.read(len(AR_MAGIC)) != AR_MAGIC:
        raise ValueError("not an ar archive")
    pos = len(AR_MAGIC)
    while True:
        f.seek(pos)
        header = f.read(AR_HEADER_SIZE)
        if not header:
            return
        if len(header) != AR_HEADER_SIZE or header[AR_END[0] : AR_END[0] + AR_END[1]] != AR_END_MAGIC:
            raise ValueError(f"truncated or malformed ar member header at byte {pos}")
        name = header[AR_NAME[0] : AR_NAME[0] + AR_NAME[1]].decode("ascii", "replace").rstrip().rstrip("/")
        size = _ar_number(header, AR_SIZE)
        yield name, pos + AR_HEADER_SIZE, size
        pos += AR_HEADER_SIZE + size + size % 2  # members start on even offsets


def _decompressing_reader(raw: BinaryIO, suffix: str) -> BinaryIO:
    if suffix in (".xz", ".lzma"):
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if suffix == ".zst":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    if suffix == ".gz":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if suffix == ".bz2":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if suffix == "":
        return raw
    raise ValueError(f"unsupported data member compression {suffix!r}")


def data_member(deb_path: Path) -> tuple[str, FileRegion]:
    """The name and byte range of a .deb's `data.tar[.xz|.zst|.gz|.bz2]` member."""
    with open(deb_path, "rb") as f:
        for name, offset, size in ar_members(f):
            if name.startswith(DATA_MEMBER):
                return name, FileRegion(str(deb_path), offset, size)
    raise ValueError("no data.tar member")


def _unpack_data(deb_path: Path, target: Path) -> None:
    try:
        name, region = data_member(deb_path)
        with open_region(region) as raw, _decompressing_reader(raw, name[len(DATA_MEMBER):]) as reader, \
                atomic_output(target) as out:
            while chunk := reader.read(CHUNK):
                out.write(chunk)
    except (ValueError, EOFError, OSError, lzma.LZMAError, zlib.error, zstandard.ZstdError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise UserError(f"cannot unpack {deb_path}: {exc.strerror}") from exc
        raise UserError(f"{deb_path} is not a valid Debian package: {exc}",
                        hint=f"remove it from {deb_path.parent} and build again") from exc


def deb_entries(cache: Cache, deb_path: Path) -> list[Entry]:
    """The files of a .deb's data archive as Entries (FileRegions into its unpacked tar), in archive order."""
    directory = unpacked_dir(cache)
    stem = deb_path.name.removesuffix(".deb")
    tar_path = directory / f"{stem}.tar"
    index_path = directory / f"{stem}.json"
    entries = load_entry_index(index_path, tar_path)
    if entries is not None:
        return entries
    if not tar_path.is_file():
        _unpack_data(deb_path, tar_path)
    entries = read_tar_entries(tar_path, deb_path.name)
    with contextlib.suppress(OSError):  # only a speed-up for the next build
        save_entry_index(index_path, tar_path, entries)
    return entries
