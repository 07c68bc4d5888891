"""Write images we build into the cache: layers of Entries -> gzip tar blobs, config, manifest, ref.

Everything is deterministic (OCI image-spec, "Image Manifest" and "Image Configuration"): tar
bytes come from write_tar with one fixed mtime, gzip has mtime 0 and fixed block boundaries,
JSON documents are canonical (sorted keys, no spaces), and the config has no `created` time.
The same entries always give the same digests. The uncompressed tar of each layer is kept as
the cache's unpacked layer, so using the image later decompresses nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from linuxkit_py.archive.compress import ParallelGzipWriter
from linuxkit_py.archive.entry import Entry
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.cache.image import Image
from linuxkit_py.cache.layers import layers_dir
from linuxkit_py.cache.layout import Cache, canonical_json
from linuxkit_py.errors import UserError

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK = 1 << 20


class _HashingFile:
    """A write-only file that hashes and counts what passes through to `out`."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


class _TeeToGzip:
    """Receives the tar stream: writes it uncompressed to one file and gzip-compressed to another."""

    def __init__(self, plain: _HashingFile, gzipped: ParallelGzipWriter) -> None:
        self._plain = plain
        self._gzipped = gzipped

    def write(self, data: bytes) -> int:
        self._plain.write(data)
        self._gzipped.write(data)
        return len(data)


@dataclass(frozen=True)
class _Layer:
    descriptor: dict[str, Any]
    diff_id: str


@contextlib.contextmanager
def _temp_file(directory: Path) -> Iterator[tuple[str, BinaryIO]]:
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".write-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield name, f
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _file_chunks(f: BinaryIO) -> Iterator[bytes]:
    f.seek(0)
    while chunk := f.read(CHUNK):
        yield chunk


def _write_layer(cache: Cache, entries: Iterable[Entry], epoch: int) -> _Layer:
    unpacked_dir = layers_dir(cache)
    try:
        with _temp_file(unpacked_dir) as (plain_name, plain), _temp_file(unpacked_dir) as (_, gz):
            plain_hash = _HashingFile(plain)
            gz_hash = _HashingFile(gz)
            compressor = ParallelGzipWriter(cast(BinaryIO, gz_hash))
            try:
                write_tar(entries, cast(BinaryIO, _TeeToGzip(plain_hash, compressor)), epoch)
                compressor.close()
            except BaseException:
                compressor.abort()
                raise
            digest = gz_hash.digest
            cache.write_blob(_file_chunks(gz), digest, gz_hash.size)
            unpacked = unpacked_dir / f"{digest.split(':', 1)[1]}.tar"
            if not unpacked.is_file():
                plain.flush()
                os.chmod(plain_name, 0o644)
                os.replace(plain_name, unpacked)
    except OSError as exc:
        raise UserError(f"cannot write an image layer into the cache {cache.root}: {exc.strerror or exc}") from exc
    descriptor = {"mediaType": LAYER_MEDIA_TYPE, "digest": digest, "size": gz_hash.size}
    return _Layer(descriptor, plain_hash.digest)


def _descriptor(media_type: str, data: bytes, digest: str) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def write_image(cache: Cache, layers: Sequence[Iterable[Entry]], *, arch: str, config: dict[str, Any],
                epoch: int, ref: str | None = None) -> Image:
    """Write a linux/`arch` image of `layers` (each a sequence of Entries, bottom first) into the cache.

    `config` is the image config's `config` section (Entrypoint, Cmd, Env, WorkingDir, Labels).
    With `ref` (a normalised reference) the image is named in index.json; without, only its
    blobs are written (write_index names several of them together).
    """
    cache.ensure()
    written = [_write_layer(cache, entries, epoch) for entries in layers]
    image_config = {
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in written]},
    }
    config_bytes = canonical_json(image_config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": _descriptor(CONFIG_MEDIA_TYPE, config_bytes, cache.put_blob(config_bytes)),
        "layers": [layer.descriptor for layer in written],
    }
    manifest_bytes = canonical_json(manifest)
    digest = cache.put_blob(manifest_bytes)
    if ref is not None:
        descriptor = _descriptor(MANIFEST_MEDIA_TYPE, manifest_bytes, digest)
        descriptor["platform"] = {"architecture": arch, "os": "linux"}
        cache.set_ref(ref, descriptor)
    return Image(ref=ref or "", digest=digest, manifest=manifest, config=image_config)


def write_index(cache: Cache, ref: str, images: Sequence[Image],
                extra: Sequence[dict[str, Any]] = ()) -> str:
    """Name an OCI image index of `images` (one per platform, already in the cache) `ref`; its digest.

    `extra` are more descriptors for the index after the images' (their attestation manifests)."""
    manifests = []
    for image in images:
        manifest_bytes = canonical_json(image.manifest)
        descriptor = _descriptor(MANIFEST_MEDIA_TYPE, manifest_bytes, image.digest)
        descriptor["platform"] = {"architecture": image.config["architecture"], "os": "linux"}
        manifests.append(descriptor)
    manifests.extend(extra)
    index_bytes = canonical_json({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests})
    digest = cache.put_blob(index_bytes)
    cache.set_ref(ref, _descriptor(INDEX_MEDIA_TYPE, index_bytes, digest))
    return digest
