"""Update bundles (`build -f update`, docs/updates.md) as OCI artifacts: `linuxkit-py update push NAME.update REF`.

The artifact is an OCI image manifest (image-spec 1.1 artifact guidance) whose artifactType says what it is,
with the empty config and the whole bundle as its one layer:

    {"artifactType": "application/vnd.linuxkit-py.update.v1",
     "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:44136f...", "size": 2},
     "layers": [{"mediaType": "application/vnd.linuxkit-py.update.v1.tar", "digest": ..., "size": ...,
                 "annotations": {"org.opencontainers.image.title": "NAME.update"}}],
     "annotations": {"org.opencontainers.image.version": VERSION, "vnd.linuxkit-py.update.arch": ARCH}}

One layer, not root.img and uki.efi apart: the bundle is signed as one file whose manifest comes first, and a
device checks it with the same code whether it came over HTTP, from a file or from a registry (it GETs the
manifest, then the layer's blob, a plain URL). `oras pull` writes the layer back as NAME.update. The same
bundle gives the same manifest bytes, so the same digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
import tempfile
from pathlib import Path

from linuxkit_py.cache.layout import file_sha256_digest
from linuxkit_py.errors import RegistryError, UserError
from linuxkit_py.registry.client import RegistryClient, RegistryOptions, resolve_remote
from linuxkit_py.registry.pull import progress_bar
from linuxkit_py.registry.push import _Document, _push_blob, _put_manifest, registry_destination
from linuxkit_py.registry.reference import parse_reference
from linuxkit_py.registry.transport import RegistryFault

ARTIFACT_TYPE = "application/vnd.linuxkit-py.update.v1"
BUNDLE_MEDIA_TYPE = "application/vnd.linuxkit-py.update.v1.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
ARCH_ANNOTATION = "vnd.linuxkit-py.update.arch"
BUNDLE_FORMAT = "linuxkit-py-update/1"  # the manifest's format= (formats/ab.py writes it)


def bundle_info(bundle: Path) -> dict[str, str]:
    """The key=value lines of the bundle's `manifest` member, its first; a UserError when it is no bundle."""
    try:
        with tarfile.open(bundle, "r:") as tar:
            first = tar.next()
            member = tar.extractfile(first) if first is not None and first.name == "manifest" else None
            data = member.read(65536) if member is not None else None
    except FileNotFoundError:
        raise UserError(f"{bundle}: no such file") from None
    except (tarfile.TarError, OSError):
        data = None
    info = dict(line.split("=", 1) for line in (data or b"").decode(errors="replace").splitlines() if "=" in line)
    if info.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{bundle} is not an update bundle", hint="make one with `linuxkit-py build -f update`")
    return info


def artifact_manifest(bundle: Path, bundle_digest: str, info: dict[str, str]) -> bytes:
    """The artifact's manifest (module docstring): compact JSON with sorted keys, the same for the same bundle."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": f"sha256:{hashlib.sha256(EMPTY_CONFIG).hexdigest()}",
                   "size": len(EMPTY_CONFIG)},
        "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "digest": bundle_digest, "size": bundle.stat().st_size,
                    "annotations": {"org.opencontainers.image.title": bundle.name}}],
        "annotations": {"org.opencontainers.image.version": info.get("version", ""),
                        ARCH_ANNOTATION: info.get("arch", "")},
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def push_bundle(bundle: Path, destination: str, options: RegistryOptions) -> str:
    """Push NAME.update as an artifact to `destination` (REGISTRY/REPO[:TAG]); the manifest's digest."""
    info = bundle_info(bundle)
    host = destination.split("/", 1)[0]
    if "/" not in destination or "@" in destination:
        raise UserError(f"{destination}: give REGISTRY/REPOSITORY[:TAG]", hint="e.g. 127.0.0.1:5000/device:2 (the "
                        "digest is the bundle's, printed after the push)")
    dest = parse_reference(registry_destination(host, destination.split("/", 1)[1]))
    bundle_digest = file_sha256_digest(bundle)
    data = artifact_manifest(bundle, bundle_digest, info)
    document = _Document(f"sha256:{hashlib.sha256(data).hexdigest()}", OCI_MANIFEST, data)
    remote = resolve_remote(dest, dataclasses.replace(options, mirrors={}))  # mirrors serve pulls only
    size = bundle.stat().st_size
    with RegistryClient(options) as client, tempfile.TemporaryDirectory(prefix="linuxkit-py-push-") as tmp:
        config = Path(tmp) / "config"
        config.write_bytes(EMPTY_CONFIG)
        try:
            with progress_bar(options, size + len(EMPTY_CONFIG), f"pushing {bundle.name}") as update:
                _push_blob(client, remote, config, json.loads(data)["config"]["digest"], len(EMPTY_CONFIG), update)
                _push_blob(client, remote, bundle, bundle_digest, size, update)
            _put_manifest(client, remote, document, dest.tag or document.digest)
        except RegistryFault as fault:
            raise RegistryError(f"{destination}: {fault.cause}", fault.hint) from None
    return document.digest
