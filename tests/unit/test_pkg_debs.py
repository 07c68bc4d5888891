"""Reading .debs in Python (ar -> data.tar.* -> Entries), and apt-cache records -> versions and libraries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from linuxkit_py.archive.entry import Kind, read_data
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.pkg.apt import Deb, _library_closure, parse_depends, parse_records
from linuxkit_py.pkg.debs import deb_entries, unpacked_dir


def build_deb(tmp_path: Path, compression: str) -> Path:
    """A .deb made by dpkg-deb itself: a file, an empty directory, a symlink, a hard link."""
    root = tmp_path / f"root-{compression}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: hello\nVersion: 1:2.0-1\nArchitecture: amd64\nMaintainer: A <a@example.org>\nDescription: t\n")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "hello").write_bytes(b"#!/bin/sh\necho hello\n")
    os.chmod(root / "usr" / "bin" / "hello", 0o755)
    os.link(root / "usr" / "bin" / "hello", root / "usr" / "bin" / "hi")
    (root / "var" / "lib" / "hello").mkdir(parents=True)
    (root / "usr" / "bin" / "hey").symlink_to("hello")
    deb = tmp_path / f"hello_1%3a2.0-1_amd64-{compression}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "-b", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


@pytest.mark.parametrize("compression", ["xz", "zstd", "gzip", "none"])
def test_deb_entries_read_every_data_compression(tmp_path: Path, compression: str) -> None:
    cache = Cache(tmp_path / "cache")
    deb = build_deb(tmp_path, compression)
    entries = deb_entries(cache, deb)
    # what dpkg-deb itself lists, in its order
    listed = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    names = subprocess.run(["tar", "t"], input=listed, check=True, capture_output=True).stdout.decode().split()
    assert [e.path for e in entries] == [n.removeprefix("./").rstrip("/") for n in names if n != "./"]
    by_path = {e.path: e for e in entries}
    assert read_data(by_path["usr/bin/hello"].data) == b"#!/bin/sh\necho hello\n"
    assert by_path["usr/bin/hello"].mode == 0o755
    assert (by_path["usr/bin/hi"].kind, by_path["usr/bin/hi"].linkname) == (Kind.HARDLINK, "usr/bin/hello")
    assert (by_path["usr/bin/hey"].kind, by_path["usr/bin/hey"].linkname) == (Kind.SYMLINK, "hello")
    assert by_path["var/lib/hello"].kind is Kind.DIR
    # decompressed once: the unpacked tar is dpkg-deb's data tar byte for byte, with an index next to it
    stem = deb.name.removesuffix(".deb")
    assert (unpacked_dir(cache) / f"{stem}.tar").read_bytes() == listed
    assert (unpacked_dir(cache) / f"{stem}.json").is_file()


def test_a_warm_read_uses_the_index_and_not_the_deb(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    deb = build_deb(tmp_path, "xz")
    first = deb_entries(cache, deb)
    deb.write_bytes(b"gone")  # a warm read never opens the .deb again
    assert deb_entries(cache, deb) == first


def test_a_corrupt_deb_is_a_user_error(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    bad = tmp_path / "bad_1_amd64.deb"
    bad.write_bytes(b"!<arch>\nnot really")
    with pytest.raises(UserError, match=r"bad_1_amd64.deb is not a valid Debian package: truncated or malformed"):
        deb_entries(cache, bad)
    good = build_deb(tmp_path, "xz").read_bytes()
    cut = tmp_path / "cut_1_amd64.deb"
    cut.write_bytes(good[: len(good) - 40])
    with pytest.raises(UserError, match=r"cut_1_amd64.deb is not a valid Debian package"):
        deb_entries(cache, cut)
    assert not (unpacked_dir(cache) / "cut_1_amd64.tar").exists()


APT_CACHE_SHOW = """\
Package: runc
Version: 1.1.5+ds1-1+deb12u1
Architecture: amd64
Depends: libc6 (>= 2.34), libseccomp2 (>= 2.5.0)
Description: Open Container Project - runtime
 a second description line: Depends: nothing
Section: devel
Size: 2709960
SHA256: a00351f8c0318de0b424ecf5cd0fdb69880a89f3511cae4f6fff7de3e57881c5

Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Architecture: amd64
Pre-Depends: libc6:any
Section: shells
Size: 928000
"""


def test_parse_records_and_depends() -> None:
    runc, busybox = parse_records(APT_CACHE_SHOW)
    assert runc == Deb("runc", "1.1.5+ds1-1+deb12u1", "amd64", "devel", (("libc6",), ("libseccomp2",)),
                       "a00351f8c0318de0b424ecf5cd0fdb69880a89f3511cae4f6fff7de3e57881c5", 2709960)
    assert (busybox.pin, busybox.file_name, busybox.depends) == (
        "busybox-static=1:1.35.0-4+deb12u1+b1", "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb", (("libc6",),))
    assert parse_depends("debconf (>= 0.5) | debconf-2.0, libfoo:any [amd64], gcc-12-base (= 12.2.0-14)") == (
        ("debconf", "debconf-2.0"), ("libfoo",), ("gcc-12-base",))


def deb(name: str, section: str = "libs", depends: str = "") -> Deb:
    return Deb(name, "1", "amd64", section, parse_depends(depends), "", 0)


def test_library_closure_follows_only_library_packages() -> None:
    records = {d.name: d for d in [
        deb("sshd", "net", "libc6, libssl3, adduser, openssh-client, libfoo | libbar, virtual-only"),
        deb("libc6", depends="libgcc-s1"), deb("libgcc-s1", depends="gcc-12-base, libc6"), deb("gcc-12-base"),
        deb("libssl3", depends="libc6, debconf"), deb("debconf", "admin", "perl-base"), deb("perl-base", "perl"),
        deb("adduser", "admin", "passwd"), deb("passwd", "admin", "libpam0g"), deb("libpam0g"),
        deb("openssh-client", "net", "libc6"), deb("libbar", "libs"), deb("oldie", "oldlibs"),
    ]}
    closure = _library_closure([records["sshd"]], records)
    assert [d.name for d in closure] == ["gcc-12-base", "libbar", "libc6", "libgcc-s1", "libssl3"]
    # a package listed in `packages` is not a library dependency of it
    assert [d.name for d in _library_closure([records["sshd"], records["libc6"]], records)] == [
        "gcc-12-base", "libbar", "libgcc-s1", "libssl3"]
