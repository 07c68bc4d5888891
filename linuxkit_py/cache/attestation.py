"""SBOM attestations stored beside an image, as BuildKit stores them (docs.docker.com, "attestation storage").

An image index lists, next to each platform's manifest, an attestation manifest: platform `unknown/unknown`,
annotations `vnd.docker.reference.type: attestation-manifest` and `vnd.docker.reference.digest: <the image
manifest's digest>`. Its layers are in-toto statements (`application/vnd.in-toto+json`); the one annotated
`in-toto.io/predicate-type: https://spdx.dev/Document` holds the image's SPDX document as its predicate.
LinuxKit merges those into its SBOM; so do we, and `pkg build` writes its packages' SBOMs this way, so that
`cache push` carries them to a registry and LinuxKit can read them too.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from linuxkit_py.cache.layout import Cache, canonical_json
from linuxkit_py.cache.platform import is_index

log = logging.getLogger(__name__)

REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"
ATTESTATION_MANIFEST = "attestation-manifest"
INTOTO_MEDIA_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "in-toto.io/predicate-type"
SPDX_PREDICATE = "https://spdx.dev/Document"
STATEMENT_TYPE = "https://in-toto.io/Statement/v0.1"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MAX_STATEMENT = 64 << 20  # an SBOM larger than this is not read (a hostile or broken attestation)


def attestation_descriptor(index: dict[str, Any], manifest_digest: str) -> dict[str, Any] | None:
    """The index's attestation manifest for the image manifest `manifest_digest`, if it lists one."""
    for desc in index.get("manifests") or []:
        if not isinstance(desc, dict):
            continue
        notes = desc.get("annotations") or {}
        if isinstance(notes, dict) and notes.get(REFERENCE_TYPE) == ATTESTATION_MANIFEST \
                and notes.get(REFERENCE_DIGEST) == manifest_digest:
            return desc
    return None


def spdx_layers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers of an attestation manifest that hold SPDX statements."""
    out = []
    for layer in manifest.get("layers") or []:
        if isinstance(layer, dict) and (layer.get("annotations") or {}).get(PREDICATE_TYPE) == SPDX_PREDICATE \
                and isinstance(layer.get("digest"), str) and isinstance(layer.get("size"), int):
            out.append(layer)
    return out


def statement(subject_name: str, manifest_digest: str, sbom: dict[str, Any]) -> bytes:
    """An in-toto statement that `sbom` (an SPDX document) is the SBOM of the image `manifest_digest`."""
    return canonical_json({
        "_type": STATEMENT_TYPE,
        "predicateType": SPDX_PREDICATE,
        "subject": [{"name": subject_name, "digest": {"sha256": manifest_digest.removeprefix("sha256:")}}],
        "predicate": sbom,
    })


def write_attestation(cache: Cache, subject_name: str, manifest_digest: str, sbom: dict[str, Any]) -> dict[str, Any]:
    """Store an attestation manifest holding `sbom` for `manifest_digest`; its descriptor for the index."""
    data = statement(subject_name, manifest_digest, sbom)
    layer = {"mediaType": INTOTO_MEDIA_TYPE, "digest": cache.put_blob(data), "size": len(data),
             "annotations": {PREDICATE_TYPE: SPDX_PREDICATE}}
    config = canonical_json({"architecture": "unknown", "os": "unknown", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}})
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": cache.put_blob(config), "size": len(config)},
        "layers": [layer],
    })
    return {"mediaType": MANIFEST_MEDIA_TYPE, "digest": cache.put_blob(manifest), "size": len(manifest),
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {REFERENCE_DIGEST: manifest_digest, REFERENCE_TYPE: ATTESTATION_MANIFEST}}


def cached_sboms(cache: Cache, ref: str, manifest_digest: str,
                 root: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The SPDX documents the cached image `ref` (platform manifest `manifest_digest`) carries as attestations,
    listed in the index `root` names (by default the one the ref names: an image pulled with some of its blobs left
    for later is not named yet).

    Anything missing or malformed gives no document and a debug line: an SBOM is never a reason to fail a build.
    """
    root = root if root is not None else cache.get_ref(ref)
    if root is None or not cache.has_blob(str(root.get("digest"))):
        return []
    try:
        index = json.loads(cache.read_blob(str(root["digest"])))
        if not isinstance(index, dict) or not is_index(index, root.get("mediaType")):
            return []
        desc = attestation_descriptor(index, manifest_digest)
        if desc is None or not cache.has_blob(str(desc.get("digest"))):
            return []
        manifest = json.loads(cache.read_blob(str(desc["digest"])))
        if not isinstance(manifest, dict):
            return []
        documents = []
        for layer in spdx_layers(manifest):
            if layer["size"] > MAX_STATEMENT or not cache.has_blob(layer["digest"]):
                log.debug("%s: SBOM attestation %s is not in the cache or too large", ref, layer["digest"])
                continue
            doc = json.loads(cache.read_blob(layer["digest"]))
            predicate = doc.get("predicate") if isinstance(doc, dict) else None
            if isinstance(predicate, dict) and str(predicate.get("spdxVersion", "")).startswith("SPDX-2."):
                documents.append(predicate)
            else:
                log.debug("%s: attestation %s is not an SPDX 2 statement", ref, layer["digest"])
        return documents
    except (ValueError, KeyError, TypeError) as exc:
        log.debug("%s: unreadable SBOM attestation: %s", ref, exc)
        return []
