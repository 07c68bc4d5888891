"""config.json mounts (defaults, tmpfs, binds, mounts), volume sources, and the bundle's rootfs mounts."""

from __future__ import annotations

import posixpath
from typing import Any

from linuxkit_py.bundle.fields import FieldError, Layers
from linuxkit_py.bundle.resources import IDMAPPING, LIST, REQ, STR, Table, convert

VOLUMES_DIR = "/containers/volumes"

MOUNT: Table = (
    ("destination", REQ, ""), ("type", STR, ""), ("source", STR, ""), ("options", LIST, None),
    ("uidMappings", LIST, IDMAPPING), ("gidMappings", LIST, IDMAPPING),
)

# A mount whose type is missing takes it from its source when the source names one of these.
_TYPE_FROM_SOURCE = ("mqueue", "devpts", "proc", "sysfs", "cgroup")
# A mount whose destination is missing takes it from its type.
_DEFAULT_MOUNTPOINT = {
    "proc": "/proc", "devpts": "/dev/pts", "sysfs": "/sys", "cgroup": "/sys/fs/cgroup",
    "mqueue": "/dev/mqueue",
}
_DEFAULT_BIND_OPTIONS = ("rw", "rbind", "rshared")


def oci_mount(mount: Any, field: str, from_label: bool = False) -> dict[str, Any]:
    """A YAML/label mount mapping as an OCI Mount object (keys in specs-go order)."""
    try:
        return convert(mount, MOUNT, field)
    except FieldError as exc:
        raise FieldError(exc.field, exc.detail, from_label) from None


def default_mounts(readonly: bool) -> list[dict[str, Any]]:
    """The mounts every container gets (like Docker's, minus /dev/shm and /dev/mqueue)."""
    ro = ["ro"] if readonly else []
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "nodev", "noexec", "relatime"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k", *ro]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *ro]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]


def tmpfs_mount(text: str, from_label: bool) -> dict[str, Any]:
    """`/dest[:opt,opt]` -> a tmpfs mount."""
    parts = text.split(":")
    if len(parts) > 2:
        raise FieldError("tmpfs", f"{text!r}: too many ':' (expected /destination[:options])", from_label)
    mount: dict[str, Any] = {"destination": parts[0], "type": "tmpfs", "source": "tmpfs"}
    if len(parts) == 2:
        mount["options"] = parts[1].split(",")
    return mount


def bind_mount(text: str, field: str, from_label: bool) -> dict[str, Any]:
    """`src:dst[:opt,opt]` -> a bind mount; options default to rw,rbind,rshared, else get rbind appended."""
    parts = text.split(":")
    if len(parts) < 2:
        raise FieldError(field, f"{text!r}: missing ':' (expected source:destination[:options])", from_label)
    if len(parts) > 3:
        raise FieldError(field, f"{text!r}: too many ':' (expected source:destination[:options])", from_label)
    options = [*parts[2].split(","), "rbind"] if len(parts) == 3 else list(_DEFAULT_BIND_OPTIONS)
    return {"destination": parts[1], "type": "bind", "source": parts[0], "options": options}


def explicit_mount(mount: Any, index: int, from_label: bool) -> dict[str, Any]:
    """A `mounts` entry with its type, source and destination filled in as LinuxKit does."""
    field = f"mounts[{index}]"
    if not isinstance(mount, dict):
        raise FieldError(field, f"expected a mapping, got {mount!r}", from_label)
    mtype = mount.get("type") or ""
    source = mount.get("source") or ""
    destination = mount.get("destination") or ""
    if not mtype and source in _TYPE_FROM_SOURCE:
        mtype = source
    if not mtype and destination == "/dev":
        mtype = "tmpfs"
    if not mtype:
        raise FieldError(field, f"mount on {destination or '?'} has no type", from_label)
    source = source or mtype
    destination = destination or _DEFAULT_MOUNTPOINT.get(mtype, "")
    if not destination:
        raise FieldError(field, f"{mtype} mount has no destination", from_label)
    filled = {**mount, "type": mtype, "source": source, "destination": destination}
    return oci_mount(filled, field, from_label)


