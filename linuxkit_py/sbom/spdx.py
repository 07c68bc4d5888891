"""SPDX 2.3 JSON documents: made, merged and written deterministically.

Identifiers are derived from what an element is (a Debian package's name and version, a file's path), never
counted or random, so one input always gives one document; the namespace is a UUID derived from the
document's own content. Merging (LinuxKit's SbomGenerator merges the SBOMs of its images the same way) gives
each merged document's identifiers a prefix of their own, so two images' SBOMs cannot collide, and
re-points what a merged document DESCRIBES at the element that stands for its image.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import quote

from linuxkit_py.sbom.debian import NOASSERTION, Licence

SPDX_VERSION = "SPDX-2.3"
DATA_LICENSE = "CC0-1.0"
DOCUMENT_ID = "SPDXRef-DOCUMENT"
NAMESPACE_BASE = "https://spdx.org/spdxdocs/linuxkit-py"
LICENSE_LIST_VERSION = "3.20"
_IDSTRING = re.compile(r"[^A-Za-z0-9.-]+")
WRITE_BATCH = 4096  # list elements per write

Doc = dict[str, Any]


def spdx_id(*parts: str) -> str:
    """`SPDXRef-` and the parts, with every character SPDX does not allow in an identifier replaced by `-`."""
    return "SPDXRef-" + "-".join(_IDSTRING.sub("-", part).strip("-") or "x" for part in parts)


def timestamp(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def deb_purl(name: str, version: str, arch: str, distro: str = "debian-12") -> str:
    """The package URL of a Debian binary package (purl-spec's `deb` type)."""
    qualifiers = [f"arch={quote(arch)}"] if arch else []
    qualifiers.append(f"distro={distro}")
    return f"pkg:deb/debian/{quote(name)}@{quote(version, safe='')}?{'&'.join(qualifiers)}"


def oci_purl(repository: str, digest: str, arch: str, tag: str | None) -> str:
    """The package URL of an OCI image (purl-spec's `oci` type): its last path element, digest, where it is."""
    name = repository.rsplit("/", 1)[-1]
    qualifiers = [f"arch={quote(arch)}", f"repository_url={quote(repository, safe='/:')}"]
    if tag:
        qualifiers.append(f"tag={quote(tag, safe='')}")
    return f"pkg:oci/{quote(name)}@{quote(digest, safe='')}?{'&'.join(qualifiers)}"


def package(spdxid: str, name: str, *, version: str | None = None, purl: str | None = None,
            sha256: str | None = None, licence: str = NOASSERTION, purpose: str | None = None,
            source_info: str | None = None, supplier: str | None = None, comment: str | None = None) -> Doc:
    """One SPDX package (files not analysed: those are listed under the image)."""
    doc: Doc = {"SPDXID": spdxid, "name": name}
    if version:
        doc["versionInfo"] = version
    if supplier:
        doc["supplier"] = supplier
    doc["downloadLocation"] = NOASSERTION
    doc["filesAnalyzed"] = False
    if sha256:
        doc["checksums"] = [{"algorithm": "SHA256", "checksumValue": sha256}]
    if source_info:
        doc["sourceInfo"] = source_info
    doc["licenseConcluded"] = NOASSERTION
    doc["licenseDeclared"] = licence
    doc["copyrightText"] = NOASSERTION
    if purl:
        doc["externalRefs"] = [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                "referenceLocator": purl}]
    if purpose:
        doc["primaryPackagePurpose"] = purpose
    if comment:
        doc["comment"] = comment
    return doc


def extracted_licences(licences: Iterable[Licence]) -> list[Doc]:
    """hasExtractedLicensingInfos for every LicenseRef- the licences use, each once."""
    seen: dict[str, Doc] = {}
    for licence in licences:
        for ref, name, text in licence.extracted:
            seen.setdefault(ref, {"licenseId": ref, "name": name, "extractedText": text})
    return [seen[ref] for ref in sorted(seen)]


def relationship(element: str, kind: str, related: str) -> Doc:
    return {"spdxElementId": element, "relationshipType": kind, "relatedSpdxElement": related}


Record = tuple[str, str, str, str]  # a file's fileName, SPDXID, SHA1 and SHA256 (hex)


