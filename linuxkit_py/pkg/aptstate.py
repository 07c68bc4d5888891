"""Which apt answers for an architecture: the host's own, or a private apt state under the cache.

For the host's architecture apt runs as configured on the host. For another one (arm64 on an amd64 laptop)
apt runs on a state directory of ours, `<cache>/linuxkit-py/apt/<arch>/`, with its own sources list,
package lists and download cache: no `dpkg --add-architecture`, no root, nothing of the host's apt touched,
and the host's lists (which may list `main` only) do not limit what we can fetch. The sources are the host's
Debian archives (so a configured mirror or proxy still applies) with the components `main` and
`non-free-firmware` (the Raspberry Pi firmware is there); a host with no Debian source (Ubuntu, say) gets
Debian's own archive for `DEFAULT_SUITE`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from linuxkit_py.arch import host_arch
from linuxkit_py.errors import UserError
from linuxkit_py.fsutil import atomic_output

log = logging.getLogger(__name__)

HOST_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# What the host's apt answers depend on: its configuration, sources, pins, lists and the installed packages.
HOST_STATE_PATHS = ("/etc/apt", "/var/lib/apt/lists", "/var/lib/dpkg/status")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_SUITE = "bookworm"
DEFAULT_SOURCES = (
    ("http://deb.debian.org/debian", DEFAULT_SUITE),
    ("http://deb.debian.org/debian", f"{DEFAULT_SUITE}-updates"),
    ("http://deb.debian.org/debian-security", f"{DEFAULT_SUITE}-security"),
)
COMPONENTS = ("main", "non-free-firmware")
_DEBIAN_URI = re.compile(r"/debian(-security)?/?$")
_OPTIONS = re.compile(r"\[([^\]]*)\]")


@dataclass(frozen=True)
class AptState:
    """How to call apt for one architecture: extra `-o` options (none for the host's own apt)."""

    arch: str
    options: tuple[str, ...] = ()
    root: Path | None = None  # the private state directory, None for the host's apt

    @property
    def private(self) -> bool:
        return self.root is not None

    def command(self, tool: str, *args: str) -> list[str]:
        """`apt-get`/`apt-cache` with this state's options, then `args`."""
        return [tool, *self.options, *args]

    def state_paths(self) -> tuple[str, ...]:
        """The files whose change may change apt's answers."""
        if self.root is None:
            return HOST_STATE_PATHS
        return (str(self.root / "sources.list"), str(self.root / "state" / "lists"))

    def has_lists(self) -> bool:
        """False for a private state never updated (its first use must run `apt-get update`)."""
        if self.root is None:
            return True
        lists = self.root / "state" / "lists"
        return lists.is_dir() and any("_Packages" in p.name for p in lists.iterdir())  # maybe .lz4/.gz


def _one_line_sources(text: str) -> list[tuple[str, str, str]]:
    """(uri, suite, signed-by) of each `deb` line of a sources.list."""
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        options = ""
        if m := _OPTIONS.search(line):
            options, line = m.group(1), line[: m.start()] + line[m.end():]
        words = line.split()
        if len(words) >= 3:
            signed = next((o.split("=", 1)[1] for o in options.split() if o.startswith("signed-by=")), "")
            found.append((words[1], words[2], signed))
    return found


def _deb822_sources(text: str) -> list[tuple[str, str, str]]:
    """(uri, suite, signed-by) of each `Types: deb` stanza of a .sources file (one per URI and suite)."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by", "")
        found += [(uri, suite, signed) for uri in fields.get("uris", "").split()
                  for suite in fields.get("suites", "").split()]
    return found


def host_debian_sources() -> list[tuple[str, str, str]]:
    """The host's Debian archives (uri, suite, keyring), in the host's order; Debian's defaults if none."""
    found: list[tuple[str, str, str]] = []
    top, parts = HOST_SOURCES
    files = [top] + (sorted(parts.iterdir()) if parts.is_dir() else [])
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            found += _deb822_sources(text)
        elif path.suffix == ".list" or path == top:
            found += _one_line_sources(text)
    debian = [(uri, suite, signed or DEBIAN_KEYRING) for uri, suite, signed in found
              if _DEBIAN_URI.search(uri.rstrip("/") + "/") or signed == DEBIAN_KEYRING]
    return list(dict.fromkeys(debian)) or [(uri, suite, DEBIAN_KEYRING) for uri, suite in DEFAULT_SOURCES]


def private_sources_list() -> bytes:
    lines = [f"deb [signed-by={keyring}] {uri} {suite} {' '.join(COMPONENTS)}"
             for uri, suite, keyring in host_debian_sources()]
    return ("\n".join(lines) + "\n").encode()


def _private_state(arch: str, root: Path) -> AptState:
    state, cache = root / "state", root / "cache"
    try:
        for directory in (state / "lists" / "partial", cache / "archives" / "partial"):
            directory.mkdir(parents=True, exist_ok=True)
        if not (state / "status").exists():
            (state / "status").touch()
        sources = private_sources_list()
        listed = root / "sources.list"
        if not listed.is_file() or listed.read_bytes() != sources:
            with atomic_output(listed) as f:
                f.write(sources)
    except OSError as exc:
        raise UserError(f"cannot set up apt's state for {arch} in {root}: {exc.strerror}") from exc
    options = (
        f"Dir::State={state}", f"Dir::State::status={state / 'status'}", f"Dir::Cache={cache}",
        f"Dir::Etc::sourcelist={root / 'sources.list'}", "Dir::Etc::sourceparts=-",
        "Dir::Etc::preferencesparts=-", f"APT::Architecture={arch}", f"APT::Architectures::={arch}",
        "Debug::NoLocking=1",
        # as root apt would download as _apt, who may not write into the cache: stay root (as apt-get download)
        *(["APT::Sandbox::User=root"] if os.geteuid() == 0 else []),
    )
    return AptState(arch, tuple(x for o in options for x in ("-o", o)), root)


def apt_state_for(arch: str, cache_dir: Path | None) -> AptState:
    """The host's apt for the host's architecture; a private state under `cache_dir` for another one."""
    if arch == host_arch() and not os.environ.get("LINUXKIT_PY_PRIVATE_APT"):
        return AptState(arch)
    if cache_dir is None:
        raise UserError(f"packages for {arch} need a cache directory (apt's private state lives there)")
    return _private_state(arch, cache_dir / "apt" / arch)


def state_fingerprint(state: AptState) -> str:
    """A fingerprint of everything apt's answers depend on (file names, sizes and mtimes)."""
    items = [os.environ.get("APT_CONFIG", ""), *state.options]
    for top in state.state_paths():
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "partial")
            for name in sorted([*files, *dirs]):
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                items.append(f"{path}\0{st.st_size}\0{st.st_mtime_ns}")
        if os.path.isfile(top):
            st = os.stat(top)
            items.append(f"{top}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(items).encode()).hexdigest()
