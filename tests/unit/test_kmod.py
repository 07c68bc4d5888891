"""kmod: module globs, modules.dep/alias generation, and kernel.tar from Debian's cloud kernel modules.

The real-module tests read the unpacked Debian kernel (tests/debian.py) through Entries whose data
are FileRegions of the unpacked files, as the package's data tar would give them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from linuxkit_py.archive.entry import Entry, FileRegion, Kind, read_data
from linuxkit_py.errors import UserError
from linuxkit_py.kernel.modules import (
    ModuleInfo,
    compile_module_glob,
    kernel_package_entries,
    kernel_version,
    modules_alias,
    modules_dep,
    modules_softdep,
)
from tests.debian import DebianKernel

LABEL = "linux-image-test"
VIRTIO_NET = "kernel/drivers/net/virtio_net.ko"


# --- globs -------------------------------------------------------------------------------

@pytest.mark.parametrize(("glob", "path", "matches"), [
    ("kernel/drivers/virtio/**", "kernel/drivers/virtio/virtio.ko", True),
    ("kernel/drivers/virtio/**", "kernel/drivers/virtio/sub/x.ko", True),
    ("kernel/drivers/virtio/**", "kernel/drivers/virtio_x.ko", False),
    ("kernel/drivers/virtio/*", "kernel/drivers/virtio/sub/x.ko", False),
    ("kernel/**/virtio_net.ko", "kernel/drivers/net/virtio_net.ko", True),
    ("kernel/**/virtio_net.ko", "kernel/virtio_net.ko", True),
    ("**/nls_*.ko", "kernel/fs/nls/nls_utf8.ko", True),
    ("kernel/fs/nls/nls_cp4?7.ko", "kernel/fs/nls/nls_cp437.ko", True),
    ("kernel/fs/nls/nls_cp[0-4]*.ko", "kernel/fs/nls/nls_cp850.ko", False),
    ("kernel/fs/nls/nls_cp[!8]*.ko", "kernel/fs/nls/nls_cp437.ko", True),
    ("kernel/fs/overlayfs/overlay.ko", "kernel/fs/overlayfs/overlay.ko", True),
    ("kernel/fs/overlayfs/overlay.ko", "kernel/fs/overlayfs/overlay.kox", False),
    ("kernel/fs/overlay+fs/*.ko", "kernel/fs/overlay+fs/a.ko", True),
    ("kernel/[^x].ko", "kernel/^.ko", True),
    ("kernel/[^x].ko", "kernel/a.ko", False),
    ("kernel/[ab.ko", "kernel/[ab.ko", True),
])
def test_module_globs(glob: str, path: str, matches: bool) -> None:
    assert bool(compile_module_glob(glob).fullmatch(path)) is matches


# --- index files from ModuleInfo -------------------------------------------------------

def info(name: str, *depends: str, aliases: tuple[str, ...] = (), softdeps: tuple[str, ...] = ()) -> ModuleInfo:
    return ModuleInfo(path=f"kernel/{name}.ko", name=name, depends=depends, aliases=aliases, softdeps=softdeps)


def test_modules_dep_lists_the_full_closure_deepest_dependency_last() -> None:
    # top -> left, right; left -> base; right -> left, base (a diamond with a shortcut)
    modules = [info("top", "left", "right"), info("left", "base"), info("right", "left", "base"), info("base")]
    assert modules_dep(modules, LABEL).decode().splitlines() == [
        "kernel/top.ko: kernel/right.ko kernel/left.ko kernel/base.ko",
        "kernel/left.ko: kernel/base.ko",
        "kernel/right.ko: kernel/left.ko kernel/base.ko",
        "kernel/base.ko:",
    ]


def test_modules_dep_refuses_a_dependency_cycle() -> None:
    modules = [info("a", "b"), info("b", "c"), info("c", "a")]
    with pytest.raises(UserError) as exc:
        modules_dep(modules, LABEL)
    assert str(exc.value) == f"{LABEL}: modules depend on each other in a cycle: a -> b -> c -> a"


def test_modules_alias_and_softdep_lines() -> None:
    modules = [info("virtio_net", aliases=("virtio:d00000001v*",)),
               info("overlay", aliases=("fs-overlay",), softdeps=("pre: crc32c",)),
               info("plain")]
    assert modules_alias(modules) == b"alias virtio:d00000001v* virtio_net\nalias fs-overlay overlay\n"
    assert modules_softdep(modules) == b"softdep overlay pre: crc32c\n"


# --- kernel.tar from the real Debian kernel ------------------------------------------------

def package_entries(kernel: DebianKernel) -> list[Entry]:
    """The kernel package's bzImage and module tree as Entries (FileRegions of the unpacked files)."""
    root = kernel.modules_dir.parents[2]  # .../lib/modules/<version> -> the package root
    entries = []
    for path in sorted([kernel.bzimage, *kernel.modules_dir.rglob("*")]):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            entries.append(Entry(rel, Kind.DIR, 0o755))
        else:
            size = path.stat().st_size
            entries.append(Entry(rel, Kind.FILE, 0o644, size=size, data=FileRegion(str(path), 0, size)))
    return entries


