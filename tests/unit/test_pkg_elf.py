"""ELF checks: machine type, PT_INTERP and DT_NEEDED resolved like ld.so inside the image, the closure
taken from a pool of library files. The ELF files are built here byte by byte (System V gABI layout)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.errors import UserError
from linuxkit_py.kernel.elf import ElfInfo, check_elf_files, read_elf

EM_386, EM_X86_64, EM_AARCH64 = 3, 62, 183
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 15, 29


def make_elf(machine: int = EM_X86_64, *, bits: int = 64, interp: str | None = None, needed: tuple[str, ...] = (),
             rpath: str | None = None, runpath: str | None = None, dynamic: bool = True) -> bytes:
    """A little-endian ELF shared object: program headers PT_LOAD (whole file at address 0), PT_INTERP,
    PT_DYNAMIC; a string table; no sections."""
    wide = bits == 64
    ehsize, phentsize = (64, 56) if wide else (52, 32)
    strtab = bytearray(b"\0")

    def string(text: str) -> int:
        strtab.extend(text.encode() + b"\0")
        return len(strtab) - len(text) - 1

    tags = [(DT_NEEDED, string(name)) for name in needed]
    if rpath is not None:
        tags.append((DT_RPATH, string(rpath)))
    if runpath is not None:
        tags.append((DT_RUNPATH, string(runpath)))
    phnum = 1 + (interp is not None) + dynamic
    interp_off = ehsize + phnum * phentsize
    interp_bytes = interp.encode() + b"\0" if interp is not None else b""
    strtab_off = interp_off + len(interp_bytes)
    dyn_off = strtab_off + len(strtab)
    dyn_off += -dyn_off % 8
    dyn_format = "<qQ" if wide else "<iI"
    dyn = b"".join(struct.pack(dyn_format, tag, value) for tag, value in
                   [*tags, (DT_STRTAB, strtab_off), (DT_STRSZ, len(strtab)), (DT_NULL, 0)])
    total = dyn_off + (len(dyn) if dynamic else 0)

    def phdr(p_type: int, offset: int, size: int) -> bytes:
        if wide:
            return struct.pack("<IIQQQQQQ", p_type, 4, offset, offset, offset, size, size, 8)
        return struct.pack("<IIIIIIII", p_type, offset, offset, offset, size, size, 4, 4)

    phdrs = phdr(PT_LOAD, 0, total)
    if interp is not None:
        phdrs += phdr(PT_INTERP, interp_off, len(interp_bytes))
    if dynamic:
        phdrs += phdr(PT_DYNAMIC, dyn_off, len(dyn))
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1, 1]) + bytes(9)
    ET_DYN = 3
    if wide:
        header = ident + struct.pack("<HHIQQQIHHHHHH", ET_DYN, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize,
                                     phnum, 64, 0, 0)
    else:
        header = ident + struct.pack("<HHIIIIIHHHHHH", ET_DYN, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize,
                                     phnum, 40, 0, 0)
    body = header + phdrs + interp_bytes + bytes(strtab)
    body += bytes(dyn_off - len(body))
    return body + (dyn if dynamic else b"")


LOADER = "/lib64/ld-linux-x86-64.so.2"


def F(path: str, data: bytes) -> Entry:
    return Entry(path, Kind.FILE, 0o755, size=len(data), data=data)


def L(path: str, target: str) -> Entry:
    return Entry(path, Kind.SYMLINK, 0o777, linkname=target)


def D(path: str) -> Entry:
    return Entry(path, Kind.DIR, 0o755)


def image(*entries: Entry) -> dict[str, Entry]:
    return {e.path: e for e in entries}


GLIBC = [
    L("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
    F("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", make_elf()),
    F("lib/x86_64-linux-gnu/libc.so.6", make_elf(interp=LOADER, needed=("ld-linux-x86-64.so.2",))),
]
APP = F("usr/bin/app", make_elf(interp=LOADER, needed=("libfoo.so.1", "libc.so.6")))
LIBFOO = [
    L("usr/lib/x86_64-linux-gnu/libfoo.so.1", "libfoo.so.1.2.3"),
    F("usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3", make_elf(needed=("libc.so.6",))),
]


def error_of(entries: dict[str, Entry], pool: dict[str, Entry] | None = None, arch: str = "amd64") -> str:
    with pytest.raises(UserError) as exc:
        check_elf_files(entries, arch, pool)
    return exc.value.message


def test_read_elf_gives_what_the_loader_reads(tmp_path: Path) -> None:
    data = make_elf(interp=LOADER, needed=("libfoo.so.1", "libc.so.6"), rpath="/opt/a:/opt/b", runpath="$ORIGIN")
    assert read_elf(F("x", data)) == ElfInfo("EM_X86_64", 64, LOADER, ("libfoo.so.1", "libc.so.6"),
                                             ("/opt/a", "/opt/b"), ("$ORIGIN",))
    # the same through a FileRegion into a bigger file (how package files are read)
    (tmp_path / "blob").write_bytes(b"junk" * 100 + data + b"junk")
    region = Entry("x", Kind.FILE, 0o755, size=len(data), data=FileRegion(str(tmp_path / "blob"), 400, len(data)))
    assert read_elf(region) == read_elf(F("x", data))
    assert read_elf(F("x", make_elf(EM_AARCH64, dynamic=False))) == ElfInfo("EM_AARCH64", 64, None, (), (), ())
    assert read_elf(F("x", make_elf(EM_386, bits=32, needed=("libc.so.6",)))) == ElfInfo(
        "EM_386", 32, None, ("libc.so.6",), (), ())


def test_read_elf_ignores_other_files_and_rejects_broken_elf() -> None:
    assert read_elf(F("script", b"#!/bin/sh\n" + b"x" * 100)) is None
    assert read_elf(F("tiny", b"\x7fELF")) is None  # shorter than any ELF header
    truncated = make_elf(needed=("libc.so.6",))[:100]  # its program headers go past the end
    with pytest.raises(UserError, match=r"^/bin/broken: not a valid ELF file: "):
        read_elf(F("bin/broken", truncated))


def test_a_complete_image_passes_and_takes_nothing() -> None:
    assert check_elf_files(image(APP, *GLIBC, *LIBFOO), "amd64") == []


def test_a_missing_library_names_the_binary_and_the_library() -> None:
    assert error_of(image(APP, *GLIBC)) == "/usr/bin/app needs libfoo.so.1, which is not in the image"
    # a dangling symlink is no library
    assert error_of(image(APP, *GLIBC, LIBFOO[0])) == "/usr/bin/app needs libfoo.so.1, which is not in the image"
    # libraries need theirs too
    assert error_of(image(F("usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3", make_elf(needed=("libbar.so",))))) == (
        "/usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3 needs libbar.so, which is not in the image")


def test_a_missing_interpreter_is_named() -> None:
    assert error_of(image(APP, *LIBFOO)) == (
        "/usr/bin/app needs the program interpreter /lib64/ld-linux-x86-64.so.2, which is not in the image")


def test_machine_type_must_match_the_architecture() -> None:
    fake = F("etc/fake", make_elf(EM_AARCH64, dynamic=False))
    assert error_of(image(fake)) == "/etc/fake is an ELF file for aarch64, but the image is for amd64"
    assert error_of(image(F("x", make_elf(EM_386, bits=32)))) == (
        "/x is an ELF file for i386, but the image is for amd64")
    assert error_of(image(F("x", make_elf(EM_X86_64, bits=32)))) == (
        "/x is an ELF file for x86_64 (ELF32), but the image is for amd64")
    assert check_elf_files(image(fake), "arm64") == []


def test_the_pool_gives_exactly_the_closure() -> None:
    pool = image(
        D("lib"), D("lib/x86_64-linux-gnu"), D("lib64"), D("usr"), D("usr/lib"), D("usr/lib/x86_64-linux-gnu"),
        *GLIBC, *LIBFOO,
        F("lib/x86_64-linux-gnu/libm.so.6", make_elf(needed=("libc.so.6",))),
        F("usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", make_elf(needed=("libc.so.6",))),
        F("usr/share/i18n/charmaps/UTF-8.gz", b"not elf" * 10),
    )
    taken = check_elf_files(image(APP), "amd64", pool)
    assert taken == [
        "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "usr/lib/x86_64-linux-gnu/libfoo.so.1", "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3",
        "lib/x86_64-linux-gnu/libc.so.6",
    ]
    # what the image has wins over the pool
    assert check_elf_files(image(APP, *LIBFOO), "amd64", pool) == [
        "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6"]


def test_search_order_runpath_rpath_and_origin() -> None:
    lib = make_elf()
    app_runpath = F("opt/app/bin/app", make_elf(needed=("libx.so",), runpath="$ORIGIN/../lib"))
    assert check_elf_files(image(app_runpath, F("opt/app/lib/libx.so", lib)), "amd64") == []
    app_rpath = F("opt/app/bin/app", make_elf(needed=("libx.so",), rpath="/opt/app/lib"))
    assert check_elf_files(image(app_rpath, F("opt/app/lib/libx.so", lib)), "amd64") == []
    # DT_RPATH is ignored when there is a DT_RUNPATH
    both = F("opt/app/bin/app", make_elf(needed=("libx.so",), rpath="/opt/app/lib", runpath="/nowhere"))
    assert error_of(image(both, F("opt/app/lib/libx.so", lib))) == (
        "/opt/app/bin/app needs libx.so, which is not in the image")
    # directories only ld.so.conf names are not searched (no ld.so.cache in the image)
    assert error_of(image(F("bin/a", make_elf(needed=("libx.so",))), F("usr/local/lib/libx.so", lib))) == (
        "/bin/a needs libx.so, which is not in the image")
    # the default directories, multiarch first
    for directory in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib"):
        assert check_elf_files(image(F("bin/a", make_elf(needed=("libx.so",))), F(f"{directory}/libx.so", lib)),
                               "amd64") == []


def test_a_library_of_another_machine_is_skipped_like_ld_so_does() -> None:
    app = F("bin/a", make_elf(needed=("libx.so",)))
    wrong = F("lib/x86_64-linux-gnu/libx.so", make_elf(EM_AARCH64))
    right = F("usr/lib/libx.so", make_elf())
    pool = image(wrong, right)
    assert check_elf_files(image(app), "amd64", pool) == ["usr/lib/libx.so"]


def test_symlinks_are_followed_inside_the_image() -> None:
    app = F("usr/bin/app", make_elf(needed=("libx.so",)))
    # merged /usr: /lib -> usr/lib (relative), then an absolute link, then `..`
    entries = image(app, L("lib", "usr/lib"), L("usr/lib/libx.so", "/opt/../usr/lib/real/libx.so.1"),
                    D("opt"), F("usr/lib/real/libx.so.1", make_elf()))
    assert check_elf_files(entries, "amd64") == []
    # a loop finds nothing (and does not hang)
    loop = image(app, L("usr/lib/libx.so", "libx.so.1"), L("usr/lib/libx.so.1", "libx.so"))
    assert error_of(loop) == "/usr/bin/app needs libx.so, which is not in the image"
    # `..` above the root stays at the root, as in a chroot
    escaped = image(app, L("usr/lib/libx.so", "../../../../usr/lib/libx.so.1"), F("usr/lib/libx.so.1", make_elf()))
    assert check_elf_files(escaped, "amd64") == []


def test_musl_binaries_search_musl_directories() -> None:
    musl_loader = "/lib/ld-musl-x86_64.so.1"
    app = F("bin/a", make_elf(interp=musl_loader, needed=("libz.so.1",)))
    loader = F("lib/ld-musl-x86_64.so.1", make_elf())
    assert check_elf_files(image(app, loader, F("usr/local/lib/libz.so.1", make_elf())), "amd64") == []
    assert error_of(image(app, loader, F("lib/x86_64-linux-gnu/libz.so.1", make_elf()))) == (
        "/bin/a needs libz.so.1, which is not in the image")
