"""The build's SBOM: `NAME.spdx.json`, an SPDX 2.3 document of everything the image holds (docs/trust.md).

- the image itself (SPDXRef-Image), with every regular file of its root filesystem (SHA1 and SHA256 each) and
  the package verification code over them;
- every image the spec uses (reference, manifest digest, platform, where it is used), with a `pkg:oci` URL;
- the SBOMs those images carry as attestations, merged as LinuxKit merges them (their file names prefixed with
  where the image's files are in the root filesystem); our `pkg build` images carry one listing their Debian
  packages with versions, source packages and licences; for an image without one, the Debian packages its
  `org.linuxkit-py.debs` label names;
- the kernel (its release, from lib/modules/, and the sha256 of /boot/kernel).

Files are hashed once per build; the hashes of files in cached layers are kept beside the layer
(`<cache>/linuxkit-py/sbom/`), so a warm build reads only the files that changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from linuxkit_py import __version__
from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.archive.regionfile import open_data
from linuxkit_py.archive.tree import normalize_path, parent_dirs
from linuxkit_py.cache.attestation import cached_sboms
from linuxkit_py.cache.filehashes import sbom_hashes_path
from linuxkit_py.cache.image import Image
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.fsutil import atomic_output
from linuxkit_py.registry.reference import parse_reference
from linuxkit_py.sbom.debian import NOASSERTION
from linuxkit_py.sbom.spdx import (
    FileIds,
    FileList,
    deb_purl,
    document,
    merge_into,
    oci_purl,
    package,
    relationship,
    spdx_id,
)
from linuxkit_py.spec.model import SECTIONS, Spec

SBOM_SUFFIX = ".spdx.json"  # NAME.spdx.json beside the outputs
IMAGE_ID = "SPDXRef-Image"
KERNEL_ID = "SPDXRef-Kernel"
FILE_ID_PREFIX = "SPDXRef-File-"  # + 24 hex digits: what spdx_id("File", hex) gives
DEBS_LABEL = "org.linuxkit-py.debs"
CHUNK = 1 << 20
_ROW = 64  # _FileTable: bytes a file
_MODULES_DIR = re.compile(r"^lib/modules/([^/]+)/")


@dataclass
class SbomInput:
    name: str  # the document's and the image's name (the build's NAME)
    created: int  # creation time, seconds since the epoch (the build's epoch unless --sbom-current-time)
    spec: Spec
    images: dict[str, Image]  # reference as the spec writes it -> image
    entries: list[Entry]  # the root filesystem as written
    cache: Cache
    arch: str
    version: str | None = None  # --image-version, when the build has one


def _uses(spec: Spec) -> dict[str, list[str]]:
    """Image reference -> where the spec uses it (kernel, init, onboot/NAME, services/NAME, volumes/NAME)."""
    uses: dict[str, list[str]] = {}
    if spec.kernel.get("image"):
        uses.setdefault(spec.kernel["image"], []).append("kernel")
    for ref in spec.init:
        uses.setdefault(ref, []).append("init")
    for volume in spec.volumes:
        if volume.get("image"):
            uses.setdefault(volume["image"], []).append(f"volumes/{volume['name']}")
    for section in SECTIONS:
        for entry in getattr(spec, section):
            uses.setdefault(entry["image"], []).append(f"{section}/{entry['name']}")
    return uses


def _content_dir(entries: Iterable[Entry]) -> dict[str, str]:
    """Image reference -> the directory its files were first placed in (`containers/services/x/lower`)."""
    dirs: dict[str, str] = {}
    for entry in entries:
        if entry.kind is Kind.FILE and entry.source and entry.location and entry.source not in dirs:
            parts = entry.path.split("/")
            if parts[0] == "containers" and len(parts) > 4 and parts[3] in ("rootfs", "lower"):
                dirs[entry.source] = "/".join(parts[:4])
            elif entry.location.startswith(("init", "kernel")):
                dirs[entry.source] = ""
    return dirs


class _HashCache:
    """SHA1 and SHA256 of files in cached, immutable layer tars: one JSON per tar, offset -> hashes."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.directory = cache.derived_dir / "sbom"
        self.immutable = str(cache.derived_dir) + os.sep
        self.loaded: dict[str, dict[str, list[str]]] = {}
        self.dirty: set[str] = set()

    def _table(self, path: str) -> dict[str, list[str]] | None:
        if not path.startswith(self.immutable):
            return None  # a host file (`files: source:`) may change: always read
        if path not in self.loaded:
            table: dict[str, list[str]] = {}
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(sbom_hashes_path(self.cache, path).read_bytes())
                if isinstance(doc, dict):
                    table = doc
            self.loaded[path] = table
        return self.loaded[path]

    def hashes(self, entry: Entry) -> tuple[str, str]:
        """SHA1 and SHA256 of the file, in hex."""
        digests = self.digests(entry)
        return digests[:20].hex(), digests[20:].hex()

    def digests(self, entry: Entry) -> bytes:
        """SHA1 (20 bytes) and SHA256 (32) of the file, from the tar's table when it has them."""
        data = entry.data
        table = self._table(data.path) if isinstance(data, FileRegion) else None
        key = f"{data.offset}:{data.size}" if isinstance(data, FileRegion) else ""
        if table is not None and isinstance(known := table.get(key), list) and len(known) == 2:
            with contextlib.suppress(TypeError, ValueError):
                digests = bytes.fromhex(known[0]) + bytes.fromhex(known[1])
                if len(digests) == 52:
                    return digests
        sha1, sha256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
        with open_data(data) as f:
            while chunk := f.read(CHUNK):
                sha1.update(chunk)
                sha256.update(chunk)
        if table is not None and isinstance(data, FileRegion):
            table[key] = [sha1.hexdigest(), sha256.hexdigest()]
            self.dirty.add(data.path)
        return sha1.digest() + sha256.digest()

    def save(self) -> None:
        """Keep the new hashes for the next build (only a speed-up: a failure is ignored)."""
        for path in sorted(self.dirty):
            self._save(path)
        self.dirty.clear()

    def _save(self, path: str) -> None:
        with contextlib.suppress(OSError, UserError):
            self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError, UserError), atomic_output(sbom_hashes_path(self.cache, path)) as f:
            f.write(json.dumps(self.loaded[path], sort_keys=True, separators=(",", ":")).encode())

    def release(self, path: str) -> None:
        """Save `path`'s table if it changed and let it go (the hashes taken from it stay valid): decoded, a
        table takes about 500 bytes a file, all of them at once 120 MiB on a 230,000-file image."""
        if path in self.dirty:
            self._save(path)
            self.dirty.discard(path)
        self.loaded.pop(path, None)


