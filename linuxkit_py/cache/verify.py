"""`cache verify [--repair]`: check every blob's digest and size and every reference of the cache.

A valid cache: `oci-layout` and `index.json` parse; every file under `blobs/sha256/` hashes to its
name; every image index.json names resolves (index -> at least one platform manifest present ->
config and layers present, with the sizes the descriptors say). Manifests of an index that are
absent are not problems (a pull stores one platform). Unreferenced blobs are harmless (a failed
pull leaves them for the next one). Partial downloads (`.partial-*`) are resumable state, not
problems; temp files (`.tmp-*`) are what a killed writer left behind. `--repair` removes broken
blobs, temp files and the refs that point at missing or broken blobs, under the index lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linuxkit_py.cache.layout import LOCK_SUFFIX, PARTIAL_PREFIX, REF_NAME, TEMP_PREFIX, Cache
from linuxkit_py.cache.platform import INDEX_MEDIA_TYPES

_HEX = frozenset("0123456789abcdef")


@dataclass
class VerifyReport:
    """What `verify_cache` found: one line per problem, and what it repaired."""

    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    blobs: int = 0
    refs: int = 0
    partials: int = 0


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def _check_blobs(cache: Cache, report: VerifyReport) -> tuple[dict[str, int], list[Path]]:
    """{digest: size} of the good blobs; the files to remove (broken blobs, temp files)."""
    good: dict[str, int] = {}
    remove: list[Path] = []
    blob_dir = cache.root / "blobs" / "sha256"
    if not blob_dir.is_dir():
        return good, remove
    for path in sorted(blob_dir.iterdir()):
        name = path.name
        relative = f"blobs/sha256/{name}"
        if name.startswith(PARTIAL_PREFIX):
            report.partials += 0 if name.endswith(LOCK_SUFFIX) else 1
            continue
        if name.startswith(TEMP_PREFIX):
            report.problems.append(f"{relative}: stale temp file")
            remove.append(path)
            continue
        if len(name) != 64 or not set(name) <= _HEX or not path.is_file():
            report.problems.append(f"{relative}: not a blob (its name is not a sha256 digest)")
            if path.is_file():
                remove.append(path)
            continue
        report.blobs += 1
        digest = "sha256:" + name
        try:
            got, size = _hash_file(path)
        except OSError as exc:
            report.problems.append(f"blob {digest}: unreadable ({exc.strerror})")
            remove.append(path)
            continue
        if got != digest:
            report.problems.append(f"blob {digest}: content has digest {got}")
            remove.append(path)
            continue
        good[digest] = size
    return good, remove


def _descriptor_problem(desc: Any, good: Mapping[str, int], what: str) -> str | None:
    """Why a descriptor does not resolve to a good blob, or None."""
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        return f"{what} has no digest"
    digest = desc["digest"]
    if digest not in good:
        return f"{what} {digest} is missing or broken"
    if isinstance(desc.get("size"), int) and desc["size"] != good[digest]:
        return f"{what} {digest} has {good[digest]} bytes, its descriptor says {desc['size']}"
    return None


def _load(cache: Cache, digest: str) -> Any:
    try:
        return json.loads(cache.blob_path(digest).read_bytes())
    except (OSError, ValueError):
        return None


def _ref_problems(cache: Cache, desc: dict[str, Any], good: Mapping[str, int], depth: int = 0) -> list[str]:
    """What is wrong with the image a root descriptor names (empty when it resolves)."""
    kind = "index" if desc.get("mediaType") in INDEX_MEDIA_TYPES else "manifest"
    problem = _descriptor_problem(desc, good, kind)
    if problem:
        return [problem]
    doc = _load(cache, desc["digest"])
    if not isinstance(doc, dict):
        return [f"{kind} {desc['digest']} is not a JSON object"]
    if kind == "index" or ("manifests" in doc and "layers" not in doc):
        children = doc.get("manifests")
        if not isinstance(children, list) or depth > 2:
            return [f"index {desc['digest']} has no manifest list"]
        present = [c for c in children if isinstance(c, dict) and c.get("digest") in good]
        if not present:
            return [f"index {desc['digest']}: none of its manifests is in the cache"]
        return [p for child in present for p in _ref_problems(cache, child, good, depth + 1)]
    blobs = [("config", doc.get("config"))] + [("layer", layer) for layer in doc.get("layers") or []]
    return [p for what, blob in blobs if (p := _descriptor_problem(blob, good, what))]


def image_problems(cache: Cache, desc: dict[str, Any], good: Mapping[str, int]) -> list[str]:
    """What is wrong with the image `desc` names, given the good blobs (digest -> size); empty when it resolves."""
    return _ref_problems(cache, desc, good)


def _read_index(cache: Cache, report: VerifyReport) -> list[Any] | None:
    """index.json's descriptors; None (a problem reported) when it is missing or corrupt."""
    try:
        doc = json.loads((cache.root / "index.json").read_bytes())
    except FileNotFoundError:
        report.problems.append("index.json: missing")
        return None
    except ValueError as exc:
        report.problems.append(f"index.json: not valid JSON ({exc})")
        return None
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list | None):
        report.problems.append("index.json: not an OCI image index")
        return None
    return list(manifests or [])


def verify_cache(cache: Cache, repair: bool = False) -> VerifyReport:
    """Check (and with `repair`, mend) the cache; report.problems is empty for a valid cache."""
    report = VerifyReport()
    if not cache.root.is_dir():
        report.problems.append(f"{cache.root}: no such cache directory")
        return report
    try:
        layout = json.loads((cache.root / "oci-layout").read_bytes())
        if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
            raise ValueError
    except (OSError, ValueError):
        report.problems.append("oci-layout: missing or not an OCI layout marker")
    good, remove = _check_blobs(cache, report)
    index = _read_index(cache, report)
    broken_refs: list[int] = []
    for position, desc in enumerate(index or []):
        name = (desc.get("annotations") or {}).get(REF_NAME) if isinstance(desc, dict) else None
        label = f"ref {name}" if name else f"index.json entry {position}"
        report.refs += 1
        problems = _ref_problems(cache, desc, good) if isinstance(desc, dict) else ["not a descriptor"]
        if problems:
            broken_refs.append(position)
            report.problems.extend(f"{label}: {p}" for p in problems)
    if repair and report.problems:
        _repair(cache, report, remove, index, broken_refs)
    return report


def _repair(cache: Cache, report: VerifyReport, remove: list[Path], index: list[Any] | None,
            broken_refs: list[int]) -> None:
    with cache.lock():  # no build renames a ref meanwhile
        for path in remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            report.repaired.append(f"removed {path.relative_to(cache.root)}")
        if index is None or broken_refs:
            kept = [d for i, d in enumerate(index or []) if i not in broken_refs]
            dropped = len(index or []) - len(kept)
            cache._write_index(kept)
            report.repaired.append(f"index.json: rewritten with {len(kept)} ref(s), {dropped} dropped")
        layout = cache.root / "oci-layout"
        if any(p.startswith("oci-layout:") for p in report.problems):
            cache._write_atomic(layout, b'{"imageLayoutVersion":"1.0.0"}')
            report.repaired.append("oci-layout: rewritten")
