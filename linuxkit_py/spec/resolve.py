"""Resolve a validated spec: every image reference normalised (`redis` -> `docker.io/library/redis:latest`),
every `@pkg:DIR` replaced by the reference of that package's image (DIR relative to the spec file)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from linuxkit_py.errors import SpecError, UserError
from linuxkit_py.registry.reference import normalize_reference
from linuxkit_py.spec.fields import PKG_PREFIX
from linuxkit_py.spec.model import SECTIONS, STDIN_NAME, Spec

# DIR of an `@pkg:DIR` reference (made absolute against the spec file) -> the reference of its image.
# The build supplies it (it builds packages); the spec layer only locates the directory.
PackageResolver = Callable[[Path], str]


def _package_ref(spec: Spec, value: str, path: str, packages: PackageResolver | None) -> str:
    if packages is None:
        raise spec.error(path, f"{value}: @pkg: references are resolved only by a build")
    directory = Path(value[len(PKG_PREFIX) :])
    pos = spec.position(path)
    if not directory.is_absolute() and pos is not None and pos.file != STDIN_NAME:
        directory = Path(pos.file).parent / directory
    try:
        return packages(directory)
    except SpecError:
        raise  # located in the package's build.yml
    except UserError as exc:
        raise spec.error(path, exc.message, exc.hint) from None


def _normalize(spec: Spec, value: str, path: str, packages: PackageResolver | None = None) -> str:
    if value.startswith(PKG_PREFIX):
        return _package_ref(spec, value, path, packages)
    try:
        return normalize_reference(value)
    except UserError as exc:
        pos = spec.position(path)
        if pos is None:
            raise
        raise SpecError(pos.file, pos.line, pos.column, exc.message, exc.hint) from exc


def resolve_spec(spec: Spec, packages: PackageResolver | None = None) -> Spec:
    """A copy of `spec` with normalised image references (what LinuxKit's metadata file shows).

    `packages` gives the reference of each `@pkg:` directory's image (the build's PackageRefs.reference,
    which also records the directory so the build can make missing package images)."""
    out = copy.deepcopy(spec)
    if out.kernel.get("image"):
        out.kernel["image"] = _normalize(spec, out.kernel["image"], "kernel/image", packages)
    out.init = [_normalize(spec, ref, f"init/{i}", packages) for i, ref in enumerate(out.init)]
    for i, vol in enumerate(out.volumes):
        if vol.get("image"):
            vol["image"] = _normalize(spec, vol["image"], f"volumes/{i}/image", packages)
    for section in SECTIONS:
        for i, entry in enumerate(getattr(out, section)):
            entry["image"] = _normalize(spec, entry["image"], f"{section}/{i}/image", packages)
    return out
