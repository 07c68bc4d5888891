"""`linuxkit-py pkg build`: a package definition -> a one-layer OCI image in the cache, tagged by content.

The tag hashes the inputs (build.yml, the files of DIR it uses, the name=version of every Debian
package it may take files from); the same inputs give the same image bytes, so an image already
in the cache under its tag is not built again. The image is named by the normalised reference
(docker.io/linuxkit-py/runc:<tag>) and is never pulled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linuxkit_py.arch import host_arch, normalize_arch
from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.archive.tree import Tree, parent_dirs
from linuxkit_py.cache.attestation import write_attestation
from linuxkit_py.cache.image import Image, load_cached_image
from linuxkit_py.cache.layout import Cache
from linuxkit_py.cache.write import write_image, write_index
from linuxkit_py.errors import UserError
from linuxkit_py.kernel import modules as kmod
from linuxkit_py.kernel.elf import check_elf_files
from linuxkit_py.pkg import apt, linuxkit_pkg
from linuxkit_py.pkg.apt import Deb, Resolution, UnknownPackages
from linuxkit_py.pkg.aptstate import AptState, apt_state_for
from linuxkit_py.pkg.archdirs import package_directory_for
from linuxkit_py.pkg.debs import deb_entries, download_debs, resolution_dir
from linuxkit_py.pkg.definition import LABEL_CONFIG, Definition, load_definition
from linuxkit_py.pkg.sbom import package_sbom
from linuxkit_py.pkg.selection import select_entries
from linuxkit_py.registry.reference import normalize_reference
from linuxkit_py.spec.fields import quoted
from linuxkit_py.spec.model import child

log = logging.getLogger(__name__)

# Part of every tag: bump it when the same inputs would now give a different image.
BUILDER_VERSION = "linuxkit-py pkg 5"
TAG_LENGTH = 40
PACKAGE_EPOCH = 1492533000  # every entry's mtime: LinuxKit's fixed time, as `build` uses by default
KERNEL_VERSION_LABEL = "org.linuxkit-py.kernel.version"
DEBS_LABEL = "org.linuxkit-py.debs"  # the Debian packages the image has files of: name=version ...
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class PackagePlan:
    """A definition with its Debian packages resolved (one Resolution per arch) and its tag."""

    definition: Definition
    resolutions: tuple[Resolution, ...]
    tag: str

    @property
    def name(self) -> str:
        """`linuxkit-py/runc:<tag>`: what `pkg show-tag` prints."""
        return f"{self.definition.image}:{self.tag}"

    @property
    def ref(self) -> str:
        """The normalised reference, the cache's name for the image."""
        return normalize_reference(self.name)


@dataclass(frozen=True)
class BuiltPackage:
    plan: PackagePlan
    digest: str  # of the image index (each arch's manifest and its SBOM attestation)
    built: bool  # False when the cache already had it


