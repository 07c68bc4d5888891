"""OCI `linux.resources`, `linux.devices` and id mappings from LinuxKit's YAML shapes.

Output objects follow the field order and omission rules of runtime-spec's Go types (specs-go 1.2.1), so
config.json matches what LinuxKit's `json.MarshalIndent` writes. Input keys match case-insensitively: the
YAML schema spells some of them camelCase (`kernelTCP`, `hostID`), LinuxKit's own YAML decoder only saw
lower-case ones (and so silently dropped the camelCase keys); we honour both spellings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from linuxkit_py.bundle.fields import FieldError

# How a field is written, after Go's encoding/json rules for its type:
OPT = "opt"  # a pointer: written whenever given, even as 0 / false
REQ = "req"  # a plain value: always written, with its zero value when not given
STR = "str"  # a string with omitempty: written when not empty
OBJ = "obj"  # a pointer to a struct: written whenever given (possibly as {})
LIST = "list"  # a slice with omitempty: written when not empty (items are objects, or scalars when no table)

Converter = Callable[[Any, str], Any]
Field = tuple[str, str, Any]  # (OCI key, kind, zero value | sub-table | converter)
Table = tuple[Field, ...]

_SIZE_UNITS = ("KB", "MB", "GB")


def _page_size(value: Any, path: str) -> str:
    """A hugepage size for OCI: "2MB" stays; 2097152 (bytes, as LinuxKit's schema types it) -> "2MB"."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise FieldError(path, f"{value!r} is not a page size (bytes, or a string such as \"2MB\")")
    size, unit = value, ""
    for next_unit in _SIZE_UNITS:
        if size % 1024:
            break
        size, unit = size // 1024, next_unit
    if not unit:
        raise FieldError(path, f"{value} is not a page size: not a multiple of 1024 bytes")
    return f"{size}{unit}"


IDMAPPING: Table = (("containerID", REQ, 0), ("hostID", REQ, 0), ("size", REQ, 0))
DEVICE_CGROUP: Table = (
    ("allow", REQ, False), ("type", STR, ""), ("major", OPT, None), ("minor", OPT, None), ("access", STR, ""),
)
MEMORY: Table = tuple((key, OPT, None) for key in (
    "limit", "reservation", "swap", "kernel", "kernelTCP", "swappiness", "disableOOMKiller", "useHierarchy",
    "checkBeforeUpdate",
))
CPU: Table = (
    ("shares", OPT, None), ("quota", OPT, None), ("burst", OPT, None), ("period", OPT, None),
    ("realtimeRuntime", OPT, None), ("realtimePeriod", OPT, None), ("cpus", STR, ""), ("mems", STR, ""),
    ("idle", OPT, None),
)
PIDS: Table = (("limit", REQ, 0),)
WEIGHT_DEVICE: Table = (
    ("major", REQ, 0), ("minor", REQ, 0), ("weight", OPT, None), ("leafWeight", OPT, None),
)
THROTTLE_DEVICE: Table = (("major", REQ, 0), ("minor", REQ, 0), ("rate", REQ, 0))
BLOCK_IO: Table = (
    ("weight", OPT, None), ("leafWeight", OPT, None), ("weightDevice", LIST, WEIGHT_DEVICE),
    ("throttleReadBpsDevice", LIST, THROTTLE_DEVICE), ("throttleWriteBpsDevice", LIST, THROTTLE_DEVICE),
    ("throttleReadIOPSDevice", LIST, THROTTLE_DEVICE), ("throttleWriteIOPSDevice", LIST, THROTTLE_DEVICE),
)
HUGEPAGE_LIMIT: Table = (("pageSize", REQ, _page_size), ("limit", REQ, 0))
INTERFACE_PRIORITY: Table = (("name", REQ, ""), ("priority", REQ, 0))
NETWORK: Table = (("classID", OPT, None), ("priorities", LIST, INTERFACE_PRIORITY))
RESOURCES: Table = (
    ("devices", LIST, DEVICE_CGROUP), ("memory", OBJ, MEMORY), ("cpu", OBJ, CPU), ("pids", OBJ, PIDS),
    ("blockIO", OBJ, BLOCK_IO), ("hugepageLimits", LIST, HUGEPAGE_LIMIT), ("network", OBJ, NETWORK),
)


def convert(obj: Any, table: Table, path: str) -> dict[str, Any]:
    """`obj` (a YAML/label mapping) as the OCI object described by `table`."""
    if not isinstance(obj, dict):
        raise FieldError(path, f"expected a mapping, got {obj!r}")
    given = {str(key).lower(): key for key in obj}
    known = {key.lower() for key, _, _ in table}
    unknown = [key for key in obj if str(key).lower() not in known]
    if unknown:
        raise FieldError(path, f"unknown key {unknown[0]!r}")
    out: dict[str, Any] = {}
    for key, kind, extra in table:
        source_key = given.get(key.lower())
        present = source_key is not None and obj[source_key] is not None
        value = obj[source_key] if present else None
        sub_path = f"{path}.{key}"
        if kind == OBJ:
            if present:
                out[key] = convert(value, extra, sub_path)
        elif kind == LIST:
            if present:
                if not isinstance(value, list):
                    raise FieldError(sub_path, f"expected a list, got {value!r}")
                if value and extra is None:
                    out[key] = list(value)
                elif value:
                    out[key] = [convert(item, extra, f"{sub_path}[{i}]") for i, item in enumerate(value)]
        elif callable(extra):
            if present:
                out[key] = extra(value, sub_path)
            elif kind == REQ:
                raise FieldError(path, f"{key} is required")
        elif kind == REQ:
            out[key] = value if present else extra
        elif kind == STR:
            if present and value != "":
                out[key] = value
        elif present:  # OPT
            out[key] = value
    return out


def oci_resources(value: Any, from_label: bool) -> dict[str, Any]:
    """LinuxKit's `resources` as OCI `linux.resources`, every sub-object honoured."""
    try:
        return convert(value, RESOURCES, "resources")
    except FieldError as exc:
        raise FieldError(exc.field, exc.detail, from_label) from None


def oci_idmappings(values: Any, field: str, from_label: bool) -> list[dict[str, Any]]:
    """`uidMappings`/`gidMappings` entries as OCI LinuxIDMapping objects."""
    if not isinstance(values, list):
        raise FieldError(field, f"expected a list, got {values!r}", from_label)
    try:
        return [convert(item, IDMAPPING, f"{field}[{i}]") for i, item in enumerate(values)]
    except FieldError as exc:
        raise FieldError(exc.field, exc.detail, from_label) from None


_OCTAL = re.compile(r"[0-7]+")


def _file_mode(mode: Any, path: str, from_label: bool) -> int:
    if isinstance(mode, int) and not isinstance(mode, bool):
        number = mode
    elif isinstance(mode, str) and _OCTAL.fullmatch(mode.strip()):
        number = int(mode.strip(), 8)
    else:
        detail = f"{path}: mode {mode!r} is not an octal string such as \"0666\""
        raise FieldError("devices", detail, from_label)
    if not 0 <= number <= 0o7777:
        raise FieldError("devices", f"{path}: mode {mode!r} is out of range (0000-7777)", from_label)
    return number


def oci_devices(devices: Any, from_label: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """LinuxKit `devices` -> (OCI linux.devices, device cgroup allow rules), in the order given.

    `path: all` with a `type` allows that whole class (rwm) and creates no device node.
    """
    if not isinstance(devices, list):
        raise FieldError("devices", f"expected a list, got {devices!r}", from_label)
    nodes: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for i, device in enumerate(devices):
        if not isinstance(device, dict):
            raise FieldError("devices", f"[{i}]: expected a mapping, got {device!r}", from_label)
        path = device.get("path") or ""
        dtype = device.get("type") or ""
        rule: dict[str, Any] = {"allow": True}
        if dtype:
            rule["type"] = dtype
        if path == "all":
            rule["access"] = "rwm"
            rules.append(rule)
            continue
        major = device.get("major") or 0
        minor = device.get("minor") or 0
        node: dict[str, Any] = {"path": path, "type": dtype, "major": major, "minor": minor}
        mode = device.get("mode")
        if mode is not None and mode != "":
            node["fileMode"] = _file_mode(mode, path, from_label)
        nodes.append(node)
        rule.update({"major": major, "minor": minor, "access": "rwm"})
        rules.append(rule)
    return nodes, rules
