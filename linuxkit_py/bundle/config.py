"""config.json and runtime.json for each container: LinuxKit's ConfigToOCI and ImageBundle, with fixes.

Precedence per field: the spec's YAML entry > the image's `org.mobyproject.config` label > the image
config (command, env and working directory only). Only `capabilities.add` and `binds.add` merge.
Deliberate differences from LinuxKit are listed in docs/compatibility-runtime.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from linuxkit_py.bundle.capabilities import ALL_CAPABILITIES, normalize_capability
from linuxkit_py.bundle.fields import LABEL_NAME, FieldError, Layers
from linuxkit_py.bundle.mounts import container_mounts, oci_mount, rewrite_volume_sources, rootfs_mounts
from linuxkit_py.bundle.resources import (
    REQ,
    STR,
    Table,
    convert,
    oci_devices,
    oci_idmappings,
    oci_resources,
)
from linuxkit_py.bundle.schema import OCI_VERSION, validate_config
from linuxkit_py.errors import UserError

__all__ = [
    "OCI_VERSION", "ContainerConfig", "ContainerConfigError", "allocate_ids", "bundle_runtime", "config_json",
    "container_config", "resolve_id", "runtime_json", "validate_config",
]

FIRST_ID = 100
MAX_ID = 2**32 - 1
UNLIMITED = 2**64 - 1
RLIMITS = (
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS", "RLIMIT_NPROC",
    "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
)
# (YAML key, OCI namespace type, default): host/root = share the host's, new = create one, /path = join it.
NAMESPACES = (
    ("net", "network", "host"), ("ipc", "ipc", "host"), ("uts", "uts", "host"), ("pid", "pid", "new"),
    ("userns", "user", "host"),
)
INTERFACE: Table = (("name", STR, ""), ("add", STR, ""), ("peer", STR, ""), ("createInRoot", REQ, False))
BIND_NS: Table = tuple((key, REQ, "") for key in ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts"))

_DIGITS = re.compile(r"[0-9]+")


class ContainerConfigError(UserError):
    """A bad field in a container's entry or image label.

    `field` locates the value ("uid", "mounts[0]", "resources.memory"); `key` is its top-level YAML key
    (for Spec.position); `detail` is the message without the container name.
    """

    def __init__(self, container: str, field: str, detail: str, from_label: bool) -> None:
        origin = f" (in the image's {LABEL_NAME} label)" if from_label else ""
        super().__init__(f"container {container!r}: {field}: {detail}{origin}")
        self.container = container
        self.field = field
        self.detail = detail + origin
        self.from_label = from_label

    @property
    def key(self) -> str:
        if self.field.startswith(("capabilities.add", "binds.add")):
            return self.field.split("[", 1)[0]
        return re.split(r"[.\[]", self.field, maxsplit=1)[0]


@dataclass
class ContainerConfig:
    config: dict[str, Any]  # config.json content
    runtime: dict[str, Any]  # runtime.json content before bundle_runtime prepends the rootfs mounts
    readonly: bool


# -- ids --------------------------------------------------------------------------------------------
class ContainerSections(Protocol):
    """What allocate_ids reads of a spec (spec.model.Spec has these): the container lists in spec order."""

    onboot: list[dict[str, Any]]
    onshutdown: list[dict[str, Any]]
    services: list[dict[str, Any]]


def allocate_ids(spec: ContainerSections) -> dict[str, int]:
    """Container name -> uid/gid: 100, 101, ... over onboot, onshutdown, services; a repeated name keeps
    its last id (the counter still advances for every entry)."""
    ids: dict[str, int] = {}
    entries = [*spec.onboot, *spec.onshutdown, *spec.services]
    for next_id, entry in enumerate(entries, FIRST_ID):
        ids[entry["name"]] = next_id
    return ids


def _numeric_id(value: Any, ids: dict[str, int]) -> int:
    """A uid/gid: a number, a numeric string, "root" or "" (0), or a container name. ValueError if not."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a number or a container name")
    if isinstance(value, str):
        if value in ("", "root"):
            return 0
        if not _DIGITS.fullmatch(value):
            if value not in ids:
                raise ValueError(f"{value!r} is not a number, 'root' or the name of a container in the spec")
            return ids[value]
        value = int(value)
    if not 0 <= value <= MAX_ID:
        raise ValueError(f"{value} is out of range (0-{MAX_ID})")
    return value


