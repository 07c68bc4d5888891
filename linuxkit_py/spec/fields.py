"""Checks of single spec values, run after the JSON Schema: one function per schema `format:` name.

A check gets the (schema-valid) value and the YAML source text of a non-string scalar (None for
strings and containers), and returns the normalised value or raises FieldError. Checks that need the
whole spec (unknown container names, volume references, duplicate names) live in consistency.py.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from typing import Any

from linuxkit_py.bundle.capabilities import ALL_CAPABILITIES, normalize_capability
from linuxkit_py.errors import UserError
from linuxkit_py.registry.reference import parse_reference

PKG_PREFIX = "@pkg:"  # resolved to an image reference later (pkg layer); accepted as is here
MAX_ID = 2**32 - 1
MAX_RLIMIT = 2**64 - 1

RLIMITS = (
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
    "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
)  # fmt: skip
PROPAGATIONS = ("shared", "slave", "private", "unbindable", "rshared", "rslave", "rprivate", "runbindable")
# mounts whose type LinuxKit infers from the source, and where each type mounts by default
INFERRED_MOUNT_TYPES = ("mqueue", "devpts", "proc", "sysfs", "cgroup")
DEFAULT_MOUNTPOINTS = {
    "proc": "/proc",
    "devpts": "/dev/pts",
    "sysfs": "/sys",
    "cgroup": "/sys/fs/cgroup",
    "mqueue": "/dev/mqueue",
}
FILE_CONTENT_KEYS = ("contents", "source", "metadata", "directory", "symlink")

_CONTAINER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VOLUME_NAME_RE = re.compile(r"[a-z0-9_-]+")
_OCTAL_RE = re.compile(r"[0-7]{1,5}")
_ENV_RE = re.compile(r"[^=\x00]+=[^\x00]*")  # what runc accepts
_PLATFORM_RE = re.compile(r"[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?")


class FieldError(Exception):
    """A bad value; `subpath` locates it below the checked value (e.g. ("mode",) inside a file)."""

    def __init__(self, message: str, hint: str | None = None, subpath: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.subpath = subpath


def quoted(value: str) -> str:
    """A string as error messages show it: in double quotes, escaped like JSON."""
    return json.dumps(value, ensure_ascii=False)


def suggest(value: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """A `did you mean` hint, or None."""
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f"did you mean {quoted(close[0])}?" if close else None


def check_octal_mode(value: str | int, text: str | None) -> str:
    """`"0644"`, `"644"`, unquoted `0644` or `0o644` -> "0644"; an unquoted `644` is ambiguous: rejected."""
    if isinstance(value, int):
        shown = text if text is not None else str(value)
        if not shown.lstrip("+").startswith("0") or value < 0:
            if text is None and 0 <= value <= 0o7777:  # JSON has no octal: say what the decimal means
                hint = f'write the mode as an octal string: "{value:04o}" if {value} is decimal'
            elif _OCTAL_RE.fullmatch(shown):
                hint = f'write the mode as an octal string, e.g. "0{shown}"'
            else:
                hint = None
            raise FieldError(f"{shown} is not an octal mode: a number without a leading 0 is ambiguous", hint)
        number = value
    else:
        shown = quoted(value)
        if not _OCTAL_RE.fullmatch(value):
            raise FieldError(f"{shown} is not an octal mode", hint='write e.g. "0644"')
        number = int(value, 8)
    if number > 0o7777:
        raise FieldError(f"{shown} is not a mode: more than 07777")
    return f"{number:04o}"


def check_id(value: int | str, text: str | None) -> int | str:
    """uid/gid: a number (also written as a string), `root`, "" or a container name (checked later)."""
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            return value
        value = int(value)
    if not 0 <= value <= MAX_ID:
        raise FieldError(f"{value} is out of range (0 to {MAX_ID})")
    return value


def check_capabilities(value: list[str], text: str | None) -> list[str]:
    """Capability names -> CAP_X; a single `all` or `none` stands for every capability or none."""
    result = []
    for i, name in enumerate(value):
        if name.lower() in ("all", "none"):
            if len(value) != 1:
                raise FieldError(f"{quoted(name)} must be the only entry of the list", subpath=(i,))
            result.append(name.lower())
            continue
        canonical = normalize_capability(name)
        if canonical is None:
            guess = suggest(
                name.upper().removeprefix("CAP_"), [c.removeprefix("CAP_") for c in ALL_CAPABILITIES]
            )
            if guess:
                guess = guess.replace('"', '"CAP_', 1)
            raise FieldError(f"unknown capability {quoted(name)}", hint=guess, subpath=(i,))
        result.append(canonical)
    return result


def check_image_ref(value: str, text: str | None) -> str:
    """An image reference Docker would accept (`@pkg:` templates pass untouched)."""
    if value.startswith(PKG_PREFIX):
        if not value[len(PKG_PREFIX) :]:
            raise FieldError(f"{quoted(value)} names no package directory")
        return value
    try:
        parse_reference(value)
    except UserError as exc:
        raise FieldError(exc.message, exc.hint) from None
    return value


def check_optional_image_ref(value: str, text: str | None) -> str:
    """kernel.image and volumes[].image: "" means none (and does not override in a merge)."""
    return value if value == "" else check_image_ref(value, text)


def _absolute(path: str, what: str) -> None:
    if not path.startswith("/"):
        raise FieldError(f"{what} {quoted(path)} must be an absolute path")


def _options(text: str, whole: str) -> None:
    if any(not opt for opt in text.split(",")):
        raise FieldError(f"empty mount option in {quoted(whole)}")


def check_bind(value: str, text: str | None) -> str:
    """`source:destination[:opt1,opt2]`; a source not starting with `/` names a volume."""
    parts = value.split(":")
    if len(parts) < 2 or len(parts) > 3:
        raise FieldError(
            f"{quoted(value)} is not a bind: expected source:destination[:options]",
            hint="too many ':'" if len(parts) > 3 else None,
        )
    if not parts[0] or not parts[1]:
        raise FieldError(f"bind {quoted(value)} has an empty {'source' if not parts[0] else 'destination'}")
    if len(parts) == 3:
        _options(parts[2], value)
    return value


def check_tmpfs(value: str, text: str | None) -> str:
    """`/destination[:opt1,opt2]`."""
    parts = value.split(":")
    if len(parts) > 2:
        raise FieldError(f"{quoted(value)} is not a tmpfs: expected /destination[:options] (too many ':')")
    if not parts[0]:
        raise FieldError(f"tmpfs {quoted(value)} has an empty destination")
    if len(parts) == 2:
        _options(parts[1], value)
    return value


def check_rlimit(value: str, text: str | None) -> str:
    """`name,soft,hard` (e.g. `nofile,1024,4096`); RLIMIT_ prefix optional; `unlimited` allowed."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 3:
        raise FieldError(f"{quoted(value)} is not an rlimit: expected name,soft,hard (e.g. nofile,1024,4096)")
    name = parts[0].upper()
    if not name.startswith("RLIMIT_"):
        name = "RLIMIT_" + name
    if name not in RLIMITS:
        known = ", ".join(r.removeprefix("RLIMIT_").lower() for r in RLIMITS)
        raise FieldError(f"unknown rlimit {quoted(parts[0])}", hint=f"known: {known}")
    limits = []
    for limit in parts[1:]:
        if limit.lower() == "unlimited":
            limits.append(MAX_RLIMIT)
        elif limit.isascii() and limit.isdigit() and int(limit) <= MAX_RLIMIT:
            limits.append(int(limit))
        else:
            raise FieldError(f"rlimit {quoted(value)}: {quoted(limit)} is not a number or unlimited")
    if limits[0] > limits[1]:
        raise FieldError(f"rlimit {quoted(value)}: the soft limit is above the hard limit")
    return value


