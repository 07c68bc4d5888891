"""Debian packages for tests: fetched with `apt-get download`, unpacked with `dpkg-deb -x`.

Each package is unpacked once into tests/.cache/debian/<package>/ (git-ignored); later test
runs reuse it without touching the network. `apt-get update` runs only when apt cannot
find or fetch a package (missing or stale package lists).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from linuxkit_py.errors import UserError
from linuxkit_py.tools import run

CACHE_DIR = Path(__file__).resolve().parent / ".cache" / "debian"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"


def _apt(cmd: list[str], cwd: Path | None = None) -> str:
    """Run an apt command; on failure refresh the package lists once and try again."""
    try:
        return run(cmd, capture=True, cwd=cwd, timeout=600).stdout.decode()
    except UserError:
        run(["apt-get", "update", "-q"], capture=True, timeout=600)
        return run(cmd, capture=True, cwd=cwd, timeout=600).stdout.decode()


def resolve_dependency(meta_package: str) -> str:
    """The package a meta package depends on (linux-image-cloud-amd64 -> linux-image-6.1.0-NN-cloud-amd64)."""
    for line in _apt(["apt-cache", "depends", meta_package]).splitlines():
        kind, _, name = line.strip().lstrip("|").partition(":")
        if kind == "Depends" and name.strip():
            return name.strip()
    raise AssertionError(f"apt-cache depends {meta_package}: no dependency listed")


def unpacked_package(package: str, cache_dir: Path = CACHE_DIR) -> Path:
    """The root of `package`'s files, downloaded and unpacked on first use."""
    target = cache_dir / package
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{package}.", dir=cache_dir) as tmp:
        download = Path(tmp) / "download"
        download.mkdir()
        _apt(["apt-get", "download", "-q", package], cwd=download)
        debs = list(download.glob("*.deb"))
        assert len(debs) == 1, f"apt-get download {package} gave {debs}"
        root = Path(tmp) / "root"
        run(["dpkg-deb", "-x", debs[0], root], capture=True, timeout=300)
        (root / ".deb").write_text(debs[0].name + "\n")  # which version this is
        # Another test session may have finished the same package meanwhile: keep theirs.
        with contextlib.suppress(OSError):
            os.rename(root, target)
    if not target.is_dir():
        raise AssertionError(f"could not unpack {package} into {target}")
    return target


@dataclass(frozen=True)
class DebianKernel:
    package: str  # linux-image-6.1.0-NN-cloud-amd64
    version: str  # `uname -r`, the name of the modules directory
    bzimage: Path
    modules_dir: Path  # lib/modules/<version>: kernel/**.ko, modules.builtin, ... (no modules.dep)


def debian_kernel(meta_package: str = KERNEL_META_PACKAGE) -> DebianKernel:
    """The current Debian cloud kernel (the package the meta package depends on)."""
    package = resolve_dependency(meta_package)
    root = unpacked_package(package)
    bzimages = sorted((root / "boot").glob("vmlinuz-*"))
    assert len(bzimages) == 1, f"{package}: expected one boot/vmlinuz-*, found {bzimages}"
    version = bzimages[0].name.removeprefix("vmlinuz-")
    for modules_root in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if (modules_root / version).is_dir():
            return DebianKernel(package, version, bzimages[0], modules_root / version)
    raise AssertionError(f"{package}: no modules directory for {version}")


def busybox_static() -> Path:
    """/bin/busybox of busybox-static (static, so it runs in any image)."""
    busybox = unpacked_package(BUSYBOX_PACKAGE) / "bin" / "busybox"
    assert busybox.is_file(), f"{BUSYBOX_PACKAGE} has no bin/busybox"
    return busybox
