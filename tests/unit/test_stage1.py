"""The stage-one initramfs (formats/stage1.py): what it holds, for each medium, and the errors that stop it.

The images here carry the real Debian cloud kernel and its modules (with modules.dep and modules.alias made
the way `linuxkit-py pkg build` makes them) and busybox-static; the boot tests boot the result.
"""

from __future__ import annotations

import gzip
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.errors import UserError
from linuxkit_py.formats import FormatOptions, Rootfs
from linuxkit_py.formats.bootfiles import boot_files
from linuxkit_py.formats.rootimage import root_image_id
from linuxkit_py.formats.stage1 import INIT_SCRIPT, RootLocation, bzimage_version, write_stage1_initrd
from linuxkit_py.kernel.modules import ModuleInfo, module_info, module_name, modules_alias, modules_dep
from linuxkit_py.tools import run
from tests.debian import DebianKernel

EPOCH = 1492533000
ROOT_ID = "0123456789abcdef" * 4
# What the kernel image of kernels/cloud-amd64 carries (with their dependencies).
IMAGE_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "virtio_console", "ata_piix", "ata_generic",
                 "sd_mod", "sr_mod", "overlay", "squashfs", "erofs", "isofs", "vfat", "nls_cp437", "nls_ascii",
                 "nls_utf8", "nls_iso8859_1", "button", "evdev", "loop", "veth")
STORAGE = {"virtio_pci", "virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_blk",
           "virtio_scsi", "scsi_mod", "scsi_common", "sd_mod", "sr_mod", "cdrom", "ata_piix", "ata_generic", "libata"}
APPLETS = {"cat", "dd", "find", "grep", "head", "ls", "mkdir", "modprobe", "mount", "poweroff", "sh", "sha256sum",
           "sleep", "sort", "switch_root", "umount", "wc", "xargs"}


def file_entry(path: str, source: Path, mode: int = 0o644) -> Entry:
    size = source.stat().st_size
    return Entry(path, Kind.FILE, mode, size=size, data=FileRegion(str(source), 0, size))