class _FileTable:
    """The image's regular files by path, with a row of 64 bytes each: the hash its SPDX id is made of (12),
    its SHA1 (20) and SHA256 (32). Each file's SPDX record is made when it is written, so the SBOM holds
    64 bytes a file beside the entries it points at, not 500 of strings (100 MiB at 230,000 files)."""

    def __init__(self, regular: list[Entry], rows: bytearray) -> None:
        self.regular, self.rows = regular, rows

    def __len__(self) -> int:
        return len(self.regular)

    def __iter__(self) -> Iterator[tuple[str, str, str, str]]:
        return map(self.__getitem__, range(len(self.regular)))

    def __getitem__(self, i: int) -> tuple[str, str, str, str]:
        """(fileName, SPDXID, SHA1, SHA256) of file `i`, in hex."""
        row = self.rows[i * _ROW:(i + 1) * _ROW]
        name = "./" + self.regular[i].path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return name, FILE_ID_PREFIX + row[:12].hex(), row[12:32].hex(), row[32:].hex()

    def file_id(self, i: int) -> str:
        return FILE_ID_PREFIX + self.rows[i * _ROW:i * _ROW + 12].hex()

    def file_ids(self, indices: Sequence[int]) -> FileIds:
        return FileIds(lambda: map(self.file_id, indices), len(indices))

    def verification_code(self, indices: Iterable[int]) -> dict[str, str]:
        """SPDX's package verification code of these files: the SHA1 of their SHA1s, in hex, sorted and joined.
        Sorted a first byte at a time (the binary digests sort as their hex does), so that no list of all
        of them is made."""
        rows = self.rows
        buckets = [array("I") for _ in range(256)]
        for i in indices:
            buckets[rows[i * _ROW + 12]].append(i)
        code = hashlib.sha1(usedforsecurity=False)
        for bucket in buckets:
            code.update(b"".join(sorted(rows[i * _ROW + 12:i * _ROW + 32] for i in bucket)).hex().encode())
        return {"packageVerificationCodeValue": code.hexdigest()}


