"""Build small OCI images in tests: tar layers from member lists, OCI layouts, skopeo pushes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

FIXED_MTIME = 1_500_000_000


@dataclass
class Member:
    path: str
    kind: str = "file"  # file, dir, symlink, hardlink, char, block, fifo
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


def F(path: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Member:
    return Member(path, "file", data.encode() if isinstance(data, str) else data, mode, uid, gid)


def D(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Member:
    return Member(path, "dir", mode=mode, uid=uid, gid=gid)


def L(path: str, target: str) -> Member:
    return Member(path, "symlink", mode=0o777, linkname=target)


def H(path: str, target: str) -> Member:
    return Member(path, "hardlink", linkname=target)


def WH(path: str) -> Member:
    """A whiteout deleting `path`."""
    head, _, tail = path.rpartition("/")
    return F(f"{head}/.wh.{tail}" if head else f".wh.{tail}")


def OPQ(directory: str) -> Member:
    """An opaque whiteout: hides everything lower layers put in `directory`."""
    return F(f"{directory}/.wh..wh..opq")


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tar_layer(*members: Member) -> bytes:
    """An uncompressed PAX tar of `members`, in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            info = tarfile.TarInfo(m.path)
            info.type = _TYPES[m.kind]
            info.mode = m.mode
            info.uid, info.gid = m.uid, m.gid
            info.mtime = FIXED_MTIME
            info.linkname = m.linkname
            info.devmajor, info.devminor = m.devmajor, m.devminor
            info.pax_headers = dict(m.pax)
            if m.kind == "file":
                info.size = len(m.data)
                tf.addfile(info, io.BytesIO(m.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER_MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclass
class ImageSpec:
    """One platform image: uncompressed layer tars and image config fields."""

    layers: list[bytes]
    arch: str = "amd64"
    config: dict[str, Any] = field(default_factory=dict)  # Entrypoint, Cmd, Env, Labels, ...
    compression: str = "gzip"


class Layout:
    """An OCI image layout directory we write images into (then push with skopeo)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.manifests: list[dict[str, Any]] = []
        self._save()

    def blob(self, data: bytes) -> str:
        d = digest_of(data)
        (self.root / "blobs" / "sha256" / d.split(":")[1]).write_bytes(data)
        return d

    def _save(self) -> None:
        doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": self.manifests}
        (self.root / "index.json").write_text(json.dumps(doc))

    def _image_manifest(self, img: ImageSpec) -> dict[str, Any]:
        layer_descs = []
        diff_ids = []
        for raw in img.layers:
            blob = compress(raw, img.compression)
            layer_descs.append({"mediaType": LAYER_MEDIA[img.compression], "digest": self.blob(blob),
                                "size": len(blob)})
            diff_ids.append(digest_of(raw))
        config = {"architecture": img.arch, "os": "linux", "config": img.config,
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        cbytes = json.dumps(config, sort_keys=True).encode()
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": self.blob(cbytes), "size": len(cbytes)},
                    "layers": layer_descs}
        mbytes = json.dumps(manifest, sort_keys=True).encode()
        return {"mediaType": manifest["mediaType"], "digest": self.blob(mbytes), "size": len(mbytes),
                "platform": {"architecture": img.arch, "os": "linux"}}

    def add_image(self, tag: str, img: ImageSpec) -> str:
        """Add a single-platform image under `tag`; returns the manifest digest."""
        desc = self._image_manifest(img)
        desc.pop("platform")
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.manifests.append(desc)
        self._save()
        return desc["digest"]

    def add_index(self, tag: str, imgs: list[ImageSpec], attestation: bool = False) -> str:
        """Add a multi-platform index under `tag`; returns the index digest."""
        descs = [self._image_manifest(i) for i in imgs]
        if attestation:
            att = self._image_manifest(ImageSpec(layers=[tar_layer(F("sbom.json", "{}"))]))
            att["platform"] = {"architecture": "unknown", "os": "unknown"}
            descs.append(att)
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": descs}
        ibytes = json.dumps(index, sort_keys=True).encode()
        digest = self.blob(ibytes)
        desc = {"mediaType": index["mediaType"], "digest": digest, "size": len(ibytes),
                "annotations": {"org.opencontainers.image.ref.name": tag}}
        self.manifests.append(desc)
        self._save()
        return digest


def skopeo_push(layout: Path, tag: str, dest: str, v2s2: bool = False) -> None:
    """Push `layout:tag` to `dest` (e.g. 127.0.0.1:5000/test/busybox:1) over plain http."""
    cmd = ["skopeo", "copy", "--all", "--quiet", "--dest-tls-verify=false", "--preserve-digests"]
    if v2s2:
        cmd = ["skopeo", "copy", "--all", "--quiet", "--dest-tls-verify=false", "--format", "v2s2"]
    subprocess.run([*cmd, f"oci:{layout}:{tag}", f"docker://{dest}"], check=True, capture_output=True)


def file_sha256(path: Path) -> str:
    """The sha256 of a file (read in 4 MiB chunks): what the reproducibility tests compare."""
    digest, buffer = hashlib.sha256(), bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()
