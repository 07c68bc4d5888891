"""`cache export`: one cached image (one platform) as an OCI image layout tar or a docker-archive tar.

The formats are LinuxKit's `cache export --format oci|docker` (cache/imagesource.go; go-containerregistry's
tarball.Write), readable by `skopeo copy oci-archive:FILE ...` / `docker-archive:FILE ...`:

* oci: `oci-layout`, `blobs/`, `blobs/sha256/`, the config, each layer (as cached, compressed), the manifest,
  then `index.json` naming the manifest with `org.opencontainers.image.ref.name`. Only the one platform's
  manifest, never the index. (LinuxKit gives the descriptor the index media type; we give the manifest's,
  which skopeo needs.)
* docker: `sha256:<config hex>`, each layer once as `<layer hex>.tar.gz`, then `manifest.json`
  (`[{"Config":..., "RepoTags":[NAME], "Layers":[...]}]`).

Every header has mtime 0, owner 0:0 and no user or group names; members come in a fixed order: the same
cached image gives the same bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any, BinaryIO

from linuxkit_py.cache.layout import INDEX_MEDIA_TYPE, REF_NAME, Cache
from linuxkit_py.cache.platform import MANIFEST_MEDIA_TYPES, is_index, select_platform
from linuxkit_py.errors import UserError

EXPORT_FORMATS = ("oci", "docker")
OCI_MANIFEST_MEDIA_TYPE = MANIFEST_MEDIA_TYPES[0]
# LinuxKit's oci-layout member, byte for byte (a json.MarshalIndent quirk of its writer).
OCI_LAYOUT = b'{\n\t\t"imageLayoutVersion": "1.0.0"\n\t}'
FILE_MODE = 0o644
DIR_MODE = 0o755


@dataclass(frozen=True)
class ExportedImage:
    """The platform image that was written: its manifest's digest and the name it carries."""

    digest: str
    name: str


@dataclass(frozen=True)
class _Manifest:
    digest: str
    media_type: str
    doc: dict[str, Any]

    @property
    def blobs(self) -> list[dict[str, Any]]:
        return [self.doc["config"], *(self.doc.get("layers") or [])]


def _platform_manifest(cache: Cache, ref: str, arch: str) -> _Manifest:
    desc = cache.get_ref(ref)
    if desc is None:
        raise UserError(f"{ref} is not in the cache", hint=f"linuxkit-py cache pull {ref}")
    doc = cache.read_json(desc["digest"])
    media_type = desc.get("mediaType") or doc.get("mediaType") or OCI_MANIFEST_MEDIA_TYPE
    if is_index(doc, desc.get("mediaType")):
        desc = select_platform(doc, arch, ref)
        if not cache.has_blob(desc["digest"]):
            raise UserError(f"{ref}: the cache has no linux/{arch} image of it",
                            hint=f"linuxkit-py cache pull --platform linux/{arch} {ref}")
        doc = cache.read_json(desc["digest"])
        media_type = desc.get("mediaType") or doc.get("mediaType") or OCI_MANIFEST_MEDIA_TYPE
    manifest = _Manifest(desc["digest"], media_type, doc)
    try:
        missing = [b["digest"] for b in manifest.blobs if not cache.has_blob(b["digest"])]
    except (KeyError, TypeError):
        raise UserError(f"{ref}: manifest {manifest.digest} in the cache has no config or a bad layer entry",
                        hint="linuxkit-py cache verify") from None
    if missing:
        raise UserError(f"{ref}: blob {missing[0]} is missing from the cache", hint="linuxkit-py cache verify")
    return manifest


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    info.mode = DIR_MODE if kind == tarfile.DIRTYPE else FILE_MODE
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


class _Writer:
    """A ustar stream of fixed headers."""

    def __init__(self, out: BinaryIO) -> None:
        self._tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115

    def directory(self, name: str) -> None:
        self._tar.addfile(_info(name, kind=tarfile.DIRTYPE))

    def data(self, name: str, data: bytes) -> None:
        self._tar.addfile(_info(name, len(data)), io.BytesIO(data))

    def blob(self, name: str, cache: Cache, digest: str) -> None:
        path = cache.blob_path(digest)
        with open(path, "rb") as f:
            size = f.seek(0, io.SEEK_END)
            f.seek(0)
            self._tar.addfile(_info(name, size), f)

    def close(self) -> None:
        self._tar.close()


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def write_oci_archive(cache: Cache, manifest: _Manifest, name: str, out: BinaryIO) -> None:
    tar = _Writer(out)
    tar.data("oci-layout", OCI_LAYOUT)
    tar.directory("blobs/")
    tar.directory("blobs/sha256/")
    written: set[str] = set()
    for blob in [*manifest.blobs, {"digest": manifest.digest}]:
        if blob["digest"] not in written:
            tar.blob(_blob_name(blob["digest"]), cache, blob["digest"])
            written.add(blob["digest"])
    size = cache.blob_path(manifest.digest).stat().st_size
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [
        {"mediaType": manifest.media_type, "size": size, "digest": manifest.digest,
         "annotations": {REF_NAME: name}}]}
    tar.data("index.json", json.dumps(index, indent=3).encode())
    tar.close()


def docker_repo_tag(name: str) -> str | None:
    """RepoTags' entry for `name`: as given, `:latest` added without a tag, None for a digest reference."""
    if "@" in name:
        return None
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def write_docker_archive(cache: Cache, manifest: _Manifest, name: str, out: BinaryIO) -> None:
    tar = _Writer(out)
    config = manifest.doc["config"]["digest"]
    tar.blob(config, cache, config)
    layers: list[str] = []
    for layer in manifest.doc.get("layers") or []:
        file = layer["digest"].removeprefix("sha256:") + ".tar.gz"
        if file not in layers:
            tar.blob(file, cache, layer["digest"])
        layers.append(file)
    tag = docker_repo_tag(name)
    doc = [{"Config": config, "RepoTags": [tag] if tag else None, "Layers": layers}]
    tar.data("manifest.json", json.dumps(doc, separators=(",", ":")).encode())
    tar.close()


def export_image(cache: Cache, ref: str, out: BinaryIO, *, arch: str, fmt: str = "oci",
                 name: str | None = None) -> ExportedImage:
    """Write the cached image `ref` (its linux/`arch` image when `ref` names an index) to `out` as an `fmt`
    archive carrying the name `name` (default `ref`)."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}", hint=f"use {' or '.join(EXPORT_FORMATS)}")
    manifest = _platform_manifest(cache, ref, arch)
    name = name or ref
    if fmt == "oci":
        write_oci_archive(cache, manifest, name, out)
    else:
        write_docker_archive(cache, manifest, name, out)
    return ExportedImage(manifest.digest, name)