def _namespace(value: str, allowed: tuple[str, ...]) -> str:
    if value in allowed or value == "" or value.startswith("/"):
        return value
    raise FieldError(
        f"{quoted(value)} is not {', '.join(allowed)} or the absolute path of a namespace to join"
    )


def check_namespace(value: str, text: str | None) -> str:
    """pid/ipc/uts/userns: `host` (= `root`), `new`, or a path to join; "" means the default."""
    return _namespace(value, ("host", "root", "new"))


def check_net_namespace(value: str, text: str | None) -> str:
    """net: as check_namespace, plus `none` (a new, empty network namespace)."""
    return _namespace(value, ("host", "root", "new", "none"))


def check_propagation(value: str, text: str | None) -> str:
    if value and value not in PROPAGATIONS:
        raise FieldError(f"{quoted(value)} is not one of {', '.join(PROPAGATIONS)}")
    return value


def check_cwd(value: str, text: str | None) -> str:
    if value:
        _absolute(value, "working directory")
    return value


def check_env(value: str, text: str | None) -> str:
    if not _ENV_RE.fullmatch(value):
        raise FieldError(f"{quoted(value)} is not NAME=value")
    return value


def check_container_name(value: str, text: str | None) -> str:
    """Names become directory names and containerd ids: letters, digits, `_`, `.`, `-`."""
    if not _CONTAINER_NAME_RE.fullmatch(value):
        raise FieldError(
            f"{quoted(value)} is not a valid container name",
            hint="use letters, digits, '_', '.' and '-', starting with a letter or digit",
        )
    return value


