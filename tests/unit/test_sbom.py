"""SPDX pieces: Debian copyright files to licence expressions, merging image SBOMs, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from linuxkit_py.sbom.debian import licence_from_copyright
from linuxkit_py.sbom.spdx import (
    WRITE_BATCH,
    FileIds,
    FileList,
    document,
    dumps,
    merge_into,
    package,
    relationship,
)

DEP5 = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: example
Source: https://example.org

Files: *
Copyright: 2001 Someone
License: GPL-2+

Files: lib/*
Copyright: 2002 Someone Else
License: LGPL-2.1+ or BSD-3-clause

Files: fonts/*
Copyright: 2003 A Font Maker
License: GPL-2 with Font exception

Files: contrib/*
Copyright: 2004 Cambridge
License: Cambridge-Special

Files: debian/*
Copyright: 2005 The Maintainer
License: GPL-2+

License: GPL-2+
 This program is free software; you can redistribute it ...
 .
 On Debian systems, see /usr/share/common-licenses/GPL-2.

License: Cambridge-Special
 Permission is granted to use this file in Cambridge only.
"""


def test_dep5_licences_become_one_spdx_expression() -> None:
    licence = licence_from_copyright(DEP5)
    assert licence.expression == ("(LGPL-2.1-or-later OR BSD-3-Clause) AND GPL-2.0-only WITH Font-exception-2.0 "
                                  "AND GPL-2.0-or-later AND LicenseRef-Cambridge-Special")
    assert licence.extracted == (("LicenseRef-Cambridge-Special", "Cambridge-Special",
                                  "Permission is granted to use this file in Cambridge only."),)


@pytest.mark.parametrize(("field", "expected"), [
    ("Expat", "MIT"),
    ("GPL-2+ or Artistic", "(GPL-2.0-or-later OR Artistic-1.0)"),
    ("GPL-2+ or Artistic, and BSD-2-clause", "((GPL-2.0-or-later OR Artistic-1.0) AND BSD-2-Clause)"),
    ("LGPL-2.1 and GPL-3+", "(LGPL-2.1-only AND GPL-3.0-or-later)"),
    ("public-domain", "LicenseRef-public-domain"),
    ("GPL-2 with Linux-syscall-note exception", "GPL-2.0-only WITH Linux-syscall-note"),
    ("GPL-3+ with Unknown Thing exception", "LicenseRef-GPL-3-with-Unknown-Thing-exception"),
])
def test_debian_short_names(field: str, expected: str) -> None:
    text = f"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: {field}\n"
    assert licence_from_copyright(text).expression == expected


@pytest.mark.parametrize("text", [None, "", "This is busybox, copyright Erik Andersen.\nGPL-2 applies.\n",
                                  "Format: something else\n\nFiles: *\nLicense: MIT\n"])
def test_a_copyright_file_that_is_not_dep5_asserts_nothing(text: str | None) -> None:
    licence = licence_from_copyright(text)
    assert (licence.expression, licence.extracted) == ("NOASSERTION", ())


def _syft_like() -> dict[str, Any]:
    """An image's SBOM as BuildKit's scanner writes it: a root package it DESCRIBES, packages and files."""
    return {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT", "name": "app",
        "documentNamespace": "https://example.org/app-1",
        "creationInfo": {"created": "2024-01-01T00:00:00Z", "creators": ["Tool: syft-1.0"]},
        "packages": [
            {"SPDXID": "SPDXRef-DocumentRoot-Image-app", "name": "app", "downloadLocation": "NOASSERTION",
             "filesAnalyzed": False, "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION",
             "copyrightText": "NOASSERTION"},
            {"SPDXID": "SPDXRef-Package-python-requests", "name": "requests", "versionInfo": "2.31.0",
             "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "licenseConcluded": "NOASSERTION",
             "licenseDeclared": "Apache-2.0", "copyrightText": "NOASSERTION"},
        ],
        "files": [{"fileName": "/usr/lib/python3/requests/__init__.py", "SPDXID": "SPDXRef-File-init",
                   "checksums": [{"algorithm": "SHA1", "checksumValue": "a" * 40}],
                   "licenseConcluded": "NOASSERTION", "copyrightText": "NOASSERTION"}],
        "relationships": [
            {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
             "relatedSpdxElement": "SPDXRef-DocumentRoot-Image-app"},
            {"spdxElementId": "SPDXRef-DocumentRoot-Image-app", "relationshipType": "CONTAINS",
             "relatedSpdxElement": "SPDXRef-Package-python-requests"},
            {"spdxElementId": "SPDXRef-File-init", "relationshipType": "GENERATED_FROM",
             "relatedSpdxElement": "SPDXRef-Package-python-requests"},
        ],
    }


