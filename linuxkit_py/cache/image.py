"""An image as stored in the cache: manifest, config and layer descriptors for one platform."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from linuxkit_py.arch import uname_arch
from linuxkit_py.cache.layout import Cache
from linuxkit_py.cache.platform import is_index, select_platform
from linuxkit_py.errors import UserError

LABEL_CONFIG = "org.mobyproject.config"


@dataclass(frozen=True)
class Image:
    ref: str  # normalised reference, the cache's ref name
    digest: str  # digest of the platform manifest
    manifest: dict[str, Any]
    config: dict[str, Any]  # the whole image config blob (architecture, os, config, rootfs, ...)
    # what the ref names (an index or this manifest): where its attestations are listed; None: look the ref up
    root: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("layers") or [])

    @property
    def runtime_config(self) -> dict[str, Any]:
        """The image config's `config` section (Entrypoint, Cmd, Env, WorkingDir, User, Labels)."""
        section = self.config.get("config") or {}
        if not isinstance(section, dict):
            raise UserError(f"{self.ref}: the image config's `config` is not an object")
        return dict(section)

    @property
    def labels(self) -> dict[str, Any]:
        labels = self.runtime_config.get("Labels") or {}
        if not isinstance(labels, dict):
            raise UserError(f"{self.ref}: the image config's Labels is not an object")
        return dict(labels)

    def moby_config_label(self) -> dict[str, Any] | None:
        """The parsed `org.mobyproject.config` label, or None (validation is the caller's)."""
        raw = self.labels.get(LABEL_CONFIG)
        if raw is None or raw == "":
            return None
        if not isinstance(raw, str):
            raise UserError(f"{self.ref}: label {LABEL_CONFIG} is not a string")
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise UserError(f"{self.ref}: label {LABEL_CONFIG} is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise UserError(f"{self.ref}: label {LABEL_CONFIG} is not a JSON object")
        return value


def load_cached_image(cache: Cache, ref: str, arch: str) -> Image | None:
    """The image named `ref` for linux/`arch` if the cache holds all of it, else None (no network)."""
    root = desc = cache.get_ref(ref)
    if desc is None:
        return None
    try:
        if not cache.has_blob(desc["digest"]):
            return None
        doc = cache.read_json(desc["digest"])
        if is_index(doc, desc.get("mediaType")):
            desc = select_platform(doc, arch, ref)
            if not cache.has_blob(desc["digest"]):
                return None
            doc = cache.read_json(desc["digest"])
        config_digest = doc["config"]["digest"]
        if not cache.has_blob(config_digest):
            return None
        if any(not cache.has_blob(layer["digest"]) for layer in doc.get("layers") or []):
            return None
        config = cache.read_json(config_digest)
    except (KeyError, TypeError):
        return None
    arch_of_image = config.get("architecture")
    if arch_of_image and arch_of_image not in (arch, uname_arch(arch)):
        return None
    return Image(ref=ref, digest=desc["digest"], manifest=doc, config=config, root=root)