def bytes_entry(path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(path, Kind.FILE, mode, size=len(data), data=data)


def _closure(kernel: DebianKernel, names: tuple[str, ...]) -> list[ModuleInfo]:
    by_name = {module_name(p.name): p for p in kernel.modules_dir.rglob("*.ko")}
    infos: dict[str, ModuleInfo] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in infos:
            continue
        path = by_name[name]
        info = module_info(str(path.relative_to(kernel.modules_dir)), path.read_bytes(), name)
        infos[name] = info
        pending += info.depends
    return sorted(infos.values(), key=lambda info: info.path)


def make_kernel_entries(kernel: DebianKernel, names: tuple[str, ...]) -> list[Entry]:
    """boot/kernel and lib/modules/<version>/ with `names` (and what they need), as kernel.tar lays them out."""
    modules = _closure(kernel, names)
    base = f"lib/modules/{kernel.version}"
    entries = [file_entry("boot/kernel", kernel.bzimage)]
    entries += [file_entry(f"{base}/{info.path}", kernel.modules_dir / info.path) for info in modules]
    entries += [bytes_entry(f"{base}/modules.dep", modules_dep(modules, "test")),
                bytes_entry(f"{base}/modules.alias", modules_alias(modules)),
                file_entry(f"{base}/modules.builtin", kernel.modules_dir / "modules.builtin")]
    return entries


@pytest.fixture(scope="module")
def kernel_entries(debian_kernel: DebianKernel) -> list[Entry]:
    return make_kernel_entries(debian_kernel, IMAGE_MODULES)


@pytest.fixture(scope="module")
def busybox(busybox_static: Path) -> Entry:
    return file_entry("bin/busybox", busybox_static, 0o755)


def image(kernel_entries: list[Entry], *extra: Entry, drop: tuple[str, ...] = ()) -> Rootfs:
    entries = [entry for entry in [*kernel_entries, *extra] if not any(entry.path.endswith(d) for d in drop)]
    dirs = {"/".join(e.path.split("/")[:i]) for e in entries for i in range(1, e.path.count("/") + 1)}
    return Rootfs([*(Entry(d, Kind.DIR, 0o755) for d in sorted(dirs)), *entries], EPOCH)


@dataclass(frozen=True)
class Member:
    mode: int
    data: bytes
    rdev: tuple[int, int]


def read_newc(data: bytes) -> dict[str, Member]:
    """The members of a newc cpio archive (the kernel's initramfs format)."""
    members: dict[str, Member] = {}
    offset = 0
    while True:
        fields = [int(data[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rdevmajor, rdevminor, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_start = offset + 110
        name = data[name_start:name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return members
        members[name] = Member(mode, data[body:body + filesize], (rdevmajor, rdevminor))
        offset = body + filesize + (-filesize % 4)


def stage_one(rootfs: Rootfs, location: RootLocation, medium: str, tmp_path: Path) -> dict[str, Member]:
    out = tmp_path / "stage1.img"
    with open(out, "wb") as f:
        write_stage1_initrd(rootfs, f, location=location, medium=medium)
    return read_newc(gzip.decompress(out.read_bytes()))


def module_names(members: dict[str, Member]) -> set[str]:
    return {module_name(path) for path in members if path.endswith(".ko")}


def conf(members: dict[str, Member]) -> str:
    return members["etc/stage1.conf"].data.decode()


def test_cdrom_stage_one_holds_busybox_the_modules_to_reach_an_iso_and_what_to_look_for(
        kernel_entries: list[Entry], busybox: Entry, busybox_static: Path, debian_kernel: DebianKernel,
        tmp_path: Path) -> None:
    members = stage_one(image(kernel_entries, busybox), RootLocation("squashfs", ROOT_ID, "rootfs.squashfs"),
                        "cdrom", tmp_path)

    assert module_names(members) == STORAGE | {"squashfs", "overlay", "isofs", "loop"}
    assert conf(members) == (
        "# written by linuxkit-py: what stage one (/init) looks for\n"
        "ROOT_FSTYPE=squashfs\n"
        f"ROOT_ID={ROOT_ID}\n"
        "ROOT_IMAGE=rootfs.squashfs\n"
        "MEDIUM_FSTYPES=iso9660\n"
        "MODULES='squashfs overlay isofs loop'\n"
        "SOFTDEPS=''\n"
        "ROOT_WAIT=30\n"
        "INIT=/sbin/init\n")
    assert members["bin/busybox"].data == busybox_static.read_bytes()
    assert members["init"].data == INIT_SCRIPT.encode() and members["init"].mode == stat.S_IFREG | 0o755
    assert members["dev/console"].mode == stat.S_IFCHR | 0o600 and members["dev/console"].rdev == (5, 1)
    links = {path: m.data.decode() for path, m in members.items() if stat.S_ISLNK(m.mode)}
    # sbin/modprobe: where the kernel's own module requests go
    assert links == {f"bin/{applet}": "busybox" for applet in APPLETS} | {"sbin/modprobe": "../bin/busybox"}
    for directory in ("proc", "sys", "dev", "medium", "lower", "overlay", "newroot"):
        assert stat.S_ISDIR(members[directory].mode), directory
    # modules.dep: the image's own lines for exactly the modules copied (each line's dependencies are there)
    base = f"lib/modules/{debian_kernel.version}"
    image_dep = next(e for e in kernel_entries if e.path == f"{base}/modules.dep").data
    assert isinstance(image_dep, bytes)
    dep_lines = members[f"{base}/modules.dep"].data.decode().splitlines()
    assert set(dep_lines) <= set(image_dep.decode().splitlines())
    assert {line.split(":")[0] for line in dep_lines} == {p.removeprefix(base + "/") for p in members
                                                          if p.endswith(".ko")}
    aliases = members[f"{base}/modules.alias"].data.decode().splitlines()
    assert "alias fs-squashfs squashfs" in aliases and "alias fs-iso9660 isofs" in aliases
    assert {line.split()[2] for line in aliases} <= module_names(members)  # not virtio_net's, not erofs'


def test_disk_stage_one_loads_vfat_and_its_character_sets(kernel_entries: list[Entry], busybox: Entry,
                                                          tmp_path: Path) -> None:
    members = stage_one(image(kernel_entries, busybox), RootLocation("erofs", ROOT_ID, "rootfs.erofs"), "disk",
                        tmp_path)

    assert module_names(members) == STORAGE | {"erofs", "libcrc32c", "overlay", "vfat", "fat", "loop", "nls_cp437",
                                               "nls_iso8859_1", "nls_utf8", "nls_ascii"}
    assert "ROOT_IMAGE=rootfs.erofs\nMEDIUM_FSTYPES=vfat\n" in conf(members)
    assert "MODULES='erofs overlay vfat loop nls_cp437 nls_iso8859_1 nls_utf8 nls_ascii'\n" in conf(members)


def test_whole_disk_stage_one_needs_neither_loop_nor_a_medium_filesystem(kernel_entries: list[Entry], busybox: Entry,
                                                                        tmp_path: Path) -> None:
    members = stage_one(image(kernel_entries, busybox), RootLocation("squashfs", ROOT_ID), "virtio", tmp_path)

    assert module_names(members) == STORAGE | {"squashfs", "overlay"}
    assert "ROOT_IMAGE=''\nMEDIUM_FSTYPES=''\nMODULES='squashfs overlay'\n" in conf(members)


def test_init_script_is_valid_busybox_shell(busybox_static: Path, tmp_path: Path) -> None:
    script = tmp_path / "init"
    script.write_text(INIT_SCRIPT)
    run([busybox_static, "sh", "-n", script], capture=True)


def test_same_image_same_bytes_with_the_ucode_cpio_first(kernel_entries: list[Entry], busybox: Entry,
                                                         tmp_path: Path) -> None:
    microcode = b"070701-early-microcode"
    ucode = bytes_entry("boot/ucode.cpio", microcode)
    rootfs = image(kernel_entries, busybox, ucode)
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        with open(out, "wb") as f:
            write_stage1_initrd(rootfs, f, location=RootLocation("squashfs", ROOT_ID), medium="virtio")
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith(microcode + b"\x1f\x8b")
    assert "boot/ucode.cpio" not in read_newc(gzip.decompress(outputs[0][len(microcode):]))


@pytest.mark.parametrize("link", [Entry("bin/busybox", Kind.SYMLINK, 0o777, linkname="../usr/bin/busybox"),
                                  Entry("bin/busybox", Kind.SYMLINK, 0o777, linkname="/usr/bin/busybox"),
                                  Entry("bin/busybox", Kind.HARDLINK, 0o755, linkname="usr/bin/busybox")])
def test_busybox_behind_a_link_is_found(kernel_entries: list[Entry], busybox: Entry, link: Entry,
                                        tmp_path: Path) -> None:
    rootfs = image(kernel_entries, busybox.evolve(path="usr/bin/busybox"), link)
    members = stage_one(rootfs, RootLocation("squashfs", ROOT_ID), "virtio", tmp_path)
    assert members["bin/busybox"].data == read_data_of(busybox)
    assert members["bin/busybox"].mode == stat.S_IFREG | 0o755


def read_data_of(entry: Entry) -> bytes:
    assert isinstance(entry.data, FileRegion)
    return Path(entry.data.path).read_bytes()


def test_a_kernel_without_modules_gets_a_stage_one_without_modules(kernel_entries: list[Entry], busybox: Entry,
                                                                   tmp_path: Path) -> None:
    # e.g. a kernel with squashfs, overlay and virtio built in
    members = stage_one(image(kernel_entries[:1], busybox), RootLocation("squashfs", ROOT_ID), "virtio", tmp_path)
    assert not any(path.startswith("lib/") for path in members)
    assert "MODULES=''\n" in conf(members)


def stage_one_error(rootfs: Rootfs, tmp_path: Path, fs: str = "squashfs", medium: str = "cdrom") -> str:
    with pytest.raises(UserError) as err, open(tmp_path / "stage1.img", "wb") as out:
        write_stage1_initrd(rootfs, out, location=RootLocation(fs, ROOT_ID, f"rootfs.{fs}"), medium=medium)
    return str(err.value)


HINT = "(hint: root on media needs an init image with a static busybox, e.g. @pkg:pkg/init (busybox-static))"


def test_no_busybox(kernel_entries: list[Entry], tmp_path: Path) -> None:
    assert stage_one_error(image(kernel_entries), tmp_path) == (
        f"the image has no /bin/busybox for the stage-one initramfs {HINT}")


def test_dynamic_busybox(kernel_entries: list[Entry], tmp_path: Path) -> None:
    dynamic = file_entry("bin/busybox", Path(os.path.realpath("/bin/true")), 0o755)
    message = stage_one_error(image(kernel_entries, dynamic), tmp_path)
    assert message.startswith("/bin/busybox is dynamically linked (/lib64/ld-linux-x86-64.so.2): the stage-one "
                              "initramfs needs a static busybox (hint: ")


def test_busybox_that_is_a_script(kernel_entries: list[Entry], tmp_path: Path) -> None:
    script = bytes_entry("bin/busybox", b"#!/bin/sh\necho I am busybox\n", 0o755)
    assert stage_one_error(image(kernel_entries, script), tmp_path) == (
        f"/bin/busybox is not an ELF executable: the stage-one initramfs needs a static busybox {HINT}")


def test_kernel_without_the_root_filesystem_module(busybox: Entry, debian_kernel: DebianKernel,
                                                   tmp_path: Path) -> None:
    kernel = make_kernel_entries(debian_kernel, tuple(name for name in IMAGE_MODULES if name != "erofs"))
    version = debian_kernel.version
    assert stage_one_error(image(kernel, busybox), tmp_path, fs="erofs", medium="disk") == (
        f"the kernel {version} has no erofs (neither a module in lib/modules/{version} nor built in): root on media "
        "needs it (hint: add the module to the kernel image, e.g. kernels/cloud-amd64/build.yml)")


def test_a_built_in_filesystem_needs_no_module(busybox: Entry, debian_kernel: DebianKernel, tmp_path: Path) -> None:
    kernel = make_kernel_entries(debian_kernel, tuple(name for name in IMAGE_MODULES if name != "squashfs"))
    builtin = next(i for i, e in enumerate(kernel) if e.path.endswith("/modules.builtin"))
    listed = (debian_kernel.modules_dir / "modules.builtin").read_bytes() + b"kernel/fs/squashfs/squashfs.ko\n"
    kernel[builtin] = bytes_entry(kernel[builtin].path, listed)
    members = stage_one(image(kernel, busybox), RootLocation("squashfs", ROOT_ID), "virtio", tmp_path)
    assert "squashfs" not in module_names(members)
    assert "MODULES=overlay\n" in conf(members)


def test_module_named_by_modules_dep_but_missing(kernel_entries: list[Entry], busybox: Entry,
                                                 debian_kernel: DebianKernel, tmp_path: Path) -> None:
    rootfs = image(kernel_entries, busybox, drop=("/isofs.ko",))
    assert stage_one_error(rootfs, tmp_path) == (
        f"/lib/modules/{debian_kernel.version}/modules.dep names kernel/fs/isofs/isofs.ko, which the image does "
        "not have")


def test_modules_of_another_kernel(kernel_entries: list[Entry], busybox: Entry, debian_kernel: DebianKernel,
                                   tmp_path: Path) -> None:
    version = debian_kernel.version
    other = [e.evolve(path=e.path.replace(version, "5.10.0-99-amd64")) for e in kernel_entries]
    assert stage_one_error(image(other, busybox), tmp_path) == (
        f"the kernel is {version} but the image has modules for 5.10.0-99-amd64 only "
        "(hint: use the kernel image's own kernel.tar)")


def test_modules_without_modules_dep(kernel_entries: list[Entry], busybox: Entry, debian_kernel: DebianKernel,
                                     tmp_path: Path) -> None:
    rootfs = image(kernel_entries, busybox, drop=("/modules.dep",))
    assert stage_one_error(rootfs, tmp_path) == (
        f"/lib/modules/{debian_kernel.version} has no modules.dep: the stage-one initramfs cannot load modules "
        "(hint: build the kernel image with linuxkit-py pkg build (it writes modules.dep))")


def test_bzimage_version(debian_kernel: DebianKernel) -> None:
    assert bzimage_version(file_entry("boot/kernel", debian_kernel.bzimage)) == debian_kernel.version
    assert bzimage_version(bytes_entry("boot/kernel", b"\0" * 1024)) is None


def test_boot_files_in_root_on_media_mode_put_the_image_on_the_medium(kernel_entries: list[Entry], busybox: Entry,
                                                                      tmp_path: Path) -> None:
    rootfs = image(kernel_entries, busybox, bytes_entry("boot/cmdline", b"console=ttyS0 quiet\n"))
    rootfs.options = FormatOptions(root="squashfs")
    with boot_files(rootfs, "cdrom", tmp_path) as bf:
        assert bf.cmdline == "console=ttyS0 quiet"  # stage one needs nothing from the command line
        assert [name for name, _ in bf.extra] == ["rootfs.squashfs"]
        squashfs = bf.extra[0][1]
        assert squashfs.read_bytes()[:4] == b"hsqs"
        members = read_newc(gzip.decompress(bf.initrd.read_bytes()))
        expected = f"ROOT_ID={root_image_id(squashfs)}\nROOT_IMAGE=rootfs.squashfs\nMEDIUM_FSTYPES=iso9660\n"
        assert expected in conf(members)
