"""Resolve a validated spec: every image reference normalised (`redis` -> `docker.io/library/redis:latest`)."""

from __future__ import annotations

import copy

from linuxkit_py.errors import SpecError, UserError
from linuxkit_py.oci.reference import normalize_reference
from linuxkit_py.spec.model import SECTIONS, Spec


def _normalize(spec: Spec, value: str, path: str) -> str:
    try:
        return normalize_reference(value)
    except UserError as exc:
        pos = spec.position(path)
        if pos is None:
            raise
        raise SpecError(pos.file, pos.line, pos.column, exc.message, exc.hint) from exc


def resolve_spec(spec: Spec) -> Spec:
    """A copy of `spec` with normalised image references (what LinuxKit's metadata file shows)."""
    out = copy.deepcopy(spec)
    if out.kernel.get("image"):
        out.kernel["image"] = _normalize(spec, out.kernel["image"], "kernel/image")
    out.init = [_normalize(spec, ref, f"init/{i}") for i, ref in enumerate(out.init)]
    for i, vol in enumerate(out.volumes):
        if vol.get("image"):
            vol["image"] = _normalize(spec, vol["image"], f"volumes/{i}/image")
    for section in SECTIONS:
        for i, entry in enumerate(getattr(out, section)):
            entry["image"] = _normalize(spec, entry["image"], f"{section}/{i}/image")
    return out
