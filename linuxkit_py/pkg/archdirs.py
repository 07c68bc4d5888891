"""Package directories chosen per architecture: a build.yml holding only `arches:` as a mapping.

    arches:
      amd64: ../cloud-amd64
      arm64: ../rpi-arm64

A spec names such a directory once (`@pkg:../kernels/default`) and builds for either architecture: the
directory each architecture maps to (relative to this one) is the package that architecture builds, with
its own image name and tag. LinuxKit gets the same from multi-platform images (linuxkit/kernel has amd64
and arm64 manifests); our kernels differ per architecture in package, modules and device trees, so the
choice is made here, where it is written down, rather than in one definition full of per-arch cases.
"""

from __future__ import annotations

import os
from pathlib import Path

from linuxkit_py.arch import normalize_arch
from linuxkit_py.errors import UserError
from linuxkit_py.pkg.definition import read_build_file

ARCHES_KEY = "arches"
MAX_HOPS = 4  # a mapping to a mapping is allowed; a loop is an error, not a hang


def _mapping(directory: Path) -> dict[str, str] | None:
    """The per-arch mapping of DIR/build.yml, or None when it is an ordinary package definition."""
    _, doc = read_build_file(directory)
    arches = doc.data.get(ARCHES_KEY)
    if not isinstance(arches, dict):
        return None
    other = sorted(set(doc.data) - {ARCHES_KEY})
    if other:
        raise doc.error(other[0], "a build.yml whose arches: is a mapping (architecture -> package "
                        "directory) holds nothing else", at_key=True)
    mapping = {}
    for key, value in arches.items():
        path = f"{ARCHES_KEY}/{key}"
        try:
            arch = normalize_arch(str(key))
        except UserError as exc:
            raise doc.error(path, exc.message, exc.hint, at_key=True) from None
        if not isinstance(value, str) or not value.strip():
            raise doc.error(path, "expected a package directory (relative to this one)")
        mapping[arch] = value
    return mapping


def package_directory(directory: str | Path, arch: str) -> Path:
    """The package directory that builds `arch`: DIR itself, or what DIR's per-arch mapping names."""
    current = Path(directory)
    for _ in range(MAX_HOPS):
        mapping = _mapping(current)
        if mapping is None:
            return current
        if arch not in mapping:
            raise UserError(f"{current / 'build.yml'}: no package for {arch}",
                            hint=f"it maps arches: {', '.join(sorted(mapping))}")
        current = Path(os.path.normpath(current / mapping[arch]))
        if not (current / "build.yml").is_file():
            raise UserError(f"{directory}/build.yml: {arch} maps to {mapping[arch]}, which has no build.yml")
    raise UserError(f"{directory}/build.yml: its per-arch mappings go round in a circle")



def package_directory_for(directory: str | Path, arches: list[str]) -> Path:
    """The one package directory that builds all of `arches` from DIR (a per-arch mapping may not split them)."""
    targets = {arch: package_directory(directory, arch) for arch in arches}
    if len(set(targets.values())) > 1:
        raise UserError(f"{directory}: {', '.join(targets)} are different packages here "
                        f"({', '.join(str(t) for t in targets.values())})",
                        hint="build them one --arch at a time")
    return next(iter(targets.values()), Path(directory))