def _analysed(pkg: dict[str, Any], table: _FileTable, indices: Sequence[int]) -> None:
    """Mark `pkg` as having the files `indices` of `table` (SPDX's hasFiles, which implies CONTAINS)."""
    pkg["filesAnalyzed"] = True
    pkg["packageVerificationCode"] = table.verification_code(indices)
    pkg["licenseInfoFromFiles"] = [NOASSERTION]
    pkg["hasFiles"] = table.file_ids(indices)


def _files(entries: list[Entry], hashes: _HashCache) -> _FileTable:
    """Every regular file (by path) with its hashes, looked up one layer tar at a time, each tar's hash table
    released after it."""
    regular = sorted((e for e in entries if e.kind is Kind.FILE), key=lambda e: e.path)
    rows = bytearray(_ROW * len(regular))
    by_tar: dict[str, array[int]] = {}
    for i, entry in enumerate(regular):
        by_tar.setdefault(_tar_of(entry), array("I")).append(i)
    for tar in sorted(by_tar):
        for i in by_tar.pop(tar):
            entry = regular[i]
            raw = entry.path.encode("utf-8", "surrogateescape")  # a name need not be UTF-8
            rows[i * _ROW:(i + 1) * _ROW] = hashlib.sha256(raw).digest()[:12] + hashes.digests(entry)
        if tar:
            hashes.release(tar)
    return _FileTable(regular, rows)


def _tar_of(entry: Entry) -> str:
    return entry.data.path if isinstance(entry.data, FileRegion) else ""


def _image_package(index: int, ref: str, image: Image, uses: list[str], arch: str) -> dict[str, Any]:
    parsed = parse_reference(ref)
    repository = f"{parsed.registry}/{parsed.repository}"
    return package(spdx_id("Package", "image", str(index), parsed.repository), repository,
                   version=parsed.tag or image.digest, sha256=image.digest.removeprefix("sha256:"),
                   purl=oci_purl(repository, image.digest, arch, parsed.tag), purpose="CONTAINER",
                   comment=f"{ref} for linux/{arch}, used by: {', '.join(uses)}")