def check_volume_name(value: str, text: str | None) -> str:
    if not _VOLUME_NAME_RE.fullmatch(value):
        raise FieldError(
            f"{quoted(value)} is not a valid volume name", hint="use lower-case letters, digits, '_' and '-'"
        )
    return value


def check_platform(value: str, text: str | None) -> str:
    if not _PLATFORM_RE.fullmatch(value):
        raise FieldError(f"{quoted(value)} is not a platform like linux/amd64 or linux/arm64/v8")
    return value


def check_device(value: dict[str, Any], text: str | None) -> dict[str, Any]:
    """`{path: all, type: b|c|a}` allows a whole class; otherwise a device node with type and mode."""
    path, kind = value.get("path"), value.get("type")
    if path is None:
        raise FieldError('missing required key "path" (a device node, or all)')
    if path == "all":
        if kind not in ("a", "b", "c"):
            raise FieldError(
                'a device with path "all" needs type a, b or c', subpath=("type",) if kind else ()
            )
        return value
    _absolute(path, "device path")
    if kind not in ("c", "b", "u", "p"):
        raise FieldError("a device needs type c, b, u or p", subpath=("type",) if kind else ())
    if kind != "p" and ("major" not in value or "minor" not in value):
        raise FieldError(f'a device of type {kind} needs "major" and "minor"')
    if "mode" not in value:
        raise FieldError('a device needs a "mode", e.g. mode: "0666"')
    return value


def check_mount(value: dict[str, Any], text: str | None) -> dict[str, Any]:
    """A full mount: type and destination may be left out only where LinuxKit can infer them."""
    kind, source, dest = value.get("type", ""), value.get("source", ""), value.get("destination", "")
    if not kind and source not in INFERRED_MOUNT_TYPES and dest != "/dev":
        raise FieldError(
            'missing "type"', hint=f"only the sources {', '.join(INFERRED_MOUNT_TYPES)} and /dev imply a type"
        )
    if kind == "bind" and not source:
        raise FieldError('a bind mount needs a "source" (a path, or a volume name)')
    kind = kind or (source if source in INFERRED_MOUNT_TYPES else "tmpfs")
    if not dest and kind not in DEFAULT_MOUNTPOINTS:
        raise FieldError(f'missing "destination" (a {kind} mount has no default mount point)')
    return value


def check_file(value: dict[str, Any], text: str | None) -> dict[str, Any]:
    """Exactly one of contents, source, metadata, directory: true, symlink."""
    if not value["path"].strip("/"):
        raise FieldError("a file needs a path below /", subpath=("path",))
    given = [key for key in FILE_CONTENT_KEYS if key in value and value[key] is not False]
    if not given:
        raise FieldError("no content: give one of contents, source, metadata, directory: true or symlink")
    if len(given) > 1:
        raise FieldError(f"cannot be combined with {quoted(given[0])}", subpath=(given[1],))
    for key in ("source", "symlink"):
        if value.get(key) == "":
            raise FieldError("must not be empty", subpath=(key,))
    return value


Check = Callable[[Any, "str | None"], Any]

CHECKS: dict[str, Check] = {
    "octal-mode": check_octal_mode,
    "id": check_id,
    "capabilities": check_capabilities,
    "image-ref": check_image_ref,
    "optional-image-ref": check_optional_image_ref,
    "bind": check_bind,
    "tmpfs": check_tmpfs,
    "rlimit": check_rlimit,
    "namespace": check_namespace,
    "net-namespace": check_net_namespace,
    "propagation": check_propagation,
    "cwd": check_cwd,
    "env": check_env,
    "container-name": check_container_name,
    "volume-name": check_volume_name,
    "platform": check_platform,
    "device": check_device,
    "mount": check_mount,
    "file": check_file,
}