def container_mounts(layers: Layers, readonly: bool) -> list[dict[str, Any]]:
    """All config.json mounts, one per destination (tmpfs, then binds, then mounts win), sorted."""
    by_destination = {m["destination"]: m for m in default_mounts(readonly)}
    tmpfs = layers.pick("tmpfs")
    if tmpfs:
        for text in tmpfs.value:
            mount = tmpfs_mount(text, tmpfs.from_label)
            by_destination[mount["destination"]] = mount
    for text, from_label in layers.merged("binds"):
        mount = bind_mount(text, "binds", from_label)
        by_destination[mount["destination"]] = mount
    mounts = layers.pick("mounts")
    if mounts:
        for i, raw in enumerate(mounts.value):
            mount = explicit_mount(raw, i, mounts.from_label)
            by_destination[mount["destination"]] = mount
    return [by_destination[d] for d in sorted(by_destination)]


# -- volumes ----------------------------------------------------------------------------------------
def options_read_only(options: list[str]) -> bool:
    """Whether mount options end up read-only: the last of `ro`/`rw` wins, as when the kernel applies them."""
    state = False
    for option in options:
        if option in ("ro", "rw"):
            state = option == "ro"
    return state


def _volume_dir(name: str, volumes: dict[str, dict[str, Any]], field: str, text: str,
                options: list[str]) -> str:
    volume = volumes.get(name)
    if volume is None:
        raise FieldError(field, f"{text!r}: no volume named {name!r} (a source not starting with '/' names "
                                "a volume)")
    if volume.get("readonly") and not options_read_only(options):
        raise FieldError(field, f"{text!r}: volume {name!r} is read-only, so it must be mounted with 'ro'")
    return f"{VOLUMES_DIR}/{name}/merged"


def rewrite_volume_sources(entry: dict[str, Any], volumes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of `entry` whose bind sources naming a volume point at /containers/volumes/<name>/merged.

    Applies to the YAML's `binds`, `binds.add` and bind-type `mounts` (not to the image label's).
    """
    out = dict(entry)
    for key in ("binds", "binds.add"):
        if entry.get(key) is None:
            continue
        rewritten = []
        for text in entry[key]:
            parts = text.split(":")
            if not parts[0].startswith("/"):
                options = parts[2].split(",") if len(parts) > 2 else []
                parts[0] = _volume_dir(parts[0], volumes, key, text, options)
            rewritten.append(":".join(parts))
        out[key] = rewritten
    if entry.get("mounts") is not None:
        mounts = []
        for i, mount in enumerate(entry["mounts"]):
            if isinstance(mount, dict) and mount.get("type") == "bind":
                source = mount.get("source") or ""
                if not source.startswith("/"):
                    options = list(mount.get("options") or [])
                    merged = _volume_dir(source, volumes, f"mounts[{i}]", source, options)
                    mount = {**mount, "source": merged}
            mounts.append(mount)
        out["mounts"] = mounts
    return out


# -- bundle -----------------------------------------------------------------------------------------
def rootfs_mounts(bundle: str, content: str, readonly: bool) -> list[dict[str, Any]]:
    """The mounts init performs before runc runs the bundle (LinuxKit's ImageBundle).

    Read-only: `content` bind-mounted on <bundle>/rootfs (runc wants the rootfs to be a mount point).
    Writable: a private tmpfs on <bundle>/tmp and an overlay of `content` with tmp/upper on <bundle>/rootfs.
    """
    rootfs = posixpath.join(bundle, "rootfs")
    if readonly:
        return [{"destination": rootfs, "source": content, "options": ["bind"]}]
    tmp = posixpath.join(bundle, "tmp")
    overlay = [f"lowerdir={content}", f"upperdir={tmp}/upper", f"workdir={tmp}/work"]
    return [
        {"destination": tmp, "type": "tmpfs", "source": "tmpfs"},
        # private, so no other mount namespace sees the container's temporary layers
        {"destination": tmp, "options": ["remount", "private"]},
        {"destination": rootfs, "type": "overlay", "source": "overlay", "options": overlay},
    ]
