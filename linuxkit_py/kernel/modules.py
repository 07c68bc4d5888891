"""Kernel packages: `/kernel` and `/kernel.tar` from a Debian linux-image package.

`/kernel.tar` holds `lib/modules/<version>/` with the modules chosen by globs, closed over
their `depends=`, and the index files modprobe reads. Debian's package has no modules.dep
(depmod runs at install time), so we generate it from each module's `.modinfo` section
(the NUL-separated `key=value` strings modpost writes: name, depends, alias, softdep,
vermagic), in the format of kmod's and busybox's depmod:

* modules.dep: `kernel/a.ko: kernel/b.ko kernel/c.ko`, the full transitive closure, ordered
  so that loading from the last path to the first satisfies every dependency;
* modules.alias: `alias PATTERN NAME` for every `alias=` (busybox modprobe fnmatches them);
* modules.softdep: `softdep NAME VALUE` for every `softdep=` (read by kmod only);
* modules.order (filtered), modules.builtin and modules.builtin.modinfo copied.

Compressed modules (.ko.xz, .ko.zst, .ko.gz) are stored decompressed as `.ko`, which every
modprobe and kernel can load.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from linuxkit_py.archive.entry import Data, Entry, FileRegion, Kind, read_data
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.errors import UserError
from linuxkit_py.fsutil import atomic_output

MODULES_DIR = "lib/modules"  # where kernel.tar puts them, whatever the package used
PACKAGE_MODULES_DIRS = ("lib/modules", "usr/lib/modules")  # usr/ from Debian 13 (merged /usr)
BZIMAGE_PREFIX = "boot/vmlinuz-"  # x86: a bzImage; arm64: already the plain Image booti and the EFI stub take
DTB_PACKAGE_DIR = "usr/lib/linux-image-"  # + <version>/: Debian's device trees (broadcom/bcm2837-rpi-3-b.dtb ...)
DTB_DIR = "boot/dtb"  # where kernel.tar puts them, as LinuxKit's arm64 kernels do
KERNEL_PATH = "kernel"
KERNEL_TAR_PATH = "kernel.tar"
KERNEL_TAR_EPOCH = 0  # every kernel.tar member's mtime: the bytes depend on the inputs only
FILE_MODE = 0o644
DIR_MODE = 0o755
MODINFO_SECTION = ".modinfo"
COPIED_INDEXES = ("modules.builtin", "modules.builtin.modinfo")
ORDER_FILE = "modules.order"


def _unzstd(data: bytes) -> bytes:
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
        return reader.read()


# Module file suffix -> how to decompress it (None: stored as is).
MODULE_SUFFIXES: dict[str, Callable[[bytes], bytes] | None] = {
    ".ko": None,
    ".ko.xz": lzma.decompress,
    ".ko.zst": _unzstd,
    ".ko.gz": gzip.decompress,
}


@dataclass(frozen=True)
class ModuleInfo:
    """What `.modinfo` says about one module; `path` is relative to lib/modules/<version>/."""

    path: str
    name: str  # normalised: `-` -> `_`
    depends: tuple[str, ...] = ()  # normalised names
    aliases: tuple[str, ...] = ()
    softdeps: tuple[str, ...] = ()
    vermagic: str = ""

    @property
    def pre_softdeps(self) -> tuple[str, ...]:
        """The modules a `softdep=pre: a b post: c` says to load first (libcrc32c: crc32c, a name or an alias).
        kernel.tar carries them (busybox's modprobe reads no modules.softdep: stage one loads them itself);
        modules.dep stays as depmod writes it, since a softdep may fail to load (crc32c-intel without SSE4.2)."""
        names: list[str] = []
        for softdep in self.softdeps:
            pre = False
            for word in softdep.split():
                if word.endswith(":"):
                    pre = word == "pre:"
                elif pre:
                    names.append(normalize_name(word))
        return tuple(dict.fromkeys(names))


def normalize_name(name: str) -> str:
    """Module names treat `-` and `_` as the same character; `_` is the canonical one."""
    return name.replace("-", "_")


def module_suffix(path: str) -> str | None:
    """The module suffix of `path` (`.ko`, `.ko.xz`, ...), or None if it is not a module."""
    for suffix in MODULE_SUFFIXES:
        if path.endswith(suffix):
            return suffix
    return None


def stored_path(path: str) -> str:
    """The path a module gets in kernel.tar: compressed modules lose their compression suffix."""
    suffix = module_suffix(path)
    return path[: -len(suffix)] + ".ko" if suffix else path


def module_name(path: str) -> str:
    """The name the kernel and modprobe give the module at `path` (its file name, normalised)."""
    base = stored_path(path).rsplit("/", 1)[-1]
    return normalize_name(base.removesuffix(".ko"))


def parse_modinfo(module: bytes, what: str) -> list[tuple[str, str]]:
    """The `key=value` strings of a module's .modinfo section, in order; `what` names it in errors."""
    from elftools.common.exceptions import ELFError  # imported when used: see kernel/elf.py
    from elftools.elf.elffile import ELFFile

    try:
        section = ELFFile(io.BytesIO(module)).get_section_by_name(MODINFO_SECTION)
        data = section.data() if section is not None else None
    except (ELFError, ValueError, EOFError) as exc:  # pyelftools raises all three on garbage
        raise UserError(f"{what}: not a kernel module (unreadable ELF: {exc})") from None
    if data is None:
        raise UserError(f"{what}: not a kernel module (no {MODINFO_SECTION} section)")
    fields = []
    for raw in data.split(b"\0"):
        key, sep, value = raw.decode("utf-8", "surrogateescape").partition("=")
        if sep:
            fields.append((key, value))
    return fields


def module_info(path: str, module: bytes, what: str) -> ModuleInfo:
    """Parse the .modinfo of `module` (uncompressed bytes) found at `path`."""
    fields = parse_modinfo(module, what)

    def values(key: str) -> list[str]:
        return [value for k, value in fields if k == key]

    names = values("name")
    name = normalize_name(names[0]) if names else module_name(path)
    depends = tuple(normalize_name(dep) for value in values("depends") for dep in value.split(",") if dep)
    vermagic = values("vermagic")
    return ModuleInfo(path=stored_path(path), name=name, depends=depends, aliases=tuple(values("alias")),
                      softdeps=tuple(values("softdep")), vermagic=vermagic[0] if vermagic else "")


def check_vermagic(info: ModuleInfo, version: str, what: str) -> None:
    """A module only loads into the kernel it was built for: the first word of vermagic."""
    built_for = info.vermagic.split(" ", 1)[0]
    if built_for != version:
        found = f"vermagic {info.vermagic.strip()!r}" if info.vermagic else "no vermagic"
        raise UserError(f"{what}: built for kernel {built_for or '?'} ({found}), not {version}")


# --- globs ---------------------------------------------------------------------------------

def _glob_segment(segment: str) -> str:
    """Regex for one path segment: `*` and `?` never cross a `/`, `[...]` as in fnmatch."""
    out, i = [], 0
    while i < len(segment):
        c = segment[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := segment.find("]", i + 2)) > 0:
            body = segment[i + 1 : end]
            negate = body[:1] == "!"
            body = (body[1:] if negate else body).replace("\\", "\\\\")
            if body.startswith("^"):  # a literal `^` in a glob class, a negation in a regex
                body = "\\" + body
            out.append("[" + ("^/" if negate else "") + body + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_module_glob(glob: str) -> re.Pattern[str]:
    """A glob over paths under lib/modules/<version>/: `*`, `?`, `[...]` within a segment,
    `**` as a whole segment for any number of directories (`kernel/fs/**`: everything below)."""
    parts = glob.strip("/").split("/")
    regex = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex.append(".*" if last else "(?:[^/]+/)*")
        else:
            regex.append(_glob_segment(part) + ("" if last else "/"))
    return re.compile("".join(regex))


def match_module_globs(module_paths: Iterable[str], globs: Sequence[str], what: str) -> list[str]:
    """The module paths any glob matches (a glob may name `x.ko` for a compressed `x.ko.xz`).

    A glob that matches nothing is an error: it is a typo or a module the kernel builds in.
    """
    paths = sorted(module_paths)
    chosen: set[str] = set()
    for glob in globs:
        pattern = compile_module_glob(glob)
        hits = [p for p in paths if pattern.fullmatch(p) or pattern.fullmatch(stored_path(p))]
        if not hits:
            raise UserError(f"{what}: module glob {glob!r} matches no module",
                            hint="globs are paths under lib/modules/<version>/, e.g. kernel/fs/overlayfs/** "
                                 "(a module built into the kernel is listed in modules.builtin)")
        chosen.update(hits)
    return sorted(chosen)


# --- index files ----------------------------------------------------------------------------

def _load_order(name: str, by_name: dict[str, ModuleInfo], what: str) -> list[str]:
    """`name`'s dependencies, transitively, each after all of its own (the order to load them)."""
    order: list[str] = []
    done: set[str] = set()
    active: list[str] = []

    def visit(current: str) -> None:
        if current in done:
            return
        if current in active:
            cycle = " -> ".join([*active[active.index(current):], current])
            raise UserError(f"{what}: modules depend on each other in a cycle: {cycle}")
        active.append(current)
        for dep in by_name[current].depends:
            if dep not in by_name:
                raise UserError(f"{what}: {by_name[current].path} depends on {dep}, which is not in the package")
            visit(dep)
        active.pop()
        done.add(current)
        order.append(current)

    visit(name)
    return order[:-1]


def dependency_closure(modules: Sequence[ModuleInfo], what: str) -> dict[str, list[str]]:
    """Module path -> the paths of all its dependencies, in modules.dep order (load from the end)."""
    by_name = {m.name: m for m in modules}
    return {m.path: [by_name[dep].path for dep in reversed(_load_order(m.name, by_name, what))]
            for m in modules}


def modules_dep(modules: Sequence[ModuleInfo], what: str) -> bytes:
    """modules.dep: one line per module (in the order given) with its full dependency closure."""
    closure = dependency_closure(modules, what)
    lines = [f"{m.path}:" + "".join(f" {dep}" for dep in closure[m.path]) for m in modules]
    return "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")


def modules_alias(modules: Sequence[ModuleInfo]) -> bytes:
    """modules.alias: `alias PATTERN NAME` for every alias= of every module."""
    lines = [f"alias {alias} {m.name}\n" for m in modules for alias in m.aliases]
    return "".join(lines).encode("utf-8", "surrogateescape")


def modules_softdep(modules: Sequence[ModuleInfo]) -> bytes:
    """modules.softdep: `softdep NAME pre: ... post: ...` for every softdep= (kmod's depmod format)."""
    lines = [f"softdep {m.name} {softdep}\n" for m in modules for softdep in m.softdeps]
    return "".join(lines).encode("utf-8", "surrogateescape")


def filter_modules_order(order: bytes, paths: set[str]) -> bytes:
    """The lines of modules.order that name one of `paths` (stored paths, `.ko`)."""
    kept = [line for line in order.decode("utf-8", "surrogateescape").splitlines()
            if stored_path(line.strip()) in paths]
    return "".join(stored_path(line.strip()) + "\n" for line in kept).encode("utf-8", "surrogateescape")


# --- the package --------------------------------------------------------------------------------

def kernel_version(linux_image: list[Entry]) -> str:
    """The kernel version (`uname -r`) of a linux-image package: its lib/modules/<version>/
    directory, or, for a package without modules, its boot/vmlinuz-<version>."""
    versions: set[str] = set()
    for entry in linux_image:
        for root in PACKAGE_MODULES_DIRS:
            rest = entry.path.removeprefix(root + "/")
            if rest != entry.path and rest:
                versions.add(rest.split("/", 1)[0])
    if not versions:
        versions = {e.path.removeprefix(BZIMAGE_PREFIX) for e in linux_image
                    if e.path.startswith(BZIMAGE_PREFIX) and "/" not in e.path.removeprefix(BZIMAGE_PREFIX)}
    if len(versions) == 1:
        return versions.pop()
    if not versions:
        raise UserError("not a kernel package: no lib/modules/<version>/ and no boot/vmlinuz-<version>")
    raise UserError(f"the kernel package holds several kernel versions: {', '.join(sorted(versions))}")


def _package_files(linux_image: list[Entry], version: str, what: str) -> tuple[Entry, dict[str, Entry]]:
    """The bzImage entry and the regular files under the modules directory (relative paths)."""
    files: dict[str, Entry] = {}
    for entry in linux_image:
        if entry.kind is Kind.FILE:
            files[entry.path] = entry
        elif entry.kind is Kind.HARDLINK and entry.linkname in files:
            files[entry.path] = files[entry.linkname].with_path(entry.path)
    bzimage = files.get(BZIMAGE_PREFIX + version)
    if bzimage is None or not bzimage.size:
        raise UserError(f"{what}: no kernel: the package has no {BZIMAGE_PREFIX}{version}")
    for root in PACKAGE_MODULES_DIRS:
        prefix = f"{root}/{version}/"
        modules_files = {path.removeprefix(prefix): e for path, e in files.items() if path.startswith(prefix)}
        if modules_files:
            return bzimage, modules_files
    return bzimage, {}


def _module_bytes(entry: Entry, path: str) -> bytes:
    raw = read_data(entry.data)
    decompress = MODULE_SUFFIXES[module_suffix(path) or ".ko"]
    if decompress is None:
        return raw
    try:
        return decompress(raw)
    except (lzma.LZMAError, zstandard.ZstdError, OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot decompress: {exc}") from None


@dataclass
class _Chosen:
    info: ModuleInfo
    data: Data | None  # the package's FileRegion for a plain .ko, bytes once decompressed
    size: int
    mode: int


def _choose_modules(modules_files: dict[str, Entry], version: str, globs: Sequence[str],
                    what: str) -> list[_Chosen]:
    """The modules the globs match plus everything they depend on, each checked against `version`."""
    module_paths = [p for p in modules_files if module_suffix(p)]
    by_name: dict[str, list[str]] = {}
    for path in module_paths:
        by_name.setdefault(module_name(path), []).append(path)
    chosen: dict[str, _Chosen] = {}  # by module name
    pending = match_module_globs(module_paths, globs, what)
    softdeps: list[str] = []
    while pending or softdeps:
        if not pending:
            pending += _softdep_module(softdeps.pop(), by_name, modules_files, version, what)
            continue
        path = pending.pop()
        label = f"{what}: {MODULES_DIR}/{version}/{path}"
        entry = modules_files[path]
        module = _module_bytes(entry, label)
        info = module_info(path, module, label)
        check_vermagic(info, version, label)
        if info.name != module_name(path):
            raise UserError(f"{label}: its .modinfo name {info.name!r} differs from its file name: "
                            "modprobe could not find it")
        if info.name in chosen:
            if chosen[info.name].info.path != info.path:
                raise UserError(f"{what}: two modules named {info.name}: "
                                f"{chosen[info.name].info.path} and {info.path}")
            continue
        data: Data | None = entry.data if module_suffix(path) == ".ko" else module
        chosen[info.name] = _Chosen(info, data, len(module), entry.mode & 0o7777 or FILE_MODE)
        softdeps += [dep for dep in info.pre_softdeps if dep not in chosen]
        for dep in info.depends:
            if dep in chosen:
                continue
            candidates = by_name.get(dep, [])
            if not candidates:
                raise UserError(f"{label}: depends on {dep}, which is not in the package")
            if len(candidates) > 1:
                raise UserError(f"{label}: depends on {dep}, which the package has twice: "
                                f"{', '.join(sorted(candidates))}")
            pending.append(candidates[0])
    return list(chosen.values())


def _softdep_module(name: str, by_name: dict[str, list[str]], modules_files: dict[str, Entry], version: str,
                    what: str) -> list[str]:
    """The module a `softdep pre:` name stands for: the module of that name, else one whose file name starts
    with it and whose .modinfo has it as an alias (crc32c -> crypto/crc32c_generic.ko). None: built in."""
    if len(by_name.get(name, [])) == 1:
        return by_name[name]
    for candidate, paths in sorted(by_name.items()):
        if candidate.startswith(name) and len(paths) == 1:
            label = f"{what}: {MODULES_DIR}/{version}/{paths[0]}"
            info = module_info(paths[0], _module_bytes(modules_files[paths[0]], label), label)
            if name in info.aliases:
                return paths
    return []


def _ordered(modules: list[_Chosen], order: bytes) -> list[_Chosen]:
    """Modules in modules.order's order (as depmod writes modules.dep), the rest by path."""
    position = {stored_path(line.strip()): i
                for i, line in enumerate(order.decode("utf-8", "surrogateescape").splitlines())}
    return sorted(modules, key=lambda m: (position.get(m.info.path, len(position)), m.info.path))


def _parents(path: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`]."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def choose_dtbs(linux_image: list[Entry], version: str, globs: Sequence[str], what: str) -> list[Entry]:
    """The device trees the globs (paths under usr/lib/linux-image-<version>/) match, as boot/dtb/ entries.
    A glob that matches nothing is an error: a board without its device tree does not boot."""
    if not globs:
        return []
    prefix = f"{DTB_PACKAGE_DIR}{version}/"
    files = {e.path.removeprefix(prefix): e for e in linux_image
             if e.kind is Kind.FILE and e.path.startswith(prefix) and e.path.endswith((".dtb", ".dtbo"))}
    chosen: dict[str, Entry] = {}
    for glob in globs:
        pattern = compile_module_glob(glob)
        matched = [p for p in files if pattern.fullmatch(p)]
        if not matched:
            raise UserError(f"{what}: no device tree matches {glob!r} under /{prefix}",
                            hint=f"the package has {len(files)} .dtb files" if files else "it has no device trees")
        chosen.update((p, files[p]) for p in matched)
    return [Entry(f"{DTB_DIR}/{p}", Kind.FILE, FILE_MODE, size=e.size, data=e.data) for p, e in sorted(chosen.items())]


def _kernel_tar_entries(version: str, modules: list[_Chosen], indexes: dict[str, bytes],
                        dtbs: Sequence[Entry] = ()) -> list[Entry]:
    """Every member of kernel.tar, parents first, in path order."""
    base = f"{MODULES_DIR}/{version}"
    files = [Entry(f"{base}/{m.info.path}", Kind.FILE, m.mode, size=m.size, data=m.data) for m in modules]
    files += [Entry(f"{base}/{name}", Kind.FILE, FILE_MODE, size=len(data), data=data)
              for name, data in indexes.items()]
    files += dtbs
    dirs = {parent for e in files for parent in _parents(e.path)}
    entries = [Entry(d, Kind.DIR, DIR_MODE) for d in dirs] + files
    return sorted(entries, key=lambda e: e.path.split("/"))


class _Sha256Sink:
    """A write-only file that hashes what it is given and passes it on to `out` (if any)."""

    def __init__(self, out: BinaryIO | None = None) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self._out = out

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        if self._out is not None:
            self._out.write(data)
        return len(data)


def _write_kernel_tar(entries: list[Entry], workdir: Path) -> Entry:
    """Write kernel.tar into `workdir` as `kernel-<sha256>.tar` unless it is already there."""
    digest = _Sha256Sink()
    write_tar(entries, cast(BinaryIO, digest), KERNEL_TAR_EPOCH)
    target = workdir / f"kernel-{digest.hash.hexdigest()}.tar"
    if not (target.is_file() and target.stat().st_size == digest.size):
        with atomic_output(target) as out:
            written = _Sha256Sink(out)
            write_tar(entries, cast(BinaryIO, written), KERNEL_TAR_EPOCH)
            if written.hash.digest() != digest.hash.digest():
                raise UserError(f"{target}: the kernel package's files changed while it was being written")
    return Entry(KERNEL_TAR_PATH, Kind.FILE, FILE_MODE, size=digest.size,
                 data=FileRegion(str(target), 0, digest.size))


def kernel_package_entries(linux_image: list[Entry], version: str, module_globs: list[str], label: str,
                           workdir: Path, dtb_globs: Sequence[str] = ()) -> list[Entry]:
    """The image-root entries `kernel` (the bzImage) and `kernel.tar` (the chosen modules and their
    index files, written to `workdir` under its content hash) of a linux-image package.

    `linux_image`: the package's files; `module_globs`: paths under lib/modules/<version>/;
    `label` names the package in errors; `dtb_globs` choose device trees for kernel.tar's boot/dtb/.
    """
    bzimage, modules_files = _package_files(linux_image, version, label)
    order = read_data(modules_files[ORDER_FILE].data) if ORDER_FILE in modules_files else b""
    chosen = _ordered(_choose_modules(modules_files, version, module_globs, label), order)
    infos = [m.info for m in chosen]
    indexes = {name: read_data(modules_files[name].data) for name in COPIED_INDEXES if name in modules_files}
    indexes |= {
        "modules.alias": modules_alias(infos),
        "modules.dep": modules_dep(infos, label),
        "modules.order": filter_modules_order(order, {m.path for m in infos}),
        "modules.softdep": modules_softdep(infos),
    }
    kernel = Entry(KERNEL_PATH, Kind.FILE, FILE_MODE, size=bzimage.size, data=bzimage.data)
    dtbs = choose_dtbs(linux_image, version, dtb_globs, label)
    return [kernel, _write_kernel_tar(_kernel_tar_entries(version, chosen, indexes, dtbs), workdir)]