def _merged() -> dict[str, Any]:
    parts: dict[str, list[dict[str, Any]]] = {
        "packages": [package("SPDXRef-Image", "os"), package("SPDXRef-Package-image-1", "app")],
        "relationships": [relationship("SPDXRef-Image", "CONTAINS", "SPDXRef-Package-image-1")]}
    for n in range(2):  # the same SBOM twice (two images built alike): no identifier may collide
        merge_into(parts, _syft_like(), prefix=f"image-1-{n}", stands_for="SPDXRef-Package-image-1",
                   path_prefix=f"containers/services/app{n}/lower")
    return document("os", 1492533000, packages=parts["packages"], relationships=parts["relationships"],
                    files=parts["files"], describes=["SPDXRef-Image"], tool="linuxkit-py-test")


def test_merging_renames_prefixes_and_stands_the_image_in_for_the_root(tmp_path: Path) -> None:
    doc = _merged()
    names = [p["name"] for p in doc["packages"]]
    assert names == ["os", "app", "requests", "requests"]  # the merged root package is the image's own
    files = [f["fileName"] for f in doc["files"]]
    assert files == ["./containers/services/app0/lower/usr/lib/python3/requests/__init__.py",
                     "./containers/services/app1/lower/usr/lib/python3/requests/__init__.py"]
    rels = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in doc["relationships"]}
    assert ("SPDXRef-Package-image-1", "CONTAINS", "SPDXRef-image-1-0-Package-python-requests") in rels
    assert ("SPDXRef-image-1-1-File-init", "GENERATED_FROM", "SPDXRef-image-1-1-Package-python-requests") in rels
    path = tmp_path / "merged.spdx.json"
    path.write_bytes(dumps(doc))
    assert validate_full_spdx_document(parse_file(str(path))) == []


def test_hostile_members_are_left_out() -> None:
    sub = _syft_like()
    sub["packages"].append("not an object")
    sub["files"] = {"not": "a list"}
    sub["relationships"].append(7)
    parts: dict[str, list[dict[str, Any]]] = {"packages": []}
    merge_into(parts, sub, prefix="x", stands_for="SPDXRef-Package-x", path_prefix="")
    assert [p["name"] for p in parts["packages"]] == ["requests"]
    assert "files" not in parts


def test_the_same_content_gives_the_same_bytes_and_namespace() -> None:
    first, second = dumps(_merged()), dumps(_merged())
    assert first == second
    assert json.loads(first)["documentNamespace"].startswith("https://spdx.org/spdxdocs/linuxkit-py/os-")
    later = document("os", 1492533001, packages=[package("SPDXRef-Image", "os")], relationships=[],
                     describes=["SPDXRef-Image"], tool="t")
    assert later["documentNamespace"] != json.loads(first)["documentNamespace"]


@pytest.mark.parametrize("count", [1, WRITE_BATCH, WRITE_BATCH + 1])
def test_file_lists_are_written_as_their_objects_one_per_line(count: int) -> None:
    names = ['./etc/"quoted"', "./usr/lib/caf\u00e9", "./bad\\xff-name", "./tab\there"]
    records = [(names[i % len(names)] + str(i), f"SPDXRef-File-{i:024x}", f"{i:040x}", f"{i:064x}")
               for i in range(count)]
    files = FileList(records)
    files.append({"fileName": "./merged", "SPDXID": "SPDXRef-merged-File-1", "checksums": []})
    doc = {"name": "x", "files": files, "relationships": []}
    text = dumps(doc).decode()
    assert json.loads(text) == {"name": "x", "files": list(files), "relationships": []}
    encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    lines = text.splitlines()
    first = lines.index('  "files": [') + 1
    expected = [f"    {encode(f)}," for f in files]
    expected[-1] = expected[-1].removesuffix(",")
    assert lines[first : first + count + 1] == expected


@pytest.mark.parametrize("count", [0, 1, WRITE_BATCH, 2 * WRITE_BATCH + 3])
def test_streamed_has_files_give_the_text_of_the_list(count: int) -> None:
    ids = [f"SPDXRef-File-{i:024x}" for i in range(count)]
    streamed = package("SPDXRef-Image", "x")
    listed = dict(streamed)
    streamed["hasFiles"], listed["hasFiles"] = FileIds(lambda: iter(ids), count), list(ids)
    other = package("SPDXRef-Package-y", "y")
    assert dumps({"packages": [streamed, other], "relationships": []}) == \
        dumps({"packages": [listed, other], "relationships": []})
