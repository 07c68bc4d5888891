"""kernels/cloud-amd64: /kernel and /kernel.tar from the real linux-image .deb.

modules.dep and modules.alias are checked against busybox depmod run over the same modules,
and an initramfs of static busybox plus kernel.tar boots in qemu: the modalias coldplug loop
brings up eth0 and the virtio disk, `modprobe overlay` works, and mounting a squashfs makes
the kernel load squashfs through /sbin/modprobe and modules.alias.
"""

from __future__ import annotations

import re
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from linuxkit_py.archive.entry import Entry, FileRegion, Kind, iter_data
from linuxkit_py.archive.tarindex import read_tar_entries
from linuxkit_py.formats.initrd import write_initrd
from linuxkit_py.fsutil import atomic_output
from linuxkit_py.kernel.modules import compile_module_glob, kernel_package_entries, kernel_version
from linuxkit_py.run.qemu import QemuOptions, boot
from linuxkit_py.tools import run
from tests import debian

REPO = Path(__file__).resolve().parents[2]
BUILD_YML = REPO / "kernels" / "cloud-amd64" / "build.yml"
BZIMAGE_MAGIC_AT = 0x202
MAX_KERNEL_TAR = 6 << 20  # the selection is meant to stay small: every image carries it in its initrd


def linux_image_data_tar(meta_package: str) -> Path:
    """The uncompressed data tar of the linux-image .deb the meta package depends on (cached)."""
    package = debian.resolve_dependency(meta_package)
    target = debian.CACHE_DIR / f"{package}.data.tar"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as download:
        debian._apt(["apt-get", "download", "-q", package], cwd=Path(download))  # refreshes stale lists
        [deb] = Path(download).glob("*.deb")
        with atomic_output(target) as out:
            run(["dpkg-deb", "--fsys-tarfile", deb], stdout=out, timeout=300)
    return target


@dataclass(frozen=True)
class KernelPackage:
    definition: dict[str, object]  # build.yml
    version: str
    kernel: Entry
    kernel_tar: Path
    seconds_cold: float
    seconds_warm: float

    def modules_file(self, name: str) -> str:
        with tarfile.open(self.kernel_tar) as tar:
            member = tar.extractfile(f"lib/modules/{self.version}/{name}")
            assert member is not None
            return member.read().decode()


@pytest.fixture(scope="module")
def kernel_package(tmp_path_factory: pytest.TempPathFactory) -> KernelPackage:
    definition = yaml.safe_load(BUILD_YML.read_text())
    data_tar = linux_image_data_tar(definition["kernel"]["package"])
    linux_image = read_tar_entries(data_tar, data_tar.name)
    version = kernel_version(linux_image)
    workdir = tmp_path_factory.mktemp("kernel-work")
    globs = definition["kernel"]["modules"]
    started = time.monotonic()
    kernel, kernel_tar = kernel_package_entries(linux_image, version, globs, data_tar.name, workdir)
    cold = time.monotonic()
    again = kernel_package_entries(linux_image, version, globs, data_tar.name, workdir)
    warm = time.monotonic()
    assert again == [kernel, kernel_tar]
    assert isinstance(kernel_tar.data, FileRegion)
    return KernelPackage(definition, version, kernel, Path(kernel_tar.data.path), cold - started, warm - cold)


def parse_modules_dep(text: str) -> dict[str, set[str]]:
    deps = {}
    for line in text.splitlines():
        module, _, rest = line.partition(":")
        deps[module] = set(rest.split())
    return deps


def test_the_definition_and_its_kernel_tar(kernel_package: KernelPackage) -> None:
    definition = kernel_package.definition
    assert definition["image"] == "linuxkit-py/kernel-cloud-amd64"
    assert kernel_package.version.endswith("-cloud-amd64")
    assert kernel_package.kernel.path == "kernel"
    bzimage = b"".join(iter_data(kernel_package.kernel.data))
    assert bzimage[BZIMAGE_MAGIC_AT : BZIMAGE_MAGIC_AT + 4] == b"HdrS"  # the x86 boot protocol header
    with tarfile.open(kernel_package.kernel_tar) as tar:
        members = tar.getmembers()
    base = f"lib/modules/{kernel_package.version}/"
    modules = sorted(m.name.removeprefix(base) for m in members if m.name.endswith(".ko"))
    assert all(m.name == "lib" or m.name.startswith(("lib/modules", base)) for m in members)
    for glob in definition["kernel"]["modules"]:  # type: ignore[index]
        assert any(compile_module_glob(glob).fullmatch(m) for m in modules), glob
    assert "kernel/drivers/ata/libata.ko" in modules  # a dependency nobody named
    assert kernel_package.kernel_tar.stat().st_size <= MAX_KERNEL_TAR
    print(f"\nkernel.tar: {len(modules)} modules, {kernel_package.kernel_tar.stat().st_size} bytes; "
          f"built in {kernel_package.seconds_cold:.3f} s cold, {kernel_package.seconds_warm:.3f} s warm")


