"""`cache import`: an OCI image layout tar (`oci-archive`) or a docker-archive tar (`docker save`, skopeo's
`docker-archive:`, LinuxKit's `cache export --format docker`) into the cache.

The tar is read once, as a stream (so `-` works). Every file member is stored as a blob while it is hashed:
an OCI `blobs/sha256/<hex>` only when its bytes have that digest, any other file under the digest of its
bytes. Only then are the images named: OCI descriptors by their `io.containerd.image.name` or
`org.opencontainers.image.ref.name` annotation, docker-archive images (turned into an OCI manifest) by
their RepoTags, each only when every blob it needs is in the cache and a docker-archive layer's digest
after decompression matches its config's diff_id. A bad tar changes no name in index.json and leaves no
partial file; blobs it verified stay (unnamed blobs are harmless, as after a failed pull).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from linuxkit_py.cache.layout import REF_NAME, TEMP_PREFIX, BlobMismatch, Cache, canonical_json
from linuxkit_py.cache.verify import image_problems
from linuxkit_py.errors import UserError

CONTAINERD_NAME = "io.containerd.image.name"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
METADATA_FILES = ("index.json", "manifest.json", "oci-layout", "repositories")
MAX_METADATA = 16 << 20  # index.json / manifest.json are small; a bigger one is not what it says
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
BLOB_PREFIX = "blobs/sha256/"
# A docker-archive config named by its digest: `sha256:<hex>` (go-containerregistry) or `<hex>.json` (docker save).
_NAMED_BY_DIGEST = re.compile(r"(?:sha256:)?([0-9a-f]{64})(?:\.json)?")


@dataclass(frozen=True)
class StoredFile:
    digest: str
    size: int
    diff_id: str  # sha256 of the gunzipped bytes for a gzip file, else the digest


@dataclass
class _Archive:
    files: dict[str, StoredFile] = field(default_factory=dict)  # member name -> what it was stored as
    metadata: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # symbolic or hard link member -> the member it names

    def file(self, name: str) -> StoredFile | None:
        """The stored file a member name refers to, following links (`docker save`'s <id>/layer.tar)."""
        name = _member_name(name)
        for _ in range(8):
            if name in self.files:
                return self.files[name]
            if name not in self.links:
                return None
            name = self.links[name]
        return None


@dataclass(frozen=True)
class ImportedImage:
    name: str
    digest: str  # of what the name points to (manifest or index)


class _Present(Mapping[str, int]):
    """digest -> size of the blobs the cache holds, looked up on demand (every stored blob was verified when
    it was written); what verify's image check reads."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    def __contains__(self, digest: object) -> bool:
        try:
            return isinstance(digest, str) and self._cache.has_blob(digest)
        except UserError:
            return False

    def __getitem__(self, digest: str) -> int:
        try:
            return self._cache.blob_path(digest).stat().st_size
        except (OSError, UserError):
            raise KeyError(digest) from None

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


class _Gunzip:
    """sha256 of the decompressed bytes of a gzip stream fed in pieces (several members allowed), in bounded
    memory; `digest()` is None when the bytes are not gzip after all."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self._z = zlib.decompressobj(wbits=31)
        self.ok = True

    def feed(self, data: bytes) -> None:
        while self.ok:
            try:
                out = self._z.decompress(data, CHUNK)
            except zlib.error:
                self.ok = False
                return
            self.sha.update(out)
            if self._z.eof:
                data = self._z.unused_data
                self._z = zlib.decompressobj(wbits=31)
                if not data:
                    return
            elif self._z.unconsumed_tail or len(out) == CHUNK:
                data = self._z.unconsumed_tail
            else:
                return

    def digest(self) -> str | None:
        return "sha256:" + self.sha.hexdigest() if self.ok else None


def _store(cache: Cache, source: IO[bytes], size: int, expected: str | None, member: str) -> StoredFile:
    """Copy one member into the cache as a blob; with `expected` (an OCI blob), only if its bytes have that
    digest. Without, a gzip member's decompressed digest is taken too (a docker-archive layer's diff_id)."""
    blobs = cache.root / "blobs" / "sha256"
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=blobs)
    try:
        sha, n, gunzip = hashlib.sha256(), 0, None
        with os.fdopen(fd, "wb") as f:
            while chunk := source.read(CHUNK):
                if n == 0 and expected is None and chunk.startswith(GZIP_MAGIC):  # a docker-archive layer
                    gunzip = _Gunzip()
                if gunzip is not None:
                    gunzip.feed(chunk)
                sha.update(chunk)
                n += len(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        digest = "sha256:" + sha.hexdigest()
        if n != size:
            raise BlobMismatch(f"{member}: the tar ends inside it ({n} of {size} bytes)")
        if expected is not None and digest != expected:
            raise BlobMismatch(f"{member}: its bytes have digest {digest}, not {expected}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, cache.blob_path(digest))
        diff_id = (gunzip.digest() if gunzip else None) or digest
        return StoredFile(digest, n, diff_id)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_archive(cache: Cache, fileobj: IO[bytes], label: str) -> _Archive:
    archive = _Archive()
    cache.ensure()
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                name = _member_name(member.name)
                if member.issym():
                    archive.links[name] = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
                elif member.islnk():
                    archive.links[name] = _member_name(member.linkname)
                if not member.isfile():
                    continue
                source = tar.extractfile(member)
                assert source is not None
                if name in METADATA_FILES:
                    if member.size > MAX_METADATA:
                        raise UserError(f"{label}: {name} is {member.size} bytes, too large for an archive's {name}")
                    archive.metadata[name] = source.read()
                    continue
                expected = None
                if name.startswith(BLOB_PREFIX) and "/" not in name[len(BLOB_PREFIX):]:
                    expected = "sha256:" + name[len(BLOB_PREFIX):]
                    try:
                        cache.blob_path(expected)
                    except UserError as exc:
                        raise UserError(f"{label}: {name}: {exc.message}") from None
                try:
                    archive.files[name] = _store(cache, source, member.size, expected, name)
                except BlobMismatch as exc:
                    raise UserError(f"{label}: {exc}", hint="the archive is corrupt") from None
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise UserError(f"{label}: not a readable tar archive: {exc}") from None
    return archive


def _json(archive: _Archive, name: str, label: str) -> Any:
    try:
        return json.loads(archive.metadata[name])
    except ValueError as exc:
        raise UserError(f"{label}: {name} is not valid JSON: {exc}") from None


def _check_image(cache: Cache, desc: dict[str, Any], label: str, name: str) -> None:
    problems = image_problems(cache, desc, _Present(cache))
    if problems:
        raise UserError(f"{label}: {name}: {problems[0]}", hint="the archive is incomplete or corrupt")


def _oci_images(cache: Cache, archive: _Archive, label: str,
                normalize: Callable[[str], str | None]) -> list[tuple[str, dict[str, Any]]]:
    index = _json(archive, "index.json", label)
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise UserError(f"{label}: index.json is not an OCI image index")
    named = []
    for desc in manifests:
        if not isinstance(desc, dict):
            raise UserError(f"{label}: index.json has an entry that is not an object")
        annotations = desc.get("annotations") or {}
        given = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
        _check_image(cache, desc, label, given or str(desc.get("digest")))
        name = normalize(given) if given else None
        descriptor = {k: v for k, v in desc.items() if k != "annotations"}
        named.append((name or "", descriptor))
    return named


def _docker_images(cache: Cache, archive: _Archive, label: str,
                   normalize: Callable[[str], str | None]) -> list[tuple[str, dict[str, Any]]]:
    doc = _json(archive, "manifest.json", label)
    if not isinstance(doc, list):
        raise UserError(f"{label}: manifest.json is not a list of images")
    named: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(doc):
        where = f"{label}: manifest.json[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str) \
                or not isinstance(item.get("Layers"), list):
            raise UserError(f"{where} has no Config or Layers")
        config_file = archive.file(item["Config"])
        if config_file is None:
            raise UserError(f"{where}: its config {item['Config']} is not in the archive")
        by_digest = _NAMED_BY_DIGEST.fullmatch(posixpath.basename(item["Config"]))
        if by_digest and f"sha256:{by_digest.group(1)}" != config_file.digest:
            raise UserError(f"{where}: config {item['Config']} has digest {config_file.digest}",
                            hint="the archive is corrupt")
        try:
            config = json.loads(cache.read_blob(config_file.digest))
        except ValueError:
            raise UserError(f"{where}: its config {item['Config']} is not JSON") from None
        diff_ids = ((config.get("rootfs") or {}).get("diff_ids") or []) if isinstance(config, dict) else []
        if len(diff_ids) != len(item["Layers"]):
            raise UserError(f"{where}: {len(item['Layers'])} layers, but its config lists {len(diff_ids)} diff_ids")
        layers = []
        for layer_name, diff_id in zip(item["Layers"], diff_ids, strict=True):
            layer = archive.file(str(layer_name))
            if layer is None:
                raise UserError(f"{where}: layer {layer_name} is not in the archive")
            if layer.diff_id != diff_id:
                raise UserError(f"{where}: layer {layer_name} has diff_id {layer.diff_id}, its config says {diff_id}",
                                hint="the archive is corrupt")
            layers.append({"mediaType": LAYER_GZIP if layer.diff_id != layer.digest else LAYER_TAR,
                           "digest": layer.digest, "size": layer.size})
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": config_file.digest, "size": config_file.size},
                    "layers": layers}
        data = canonical_json(manifest)
        digest = cache.put_blob(data)
        descriptor = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(data)}
        tags = [t for t in item.get("RepoTags") or [] if isinstance(t, str)]
        names = [n for t in tags if (n := normalize(t))] or [""]
        named.extend((name, descriptor) for name in names)
    return named


def import_archive(cache: Cache, fileobj: IO[bytes], label: str, normalize: Callable[[str], str | None],
                   name: str | None = None) -> list[ImportedImage]:
    """Import the archive read from `fileobj` (`label` names it in errors); `normalize` turns a name found in
    it into a cache reference (None: not a usable name); `name` names the archive's only image instead."""
    archive = _read_archive(cache, fileobj, label)
    if "index.json" in archive.metadata:
        images = _oci_images(cache, archive, label, normalize)
    elif "manifest.json" in archive.metadata:
        images = _docker_images(cache, archive, label, normalize)
    else:
        raise UserError(f"{label}: neither an OCI image layout (index.json) nor a docker archive (manifest.json)")
    if name is not None:
        digests = {desc["digest"] for _, desc in images}
        if len(digests) != 1:
            raise UserError(f"{label} holds {len(digests)} images: --name names one")
        images = [(name, images[0][1])]
    images = [(n, desc) for n, desc in images if n]
    if not images:
        raise UserError(f"{label}: its images carry no name; their blobs are in the cache",
                        hint="name one with --name REF")
    for ref, desc in images:
        cache.set_ref(ref, desc)
    return [ImportedImage(ref, desc["digest"]) for ref, desc in images]

