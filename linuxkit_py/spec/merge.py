"""Merging validated spec files into one Spec, like LinuxKit's AppendConfig.

Later files override the kernel fields they set (image, cmdline and binary only when non-empty;
tar and ucode whenever present, so `tar: ""` in a later file still turns the tarball off); init,
onboot, onshutdown, services, files and volumes append in file order. `trust` is ignored.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from linuxkit_py.spec.model import SECTIONS, Spec, pointer

if TYPE_CHECKING:
    from linuxkit_py.spec.load import Document

log = logging.getLogger("linuxkit_py")

LIST_SECTIONS = ("init", *SECTIONS, "files", "volumes")
KERNEL_OVERRIDE_IF_NONEMPTY = ("image", "cmdline", "binary")


def _move_positions(doc: Document, spec: Spec, old_prefix: str, new_prefix: str) -> None:
    for path, pos in doc.positions.items():
        if path == old_prefix or path.startswith(old_prefix + "/"):
            spec.positions[new_prefix + path[len(old_prefix) :]] = pos


def merge_documents(documents: list[Document]) -> Spec:
    """One Spec from validated documents, positions renumbered to the merged lists."""
    spec = Spec()
    for doc in documents:
        data = doc.data
        kernel = data.get("kernel", {})
        for key, value in kernel.items():
            if key in KERNEL_OVERRIDE_IF_NONEMPTY and not value and key in spec.kernel:
                continue
            spec.kernel[key] = value
            _move_positions(doc, spec, pointer("kernel", key), pointer("kernel", key))
        if "kernel" in data:
            spec.positions.setdefault("kernel", doc.positions["kernel"])
        for section in LIST_SECTIONS:
            if section not in data:
                continue
            spec.positions.setdefault(section, doc.positions[section])
            entries = getattr(spec, section)
            for i, entry in enumerate(data[section]):
                merged_index = len(entries)
                entries.append(entry)
                _move_positions(doc, spec, pointer(section, i), pointer(section, merged_index))
                if merged_index != i:
                    spec.local_paths[pointer(section, merged_index)] = pointer(section, i)
        if "trust" in data:
            where = doc.key_positions.get("trust", doc.positions["trust"])
            log.warning(
                "%s: trust: ignored (image signature checks are not supported, as in LinuxKit)", where
            )
    return spec