def _hash_file(sha: Any, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            sha.update(chunk)


def package_tag(definition: Definition, resolutions: Iterable[Resolution]) -> str:
    """The content hash naming the image (first 40 hex digits of a sha256 over every input)."""
    sha = hashlib.sha256()

    def add(*parts: str | bytes) -> None:
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            sha.update(len(data).to_bytes(8, "big") + data)

    add(BUILDER_VERSION, "build.yml", definition.text)
    for spec in sorted((f for f in definition.files if f.source), key=lambda f: (f.source_name, f.path)):
        assert spec.source is not None
        add("file", spec.source_name, f"{spec.mode:04o}", str(spec.source.stat().st_size))
        try:
            _hash_file(sha, spec.source)
        except OSError as exc:
            raise UserError(f"cannot read {spec.source}: {exc.strerror}") from exc
    for resolution in resolutions:
        add("arch", resolution.arch, *sorted(deb.pin for deb in resolution.all_debs))
    return sha.hexdigest()[:TAG_LENGTH]


def _apt_state(arch: str, cache: Cache | None) -> AptState:
    return apt_state_for(arch, cache.derived_dir if cache else None)


def _resolve(definition: Definition, arch: str, cache: Cache | None, refresh: bool) -> Resolution:
    kernel = definition.kernel.package if definition.kernel else None
    try:
        return apt.resolve(definition.packages, _apt_state(arch, cache), libraries=definition.libraries, kernel=kernel,
                           memo_dir=resolution_dir(cache) if cache else None, refresh=refresh)
    except UnknownPackages as exc:
        name = exc.names[0]
        where = child("packages", definition.packages.index(name)) if name in definition.packages \
            else "kernel/package"
        raise definition.error(where, f"apt knows no Debian package {quoted(name)} for {arch}", exc.hint) from None


def chosen_arches(definition: Definition, arches: Sequence[str] | None) -> tuple[str, ...]:
    """The architectures to build: `arches` (any spelling), or the host's; each must be in build.yml's."""
    wanted = tuple(dict.fromkeys(normalize_arch(a) for a in arches)) if arches else (host_arch(),)
    for arch in wanted:
        if arch not in definition.arches:
            raise UserError(f"package {definition.file.parent} has no image for {arch}",
                            hint=f"its build.yml lists arches: {', '.join(definition.arches)}")
    return wanted


def plan_package(directory: str | Path, cache: Cache | None = None, refresh: bool = False,
                 arches: Sequence[str] | None = None) -> PackagePlan:
    """Load DIR/build.yml and resolve its packages for `arches` (default: the host's; no download).

    `cache` keeps apt's answers (and the private apt state of a foreign architecture). The tag hashes
    the chosen architectures' packages, so each architecture (and each set of them) has its own tag.
    """
    if (linuxkit_package := linuxkit_pkg.find_linuxkit_package(directory)) is not None:
        raise linuxkit_pkg.cannot_build(linuxkit_package)  # pulled by @pkg:, never built here
    directory = package_directory_for(directory, [normalize_arch(a) for a in arches or [host_arch()]])
    definition = load_definition(directory)
    resolutions = tuple(_resolve(definition, arch, cache, refresh) for arch in chosen_arches(definition, arches))
    return PackagePlan(definition, resolutions, package_tag(definition, resolutions))


# -- assembling the image ------------------------------------------------------------------------

@dataclass
class _Assembly:
    cache: Cache
    definition: Definition
    resolution: Resolution
    debs: dict[Deb, Path]
    tree: Tree = field(default_factory=Tree)
    used_debs: list[Deb] = field(default_factory=list)
    kernel_version: str | None = None


def _numeric_owner(entry: Entry) -> Entry:
    """Owners by number only, as in the entries we make (a .deb's owner names are its build machine's)."""
    return entry.evolve(uname="", gname="") if entry.uname or entry.gname else entry


def _add_packages(a: _Assembly) -> None:
    d = a.definition
    for deb in a.resolution.packages:
        for entry in select_entries(deb_entries(a.cache, a.debs[deb]), d.include, d.exclude, d.keep):
            a.tree.add(_numeric_owner(entry))
        a.used_debs.append(deb)


def _add_kernel(a: _Assembly) -> None:
    deb = a.resolution.kernel
    if a.definition.kernel is None or deb is None:
        return
    linux_image = deb_entries(a.cache, a.debs[deb])
    a.kernel_version = kmod.kernel_version(linux_image)
    entries = kmod.kernel_package_entries(linux_image, a.kernel_version, list(a.definition.kernel.modules),
                                          deb.file_name, workdir=a.cache.derived_dir / "kernels",
                                          dtb_globs=list(a.definition.kernel.dtbs))
    for entry in entries:
        a.tree.add(entry)
    a.used_debs.append(deb)


def _add_own_files(a: _Assembly) -> None:
    d = a.definition
    for path, mode in d.directories:
        a.tree.add(Entry(path, Kind.DIR, mode))
    for spec in d.files:
        if spec.source is not None:
            size = spec.source.stat().st_size
            a.tree.add(Entry(spec.path, Kind.FILE, spec.mode, size=size, data=FileRegion(str(spec.source), 0, size)))
        else:
            contents = spec.contents or b""
            a.tree.add(Entry(spec.path, Kind.FILE, spec.mode, size=len(contents), data=contents))
    for path, target in d.symlinks:
        a.tree.add(Entry(path, Kind.SYMLINK, 0o777, linkname=target))


def _elf_hint(definition: Definition) -> str:
    if definition.libraries:
        return "no library dependency of the packages has it: add the Debian package that does to packages"
    return "add the Debian package that has it to packages, or use libraries: auto"


def _add_libraries(a: _Assembly) -> None:
    """Check every ELF file; with libraries: auto, first take what they need from the dependencies."""
    pool: dict[str, Entry] = {}
    origin: dict[str, Deb] = {}
    for deb in a.resolution.libraries:
        for entry in deb_entries(a.cache, a.debs[deb]):
            if entry.path not in pool:
                pool[entry.path] = entry
                origin[entry.path] = deb
    image = {e.path: e for e in a.tree.entries()}
    try:
        taken = check_elf_files(image, a.resolution.arch, pool, _elf_hint(a.definition))
    except UserError as exc:
        raise UserError(f"{a.definition.file}: {exc.message}", exc.hint) from None
    for path in taken:
        for parent in parent_dirs(path):
            if parent not in a.tree and parent in pool and pool[parent].kind is Kind.DIR:
                a.tree.add(_numeric_owner(pool[parent]))
        a.tree.add(_numeric_owner(pool[path]))
    a.used_debs.extend(deb for deb in a.resolution.libraries if any(origin[p] == deb for p in taken))


def _image_config(a: _Assembly) -> dict[str, Any]:
    d = a.definition
    labels: dict[str, str] = {}
    if d.config is not None:
        labels[LABEL_CONFIG] = json.dumps(d.config, separators=(",", ":"), ensure_ascii=False)
    if a.kernel_version:
        labels[KERNEL_VERSION_LABEL] = a.kernel_version
    if a.used_debs:
        labels[DEBS_LABEL] = " ".join(sorted(deb.pin for deb in a.used_debs))
    config: dict[str, Any] = {}
    for key, value in (("Entrypoint", d.entrypoint), ("Cmd", d.cmd), ("Env", d.env)):
        if value is not None:
            config[key] = list(value)
    if d.workdir is not None:
        config["WorkingDir"] = d.workdir
    config["Labels"] = labels
    return config


def _build_image(cache: Cache, plan: PackagePlan, resolution: Resolution,
                 debs: dict[Deb, Path]) -> tuple[Image, dict[str, Any]]:
    """The image of one architecture, and the descriptor of its SBOM attestation."""
    a = _Assembly(cache, plan.definition, resolution, debs)
    _add_packages(a)
    _add_kernel(a)
    _add_own_files(a)
    _add_libraries(a)
    image = write_image(cache, [a.tree.entries()], arch=resolution.arch, config=_image_config(a),
                        epoch=PACKAGE_EPOCH)
    sbom = package_sbom(cache, plan.ref, PACKAGE_EPOCH, ((deb, debs[deb]) for deb in a.used_debs))
    name, _, tag = plan.ref.rpartition(":")
    subject = f"pkg:docker/{name}@{tag}?platform=linux%2F{resolution.arch}"
    return image, write_attestation(cache, subject, image.digest, sbom)


def _download(cache: Cache, plan: PackagePlan) -> dict[str, dict[Deb, Path]]:
    return {r.arch: download_debs(cache, r.all_debs, _apt_state(r.arch, cache)) for r in plan.resolutions}


def _cached_digest(cache: Cache, plan: PackagePlan) -> str | None:
    descriptor = cache.get_ref(plan.ref)
    if descriptor is None:
        return None
    for arch in (r.arch for r in plan.resolutions):
        try:
            if load_cached_image(cache, plan.ref, arch) is None:
                return None
        except UserError:
            return None
    return str(descriptor["digest"])


def build_package(cache: Cache, directory: str | Path, *, force: bool = False,
                  arches: Sequence[str] | None = None) -> BuiltPackage:
    """Build DIR's image for `arches` (default: the host's) into the cache (unless it is already there
    under its tag, or `force`); several architectures make one OCI index."""
    plan = plan_package(directory, cache, arches=arches)
    if not force and (digest := _cached_digest(cache, plan)) is not None:
        log.info("%s is already in the cache", plan.ref)
        return BuiltPackage(plan, digest, built=False)
    try:
        debs = _download(cache, plan)
    except UserError as failed:
        # The versions apt's lists name may have left the archive: refresh the lists and try again.
        try:
            plan = plan_package(directory, cache, refresh=True, arches=arches)
        except UserError:
            raise failed from None
        debs = _download(cache, plan)
    built = [_build_image(cache, plan, r, debs[r.arch]) for r in plan.resolutions]
    digest = write_index(cache, plan.ref, [image for image, _ in built], [sbom for _, sbom in built])
    return BuiltPackage(plan, digest, built=True)


# -- `@pkg:` references in specs, `pkg show-tag` ----------------------------------------------------

def package_name(directory: str | Path, cache: Cache | None = None, arches: Sequence[str] | None = None,
                 options: linuxkit_pkg.TagOptions | None = None) -> str:
    """What `pkg show-tag DIR` prints: `linuxkit-py/runc:<tag>` for ours, LinuxKit's `ORG/IMAGE:TAG` (computed
    with `options`, pkg show-tag's flags) for a LinuxKit package."""
    package = linuxkit_pkg.find_linuxkit_package(directory)
    if package is not None:
        return linuxkit_pkg.package_tag(package, options)
    return plan_package(directory, cache, arches=arches).name


class PackageRefs:
    """The `@pkg:DIR` references of a spec: each DIR's image reference, and which DIR each came from."""

    def __init__(self, cache: Cache | None = None, arch: str | None = None) -> None:
        self.cache = cache
        self.arch = normalize_arch(arch)
        self.directories: dict[str, Path] = {}  # normalised ref -> package directory

    def reference(self, directory: Path) -> str:
        """The normalised reference of DIR's image for the build's arch (build.yml read, packages resolved,
        the directory recorded to be built); a LinuxKit package's ORG/IMAGE:<git tree hash>, pulled like any image."""
        package = linuxkit_pkg.find_linuxkit_package(directory)
        if package is not None:
            return normalize_reference(linuxkit_pkg.expand_reference(linuxkit_pkg.package_tag(package)))
        ref = plan_package(directory, self.cache, arches=[self.arch]).ref
        self.directories.setdefault(ref, directory)
        return ref

    def images(self, cache: Cache, arch: str) -> dict[str, Image]:
        """The image of every recorded package for `arch`, built first when the cache lacks it."""
        images = {}
        for ref, directory in self.directories.items():
            image = load_cached_image(cache, ref, arch)
            if image is None:
                log.warning("building package %s", directory)
                built = build_package(cache, directory, arches=[arch])
                image = load_cached_image(cache, built.plan.ref, arch)
                if image is None:
                    raise UserError(f"package {directory}: {built.plan.ref} is not in the cache after its build")
                log.warning("built %s %s", built.plan.ref, built.digest)
                image = Image(ref, image.digest, image.manifest, image.config)
            images[ref] = image
        return images
