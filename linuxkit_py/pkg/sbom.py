"""The SBOM of a package image: the Debian packages it took files from, as an SPDX document.

`pkg build` stores it as the image's attestation (cache/attestation.py), as BuildKit's SBOM scanners do; a
`build` that uses the image merges it into its own SBOM. For each .deb: name, version, architecture, the
source package, the sha256 of the .deb apt verified, the package URL (`pkg:deb/debian/NAME@VERSION`) and the
licence its machine-readable copyright file declares (sbom/debian.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from linuxkit_py.archive.entry import Kind
from linuxkit_py.archive.regionfile import open_data
from linuxkit_py.cache.layout import Cache
from linuxkit_py.pkg.apt import Deb
from linuxkit_py.pkg.debs import deb_entries
from linuxkit_py.sbom.debian import Licence, licence_from_copyright
from linuxkit_py.sbom.spdx import deb_purl, document, extracted_licences, package, relationship, spdx_id

MAX_COPYRIGHT = 4 << 20
TOOL = "linuxkit-py pkg build"
IMAGE_ID = "SPDXRef-Image"


def deb_licence(cache: Cache, deb: Deb, path: Path) -> Licence:
    """The licence `usr/share/doc/NAME/copyright` of the .deb declares (NOASSERTION when it has none)."""
    wanted = f"usr/share/doc/{deb.name}/copyright"
    for entry in deb_entries(cache, path):
        if entry.path == wanted and entry.kind is Kind.FILE and entry.size <= MAX_COPYRIGHT:
            with open_data(entry.data) as f:
                return licence_from_copyright(f.read().decode("utf-8", "replace"))
    return licence_from_copyright(None)


def source_info(deb: Deb) -> str:
    """`built package from: NAME VERSION`, SPDX's phrase, from the Source field (default: the package)."""
    name, _, version = (deb.source or deb.name).partition(" ")
    return f"built package from: {name} {version.strip('()') or deb.version}"


def deb_package(deb: Deb, licence: Licence, *, prefix: str = "deb") -> dict[str, Any]:
    return package(spdx_id("Package", prefix, deb.name, deb.arch or "any"), deb.name, version=deb.version,
                   purl=deb_purl(deb.name, deb.version, deb.arch), sha256=deb.sha256 or None,
                   licence=licence.expression, source_info=source_info(deb), supplier="Organization: Debian")


def package_sbom(cache: Cache, ref: str, epoch: int, debs: Iterable[tuple[Deb, Path]]) -> dict[str, Any]:
    """The SPDX document of the package image `ref` (its tag in the name), made of `debs`."""
    name, _, tag = ref.rpartition(":")
    image = package(IMAGE_ID, name, version=tag, purpose="CONTAINER")
    packages, relationships, licences = [image], [], []
    for deb, path in sorted(set(debs), key=lambda item: (item[0].name, item[0].arch)):
        licence = deb_licence(cache, deb, path)
        licences.append(licence)
        pkg = deb_package(deb, licence)
        packages.append(pkg)
        relationships.append(relationship(IMAGE_ID, "CONTAINS", pkg["SPDXID"]))
    return document(ref, epoch, packages=packages, relationships=relationships,
                    licences=extracted_licences(licences), describes=[IMAGE_ID], tool=TOOL)