def test_modules_dep_and_alias_agree_with_busybox_depmod(kernel_package: KernelPackage, tmp_path: Path) -> None:
    version = kernel_package.version
    staging = tmp_path / "staging"
    with tarfile.open(kernel_package.kernel_tar) as tar:
        tar.extractall(staging, members=[m for m in tar if m.isdir() or m.name.endswith(".ko")], filter="data")
    modules_dir = staging / "lib" / "modules" / version
    assert not (modules_dir / "modules.dep").exists()
    run(["busybox", "depmod", "-b", staging, version], capture=True, timeout=60)

    ours = parse_modules_dep(kernel_package.modules_file("modules.dep"))
    theirs = parse_modules_dep((modules_dir / "modules.dep").read_text())
    assert ours == theirs
    assert sum(len(deps) for deps in ours.values()) > 30  # a real graph, not a list of leaves
    our_aliases = kernel_package.modules_file("modules.alias").splitlines()
    assert sorted(our_aliases) == sorted((modules_dir / "modules.alias").read_text().splitlines())
    assert "alias fs-overlay overlay" in our_aliases


def test_modules_dep_lists_every_dependency_before_its_own(kernel_package: KernelPackage) -> None:
    """modprobe loads a line's paths from the last to the first: each module after its dependencies."""
    deps = parse_modules_dep(kernel_package.modules_file("modules.dep"))
    for line in kernel_package.modules_file("modules.dep").splitlines():
        listed = line.partition(":")[2].split()
        for position, module in enumerate(listed):
            assert deps[module] <= set(listed[position + 1 :]), line


INIT = """#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Coldplug as pkg/init does it: until /proc/modules stops growing (virtio children appear
# only once virtio_pci has bound).
loaded=-1
passes=0
while [ "$(wc -l < /proc/modules)" != "$loaded" ]; do
    loaded=$(wc -l < /proc/modules)
    passes=$((passes + 1))
    find /sys/devices -name modalias -exec cat {} + | sort -u | xargs modprobe -abq
done
echo "COLDPLUG passes=$passes modules=$loaded uptime=$(cut -d' ' -f1 /proc/uptime)"
ip link
modprobe overlay && grep -w overlay /proc/filesystems
mkdir /data
# No modprobe here: the kernel asks /sbin/modprobe for fs-squashfs.
mount -t squashfs -o ro /dev/vda /data && cat /data/hello.txt
echo MODULES-BEGIN
lsmod
echo MODULES-END
poweroff -f
"""
APPLETS = {"bin": ("cat", "cut", "echo", "find", "grep", "ip", "lsmod", "mkdir", "mount", "poweroff", "sh", "sort",
                   "wc", "xargs"),
           "sbin": ("modprobe",)}


def initramfs_entries(busybox: Path, kernel_tar: Path) -> list[Entry]:
    size = busybox.stat().st_size
    entries = [Entry(d, Kind.DIR, 0o755) for d in ("bin", "dev", "proc", "sbin", "sys")]
    entries.append(Entry("bin/busybox", Kind.FILE, 0o755, size=size, data=FileRegion(str(busybox), 0, size)))
    entries += [Entry(f"{d}/{a}", Kind.SYMLINK, 0o777, linkname="/bin/busybox") for d, names in APPLETS.items()
                for a in names]
    entries.append(Entry("init", Kind.FILE, 0o755, size=len(INIT), data=INIT.encode()))
    return entries + read_tar_entries(kernel_tar, "kernel.tar")


@pytest.mark.boot
def test_boot_loads_modules_by_modalias_and_by_name(kernel_package: KernelPackage, busybox_static: Path,
                                                    tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"".join(iter_data(kernel_package.kernel.data)))
    initrd = tmp_path / "initrd.img"
    with open(initrd, "wb") as out:
        write_initrd(initramfs_entries(busybox_static, kernel_package.kernel_tar), out, epoch=0)
    squashfs_dir = tmp_path / "squashfs"
    squashfs_dir.mkdir()
    (squashfs_dir / "hello.txt").write_text("hello from squashfs\n")
    disk = tmp_path / "data.img"
    run(["mksquashfs", squashfs_dir, disk, "-noappend", "-quiet"], capture=True, timeout=60)

    booted = boot(kernel, initrd, "quiet", QemuOptions(mem=256, disks=[str(disk)]), timeout=120,
                  log=tmp_path / "console.log", until=lambda text: "MODULES-END" in text)
    text = booted.output
    assert "MODULES-END" in text, text[-3000:]
    coldplug = re.search(r"COLDPLUG passes=(\d+) modules=(\d+)", text)
    assert coldplug and int(coldplug.group(1)) >= 2, text[-3000:]
    assert re.search(r"^\d+: eth0: ", text, re.MULTILINE), text[-3000:]
    assert re.search(r"^nodev\toverlay$", text, re.MULTILINE), text[-3000:]
    assert "hello from squashfs\n" in text
    lsmod = text.split("MODULES-BEGIN\n", 1)[1].split("MODULES-END", 1)[0]
    loaded = {line.split()[0] for line in lsmod.splitlines()[1:] if line.strip()}
    assert {"virtio_pci", "virtio_net", "net_failover", "failover", "virtio_blk", "overlay",
            "squashfs", "ata_piix"} <= loaded, lsmod
    print(f"\n{coldplug.group(0)}; loaded: {' '.join(sorted(loaded))}")
