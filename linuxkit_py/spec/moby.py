"""`files: metadata: yaml|json`: the resolved spec as the documents LinuxKit writes (gopkg.in/yaml.v2 and
encoding/json marshalling its Moby struct, moby/config.go), since programs in the image read them.

What that means: every top-level section is present, in LinuxKit's order (`onboot: []` when empty); the keys
of each object come in the Go struct's order, each written or left out as its yaml tag says (`directory:` and
`optional:` of a file are always there); OCI runtime-spec objects (mounts, resources, id mappings), whose Go
types have no yaml tags, have every field under its lower-cased Go name (`uidmappings: []`, `memory: null`,
the embedded block-IO device as `linuxblockiodevice:`); maps have sorted keys. Formatting as yaml.v2:
two-space indent, sequences not indented under their key, strings that would read as another type in
double quotes, multi-line strings as literal blocks, long lines folded at 80 columns.

JSON (json.MarshalIndent, four spaces): json names, each field left out as its omitempty tag says (most
runtime-spec fields have it; a struct is never left out), maps sorted, empty sections null.

Keys LinuxKit does not know (our extensions) follow its keys, as given. `--dry-run` does not use these forms
(docs/spec.md): it prints a spec our loader reads back.
"""

from __future__ import annotations

from typing import Any

import yaml

from linuxkit_py.bundle.config import go_json
from linuxkit_py.spec.model import Spec
from linuxkit_py.spec.scalars import resolve_plain

_STR_TAG = "tag:yaml.org,2002:str"
WIDTH = 80  # yaml.v2's best_width

# A field: (the key in our spec, how it is written). Kinds: "omit" (left out when absent or "", what
# omitempty does for a value), "opt" (left out when absent: omitempty on a pointer, written even when
# empty), "str"/"int"/"bool" (always written, "" / 0 / false when absent), "null" (a pointer without
# omitempty: null when absent), "list" / "map" (always: [] / {} when absent). A third item is the shape of
# the list's items, the map's values or the object itself; a fourth the written key, when it differs.
Field = tuple[Any, ...]


def _oci(*fields: Field) -> tuple[Field, ...]:
    """A runtime-spec type: no yaml tags, so each field is written under its lower-cased Go name (a fifth item
    marks the field as a runtime-spec one, for the JSON rules)."""
    return tuple((f[0], f[1], f[2] if len(f) > 2 else None, f[3] if len(f) > 3 else f[0].lower(), True)
                 for f in fields)


# Runtime-spec fields whose json tag has no omitempty (specs-go/config.go); every other one has it.
JSON_ALWAYS = frozenset({"destination", "containerID", "hostID", "size", "pageSize", "limit", "name", "priority",
                         "major", "minor", "rate", "allow"})


ID_MAPPING = _oci(("containerID", "int"), ("hostID", "int"), ("size", "int"))
MOUNT = _oci(("destination", "str"), ("type", "str"), ("source", "str"), ("options", "list"),
             ("uidMappings", "list", ID_MAPPING), ("gidMappings", "list", ID_MAPPING))