class Records(Protocol):
    """A list of records, or what makes each record as it is asked for."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Record]: ...
    def __getitem__(self, index: int, /) -> Record: ...


class FileList:
    """SPDX files kept small: (fileName, SPDXID, SHA1, SHA256) per file, made into objects only when written
    (an image of 250,000 files would otherwise hold a gigabyte of dictionaries); files of merged documents
    are appended as they are."""

    def __init__(self, records: Records) -> None:
        self.records = records  # a list, or a sequence making each record as it is asked for
        self.others: list[Doc] = []

    def append(self, file: Doc) -> None:
        self.others.append(file)

    def __len__(self) -> int:
        return len(self.records) + len(self.others)

    def __iter__(self) -> Iterator[Doc]:
        yield from map(self._object, self.records)
        yield from self.others

    def encoded(self, encode: Callable[[Any], str]) -> Iterator[str]:
        """`encode(file)` of every file in order; the records' JSON made from a template (the same text
        `encode` gives for their objects, several times faster: SBOMs list tens of thousands of files)."""
        records = self.records
        if records and encode(self._object(records[0])) != self._template(encode, records[0]):
            yield from map(encode, self)  # an encoder of other separators: no template
            return
        for record in records:
            yield self._template(encode, record)
        yield from map(encode, self.others)

    @staticmethod
    def _object(record: tuple[str, str, str, str]) -> Doc:
        name, spdxid, sha1, sha256 = record
        return {"fileName": name, "SPDXID": spdxid,
                "checksums": [{"algorithm": "SHA1", "checksumValue": sha1},
                              {"algorithm": "SHA256", "checksumValue": sha256}],
                "licenseConcluded": NOASSERTION, "copyrightText": NOASSERTION}

    @staticmethod
    def _template(encode: Callable[[Any], str], record: tuple[str, str, str, str]) -> str:
        name, spdxid, sha1, sha256 = record
        return (f'{{"fileName": {encode(name)}, "SPDXID": {encode(spdxid)}, "checksums": [{{"algorithm": "SHA1", '
                f'"checksumValue": {encode(sha1)}}}, {{"algorithm": "SHA256", "checksumValue": {encode(sha256)}}}], '
                f'"licenseConcluded": "{NOASSERTION}", "copyrightText": "{NOASSERTION}"}}')


class FileIds:
    """A package's hasFiles too long to hold as strings (every file of a 230,000-file image): `ids()` makes
    them in order each time the document is written (write_document streams them)."""

    def __init__(self, ids: Callable[[], Iterator[str]], count: int) -> None:
        self.ids, self.count = ids, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        return self.ids()


_MARK = "\0hasFiles\0"


def _element(encode: Callable[[Any], str], element: Any) -> Iterator[str]:
    """The JSON of one list element, in pieces when it is a package whose hasFiles are FileIds: the same text
    `encode` gives for it with those ids as a list."""
    ids = element.get("hasFiles") if isinstance(element, dict) else None
    if not isinstance(ids, FileIds):
        yield encode(element)
        return
    head, _, tail = encode({**element, "hasFiles": [_MARK]}).partition(encode(_MARK))
    yield head
    separator = ""
    iterator = iter(ids)
    while batch := list(itertools.islice(iterator, WRITE_BATCH)):
        yield separator + ", ".join(map(encode, batch))
        separator = ", "
    yield tail


class _Hashing:
    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return len(data)


def document(name: str, created: int, *, packages: list[Doc], relationships: list[Doc],
             files: list[Doc] | FileList | None = None, licences: list[Doc] | None = None, describes: list[str],
             tool: str) -> Doc:
    """A whole SPDX 2.3 document; its namespace is derived from everything else in it."""
    doc: Doc = {
        "spdxVersion": SPDX_VERSION,
        "dataLicense": DATA_LICENSE,
        "SPDXID": DOCUMENT_ID,
        "name": name,
        "documentNamespace": "",
        "creationInfo": {"created": timestamp(created), "creators": [f"Tool: {tool}"],
                         "licenseListVersion": LICENSE_LIST_VERSION},
        "documentDescribes": describes,
        "packages": packages,
    }
    if files:
        doc["files"] = files
    if licences:
        doc["hasExtractedLicensingInfos"] = licences
    doc["relationships"] = [relationship(DOCUMENT_ID, "DESCRIBES", d) for d in describes] + relationships
    hashing = _Hashing()
    write_document(doc, cast(BinaryIO, hashing))
    digest = hashing.sha256.hexdigest()
    doc["documentNamespace"] = f"{NAMESPACE_BASE}/{quote(name, safe='')}-{uuid.uuid5(uuid.NAMESPACE_URL, digest)}"
    return doc


def write_document(doc: Doc, out: BinaryIO) -> None:
    """The document as UTF-8 JSON, keys in the order they were made: one line per top-level member and per
    element of the top-level lists (packages, files, relationships), so that it diffs and greps well and is
    written by the C encoder (tens of thousands of files in a second) a piece at a time."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    out.write(b"{\n")
    for n, (key, value) in enumerate(doc.items()):
        out.write(f"  {encode(key)}: ".encode())
        if isinstance(value, (list, FileList)) and len(value):
            out.write(b"[\n    ")
            if isinstance(value, FileList):
                _write_elements(out, value.encoded(encode))
            elif not any(isinstance(e, dict) and isinstance(e.get("hasFiles"), FileIds) for e in value):
                _write_elements(out, map(encode, value))
            else:  # packages, a few of them with streamed hasFiles
                for n_element, element in enumerate(value):
                    if n_element:
                        out.write(b",\n    ")
                    for piece in _element(encode, element):  # each piece a few thousand ids
                        out.write(piece.encode())
            out.write(b"\n  ]")
        else:
            out.write(encode(value).encode())
        out.write(b",\n" if n < len(doc) - 1 else b"\n")
    out.write(b"}\n")


def _write_elements(out: BinaryIO, pieces: Iterator[str], separator: str = ",\n    ") -> None:
    """`pieces` joined by `separator`, a few thousand per write."""
    first = ""
    while batch := list(itertools.islice(pieces, WRITE_BATCH)):
        out.write((first + separator.join(batch)).encode())
        first = separator


def dumps(doc: Doc) -> bytes:
    """write_document's bytes."""
    buffer = io.BytesIO()
    write_document(doc, buffer)
    return buffer.getvalue()


# -- merging --------------------------------------------------------------------------------------

def _renamer(prefix: str, same: set[str], stands_for: str) -> Any:
    def rename(ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("SPDXRef-"):
            return ref  # NONE, NOASSERTION, DocumentRef-...:SPDXRef-...
        if ref == DOCUMENT_ID or ref in same:
            return stands_for
        return f"SPDXRef-{prefix}-{ref.removeprefix('SPDXRef-')}"
    return rename


def _described(sub: Doc) -> set[str]:
    described = {d for d in sub.get("documentDescribes") or [] if isinstance(d, str)}
    for rel in _objects(sub.get("relationships")):
        if rel.get("spdxElementId") == DOCUMENT_ID and rel.get("relationshipType") == "DESCRIBES" \
                and isinstance(rel.get("relatedSpdxElement"), str):
            described.add(rel["relatedSpdxElement"])
    return described


def _join_path(prefix: str, name: str) -> str:
    name = name.removeprefix("./").removeprefix("/")
    return f"./{prefix.strip('/')}/{name}" if prefix.strip("/") else f"./{name}"


def merge_into(target: Doc, sub: Doc, *, prefix: str, stands_for: str, path_prefix: str) -> None:
    """Add `sub`'s packages, files, licences and relationships to `target`.

    Identifiers get `prefix`. When `sub` describes one package that is its image (purpose CONTAINER, or syft's
    `SPDXRef-DocumentRoot-` packages), that package *is* `stands_for` (the element of `target` for the image)
    and is not added again; else what `sub` describes becomes CONTAINed by `stands_for`. File names get
    `path_prefix` (where the image's files are in the root filesystem). Malformed members (not objects) are
    left out rather than trusted.
    """
    described = _described(sub)
    packages = _objects(sub.get("packages"))
    same = {p["SPDXID"] for p in packages if p.get("SPDXID") in described and _is_image_root(p)} \
        if len(described) == 1 else set()
    rename = _renamer(_IDSTRING.sub("-", prefix), same, stands_for)
    for pkg in packages:
        if pkg.get("SPDXID") in same:
            continue
        pkg = dict(pkg)
        pkg["SPDXID"] = rename(pkg.get("SPDXID"))
        if isinstance(pkg.get("hasFiles"), list):
            pkg["hasFiles"] = [rename(f) for f in pkg["hasFiles"]]
        target.setdefault("packages", []).append(pkg)
    for file in _objects(sub.get("files")):
        file = dict(file)
        file["SPDXID"] = rename(file.get("SPDXID"))
        if isinstance(file.get("fileName"), str):
            file["fileName"] = _join_path(path_prefix, file["fileName"])
        target.setdefault("files", []).append(file)
    known = {lic.get("licenseId") for lic in target.get("hasExtractedLicensingInfos", [])}
    for lic in _objects(sub.get("hasExtractedLicensingInfos")):
        if lic.get("licenseId") not in known:
            target.setdefault("hasExtractedLicensingInfos", []).append(dict(lic))
            known.add(lic.get("licenseId"))
    for rel in _objects(sub.get("relationships")):
        element, kind, related = rel.get("spdxElementId"), rel.get("relationshipType"), rel.get("relatedSpdxElement")
        if element == DOCUMENT_ID and kind == "DESCRIBES":
            continue
        rel = {**rel, "spdxElementId": rename(element), "relatedSpdxElement": rename(related)}
        target.setdefault("relationships", []).append(rel)
    for element in sorted(described - same):
        target.setdefault("relationships", []).append(relationship(stands_for, "CONTAINS", rename(element)))


def _is_image_root(pkg: dict[str, Any]) -> bool:
    return pkg.get("primaryPackagePurpose") == "CONTAINER" or str(pkg.get("SPDXID")).startswith(
        "SPDXRef-DocumentRoot-")


def _objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