def resolve_id(value: Any, ids: dict[str, int], what: str = "uid/gid") -> int:
    """A uid/gid as `files` and containers accept it; UserError naming `what` when it cannot be resolved."""
    try:
        return _numeric_id(value, ids)
    except ValueError as exc:
        raise UserError(f"{what}: {exc}") from None


# -- process ----------------------------------------------------------------------------------------
def _user(layers: Layers, ids: dict[str, int]) -> dict[str, Any]:
    user: dict[str, Any] = {}
    for key in ("uid", "gid"):
        picked = layers.pick(key)
        try:
            user[key] = _numeric_id(picked.value if picked else None, ids)
        except ValueError as exc:
            raise FieldError(key, str(exc), bool(picked and picked.from_label)) from None
    extra = layers.pick("additionalGids")
    if extra and extra.value:
        gids = []
        for value in extra.value:
            try:
                gids.append(_numeric_id(value, ids))
            except ValueError as exc:
                raise FieldError("additionalGids", str(exc), extra.from_label) from None
        user["additionalGids"] = gids
    return user


def _capability_list(items: list[tuple[Any, bool]], field: str) -> list[str]:
    """Capability names as CAP_X, in the order given, no repeats; `all` and `none` may appear anywhere."""
    caps: dict[str, None] = {}
    for item, from_label in items:
        word = item.lower() if isinstance(item, str) else ""
        if word == "all":
            caps.update(dict.fromkeys(ALL_CAPABILITIES))
            continue
        if word == "none":
            continue
        cap = normalize_capability(item) if isinstance(item, str) else None
        if cap is None:
            raise FieldError(field, f"unknown capability {item!r}", from_label)
        caps[cap] = None
    return list(caps)


def _capabilities(layers: Layers) -> dict[str, Any]:
    """Effective = the capabilities; bounding = inheritable = permitted = sorted(capabilities + ambient)."""
    effective = _capability_list(layers.merged("capabilities"), "capabilities")
    picked = layers.pick("ambient")
    ambient = _capability_list([(c, picked.from_label) for c in picked.value], "ambient") if picked else []
    bounding = sorted({*effective, *ambient})
    out: dict[str, Any] = {}
    for key, value in (("bounding", bounding), ("effective", effective), ("inheritable", bounding),
                       ("permitted", bounding), ("ambient", ambient)):
        if value:
            out[key] = list(value)
    return out


def _rlimit_value(text: str, limit: str, from_label: bool) -> int:
    word = text.strip()
    if word.lower() == "unlimited":
        return UNLIMITED
    if not _DIGITS.fullmatch(word) or int(word) > UNLIMITED:
        raise FieldError("rlimits", f"{limit!r}: {word!r} is not a number or 'unlimited'", from_label)
    return int(word)


def _rlimits(layers: Layers) -> list[dict[str, Any]]:
    """`name,soft,hard` strings (RLIMIT_ prefix optional, case-insensitive) as OCI rlimits."""
    picked = layers.pick("rlimits")
    if not picked:
        return []
    out = []
    from_label = picked.from_label
    for text in picked.value:
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise FieldError("rlimits", f"{text!r} is not name,soft,hard (e.g. nofile,1024,4096)", from_label)
        name = parts[0].strip().upper()
        if not name.startswith("RLIMIT_"):
            name = "RLIMIT_" + name
        if name not in RLIMITS:
            known = ", ".join(r.removeprefix("RLIMIT_").lower() for r in RLIMITS)
            raise FieldError("rlimits", f"{text!r}: unknown limit {parts[0].strip()!r} (known: {known})",
                             from_label)
        soft = _rlimit_value(parts[1], text, from_label)
        hard = _rlimit_value(parts[2], text, from_label)
        if soft > hard:
            raise FieldError("rlimits", f"{text!r}: the soft limit is above the hard limit", from_label)
        out.append({"type": name, "hard": hard, "soft": soft})
    return out