def _label_debs(image: Image, owner: str, arch: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Packages and CONTAINS relationships from the `org.linuxkit-py.debs` label (name=version ...)."""
    label = image.labels.get(DEBS_LABEL)
    packages, relationships = [], []
    for pin in str(label or "").split():
        name, _, version = pin.partition("=")
        if name and version:
            pkg = package(spdx_id("Package", owner.removeprefix("SPDXRef-Package-"), "deb", name), name,
                          version=version, purl=deb_purl(name, version, arch), supplier="Organization: Debian")
            packages.append(pkg)
            relationships.append(relationship(owner, "CONTAINS", pkg["SPDXID"]))
    return packages, relationships


def _kernel(entries: list[Entry], hashes: _HashCache) -> dict[str, Any] | None:
    kernel = next((e for e in entries if e.path == "boot/kernel" and e.kind is Kind.FILE), None)
    if kernel is None:
        return None
    release = next((m.group(1) for e in entries if (m := _MODULES_DIR.match(e.path + "/"))), None)
    return package(KERNEL_ID, "linux", version=release, sha256=hashes.hashes(kernel)[1], licence="GPL-2.0-only",
                   purpose="OPERATING-SYSTEM",
                   comment=f"the kernel /boot/kernel, from {kernel.source}" if kernel.source else None)


def build_sbom(inp: SbomInput) -> dict[str, Any]:
    """The SPDX document of the build."""
    hashes = _HashCache(inp.cache)
    table = _files(inp.entries, hashes)
    by_source: dict[str, array[int]] = {}  # one pass, not one per image
    for i, entry in enumerate(table.regular):
        if entry.source:
            by_source.setdefault(entry.source, array("I")).append(i)
    root = package(IMAGE_ID, inp.name, version=inp.version, purpose="OPERATING-SYSTEM",
                   comment=f"the linux/{inp.arch} image built by linuxkit-py")
    _analysed(root, table, range(len(table)))
    parts: dict[str, Any] = {"packages": [root], "files": FileList(table), "relationships": [],
                             "hasExtractedLicensingInfos": []}
    kernel = _kernel(inp.entries, hashes)
    if kernel is not None:
        parts["packages"].append(kernel)
        parts["relationships"].append(relationship(IMAGE_ID, "CONTAINS", KERNEL_ID))
    uses, dirs = _uses(inp.spec), _content_dir(inp.entries)
    owners: dict[str, str] = {}
    for index, (ref, where) in enumerate(uses.items(), start=1):
        image = inp.images.get(ref)
        if image is None:
            continue  # reused from --input-tar: not pulled, described by its files only
        pkg = _image_package(index, ref, image, where, inp.arch)
        owner = owners[ref] = pkg["SPDXID"]
        _analysed(pkg, table, by_source.get(ref, array("I")))
        parts["packages"].append(pkg)
        parts["relationships"].append(relationship(IMAGE_ID, "CONTAINS", owner))
        if kernel is not None and "kernel" in where:
            parts["relationships"].append(relationship(owner, "CONTAINS", KERNEL_ID))
        sboms = cached_sboms(inp.cache, image.ref, image.digest, image.root)
        for n, sbom in enumerate(sboms):
            merge_into(parts, sbom, prefix=f"{owner.removeprefix('SPDXRef-')}-{n}", stands_for=owner,
                       path_prefix=dirs.get(ref, ""))
        if not sboms:
            packages, relationships = _label_debs(image, owner, inp.arch)
            parts["packages"].extend(packages)
            parts["relationships"].extend(relationships)
    if kernel is not None:  # the Debian package the kernel came from, when an image's SBOM names it
        deb = f"linux-image-{kernel.get('versionInfo')}"
        parts["relationships"].extend(relationship(p["SPDXID"], "CONTAINS", KERNEL_ID)
                                      for p in parts["packages"] if p.get("name") == deb)
    hashes.save()
    return document(inp.name, inp.created, packages=parts["packages"], relationships=parts["relationships"],
                    files=parts["files"], licences=parts["hasExtractedLicensingInfos"], describes=[IMAGE_ID],
                    tool=f"linuxkit-py-{__version__}")


def sbom_entries(path: str, sbom: bytes, entries: list[Entry]) -> list[Entry]:
    """The SBOM as a file of the image (`--sbom-output PATH`; LinuxKit puts `sbom.spdx.json` at the root),
    after the directories above it that the image lacks."""
    target = normalize_path(path)
    if not target:
        raise UserError(f"--sbom-output {path!r}: not a file name in the image")
    have = {e.path for e in entries}
    if target in have:
        raise UserError(f"--sbom-output {path!r}: the image already has /{target}")
    made = [Entry(parent, Kind.DIR, 0o755, source="linuxkit-py", location="sbom")
            for parent in parent_dirs(target) if parent not in have]
    return [*made, Entry(target, Kind.FILE, 0o644, size=len(sbom), data=sbom, source="linuxkit-py",
                         location="sbom")]
