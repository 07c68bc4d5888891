"""Which Debian packages (name=version) a package definition uses, as apt would pick them.

Versions are apt's candidates (`apt-cache show --no-all-versions`), for one architecture. With
`libraries: auto` the packages' dependencies of section `libs` (the Debian packages that ship
shared libraries) are added, recursively. A metapackage such as linux-image-cloud-amd64 is
resolved to the versioned linux-image-* package it depends on.

apt-cache reads all of apt's package lists on every call (most of a second), so an answer is
kept in the cache keyed by the state of those lists: it is asked again only after they change.
`apt-get update` runs only when a package has no known version at all (or, for a private state of
another architecture, on its first use). Which apt answers is an AptState (aptstate.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from linuxkit_py.errors import UserError
from linuxkit_py.fsutil import atomic_output
from linuxkit_py.pkg.aptstate import AptState, state_fingerprint
from linuxkit_py.tools import run

log = logging.getLogger(__name__)

RESOLUTION_FORMAT = 3  # bump when what a resolution holds or means changes
MAX_LIBRARY_PACKAGES = 256  # a dependency closure larger than this is a mistake, not a package
LIBRARY_SECTIONS = ("libs", "oldlibs")
KERNEL_IMAGE_PREFIX = "linux-image-"
APT_TIMEOUT = 900.0
_NAME_RE = re.compile(r"\s*([a-z0-9][a-z0-9+.-]*)")


@dataclass(frozen=True)
class Deb:
    """One Debian binary package version, as apt's index describes it."""

    name: str
    version: str
    arch: str  # the package's Architecture: amd64, arm64, ... or all
    section: str
    depends: tuple[tuple[str, ...], ...]  # Pre-Depends and Depends: groups of alternative names
    sha256: str
    size: int
    source: str = ""  # the Source field: `NAME` or `NAME (VERSION)`; empty when it is the package's own name

    @property
    def pin(self) -> str:
        """`name=version`, what the tag hashes and apt-get download takes."""
        return f"{self.name}={self.version}"

    @property
    def file_name(self) -> str:
        """The name apt-get download gives the file (an epoch's `:` escaped as `%3a`)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"

    @property
    def is_library(self) -> bool:
        return self.section.rsplit("/", 1)[-1] in LIBRARY_SECTIONS


@dataclass(frozen=True)
class Resolution:
    """The packages of a definition for one architecture."""

    arch: str
    packages: tuple[Deb, ...]  # `packages`, in the order given
    libraries: tuple[Deb, ...]  # their library dependencies (libraries: auto), by name
    kernel: Deb | None = None  # the versioned linux-image package (kernel.package)

    @property
    def all_debs(self) -> list[Deb]:
        return [*self.packages, *self.libraries, *([self.kernel] if self.kernel else [])]


class UnknownPackages(UserError):
    """Names apt has no version of, even after `apt-get update`."""

    def __init__(self, names: list[str], arch: str) -> None:
        self.names = names
        self.arch = arch
        super().__init__(f"no Debian package {', '.join(names)} for {arch} in apt's package lists")


# -- apt-cache ---------------------------------------------------------------------------------

def parse_depends(text: str) -> tuple[tuple[str, ...], ...]:
    """`a (>= 1), b:any | c` -> (("a",), ("b", "c")): names only (apt already chose the versions)."""
    groups = []
    for group in text.split(","):
        names = tuple(m.group(1) for alt in group.split("|") if (m := _NAME_RE.match(alt)))
        if names:
            groups.append(names)
    return tuple(groups)


def parse_records(text: str) -> list[Deb]:
    """The records of `apt-cache show` output."""
    debs = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" not in fields or "Version" not in fields:
            continue
        depends = ", ".join(v for v in (fields.get("Pre-Depends"), fields.get("Depends")) if v)
        debs.append(Deb(
            name=fields["Package"], version=fields["Version"], arch=fields.get("Architecture", ""),
            section=fields.get("Section", ""), depends=parse_depends(depends),
            sha256=fields.get("SHA256", ""), size=int(fields.get("Size", "0") or 0),
            source=fields.get("Source", "")))
    return debs


def show_candidates(names: Sequence[str], state: AptState) -> dict[str, Deb]:
    """apt's candidate version of each name that has one (virtual and unknown names are left out)."""
    if not names:
        return {}
    proc = run(state.command("apt-cache", "show", "--no-all-versions", *(f"{n}:{state.arch}" for n in names)),
               capture=True, check=False, timeout=APT_TIMEOUT)
    found = {deb.name: deb for deb in parse_records(proc.stdout.decode(errors="replace"))}
    if proc.returncode != 0 and not found and b"No packages found" not in proc.stderr:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"apt-cache show failed: {detail[-1] if detail else proc.returncode}")
    return found


def dependency_names(names: Sequence[str], state: AptState) -> list[str]:
    """Every package name the dependencies of `names` reach (apt-cache depends --recurse), sorted."""
    if not names:
        return []
    skipped = ["--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
               "--no-enhances"]
    proc = run(state.command("apt-cache", "depends", "--recurse", *skipped, *(f"{n}:{state.arch}" for n in names)),
               capture=True, check=False, timeout=APT_TIMEOUT)
    found = set()
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line and not line[0].isspace():
            found.add(line.strip().strip("<>").split(":", 1)[0])
    return sorted(found)


