"""ELF checks of an image: machine type, program interpreter and shared libraries (pyelftools).

Every ELF file must be built for the image's architecture, and its PT_INTERP and each DT_NEEDED
must resolve inside the image the way the dynamic loader (ld.so(8)) would find them at run time:
DT_RPATH (when there is no DT_RUNPATH), DT_RUNPATH, then the loader's default directories (for
glibc on Debian the multiarch ones, /lib/x86_64-linux-gnu and /usr/lib/x86_64-linux-gnu, then /lib
and /usr/lib; there is no ld.so.cache in our images). Symlinks are followed inside the image,
absolute targets from its root. A library of another machine type is skipped, as ld.so does.

With a pool (the files of the packages' library dependencies), what the closure needs and the
image lacks is taken from the pool: this is how `libraries: auto` picks its files.
"""

from __future__ import annotations

import posixpath
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from linuxkit_py.arch import ARCHES
from linuxkit_py.archive.entry import Entry, Kind
from linuxkit_py.archive.regionfile import open_data
from linuxkit_py.archive.tree import parent_dirs
from linuxkit_py.errors import UserError

ELF_MAGIC = b"\x7fELF"
ELF32_HEADER_SIZE = 52  # smaller files cannot be ELF objects
MAX_SYMLINK_HOPS = 40  # Linux's limit on symlinks followed in one path walk (MAXSYMLINKS)

# Debian architecture -> (e_machine, ELF class) of its binaries, its multiarch triplet, ld.so's $PLATFORM
ARCH_MACHINES = {a.name: (a.elf_machine, 64) for a in ARCHES.values()}
MULTIARCH_TRIPLETS = {a.name: a.multiarch for a in ARCHES.values()}
PLATFORMS = {a.name: a.uname for a in ARCHES.values()}
MACHINE_NAMES = {
    "EM_X86_64": "x86_64", "EM_AARCH64": "aarch64", "EM_RISCV": "riscv", "EM_386": "i386", "EM_ARM": "arm",
    "EM_PPC64": "ppc64", "EM_S390": "s390", "EM_MIPS": "mips", "EM_LOONGARCH": "loongarch",
}
MUSL_LOADER_PREFIX = "/lib/ld-musl-"
MUSL_DEFAULT_DIRS = ("lib", "usr/local/lib", "usr/lib")


@dataclass(frozen=True)
class ElfInfo:
    machine: str  # e_machine, e.g. "EM_X86_64"
    elfclass: int  # 32 or 64
    interpreter: str | None  # PT_INTERP
    needed: tuple[str, ...]  # DT_NEEDED, in order
    rpath: tuple[str, ...]  # DT_RPATH entries
    runpath: tuple[str, ...]  # DT_RUNPATH entries


def read_elf(entry: Entry) -> ElfInfo | None:
    """What the loader needs to know about a regular file, or None if it is not an ELF file."""
    if entry.size < ELF32_HEADER_SIZE:
        return None
    # pyelftools costs 60 ms to import: only builds that check binaries pay for it.
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import InterpSegment

    try:
        with open_data(entry.data) as f:
            if f.read(len(ELF_MAGIC)) != ELF_MAGIC:
                return None
            f.seek(0)
            elf = ELFFile(f)
            interpreter = None
            needed: list[str] = []
            rpath: list[str] = []
            runpath: list[str] = []
            for segment in elf.iter_segments():
                if isinstance(segment, InterpSegment):
                    interpreter = segment.get_interp_name()
                elif isinstance(segment, DynamicSegment):
                    for tag in segment.iter_tags():
                        kind = tag.entry.d_tag
                        if kind == "DT_NEEDED":
                            needed.append(tag.needed)  # type: ignore[attr-defined]
                        elif kind == "DT_RPATH":
                            rpath.extend(tag.rpath.split(":"))  # type: ignore[attr-defined]
                        elif kind == "DT_RUNPATH":
                            runpath.extend(tag.runpath.split(":"))  # type: ignore[attr-defined]
            return ElfInfo(elf["e_machine"], elf.elfclass, interpreter, tuple(needed), tuple(rpath),
                           tuple(runpath))
    except (ELFError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"/{entry.path}: not a valid ELF file: {exc}") from None
    except OSError as exc:
        raise UserError(f"/{entry.path}: cannot read it: {exc.strerror or exc}") from exc
    except Exception as exc:  # construct's parse errors are not exported under one name
        if type(exc).__module__.startswith("elftools"):
            raise UserError(f"/{entry.path}: not a valid ELF file: {exc}") from None
        raise


def machine_name(machine: str, elfclass: int) -> str:
    name = MACHINE_NAMES.get(machine, machine)
    return f"{name} (ELF{elfclass})" if machine == "EM_X86_64" and elfclass == 32 else name


