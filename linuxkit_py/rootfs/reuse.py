"""`build --input-tar FILE`: the sections of an earlier build's tar that the new spec leaves unchanged are copied
from it instead of being built again, so their images need not be pulled or even be in the cache (LinuxKit's
--input-tar).

As in LinuxKit, the earlier spec is read from the tar itself, at the path of the new spec's last `files:` entry
with `metadata:`; without such an entry, or when the tar has no such file, nothing is reused. Sections are
matched by position, and a section's entries are those whose PAX `LINUXKIT.location` names it (`kernel`,
`init[0]`, `volume[1]`, `services[2]`, ...). Stricter than LinuxKit, so that the tar is byte for byte what a
fresh build writes: the kernel is compared as a whole (LinuxKit compares its image only and keeps a stale
cmdline), every other section as its whole entry; init images whose apk databases were merged are reused
together or not at all; a container whose image another container also uses (their bundles share one copy) is
built again; and so is a section whose own version of a path was overwritten by a later section that changed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from linuxkit_py.archive.entry import Entry, FileRegion, read_data
from linuxkit_py.archive.tarindex import read_tar_region
from linuxkit_py.archive.tree import normalize_path
from linuxkit_py.errors import UserError
from linuxkit_py.spec.model import SECTIONS, Spec

log = logging.getLogger("linuxkit_py")

APK_LOCATION = "init"  # the merged apk database of the init images (rootfs/assemble.py)


def section_refs(spec: Spec) -> list[tuple[str, str]]:
    """(location, image reference) of every section of `spec` that comes from an image."""
    out = [("kernel", spec.kernel["image"])] if spec.kernel.get("image") else []
    out += [(f"init[{i}]", ref) for i, ref in enumerate(spec.init)]
    out += [(f"volume[{i}]", v["image"]) for i, v in enumerate(spec.volumes) if v.get("image")]
    out += [(f"{s}[{i}]", e["image"]) for s in SECTIONS for i, e in enumerate(getattr(spec, s))]
    return out


def metadata_file(spec: Spec) -> tuple[str, str] | None:
    """(path in the image, yaml|json) of the last `files:` entry with `metadata:`, LinuxKit's rule."""
    found = None
    for f in spec.files:
        if f.get("metadata"):
            found = (normalize_path(f["path"]), f["metadata"])
    return found


def _sections(document: Any) -> dict[str, Any]:
    """location -> the spec's entry for it, in assembly order, from a metadata document (ours or LinuxKit's)."""
    doc = document if isinstance(document, dict) else {}
    out: dict[str, Any] = {}
    if doc.get("kernel"):
        out["kernel"] = doc["kernel"]
    inits = doc.get("init") or []
    for i, ref in enumerate(inits):
        out[f"init[{i}]"] = ref
    out[APK_LOCATION] = inits
    for name, key in (("volume", "volumes"), *((s, s) for s in SECTIONS), ("files", "files")):
        for i, entry in enumerate(doc.get(key) or []):
            out[f"{name}[{i}]"] = entry
    return out


def _unshared(sections: dict[str, Any]) -> set[str]:
    """Container locations whose image no other container uses."""
    containers = {loc: e.get("image") for loc, e in sections.items()
                  if isinstance(e, dict) and loc.split("[")[0] in SECTIONS}
    counts = Counter(containers.values())
    return {loc for loc, ref in containers.items() if counts[ref] == 1}


def _runs(entries: list[Entry], order: dict[str, int]) -> list[int]:
    """For each entry, the section that first added it (as an `order` index), estimated from the tar.

    The tar holds each path once, where the first section that added it put it, with the metadata of the last
    one: so sections' runs of new paths follow one another in order, and an entry belongs at the latest to the
    earliest section named by it or by any entry after it.
    """
    runs = [0] * len(entries)
    lowest = len(order)
    for i in range(len(entries) - 1, -1, -1):
        lowest = min(lowest, order.get(entries[i].location, len(order)))
        runs[i] = lowest
    return runs


def reusable_sections(input_tar: Path, spec: Spec, render: Callable[[str], bytes]) -> dict[str, list[Entry]]:
    """location -> the entries of `input_tar` to add for it, for each section `spec` leaves unchanged."""
    meta = metadata_file(spec)
    if meta is None:
        log.info("--input-tar: the spec has no files: entry with metadata:, so nothing is reused")
        return {}
    path, kind = meta
    entries = read_tar_region(FileRegion(str(input_tar), 0, input_tar.stat().st_size), str(input_tar))
    found = next((e for e in entries if e.path == path), None)
    if found is None:
        log.info("--input-tar: %s has no %s, so nothing is reused", input_tar, path)
        return {}
    try:
        old = _sections(yaml.safe_load(read_data(found.data)))
    except yaml.YAMLError as exc:
        raise UserError(f"--input-tar {input_tar}: invalid config in {path}: {exc}") from None
    new = _sections(yaml.safe_load(render(kind)))
    unchanged = {loc for loc, entry in new.items() if loc in old and old[loc] == entry}
    if new[APK_LOCATION][:len(old[APK_LOCATION])] == old[APK_LOCATION]:
        unchanged.add(APK_LOCATION)  # init images only added at the end: the earlier union is extended
    candidates = unchanged - {loc for loc in unchanged if loc.startswith("files[")}
    candidates -= {loc for loc in candidates if loc.split("[")[0] in SECTIONS} - (_unshared(old) & _unshared(new))
    order = {loc: i for i, loc in enumerate(old)}
    names = list(old)
    runs = _runs(entries, order)
    chosen: dict[str, list[Entry]] = {loc: [] for loc in candidates}
    for entry, run in zip(entries, runs, strict=True):
        first = names[run] if run < len(names) else ""
        for loc in {entry.location, first} & chosen.keys():
            chosen[loc].append(entry)
        # An entry a section added first but a later, changed section has since overwritten: the first
        # section's own version is lost, so that section is built again.
        if first in chosen and entry.location not in unchanged:
            del chosen[first]
    chosen = {loc: found for loc, found in chosen.items() if found}
    old_inits = {loc for loc in old if loc.startswith("init[")}
    union = any(e.location == APK_LOCATION for e in entries)
    if union and not (APK_LOCATION in chosen and old_inits <= chosen.keys()):
        # Only the union of the earlier init images' apk databases is in the tar, not each one's: the union
        # can be extended but not taken apart, so either all of them are copied or none.
        chosen = {loc: found for loc, found in chosen.items() if not loc.startswith("init")}
    refs = dict(section_refs(spec))
    for loc in sorted(chosen.keys() - {APK_LOCATION}):
        log.info("Copy %s files from input tar: %s", loc, refs.get(loc, ""))
    return chosen


def needed_refs(spec: Spec, reused: dict[str, list[Entry]]) -> list[str]:
    """The images the build still needs, in first-use order: those of the sections not reused."""
    return list(dict.fromkeys(ref for location, ref in section_refs(spec) if location not in reused))