@pytest.fixture(scope="module")
def package(debian_kernel: DebianKernel) -> list[Entry]:
    return package_entries(debian_kernel)


def kernel_tar_files(entries: list[Entry]) -> dict[str, bytes]:
    """The regular files of the `kernel.tar` entry, read back with Python's tarfile."""
    [tar_entry] = [e for e in entries if e.path == "kernel.tar"]
    with tarfile.open(fileobj=io.BytesIO(read_data(tar_entry.data))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def modules_dep_lines(files: dict[str, bytes], version: str) -> list[str]:
    return files[f"lib/modules/{version}/modules.dep"].decode().splitlines()


def test_kernel_version_is_the_modules_directory(package: list[Entry], debian_kernel: DebianKernel) -> None:
    assert kernel_version(package) == debian_kernel.version
    bzimage_only = [e for e in package if e.path.startswith("boot/")]
    assert kernel_version(bzimage_only) == debian_kernel.version
    with pytest.raises(UserError) as exc:
        kernel_version([e for e in package if not e.path.startswith(("boot/", "lib/"))])
    assert str(exc.value) == "not a kernel package: no lib/modules/<version>/ and no boot/vmlinuz-<version>"


def test_virtio_net_brings_its_dependencies(package: list[Entry], debian_kernel: DebianKernel,
                                            tmp_path: Path) -> None:
    version = debian_kernel.version
    kernel, tar = kernel_package_entries(package, version, [VIRTIO_NET], LABEL, tmp_path)

    assert (kernel.path, kernel.kind, kernel.mode) == ("kernel", Kind.FILE, 0o644)
    assert read_data(kernel.data) == debian_kernel.bzimage.read_bytes()
    assert (tar.path, tar.kind, tar.mode) == ("kernel.tar", Kind.FILE, 0o644)
    files = kernel_tar_files([kernel, tar])
    base = f"lib/modules/{version}"
    assert sorted(files) == sorted(f"{base}/{name}" for name in (
        "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko", "kernel/net/core/failover.ko",
        "modules.alias", "modules.builtin", "modules.builtin.modinfo", "modules.dep", "modules.order",
        "modules.softdep"))
    assert files[f"{base}/{VIRTIO_NET}"] == (debian_kernel.modules_dir / VIRTIO_NET).read_bytes()
    assert files[f"{base}/modules.builtin"] == (debian_kernel.modules_dir / "modules.builtin").read_bytes()
    assert modules_dep_lines(files, version) == [
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio_ring.ko:",
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko "
        "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko",
        "kernel/net/core/failover.ko:",
    ]
    assert files[f"{base}/modules.alias"] == b"alias virtio:d00000001v* virtio_net\n"
    assert files[f"{base}/modules.order"].decode().splitlines() == [
        "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko", VIRTIO_NET,
        "kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko"]
    assert files[f"{base}/modules.softdep"] == b""


def test_modules_under_usr_lib_go_to_lib_modules(package: list[Entry], debian_kernel: DebianKernel,
                                                 tmp_path: Path) -> None:
    """Debian 13 ships modules under usr/lib/modules (merged /usr); kernel.tar keeps LinuxKit's lib/modules."""
    merged = [e.evolve(path="usr/" + e.path) if e.path.startswith("lib/") else e for e in package]
    assert kernel_version(merged) == debian_kernel.version
    files = kernel_tar_files(kernel_package_entries(merged, debian_kernel.version, [VIRTIO_NET], LABEL, tmp_path))
    assert f"lib/modules/{debian_kernel.version}/{VIRTIO_NET}" in files
    assert len(modules_dep_lines(files, debian_kernel.version)) == 5


def test_kernel_tar_is_named_by_its_content_and_reused(package: list[Entry], debian_kernel: DebianKernel,
                                                       tmp_path: Path) -> None:
    globs = ["kernel/fs/overlayfs/**", "kernel/drivers/virtio/**"]
    _, first = kernel_package_entries(package, debian_kernel.version, globs, LABEL, tmp_path / "a")
    assert isinstance(first.data, FileRegion)
    written = Path(first.data.path)
    stat_before = written.stat()
    _, again = kernel_package_entries(package, debian_kernel.version, globs[::-1], LABEL, tmp_path / "a")
    _, elsewhere = kernel_package_entries(package, debian_kernel.version, globs, LABEL, tmp_path / "b")

    assert written.name == f"kernel-{hashlib.sha256(written.read_bytes()).hexdigest()}.tar"
    assert again == first  # the same file, not rewritten
    assert written.stat().st_mtime_ns == stat_before.st_mtime_ns
    assert list(written.parent.iterdir()) == [written]  # no temp file left behind
    assert isinstance(elsewhere.data, FileRegion)
    assert Path(elsewhere.data.path).read_bytes() == written.read_bytes()
    with tarfile.open(written) as tar:
        assert {(m.mtime, m.uid, m.gid) for m in tar} == {(0, 0, 0)}


def test_a_glob_that_matches_nothing_is_an_error(package: list[Entry], debian_kernel: DebianKernel,
                                                 tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        kernel_package_entries(package, debian_kernel.version, [VIRTIO_NET, "kernel/fs/ext4/**"], LABEL, tmp_path)
    assert exc.value.message == f"{LABEL}: module glob 'kernel/fs/ext4/**' matches no module"
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def replaced(package: list[Entry], path: str, data: bytes, new_path: str | None = None) -> list[Entry]:
    """`package` with the file at `path` given `data` (and moved to `new_path`)."""
    return [e.evolve(path=new_path or path, size=len(data), data=data) if e.path == path else e for e in package]


def test_a_dependency_built_for_another_kernel_fails_the_build(package: list[Entry], debian_kernel: DebianKernel,
                                                               tmp_path: Path) -> None:
    version = debian_kernel.version
    virtio = f"lib/modules/{version}/kernel/drivers/virtio/virtio.ko"
    other = version.replace(version.split("-")[1], "9" * len(version.split("-")[1]), 1)  # same length
    original = (debian_kernel.modules_dir / "kernel/drivers/virtio/virtio.ko").read_bytes()
    patched = original.replace(f"vermagic={version} ".encode(), f"vermagic={other} ".encode())
    assert patched != original

    with pytest.raises(UserError) as exc:
        kernel_package_entries(replaced(package, virtio, patched), version, [VIRTIO_NET], LABEL, tmp_path)
    assert str(exc.value) == (f"{LABEL}: {virtio}: built for kernel {other} "
                              f"(vermagic '{other} SMP preempt mod_unload modversions'), not {version}")


def test_a_missing_dependency_fails_the_build(package: list[Entry], debian_kernel: DebianKernel,
                                              tmp_path: Path) -> None:
    version = debian_kernel.version
    without_failover = [e for e in package if not e.path.endswith("/kernel/net/core/failover.ko")]
    with pytest.raises(UserError) as exc:
        kernel_package_entries(without_failover, version, [VIRTIO_NET], LABEL, tmp_path)
    assert str(exc.value) == (f"{LABEL}: lib/modules/{version}/kernel/drivers/net/net_failover.ko: "
                              "depends on failover, which is not in the package")


def test_a_file_that_is_not_a_module_fails_the_build(package: list[Entry], debian_kernel: DebianKernel,
                                                     tmp_path: Path) -> None:
    version = debian_kernel.version
    bogus = f"lib/modules/{version}/kernel/fs/overlayfs/overlay.ko"
    with pytest.raises(UserError) as exc:
        kernel_package_entries(replaced(package, bogus, b"\x7fELF not really"), version,
                               ["kernel/fs/overlayfs/**"], LABEL, tmp_path)
    assert str(exc.value).startswith(f"{LABEL}: {bogus}: not a kernel module (unreadable ELF: ")


def test_a_package_without_the_bzimage_fails(package: list[Entry], debian_kernel: DebianKernel,
                                             tmp_path: Path) -> None:
    no_bzimage = [e for e in package if not e.path.startswith("boot/")]
    with pytest.raises(UserError) as exc:
        kernel_package_entries(no_bzimage, debian_kernel.version, [], LABEL, tmp_path)
    assert str(exc.value) == f"{LABEL}: no kernel: the package has no boot/vmlinuz-{debian_kernel.version}"


@pytest.mark.parametrize(("suffix", "compress"), [
    (".ko.xz", lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)),
    (".ko.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
    (".ko.gz", lambda data: gzip.compress(data, mtime=0)),
])
def test_compressed_modules_are_stored_decompressed(package: list[Entry], debian_kernel: DebianKernel,
                                                    tmp_path: Path, suffix: str,
                                                    compress: Callable[[bytes], bytes]) -> None:
    version = debian_kernel.version
    base = f"lib/modules/{version}"
    compressed = package
    originals = {}
    for module in ("kernel/drivers/net/virtio_net.ko", "kernel/drivers/virtio/virtio_ring.ko"):
        originals[module] = (debian_kernel.modules_dir / module).read_bytes()
        compressed = replaced(compressed, f"{base}/{module}", compress(originals[module]),
                              f"{base}/{module.removesuffix('.ko')}{suffix}")

    # The glob names the plain .ko: it matches the compressed file too.
    entries = kernel_package_entries(compressed, version, [VIRTIO_NET], LABEL, tmp_path)
    files = kernel_tar_files(entries)
    for module, original in originals.items():
        assert files[f"{base}/{module}"] == original
    assert not [name for name in files if name.endswith(suffix)]
    assert "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko " \
           "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko" in modules_dep_lines(files, version)


def test_a_corrupt_compressed_module_is_an_error(package: list[Entry], debian_kernel: DebianKernel,
                                                 tmp_path: Path) -> None:
    version = debian_kernel.version
    module = f"lib/modules/{version}/kernel/fs/overlayfs/overlay.ko"
    broken = replaced(package, module, b"\xfd7zXZ\0garbage", module + ".xz")
    with pytest.raises(UserError) as exc:
        kernel_package_entries(broken, version, ["kernel/fs/overlayfs/**"], LABEL, tmp_path)
    assert str(exc.value).startswith(f"{LABEL}: {module}.xz: cannot decompress: ")
