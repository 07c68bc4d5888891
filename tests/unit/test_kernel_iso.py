"""`kernel+iso`: NAME-kernel, NAME-cmdline and the root filesystem (minus boot/*) as a Rock Ridge ISO, read back
with xorriso; the same entries give the same bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pycdlib
import pytest

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.formats import Rootfs, get_format

EPOCH = 1_700_000_000
LONG = "a-very-long-shared-library-name.so"


def _rootfs(tmp_path: Path) -> Rootfs:
    layer = tmp_path / "layer.bin"
    if not layer.exists():
        layer.write_bytes(os.urandom(1024) + b"KERNEL" * 10_000)
    kernel = FileRegion(str(layer), 1024, 60_000)
    deep = "/".join(f"d{i}" for i in range(10))
    return Rootfs([
        Entry("boot", Kind.DIR, 0o755),
        Entry("boot/kernel", Kind.FILE, 0o644, size=kernel.size, data=kernel),
        Entry("boot/cmdline", Kind.FILE, 0o644, size=13, data=b"console=ttyS0"),
        Entry("boot/ucode.cpio", Kind.FILE, 0o644, size=4, data=b"ucod"),
        Entry("boot/dtb", Kind.DIR, 0o755),
        Entry("bin", Kind.DIR, 0o755),
        Entry("bin/busybox", Kind.FILE, 0o4755, size=8, data=b"busybox\n"),
        Entry("bin/sh", Kind.SYMLINK, 0o777, linkname="busybox"),
        Entry("bin/ash", Kind.HARDLINK, 0o755, linkname="bin/busybox"),
        Entry("etc", Kind.DIR, 0o755),
        Entry("etc/shadow", Kind.FILE, 0o640, uid=0, gid=42, size=5, data=b"root\n"),
        Entry("home", Kind.DIR, 0o750, uid=1000, gid=1000),
        Entry("dev", Kind.DIR, 0o755),
        Entry("dev/console", Kind.CHAR, 0o600, devmajor=5, devminor=1),
        Entry("lib", Kind.DIR, 0o755),
        Entry(f"lib/{LONG}.1", Kind.FILE, 0o644, size=1, data=b"1"),
        Entry(f"lib/{LONG}.2", Kind.FILE, 0o644, size=1, data=b"2"),
        Entry("lib/Upper", Kind.FILE, 0o644, size=1, data=b"U"),
        Entry("lib/upper", Kind.FILE, 0o644, size=1, data=b"u"),
        Entry(f"lib/{'y' * 70}", Kind.FILE, 0o644, size=1, data=b"y"),
        *[Entry("/".join(f"d{i}" for i in range(n + 1)), Kind.DIR, 0o700) for n in range(10)],
        Entry(f"{deep}/bottom", Kind.FILE, 0o600, size=7, data=b"bottom\n"),
    ], EPOCH)


def _build(rootfs: Rootfs, directory: Path) -> list[Path]:
    fmt = get_format("kernel+iso")
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"image{suffix}" for suffix in fmt.suffixes]
    files = [open(p, "wb") for p in paths]  # noqa: SIM115
    try:
        fmt.write(rootfs, files)  # type: ignore[arg-type]
    finally:
        for f in files:
            f.close()
    return paths


def _xorriso(iso: Path, *args: str) -> str:
    return subprocess.run(["xorriso", "-indev", str(iso), *args], check=True, capture_output=True,
                          text=True).stdout


def test_kernel_iso_writes_linuxkit_files_and_the_same_bytes_twice(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    kernel, cmdline, iso = _build(rootfs, tmp_path / "one")
    assert get_format("kernel+iso").suffixes == ("-kernel", "-cmdline", ".iso")
    assert kernel.read_bytes() == b"KERNEL" * 10_000
    assert cmdline.read_bytes() == b"console=ttyS0"
    again = _build(rootfs, tmp_path / "two")
    for first, second in zip((kernel, cmdline, iso), again, strict=True):
        assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()


def test_the_iso_holds_the_root_filesystem_with_rock_ridge(tmp_path: Path) -> None:
    iso = _build(_rootfs(tmp_path), tmp_path / "out")[2]
    lines = [line for line in _xorriso(iso, "-find", "/", "-exec", "lsdl").splitlines()
             if line.startswith(("d", "-", "l"))]
    listing = {line.split("'")[1]: line for line in lines}
    names = sorted(listing)
    assert "/boot" in names and not [n for n in names if n.startswith("/boot/")]  # boot/* left out
    assert "/dev" in names and "/dev/console" not in names  # no device nodes
    assert listing["/bin/busybox"].split()[:5] == ["-rwsr-xr-x", "1", "0", "0", "8"]
    assert listing["/bin/ash"].split()[:5] == ["-rwsr-xr-x", "1", "0", "0", "8"]
    assert listing["/etc/shadow"].split()[:4] == ["-rw-r-----", "1", "0", "42"]
    assert listing["/home"].split()[:4] == ["drwxr-x---", "1", "1000", "1000"]
    assert listing["/"].split()[0] == "drwxr-xr-x"
    assert listing["/bin/sh"].startswith("lrwxrwxrwx") and listing["/bin/sh"].endswith("-> 'busybox'")
    assert {f"/lib/{LONG}.1", f"/lib/{LONG}.2", "/lib/Upper", "/lib/upper"} <= set(names)  # names kept, mangled
    assert "/d0/d1/d2/d3/d4/d5/d6/d7/d8/d9/bottom" in names  # deeper than ISO 9660's 8 levels (relocated)
    assert "Volume Id    : LinuxKit" in subprocess.run(["xorriso", "-indev", str(iso), "-pvd_info"], check=True,
                                                     capture_output=True, text=True).stdout
    joliet = pycdlib.PyCdlib()
    joliet.open(str(iso))
    try:
        names = [c.file_identifier().decode("utf-16_be") for c in joliet.list_children(joliet_path="/lib")]
    finally:
        joliet.close()
    assert {f"{LONG}.1", f"{LONG}.2", "Upper", "upper", "y" * 64} <= set(names)  # Joliet's limit: 64
    assert f"/lib/{'y' * 70}" in listing  # Rock Ridge: the whole name
    out = tmp_path / "extracted"
    _xorriso(iso, "-osirrox", "on", "-extract", f"/lib/{LONG}.2", str(out / "two"),
             "-extract", "/d0/d1/d2/d3/d4/d5/d6/d7/d8/d9/bottom", str(out / "bottom"))
    assert (out / "two").read_bytes() == b"2"
    assert (out / "bottom").read_bytes() == b"bottom\n"


def test_kernel_iso_shares_its_name_with_iso_bios() -> None:
    from linuxkit_py.build import BuildOptions, _formats
    from linuxkit_py.errors import UserError

    with pytest.raises(UserError, match="formats iso-bios and kernel\\+iso both write NAME.iso"):
        _formats(BuildOptions(paths=["x.yml"], formats=["iso-bios,kernel+iso"]))


def test_kernel_iso_has_no_root_modes(tmp_path: Path) -> None:
    from linuxkit_py.errors import UserError
    from linuxkit_py.formats import FormatOptions

    rootfs = _rootfs(tmp_path)
    rootfs.options = FormatOptions(root="squashfs")
    with pytest.raises(UserError, match=r"^kernel\+iso always writes the root filesystem as NAME.iso, not --root "
                                        r"squashfs \(hint: use kernel\+squashfs or kernel\+erofs"):
        _build(rootfs, tmp_path / "out")