def apt_get_update(reason: str, state: AptState) -> None:
    where = f" of apt's {state.arch} state in {state.root}" if state.root else ""
    # the host's lists change for everyone (a warning); a private state is ours alone
    (log.info if state.private else log.warning)("apt-get update%s (%s)", where, reason)
    try:
        run(state.command("apt-get", "update", "-q"), capture=True, timeout=APT_TIMEOUT)
    except UserError as exc:
        hint = "check the network and the Debian archive" if state.private else \
            "apt-get update needs root: run it, then try again"
        raise UserError(exc.message, hint=hint) from exc


# -- resolution ----------------------------------------------------------------------------------

def _library_closure(packages: list[Deb], records: dict[str, Deb]) -> list[Deb]:
    """The `libs` packages the dependencies of `packages` reach through other `libs` packages."""
    wanted = {deb.name for deb in packages}
    libraries: dict[str, Deb] = {}
    queue = list(packages)
    while queue:
        deb = queue.pop(0)
        for group in deb.depends:
            chosen = next((records[name] for name in group if name in records), None)
            if chosen is None:
                log.debug("%s: no package for the dependency %s", deb.name, " | ".join(group))
                continue
            if chosen.name in wanted or chosen.name in libraries or not chosen.is_library:
                continue
            libraries[chosen.name] = chosen
            if len(libraries) > MAX_LIBRARY_PACKAGES:
                raise UserError(f"the library dependencies of {', '.join(d.name for d in packages)} reach more "
                                f"than {MAX_LIBRARY_PACKAGES} packages", hint="use libraries: none and list them")
            queue.append(chosen)
    return sorted(libraries.values(), key=lambda d: d.name)


def _kernel_image(meta: Deb, records: dict[str, Deb]) -> Deb:
    """The versioned linux-image-* package a metapackage depends on (or the package itself)."""
    for group in meta.depends:
        for name in group:
            if name.startswith(KERNEL_IMAGE_PREFIX) and name in records:
                return records[name]
    return meta


def _resolve_once(packages: Sequence[str], state: AptState, libraries: bool, kernel: str | None) -> Resolution:
    roots = list(dict.fromkeys([*packages, *([kernel] if kernel else [])]))
    names = roots
    if (libraries and packages) or kernel:
        names = sorted({*roots, *dependency_names(roots, state)})
    records = show_candidates(names, state)
    missing = [name for name in roots if name not in records]
    if missing:
        raise UnknownPackages(missing, state.arch)
    chosen = [records[name] for name in packages]
    return Resolution(
        arch=state.arch,
        packages=tuple(chosen),
        libraries=tuple(_library_closure(chosen, records)) if libraries else (),
        kernel=_kernel_image(records[kernel], records) if kernel else None,
    )


def _memo_path(memo_dir: Path, packages: Sequence[str], state: AptState, libraries: bool,
               kernel: str | None) -> Path:
    key = json.dumps([RESOLUTION_FORMAT, state_fingerprint(state), list(packages), state.arch, libraries, kernel])
    return memo_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def _deb_from_json(doc: dict[str, Any]) -> Deb:
    return Deb(**{**doc, "depends": tuple(tuple(group) for group in doc["depends"])})


def _load_memo(path: Path) -> Resolution | None:
    try:
        doc = json.loads(path.read_bytes())
        return Resolution(arch=doc["arch"], packages=tuple(_deb_from_json(d) for d in doc["packages"]),
                          libraries=tuple(_deb_from_json(d) for d in doc["libraries"]),
                          kernel=_deb_from_json(doc["kernel"]) if doc["kernel"] else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_memo(path: Path, resolution: Resolution) -> None:
    doc = {"arch": resolution.arch, "packages": [asdict(d) for d in resolution.packages],
           "libraries": [asdict(d) for d in resolution.libraries],
           "kernel": asdict(resolution.kernel) if resolution.kernel else None}
    try:
        with atomic_output(path) as f:
            f.write(json.dumps(doc, sort_keys=True).encode())
    except UserError as exc:
        log.debug("not keeping the resolution: %s", exc)


def resolve(packages: Sequence[str], state: AptState, *, libraries: bool, kernel: str | None = None,
            memo_dir: Path | None = None, refresh: bool = False) -> Resolution:
    """The Debian packages of a definition for `state.arch` (Debian's name: amd64, arm64).

    Raises UnknownPackages when apt knows no version of a name even after `apt-get update`.
    `refresh` runs `apt-get update` first (after a download failed: the lists are stale).
    """
    if refresh:
        apt_get_update("a package could not be downloaded", state)
    memo = _memo_path(memo_dir, packages, state, libraries, kernel) if memo_dir else None
    if memo is not None and (known := _load_memo(memo)) is not None:
        return known
    if not state.has_lists():
        apt_get_update("its first use", state)
        memo = _memo_path(memo_dir, packages, state, libraries, kernel) if memo_dir else None
    try:
        resolution = _resolve_once(packages, state, libraries, kernel)
    except UnknownPackages as exc:
        if refresh:
            raise
        try:
            apt_get_update(f"apt knows no version of {', '.join(exc.names)}", state)
        except UserError as failed:
            log.warning("%s", failed)
            raise exc from None  # the unknown name is the news; the failed update only a detail
        resolution = _resolve_once(packages, state, libraries, kernel)
        if memo_dir:
            memo = _memo_path(memo_dir, packages, state, libraries, kernel)  # the lists changed
    if memo is not None:
        _save_memo(memo, resolution)
    return resolution