class FileView:
    """The paths of an image, and of a pool it may take files from; the image's entries win."""

    def __init__(self, image: dict[str, Entry], pool: dict[str, Entry] | None = None) -> None:
        self.image = image
        self.pool = pool or {}
        # Directories an unpacker creates for the entries below them, listed or not.
        self._implied = {parent for table in (self.image, self.pool) for path in table for parent in parent_dirs(path)}

    def get(self, path: str) -> Entry | None:
        entry = self.image.get(path) or self.pool.get(path)
        if entry is None and path in self._implied:
            return Entry(path, Kind.DIR, 0o755)
        return entry

    def resolve(self, path: str) -> tuple[str, list[str]] | None:
        """The regular file `path` names, following symlinks inside the image, and every entry the
        walk went through (symlinks, hard link, the file), or None when there is no such file."""
        pending = [c for c in reversed(path.split("/")) if c not in ("", ".")]
        current: list[str] = []
        used: list[str] = []
        hops = 0
        while pending:
            component = pending.pop()
            if component == "..":
                if current:
                    current.pop()
                continue
            candidate = "/".join([*current, component])
            entry = self.get(candidate)
            if entry is None:
                return None
            if entry.kind is Kind.SYMLINK:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return None
                used.append(candidate)
                if entry.linkname.startswith("/"):
                    current = []
                pending.extend(c for c in reversed(entry.linkname.split("/")) if c not in ("", "."))
            elif entry.kind is Kind.DIR:
                current.append(component)
            elif pending:
                return None  # a file used as a directory
            elif entry.kind is Kind.HARDLINK:
                target = self.get(entry.linkname)
                if target is None or target.kind is not Kind.FILE:
                    return None
                return candidate, [*used, entry.linkname, candidate]
            elif entry.kind is Kind.FILE:
                return candidate, [*used, candidate]
            else:
                return None
        return None

    def data_entry(self, path: str) -> Entry:
        """The entry holding the contents of the regular file at `path` (a hard link's target)."""
        entry = self.get(path)
        assert entry is not None
        if entry.kind is Kind.HARDLINK:
            target = self.get(entry.linkname)
            assert target is not None
            return target.with_path(path)
        return entry


class ElfChecker:
    """Checks the ELF files of an image for `arch`; with a pool, collects what they need from it."""

    def __init__(self, image: dict[str, Entry], arch: str, pool: dict[str, Entry] | None = None,
                 hint: str | None = None) -> None:
        self.view = FileView(image, pool)
        self.arch = arch
        self.expected = ARCH_MACHINES[arch]
        self.hint = hint
        self._infos: dict[str, ElfInfo | None] = {}
        self.taken: dict[str, None] = {}  # pool paths the closure needs, in the order found

    def info(self, path: str) -> ElfInfo | None:
        if path not in self._infos:
            self._infos[path] = read_elf(self.view.data_entry(path))
        return self._infos[path]

    def _fits(self, info: ElfInfo | None) -> bool:
        return info is not None and (info.machine, info.elfclass) == self.expected

    def _expand(self, directory: str, origin: str) -> str | None:
        triplet = MULTIARCH_TRIPLETS[self.arch]
        for name, value in (("ORIGIN", "/" + origin), ("LIB", f"lib/{triplet}"),
                            ("PLATFORM", PLATFORMS[self.arch])):
            directory = directory.replace("${" + name + "}", value).replace("$" + name, value)
        # A relative entry is relative to the process's working directory: nothing to find here.
        return directory if directory.startswith("/") else None

    def search_dirs(self, path: str, info: ElfInfo) -> list[str]:
        origin = posixpath.dirname(path)
        dirs = [] if info.runpath else list(info.rpath)
        dirs += info.runpath
        expanded = [d for d in (self._expand(d, origin) for d in dirs if d) if d is not None]
        loader = info.interpreter or ""
        if loader.startswith(MUSL_LOADER_PREFIX):
            defaults: Iterable[str] = MUSL_DEFAULT_DIRS
        else:
            triplet = MULTIARCH_TRIPLETS[self.arch]
            defaults = (f"lib/{triplet}", f"usr/lib/{triplet}", "lib", "usr/lib")
        return [*expanded, *("/" + d for d in defaults)]

    def find_library(self, path: str, info: ElfInfo, name: str) -> tuple[str, list[str]] | None:
        if "/" in name:
            return self.view.resolve(name)
        for directory in self.search_dirs(path, info):
            found = self.view.resolve(f"{directory}/{name}")
            if found is not None and self._fits(self.info(found[0])):
                return found
        return None

    def fail(self, message: str) -> UserError:
        return UserError(message, hint=self.hint)

    def run(self) -> list[str]:
        """Check every ELF file (the first problem, in path order, raises UserError naming the file);
        return the pool paths the image needs, in the order found."""
        queue = sorted(p for p, e in self.view.image.items() if e.kind is Kind.FILE)
        queued = set(queue)
        for path in queue:  # grows while it is walked: libraries taken from the pool are checked too
            info = self.info(path)
            if info is None:
                continue
            if (info.machine, info.elfclass) != self.expected:
                raise UserError(f"/{path} is an ELF file for {machine_name(info.machine, info.elfclass)}, "
                                f"but the image is for {self.arch}")
            if info.interpreter:
                found = self.view.resolve(info.interpreter)
                if found is None:
                    raise self.fail(f"/{path} needs the program interpreter {info.interpreter}, "
                                    "which is not in the image")
                self._take(found[1], queue, queued)
            for name in info.needed:
                found = self.find_library(path, info, name)
                if found is None:
                    raise self.fail(f"/{path} needs {name}, which is not in the image")
                self._take(found[1], queue, queued)
        return list(self.taken)

    def _take(self, used: list[str], queue: list[str], queued: set[str]) -> None:
        for p in used:
            if p in self.view.image or p in self.taken:
                continue
            self.taken[p] = None
            if self.view.pool[p].kind is Kind.FILE and p not in queued:
                queue.append(p)
                queued.add(p)


def check_elf_files(image: dict[str, Entry], arch: str, pool: dict[str, Entry] | None = None,
                    hint: str | None = None) -> list[str]:
    """Check the ELF files of `image` (path -> entry) for `arch`; the pool paths the closure needs."""
    return ElfChecker(image, arch, pool, hint).run()
