"""The merged spec as YAML for `--dry-run` (and our JSON of it); `files: metadata: yaml|json` write LinuxKit's
documents instead (moby.py).

`--dry-run`: sections come in LinuxKit's order (kernel, init, onboot, onshutdown, services, files, volumes),
only those the spec has; keys inside an object keep the order the user wrote them in. Loading the YAML back
gives the same Spec. The metadata file is what LinuxKit writes instead (every section, LinuxKit's keys and
order), since programs in the image read it: `spec_to_moby_yaml`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from linuxkit_py.spec.moby import spec_to_moby_json, spec_to_moby_yaml
from linuxkit_py.spec.model import Spec
from linuxkit_py.spec.scalars import resolve_plain

__all__ = ["spec_to_json", "spec_to_moby_json", "spec_to_moby_yaml", "spec_to_yaml"]

_STR_TAG = "tag:yaml.org,2002:str"
_NEEDS_ESCAPES = re.compile(
    r"[^\n\t\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]|[\x85\u2028\u2029\ufeff]"
)


class _Dumper(yaml.SafeDumper):
    """Block style, sequences indented under their key, and any string our loader would read back as
    something else (`0o17`, `1e5`, `09` are numbers to yaml.v3 and to us, not to YAML 1.1) quoted."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        tag = super().resolve(kind, value, implicit)
        if (
            kind is yaml.ScalarNode
            and implicit[0]
            and tag == _STR_TAG
            and not isinstance(resolve_plain(value), str)
        ):
            return "tag:yaml.org,2002:int"  # any non-str tag makes the emitter quote the string
        return tag


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # file contents and scripts read best as literal blocks; the emitter falls back to quotes when it must.
    # Characters YAML would fold or normalise (\r, NEL, U+2028...) survive only as double-quoted escapes.
    style = '"' if _NEEDS_ESCAPES.search(value) else "|" if "\n" in value else None
    return dumper.represent_scalar(_STR_TAG, value, style=style)


_Dumper.add_representer(str, _represent_str)


def spec_to_yaml(spec: Spec) -> str:
    """The merged spec as a LinuxKit YAML document."""
    doc = spec.to_dict()
    if not doc:
        return "{}\n"
    text: str = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 16)
    return text


def spec_to_json(spec: Spec) -> str:
    """The merged spec as indented JSON (LinuxKit's `metadata: json`)."""
    return json.dumps(spec.to_dict(), indent=4, ensure_ascii=False) + "\n"