def _image_strings(image_config: dict[str, Any], key: str, field: str) -> list[str]:
    """The image config's list-of-strings `key` (Entrypoint, Cmd, Env): an image from anywhere may hold anything."""
    value = image_config.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FieldError(field, f"the image config's {key} is {json.dumps(value)[:60]}, not a list of strings")
    return value


def _process(layers: Layers, image_config: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    command = layers.pick("command")
    if command:
        args = list(command.value)
        if not args:
            raise FieldError("command", "is empty: a container needs a program to run", command.from_label)
    else:
        args = [*_image_strings(image_config, "Entrypoint", "command"), *_image_strings(image_config, "Cmd", "command")]
        if not args:
            raise FieldError("command", "not set, and the image has no Entrypoint or Cmd: nothing to run")
    env = layers.pick("env")
    env_list = list(env.value) if env else _image_strings(image_config, "Env", "env")
    cwd = layers.pick_nonempty("cwd")
    process: dict[str, Any] = {"user": _user(layers, ids), "args": args}
    if env_list:
        process["env"] = env_list
    workdir = image_config.get("WorkingDir") or "/"
    if not cwd and not isinstance(workdir, str):
        raise FieldError("cwd", f"the image config's WorkingDir is {json.dumps(workdir)[:60]}, not a string")
    process["cwd"] = cwd.value if cwd else workdir
    process["capabilities"] = _capabilities(layers)
    rlimits = _rlimits(layers)
    if rlimits:
        process["rlimits"] = rlimits
    if layers.value("noNewPrivileges", False):
        process["noNewPrivileges"] = True
    oom = layers.pick("oomScoreAdj")
    if oom:
        process["oomScoreAdj"] = oom.value
    return process


# -- linux ------------------------------------------------------------------------------------------
def _namespaces(layers: Layers) -> list[dict[str, Any]]:
    """Namespaces in LinuxKit's order; a new mount namespace always, never a cgroup one."""
    out: list[dict[str, Any]] = []
    for key, oci_type, default in NAMESPACES:
        picked = layers.pick_nonempty(key)
        value = picked.value if picked else default
        if value in ("host", "root"):
            continue
        if value == "new" or (value == "none" and key == "net"):  # none: a network namespace with only lo
            out.append({"type": oci_type})
        elif isinstance(value, str) and value.startswith("/"):
            out.append({"type": oci_type, "path": value})
        else:
            choices = "host, new, none" if key == "net" else "host, new"
            raise FieldError(key, f"{value!r} is not {choices} or the absolute path of a namespace to join",
                             bool(picked and picked.from_label))
    out.append({"type": "mount"})
    return out


def _linux(layers: Layers) -> dict[str, Any]:
    linux: dict[str, Any] = {}
    for key in ("uidMappings", "gidMappings"):
        picked = layers.pick(key)
        if picked and picked.value:
            linux[key] = oci_idmappings(picked.value, key, picked.from_label)
    sysctl = layers.value("sysctl")
    if sysctl:
        linux["sysctl"] = dict(sorted(sysctl.items()))
    picked = layers.pick("resources")
    resources = oci_resources(picked.value, picked.from_label) if picked else {}
    devices = layers.pick("devices")
    nodes, rules = oci_devices(devices.value, devices.from_label) if devices else ([], [])
    if rules:
        resources = {"devices": [*resources.pop("devices", []), *rules], **resources}
    linux["resources"] = resources
    if layers.value("cgroupsPath"):
        linux["cgroupsPath"] = layers.value("cgroupsPath")
    linux["namespaces"] = _namespaces(layers)
    if nodes:
        linux["devices"] = nodes
    for key in ("rootfsPropagation", "maskedPaths", "readonlyPaths"):
        value = layers.value(key)
        if value:
            linux[key] = list(value) if isinstance(value, list) else value
    return linux


# -- runtime.json -----------------------------------------------------------------------------------
def _runtime(layers: Layers) -> dict[str, Any]:
    """LinuxKit's Runtime, merged per field (YAML over label); every field is always written."""
    yaml_runtime = layers.entry.get("runtime") or {}
    label_runtime = layers.label.get("runtime") or {}
    merged = Layers(yaml_runtime, label_runtime)
    mounts = merged.pick("mounts")
    interfaces = merged.pick("interfaces")
    bind_ns = {**(label_runtime.get("bindNS") or {}), **(yaml_runtime.get("bindNS") or {})}
    oci_mounts = []
    if mounts:
        oci_mounts = [oci_mount(mount, f"runtime.mounts[{i}]", mounts.from_label)
                      for i, mount in enumerate(mounts.value)]
    oci_interfaces = []
    if interfaces:
        try:
            oci_interfaces = [convert(item, INTERFACE, f"runtime.interfaces[{i}]")
                              for i, item in enumerate(interfaces.value)]
        except FieldError as exc:
            raise FieldError(exc.field, exc.detail, interfaces.from_label) from None
    return {
        "cgroups": list(merged.value("cgroups", [])),
        "mounts": oci_mounts,
        "mkdir": list(merged.value("mkdir", [])),
        "interfaces": oci_interfaces,
        "bindNS": convert(bind_ns, BIND_NS, "runtime.bindNS"),
        "namespace": merged.value("namespace", ""),
    }


# -- public API -------------------------------------------------------------------------------------
def container_config(entry: dict[str, Any], image_config: dict[str, Any], label: dict[str, Any] | None, *,
                     ids: dict[str, int], volumes: dict[str, dict[str, Any]]) -> ContainerConfig:
    """config.json and runtime.json content for one onboot/onshutdown/services entry.

    `image_config` is the image config's `config` section; `label` the validated org.mobyproject.config
    label; `volumes` maps spec volume names to their entries. The image's `User` is ignored, as in LinuxKit.
    """
    name = str(entry.get("name", "?"))
    try:
        layers = Layers(rewrite_volume_sources(entry, volumes), label or {})
        readonly = bool(layers.value("readonly", False))
        root: dict[str, Any] = {"path": "rootfs"}
        if readonly:
            root["readonly"] = True
        process = _process(layers, image_config or {}, ids)
        config: dict[str, Any] = {"ociVersion": OCI_VERSION, "process": process, "root": root}
        hostname = layers.pick_nonempty("hostname")
        if hostname:
            config["hostname"] = hostname.value
        config["mounts"] = container_mounts(layers, readonly)
        annotations = layers.value("annotations")
        if annotations:
            config["annotations"] = dict(sorted(annotations.items()))
        config["linux"] = _linux(layers)
        runtime = _runtime(layers)
    except FieldError as exc:
        raise ContainerConfigError(name, exc.field, exc.detail, exc.from_label) from None
    return ContainerConfig(config=config, runtime=runtime, readonly=readonly)


def bundle_runtime(runtime: dict[str, Any], bundle: str, content: str, readonly: bool) -> dict[str, Any]:
    """`runtime` with the bundle's rootfs mounts prepended (see runtime_mounts.rootfs_mounts).

    bundle: absolute bundle dir in the image, e.g. /containers/services/getty; content: absolute dir
    holding the image's files (its own rootfs/ or lower/, or another bundle's for a repeated image).
    """
    if not bundle.startswith("/") or not content.startswith("/"):
        raise ValueError(f"bundle and content must be absolute: {bundle!r}, {content!r}")
    out = dict(runtime)
    out["mounts"] = [*rootfs_mounts(bundle.rstrip("/"), content.rstrip("/"), readonly), *runtime["mounts"]]
    return out


def go_json(doc: dict[str, Any]) -> bytes:
    """JSON as Go's json.MarshalIndent(doc, "", "    ") writes it: HTML-safe escapes, no final newline."""
    text = json.dumps(doc, indent=4, ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


def config_json(doc: dict[str, Any]) -> bytes:
    """config.json bytes, as LinuxKit writes them."""
    return go_json(doc)


def runtime_json(doc: dict[str, Any]) -> bytes:
    """runtime.json bytes, as LinuxKit writes them."""
    return go_json(doc)