_BLOCK_DEVICE = _oci(("major", "int"), ("minor", "int"))
# Go embeds LinuxBlockIODevice without a yaml `inline` tag, so yaml.v2 nests it under the type's name.
WEIGHT_DEVICE = _oci(("", "embed", _BLOCK_DEVICE, "linuxblockiodevice"), ("weight", "null"), ("leafWeight", "null"))
THROTTLE_DEVICE = _oci(("", "embed", _BLOCK_DEVICE, "linuxblockiodevice"), ("rate", "int"))
RESOURCES = _oci(
    ("devices", "list", _oci(("allow", "bool"), ("type", "str"), ("major", "null"), ("minor", "null"),
                             ("access", "str"))),
    ("memory", "null", _oci(*((k, "null") for k in ("limit", "reservation", "swap", "kernel", "kernelTCP",
                                                    "swappiness", "disableOOMKiller", "useHierarchy",
                                                    "checkBeforeUpdate")))),
    ("cpu", "null", _oci(("shares", "null"), ("quota", "null"), ("burst", "null"), ("period", "null"),
                         ("realtimeRuntime", "null"), ("realtimePeriod", "null"), ("cpus", "str"), ("mems", "str"),
                         ("idle", "null"))),
    ("pids", "null", _oci(("limit", "int"))),
    ("blockIO", "null", _oci(("weight", "null"), ("leafWeight", "null"), ("weightDevice", "list", WEIGHT_DEVICE),
                             *((f"throttle{k}Device", "list", THROTTLE_DEVICE)
                               for k in ("ReadBps", "WriteBps", "ReadIOPS", "WriteIOPS")))),
    ("hugepageLimits", "list", _oci(("pageSize", "str"), ("limit", "int"))),
    ("network", "null", _oci(("classID", "null"), ("priorities", "list", _oci(("name", "str"), ("priority", "int"))))),
    ("rdma", "map", _oci(("hcaHandles", "null"), ("hcaObjects", "null"))),
    ("unified", "map"),
)
RUNTIME: tuple[Field, ...] = (
    ("cgroups", "opt"), ("mounts", "opt", MOUNT), ("mkdir", "opt"),
    ("interfaces", "opt", (("name", "omit"), ("add", "omit"), ("peer", "omit"), ("createInRoot", "bool"))),
    ("bindNS", "struct", tuple((k, "opt") for k in ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts"))),
    ("namespace", "opt"),
)
IMAGE: tuple[Field, ...] = (
    ("name", "str"), ("image", "str"),
    ("capabilities", "opt"), ("capabilities.add", "opt"), ("ambient", "opt"), ("mounts", "opt", MOUNT),
    ("binds", "opt"), ("binds.add", "opt"),
    ("devices", "opt", (("path", "str"), ("type", "str"), ("major", "int"), ("minor", "int"), ("mode", "omit"))),
    ("tmpfs", "opt"), ("command", "opt"), ("env", "opt"),
    *((k, "omit") for k in ("cwd", "net", "pid", "ipc", "uts", "userns", "hostname")),
    ("readonly", "opt"), ("maskedPaths", "opt"), ("readonlyPaths", "opt"), ("uid", "opt"), ("gid", "opt"),
    ("additionalGids", "opt"), ("noNewPrivileges", "opt"), ("oomScoreAdj", "opt"), ("rootfsPropagation", "opt"),
    ("cgroupsPath", "opt"), ("resources", "opt", RESOURCES), ("sysctl", "opt"), ("rlimits", "opt"),
    ("uidMappings", "opt", ID_MAPPING), ("gidMappings", "opt", ID_MAPPING), ("annotations", "opt"),
    ("runtime", "opt", RUNTIME),
)
KERNEL: tuple[Field, ...] = (("image", "str"), ("cmdline", "omit"), ("binary", "omit"), ("tar", "opt"),
                             ("ucode", "opt"))
FILE: tuple[Field, ...] = (
    ("path", "str"), ("directory", "bool"), ("symlink", "omit"), ("contents", "opt"), ("source", "omit"),
    ("metadata", "omit"), ("optional", "bool"), ("mode", "omit"), ("uid", "opt"), ("gid", "opt"),
)
VOLUME: tuple[Field, ...] = (("name", "str"), ("image", "omit"), ("readonly", "omit"), ("format", "omit"),
                             ("platforms", "omit"))
_ZERO: dict[str, Any] = {"str": "", "int": 0, "bool": False, "null": None}


def _items(value: Any, shape: tuple[Field, ...] | None) -> Any:
    if shape is None or not isinstance(value, list):
        return value
    return [_object(item, shape) if isinstance(item, dict) else item for item in value]


def _object(data: dict[str, Any], shape: tuple[Field, ...], extensions: bool = True) -> dict[str, Any]:
    """`data` with the fields of `shape` in its order, named and defaulted as yaml.v2 writes them."""
    out: dict[str, Any] = {}
    known: set[str] = set()
    folded = {k.lower(): k for k in data}  # our schema spells a few OCI keys in lower case (blockio)
    for field in shape:
        key, kind = field[0], field[1]
        sub = field[2] if len(field) > 2 else None
        name = field[3] if len(field) > 3 and field[3] is not None else key
        if kind == "embed":
            assert sub is not None
            out[name] = _object(data, sub, extensions=False)
            known.update(folded.get(f[0].lower(), f[0]) for f in sub)
            continue
        key = str(key if key in data else folded.get(key.lower(), key))
        known.add(key)
        present = data.get(key) is not None
        value = data.get(key)
        if kind in ("omit", "opt", "struct"):
            if not present or (kind == "omit" and value in ("", False, [], {})):
                continue
        elif not present:
            value = [] if kind == "list" else {} if kind == "map" else _ZERO.get(kind)
        if isinstance(value, dict):
            if kind == "map":
                value = {k: _object(v, sub) if sub and isinstance(v, dict) else v for k, v in sorted(value.items())}
            elif sub is not None:
                value = _object(value, sub)
            else:
                value = dict(sorted(value.items()))  # sysctl, annotations: yaml.v2 sorts map keys
            if kind == "struct" and not value:
                continue
        else:
            value = _items(value, sub)
        out[name] = value
    if extensions:
        out.update((k, v) for k, v in data.items() if k not in known)
    return out


def _json_object(data: dict[str, Any], shape: tuple[Field, ...]) -> dict[str, Any]:
    """`data` as encoding/json writes the Go struct `shape` describes: json names (ours), omitempty as tagged."""
    out: dict[str, Any] = {}
    known: set[str] = set()
    folded = {k.lower(): k for k in data}
    for field in shape:
        key, kind = field[0], field[1]
        sub = field[2] if len(field) > 2 else None
        if kind == "embed":  # encoding/json flattens an embedded struct
            assert sub is not None
            out.update(_json_object(data, sub))
            known.update(folded.get(f[0].lower(), f[0]) for f in sub)
            continue
        oci = len(field) > 4
        if oci:
            kind = "opt" if kind == "null" else kind if key in JSON_ALWAYS else "omit"
        key = str(key if key in data else folded.get(key.lower(), key))
        known.add(key)
        value = data.get(key)
        if value is None:
            if kind in ("omit", "opt"):
                continue
            value = {} if kind == "struct" else None if kind in ("list", "map", "null") else _ZERO.get(kind)
        elif kind == "omit" and value in ("", 0, False, [], {}):
            continue
        if isinstance(value, dict):
            if kind == "map":
                value = {k: _json_object(v, sub) if sub and isinstance(v, dict) else v
                         for k, v in sorted(value.items())}
            elif sub is not None:
                value = _json_object(value, sub)
            else:
                value = dict(sorted(value.items()))
        elif isinstance(value, list) and sub is not None:
            value = [_json_object(v, sub) if isinstance(v, dict) else v for v in value]
        out[field[0]] = value
    out.update((k, v) for k, v in data.items() if k not in known)
    return out


def moby_document(spec: Spec) -> dict[str, Any]:
    """The spec as LinuxKit's Moby struct (plain data, keys in its order)."""
    return {
        "kernel": _object(spec.kernel, KERNEL),
        "init": list(spec.init),
        **{section: [_object(entry, IMAGE) for entry in getattr(spec, section)]
           for section in ("onboot", "onshutdown", "services")},
        "files": [_object(entry, FILE) for entry in spec.files],
        "volumes": [_object(entry, VOLUME) for entry in spec.volumes],
    }


class _MobyDumper(yaml.SafeDumper):
    """yaml.v2's choices: strings another type would be read from are double-quoted (PyYAML would use single
    quotes), so are strings our loader or a YAML 1.2 reader would read as something else."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and tag == _STR_TAG and not isinstance(resolve_plain(value), str):
            return "tag:yaml.org,2002:int"
        return tag


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None
    if "\n" in value:
        style = "|"
    elif dumper.resolve(yaml.ScalarNode, value, (True, False)) != _STR_TAG:
        style = '"'
    return dumper.represent_scalar(_STR_TAG, value, style=style)


_MobyDumper.add_representer(str, _represent_str)


def spec_to_moby_json(spec: Spec) -> bytes:
    """The resolved spec as LinuxKit writes it for `files: metadata: json` (json.MarshalIndent, four spaces, no
    final newline): json names, omitempty as tagged, empty sections null (what LinuxKit's merge leaves)."""
    doc: dict[str, Any] = {
        "kernel": _json_object(spec.kernel, KERNEL),
        "init": list(spec.init) or None,
        **{section: [_json_object(entry, IMAGE) for entry in getattr(spec, section)] or None
           for section in ("onboot", "onshutdown", "services")},
        "files": [_json_object(entry, FILE) for entry in spec.files] or None,
        "volumes": [_json_object(entry, VOLUME) for entry in spec.volumes] or None,
    }
    return go_json(doc)


def spec_to_moby_yaml(spec: Spec) -> str:
    """The resolved spec as LinuxKit writes it for `files: metadata: yaml`."""
    text: str = yaml.dump(moby_document(spec), Dumper=_MobyDumper, sort_keys=False, allow_unicode=True,
                          width=WIDTH, default_flow_style=False)
    return text
