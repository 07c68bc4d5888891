"""OCI media types and platform selection from an OCI index / Docker manifest list."""

from __future__ import annotations

from typing import Any

from linuxkit_py.arch import ARCH_ALIASES
from linuxkit_py.errors import UserError

INDEX_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def is_index(doc: dict[str, Any], media_type: str | None = None) -> bool:
    """True for an OCI image index or a Docker manifest list (an index may lack `mediaType`)."""
    mt = doc.get("mediaType") or media_type
    if mt in INDEX_MEDIA_TYPES:
        return True
    return mt is None and "manifests" in doc and "layers" not in doc


def select_platform(index: dict[str, Any], arch: str, ref: str) -> dict[str, Any]:
    """The first linux/<arch> descriptor of an index (variant ignored, unknown/unknown skipped)."""
    seen = []
    for desc in index.get("manifests", []):
        plat = desc.get("platform") or {}
        os_, a = plat.get("os", ""), plat.get("architecture", "")
        if os_ == "unknown" or a == "unknown":
            continue  # attestation manifests (buildkit provenance / SBOM)
        seen.append(f"{os_}/{a}")
        if os_ == "linux" and ARCH_ALIASES.get(a, a) == arch:
            return desc
    have = ", ".join(seen) or "none"
    raise UserError(f"{ref}: no image for linux/{arch} (the index has: {have})", hint="choose another --arch")
