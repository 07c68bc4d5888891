"""The stage-one initramfs of root-on-media boots: find the root image, mount it, switch_root into it.

Debian's kernels have the storage and filesystem drivers as modules, so a kernel alone cannot mount a
squashfs on a CD. Stage one is a small generated newc cpio (gzip, ucode first like the full initrd):

* `/bin/busybox`, the image's own (it must be static: nothing else is there), with applet links;
* `/lib/modules/<version>/`: the storage drivers, the root and medium filesystems, overlay and loop
  (with their modules.dep closure) taken from the image's lib/modules, i.e. the kernel's kernel.tar,
  plus modules.dep and modules.alias for those modules only;
* `/etc/stage1.conf`: what to look for (filesystem, image path on the medium, root id);
* `/init` (INIT_SCRIPT): loads the modules (by modalias, repeated until no new module loads, as
  rc.init does), looks at every block device until one is the image (its first 4 KiB have the root
  id's sha256) or holds the image as a file on an ISO 9660 / FAT filesystem, loop-mounts it read-only,
  puts a tmpfs overlay on it, moves /dev /proc /sys there and switch_roots to /sbin/init. Every
  failure prints what was looked for and powers off (or opens a shell with `linuxkit.stage1=shell`).

With `--verity` (the image carries its dm-verity hash tree, media/verity.py) stage one also holds the
image's dmsetup with its ELF closure and the dm-verity modules; it opens the image as a read-only
dm-verity device with the root hash of the kernel command line (`linuxkit.verity=`), reads it once from
end to end, and mounts the verified device instead of the image.
"""

from __future__ import annotations

import posixpath
import shlex
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from linuxkit_py.archive.entry import ContentReader, Data, Entry, Kind, read_data
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Rootfs
from linuxkit_py.formats.initrd import split_boot, write_initrd
from linuxkit_py.kernel.elf import FileView, check_elf_files, read_elf
from linuxkit_py.kernel.modules import module_name
from linuxkit_py.media.verity import BLOCK_SIZE, HASH_ALGORITHM, VerityTree

MEDIA = ("cdrom", "disk", "virtio")  # virtio: the image is a whole disk (kernel+squashfs/erofs)
BUSYBOX_PATH = "bin/busybox"
MODULES_DIR = "lib/modules"
MODULES_DEP = "modules.dep"
MODULES_ALIAS = "modules.alias"
MODULES_BUILTIN = "modules.builtin"
MODULES_SOFTDEP = "modules.softdep"
CONF_PATH = "etc/stage1.conf"
INIT_PATH = "init"
DEFAULT_INIT = "/sbin/init"
ROOT_WAIT_SECONDS = 30
CONSOLE = (5, 1)  # /dev/console, for the kernel to open as stage one's stdio
DIR_MODE, FILE_MODE, EXEC_MODE, CONSOLE_MODE = 0o755, 0o644, 0o755, 0o600
# Mount points stage one uses; they stay behind (hidden) after switch_root.
MOUNT_POINTS = ("dev", "lower", "medium", "newroot", "overlay", "proc", "sys")
APPLETS = ("cat", "dd", "find", "grep", "head", "ls", "mkdir", "modprobe", "mount", "poweroff", "sh", "sha256sum",
           "sleep", "sort", "switch_root", "umount", "wc", "xargs")
# --verity: the kernel command line parameter with the root hash, dmsetup (Debian's, dynamic, from pkg/dmsetup)
# where the image may have it, the device-mapper name of the verified root, the modules (dm_mod, dm_bufio: deps)
VERITY_PARAM = "linuxkit.verity"
DMSETUP_PATHS = ("sbin/dmsetup", "usr/sbin/dmsetup")
DMSETUP_HINT = "add pkg/dmsetup to the spec's init images, e.g. init: [..., \"@pkg:pkg/dmsetup\"]"
VERITY_DEVICE = "linuxkit-root"
VERITY_MODULES = ("dm_mod", "dm_bufio", "dm_verity")
VERITY_APPLETS = ("losetup",)  # an image that is a file on the medium becomes a block device for dmsetup

# Loaded by modalias when the hardware is there; taken when the kernel has them as modules.
STORAGE_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "sr_mod", "ata_piix", "ata_generic",
                   "ahci", "nvme",
                   "bcm2835", "sdhci_iproc")  # the Raspberry Pi's SD card: the BCM2835 sdhost, the Pi 4's emmc2
# The filesystem each medium carries the image on (mount -t), and its module.
MEDIUM_FILESYSTEMS = {"cdrom": ("iso9660", "isofs"), "disk": ("vfat", "vfat"), "virtio": None}
# vfat asks for its codepage and character set at mount time.
NLS_MODULES = ("nls_cp437", "nls_iso8859_1", "nls_utf8", "nls_ascii")

# Linux x86 boot protocol (Documentation/arch/x86/boot.rst): "HdrS" at 0x202; the u16 at 0x20e plus
# 0x200 is the offset of the NUL-terminated kernel version string ("6.1.0-56-cloud-amd64 (...) #1 ...").
BZIMAGE_MAGIC_OFFSET, BZIMAGE_MAGIC = 0x202, b"HdrS"
BZIMAGE_VERSION_POINTER, BZIMAGE_VERSION_BASE = 0x20E, 0x200
BZIMAGE_HEAD = 64 * 1024


@dataclass(frozen=True)
class RootLocation:
    """What stage one looks for."""

    fs: str  # squashfs or erofs
    root_id: str  # sha256 (hex) of the image's first 4 KiB (rootimage.root_image_id)
    image_path: str = ""  # the image as a file on the medium; "" when the image is a whole block device
    # When set, a device is the image only if its first `size` bytes have this sha256 (hex) too: tells apart
    # images whose first 4 KiB are the same, as two versions of one spec in the slots of an A/B disk.
    size: int = 0
    sha256: str = ""
    verity: VerityTree | None = None  # --verity: the tree appended to the image, opened with dmsetup
    # When set, a device is the image only if the 4 KiB at `probe_offset` have this sha256 (hex) too: on an A/B
    # disk with --verity, the top block of the hash tree, which any change of the image's data changes, and
    # which dm-verity then holds the rest of the image to (one read of the image, not two).
    probe_offset: int = 0
    probe_sha256: str = ""


def verity_cmdline(cmdline: str, location: RootLocation) -> str:
    """The kernel command line with the root hash stage one checks the image against (with --verity)."""
    if location.verity is None:
        return cmdline
    return f"{cmdline} {VERITY_PARAM}={location.verity.root_hash}".strip()


def _head(data: Data | None, size: int) -> bytes:
    head = b""
    with ContentReader() as reader:
        for chunk in reader.chunks(data):
            head += chunk
            if len(head) >= size:
                break
    return head[:size]


def bzimage_version(kernel: Entry) -> str | None:
    """The release (`uname -r`) an x86 bzImage announces in its setup header, or None."""
    head = _head(kernel.data, BZIMAGE_HEAD)
    if head[BZIMAGE_MAGIC_OFFSET:BZIMAGE_MAGIC_OFFSET + len(BZIMAGE_MAGIC)] != BZIMAGE_MAGIC:
        return None
    (pointer,) = struct.unpack_from("<H", head, BZIMAGE_VERSION_POINTER)
    start = pointer + BZIMAGE_VERSION_BASE
    end = head.find(b"\0", start)
    if pointer == 0 or end < 0:
        return None
    words = head[start:end].decode(errors="replace").split()
    return words[0] if words else None


class _Tree:
    """The image's files by path, hard links and symlinks resolved."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.by_path: dict[str, Entry] = {}
        for entry in entries:
            if entry.kind is Kind.HARDLINK and entry.linkname in self.by_path:
                self.by_path[entry.path] = self.by_path[entry.linkname]  # the file it links to
            else:
                self.by_path[entry.path] = entry

    def file(self, path: str) -> Entry | None:
        for _ in range(40):  # symlink hops, as the kernel's limit
            entry = self.by_path.get(path)
            if entry is None or entry.kind is not Kind.SYMLINK:
                return entry if entry is not None and entry.kind is Kind.FILE else None
            target = entry.linkname
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target)).lstrip("/") \
                if not target.startswith("/") else posixpath.normpath(target).lstrip("/")
        return None


def static_busybox(tree: _Tree) -> Entry:
    busybox = tree.file(BUSYBOX_PATH)
    hint = "root on media needs an init image with a static busybox, e.g. @pkg:pkg/init (busybox-static)"
    if busybox is None:
        raise UserError(f"the image has no /{BUSYBOX_PATH} for the stage-one initramfs", hint=hint)
    elf = read_elf(busybox)
    if elf is None:
        raise UserError(f"/{BUSYBOX_PATH} is not an ELF executable: the stage-one initramfs needs a static busybox",
                        hint=hint)
    if elf.interpreter is not None:
        raise UserError(f"/{BUSYBOX_PATH} is dynamically linked ({elf.interpreter}): the stage-one initramfs needs "
                        "a static busybox", hint=hint)
    return busybox


def modules_version(tree: _Tree, kernel: Entry) -> str | None:
    """The lib/modules/<version> matching the kernel; None when the image has no modules at all."""
    versions = sorted({path.split("/")[2] for path in tree.by_path
                       if path.startswith(MODULES_DIR + "/") and path.count("/") >= 2})
    if not versions:
        return None
    release = bzimage_version(kernel)
    if release is not None:
        if release not in versions:
            raise UserError(f"the kernel is {release} but the image has modules for {', '.join(versions)} only",
                            hint="use the kernel image's own kernel.tar")
        return release
    if len(versions) > 1:
        raise UserError(f"cannot tell which of lib/modules/{{{','.join(versions)}}} belongs to the kernel")
    return versions[0]


@dataclass(frozen=True)
class _KernelModules:
    version: str
    paths: dict[str, str]  # name -> path relative to lib/modules/<version>
    deps: dict[str, list[str]]  # path -> the paths it needs (modules.dep)
    dep_lines: dict[str, str]  # path -> its modules.dep line
    builtin: set[str]  # names of built-in modules
    alias_lines: list[tuple[str, str]]  # (module name, line)
    softdeps: dict[str, list[str]] = field(default_factory=dict)  # module name -> its `pre:` names/aliases


def _text(tree: _Tree, path: str) -> str:
    entry = tree.file(path)
    return read_data(entry.data).decode(errors="replace") if entry is not None else ""


def read_kernel_modules(tree: _Tree, version: str) -> _KernelModules:
    base = f"{MODULES_DIR}/{version}"
    if tree.file(f"{base}/{MODULES_DEP}") is None:
        raise UserError(f"/{base} has no {MODULES_DEP}: the stage-one initramfs cannot load modules",
                        hint="build the kernel image with linuxkit-py pkg build (it writes modules.dep)")
    paths: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    lines: dict[str, str] = {}
    for line in _text(tree, f"{base}/{MODULES_DEP}").splitlines():
        path, sep, rest = line.partition(":")
        if not sep:
            continue
        path = path.strip()
        paths.setdefault(module_name(path), path)
        deps[path] = rest.split()
        lines[path] = line.strip()
    builtin = {module_name(line.strip()) for line in _text(tree, f"{base}/{MODULES_BUILTIN}").splitlines()
               if line.strip()}
    aliases = []
    for line in _text(tree, f"{base}/{MODULES_ALIAS}").splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            aliases.append((module_name(words[2]), line.strip()))
    softdeps: dict[str, list[str]] = {}
    for line in _text(tree, f"{base}/{MODULES_SOFTDEP}").splitlines():
        words = line.split()
        if len(words) > 2 and words[0] == "softdep":
            pre = words[words.index("pre:") + 1:] if "pre:" in words else []
            pre = pre[:next((i for i, w in enumerate(pre) if w.endswith(":")), len(pre))]
            softdeps.setdefault(module_name(words[1]), []).extend(pre)
    return _KernelModules(version, paths, deps, lines, builtin, aliases, softdeps)


def softdep_modules(modules: _KernelModules, paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """(names stage one loads first, best-effort: the `softdep pre:` of the modules at `paths`, module paths
    those names stand for, with their dependencies). A softdep may fail (crc32c-intel without SSE4.2): the
    kernel then uses another implementation, so stage one ignores its failure."""
    names: list[str] = []
    for path in paths:
        names += [n for n in modules.softdeps.get(module_name(path), []) if n not in names]
    targets = {module_name(n) for n in names}
    extra = [path for name, path in modules.paths.items() if name in targets]
    extra += [modules.paths[mod] for mod, line in modules.alias_lines
              if line.split()[1] in names and mod in modules.paths]
    closure: list[str] = []
    pending = list(dict.fromkeys(extra))
    while pending:
        path = pending.pop(0)
        if path not in closure:
            closure.append(path)
            pending += modules.deps.get(path, [])
    return names, closure


def _wanted_modules(fs: str, medium: str, image_on_medium: bool,
                    verity: bool = False) -> tuple[list[str], list[str], list[str]]:
    """(required, loaded at start when present, loaded by modalias when present) module names."""
    required = [fs, "overlay", *(VERITY_MODULES if verity else ())]
    optional: list[str] = []
    medium_fs = MEDIUM_FILESYSTEMS[medium]
    if medium_fs is not None:
        required.append(medium_fs[1])
        if medium == "disk":
            optional += NLS_MODULES
    if image_on_medium:
        required.append("loop")
    return required, optional, list(STORAGE_MODULES)


def choose_modules(modules: _KernelModules, fs: str, medium: str, image_on_medium: bool,
                   verity: bool = False) -> tuple[list[str], list[str]]:
    """(module paths to copy with their dependencies, names stage one loads at start)."""
    required, optional, storage = _wanted_modules(fs, medium, image_on_medium, verity)
    missing = [name for name in required if name not in modules.paths and name not in modules.builtin]
    if missing:
        raise UserError(f"the kernel {modules.version} has no {', '.join(missing)} (neither a module in "
                        f"lib/modules/{modules.version} nor built in): root on media needs it",
                        hint="add the module to the kernel image, e.g. kernels/cloud-amd64/build.yml")
    load = [name for name in [*required, *optional] if name in modules.paths]
    chosen: list[str] = []
    pending = [modules.paths[name] for name in [*load, *storage] if name in modules.paths]
    while pending:
        path = pending.pop(0)
        if path in chosen:
            continue
        chosen.append(path)
        pending += modules.deps.get(path, [])
    return sorted(chosen), load


def verity_tool_entries(entries: Sequence[Entry], arch: str) -> tuple[str, list[Entry]]:
    """(dmsetup's path, the entries stage one needs to run it): dmsetup, its program interpreter and
    shared libraries as the image has them (symlinks kept), each one checked for `arch`."""
    image: dict[str, Entry] = {}
    for entry in entries:
        image.setdefault(entry.path, entry)
    view = FileView(image)
    resolved = next((found for found in map(view.resolve, DMSETUP_PATHS) if found is not None), None)
    if resolved is None:
        raise UserError(f"the image has no /{DMSETUP_PATHS[0]} (nor /{DMSETUP_PATHS[1]}) for --verity",
                        hint=DMSETUP_HINT)
    real, walk = resolved  # the file itself, and the symlinks (and hard link) that lead to it
    if read_elf(view.data_entry(real)) is None:
        raise UserError(f"/{real} is not an ELF executable: --verity needs Debian's dmsetup", hint=DMSETUP_HINT)
    needed = check_elf_files({real: view.data_entry(real)}, arch, pool=image,
                             hint="the image must have the libraries of its dmsetup (Debian's dmsetup package "
                                  "and its dependencies; pkg/dmsetup has them)")
    return "/" + real, [_copied(view, p) for p in dict.fromkeys([real, *walk, *needed])]


def _copied(view: FileView, path: str) -> Entry:
    """The image's `path` for stage one: a symlink as it is, a file (or hard link) with its contents."""
    entry = view.get(path)
    if entry is not None and entry.kind is Kind.SYMLINK:
        return Entry(path, Kind.SYMLINK, 0o777, linkname=entry.linkname)
    data = view.data_entry(path)
    return Entry(path, Kind.FILE, data.mode, size=data.size, data=data.data)


def _without_directory_symlinks(files: list[Entry]) -> list[Entry]:
    """Drop the symlinks other entries are below (a merged-/usr image's `sbin` -> `usr/sbin`, which stage one's
    own sbin/modprobe needs as a directory): every file reached through one is in stage one at its real path,
    which is what stage one runs (DMSETUP) and where the loader looks too (/lib/<triplet> and /usr/lib/<triplet>)."""
    parents = _parents(entry.path for entry in files)
    return [entry for entry in files if not (entry.kind is Kind.SYMLINK and entry.path in parents)]


def _verity_conf(tree: VerityTree, dmsetup: str) -> dict[str, str]:
    return {
        "VERITY_ROOT_HASH": tree.root_hash,  # the kernel command line's linuxkit.verity= must be this
        "VERITY_SALT": tree.salt,
        "VERITY_DATA_BLOCKS": str(tree.data_blocks),
        "VERITY_HASH_START": str(tree.hash_start_block),  # in hash blocks, from the start of the image
        "VERITY_BLOCK_SIZE": str(BLOCK_SIZE),
        "VERITY_HASH_ALGORITHM": HASH_ALGORITHM,
        "VERITY_NAME": VERITY_DEVICE,
        "DMSETUP": dmsetup,
    }


def _conf(location: RootLocation, medium: str, load: Sequence[str], softdeps: Sequence[str] = (),
          dmsetup: str = "") -> bytes:
    medium_fs = MEDIUM_FILESYSTEMS[medium]
    values = {
        "ROOT_FSTYPE": location.fs,
        "ROOT_ID": location.root_id,
        "ROOT_IMAGE": location.image_path,
        "MEDIUM_FSTYPES": medium_fs[0] if medium_fs and location.image_path else "",
        "MODULES": " ".join(load),
        "SOFTDEPS": " ".join(softdeps),
        "ROOT_WAIT": str(ROOT_WAIT_SECONDS),
        "INIT": DEFAULT_INIT,
    }
    if location.sha256:  # only then: the other images' stage1.conf stays as it was
        values |= {"ROOT_SIZE": str(location.size), "ROOT_SHA256": location.sha256}
    if location.probe_sha256:
        values |= {"ROOT_PROBE_BLOCK": str(location.probe_offset // 4096), "ROOT_PROBE_SHA256": location.probe_sha256}
    if location.verity is not None:
        values |= _verity_conf(location.verity, dmsetup)
    lines = ["# written by linuxkit-py: what stage one (/init) looks for"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return ("\n".join(lines) + "\n").encode()


def _dir(path: str) -> Entry:
    return Entry(path, Kind.DIR, DIR_MODE)


def _parents(paths: Iterable[str]) -> set[str]:
    dirs: set[str] = set()
    for path in paths:
        parent = posixpath.dirname(path)
        while parent:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    return dirs


def stage1_entries(rootfs: Rootfs, location: RootLocation, medium: str) -> list[Entry]:
    """The files of the stage-one initramfs, parents first, in path order."""
    if medium not in MEDIA:
        raise ValueError(f"unknown medium {medium!r}")
    boot = split_boot(rootfs.entries)
    tree = _Tree(boot.initrd)
    busybox = static_busybox(tree)
    files: list[Entry] = [
        Entry(BUSYBOX_PATH, Kind.FILE, EXEC_MODE, size=busybox.size, data=busybox.data),
        Entry("dev/console", Kind.CHAR, CONSOLE_MODE, devmajor=CONSOLE[0], devminor=CONSOLE[1]),
        *(Entry(f"bin/{applet}", Kind.SYMLINK, 0o777, linkname="busybox") for applet in APPLETS),
        Entry("sbin/modprobe", Kind.SYMLINK, 0o777, linkname="../bin/busybox"),  # for the kernel's requests
        Entry(INIT_PATH, Kind.FILE, EXEC_MODE, size=len(INIT_SCRIPT.encode()), data=INIT_SCRIPT.encode()),
    ]
    dmsetup = ""
    if location.verity is not None:
        dmsetup, tools = verity_tool_entries(boot.initrd, rootfs.options.arch)
        files += tools
        files += [Entry(f"bin/{applet}", Kind.SYMLINK, 0o777, linkname="busybox") for applet in VERITY_APPLETS]
    load: list[str] = []
    softdeps: list[str] = []
    version = modules_version(tree, boot.kernel)
    if version is not None:
        modules = read_kernel_modules(tree, version)
        paths, load = choose_modules(modules, location.fs, medium, bool(location.image_path),
                                     location.verity is not None)
        softdeps, extra = softdep_modules(modules, paths)
        paths = sorted({*paths, *extra})
        base = f"{MODULES_DIR}/{version}"
        for path in paths:
            module = tree.file(f"{base}/{path}")
            if module is None:
                raise UserError(f"/{base}/{MODULES_DEP} names {path}, which the image does not have")
            files.append(Entry(f"{base}/{path}", Kind.FILE, FILE_MODE, size=module.size, data=module.data))
        chosen = set(paths)
        dep = "".join(modules.dep_lines.get(path, f"{path}:") + "\n" for path in paths)
        names = {module_name(path) for path in chosen}
        alias = "".join(line + "\n" for name, line in modules.alias_lines if name in names)
        for name, text in ((MODULES_DEP, dep), (MODULES_ALIAS, alias)):
            files.append(Entry(f"{base}/{name}", Kind.FILE, FILE_MODE, size=len(text.encode()), data=text.encode()))
    conf = _conf(location, medium, load, softdeps, dmsetup)
    files.append(Entry(CONF_PATH, Kind.FILE, FILE_MODE, size=len(conf), data=conf))
    files = _without_directory_symlinks(files)
    dirs = (_parents(entry.path for entry in files) | set(MOUNT_POINTS)) - {entry.path for entry in files}
    return sorted([*map(_dir, dirs), *files], key=lambda entry: entry.path)


def write_stage1_initrd(rootfs: Rootfs, out: BinaryIO, *, location: RootLocation, medium: str) -> None:
    """Write the stage-one initramfs (ucode cpio first, when the kernel image has one) to `out`."""
    boot = split_boot(rootfs.entries)
    write_initrd(stage1_entries(rootfs, location, medium), out, rootfs.epoch, ucode=boot.ucode)


INIT_SCRIPT = r"""#!/bin/sh
# linuxkit-py stage one (generated): find the root filesystem image, mount it read-only under a tmpfs
# overlay and switch_root into it. /etc/stage1.conf says what to look for; kernel command line:
#   linuxkit.root_wait=SECONDS  how long to look for the image (default in stage1.conf)
#   linuxkit.stage1=shell       on failure open a shell instead of powering off
#   linuxkit.stage1=debug       trace every command
#   init=PATH                   what to start in the root filesystem (default /sbin/init)
#   linuxkit.verity=ROOTHASH    with VERITY_* in stage1.conf: the dm-verity root hash the image must have
export PATH=/bin:/sbin:/usr/sbin
. /etc/stage1.conf

say() {
    echo "stage1: $*"
}

on_failure=poweroff
fail() {
    say "error: $*"
    say "kernel $(uname -r); block devices: $(ls /sys/class/block 2>/dev/null | xargs)"
    if [ "$on_failure" = shell ]; then
        say "starting a shell; leaving it powers off"
        sh
    else
        say "powering off (linuxkit.stage1=shell on the kernel command line gives a shell instead)"
    fi
    poweroff -f
}

mount -t proc -o nodev,nosuid,noexec,relatime proc /proc
mount -t sysfs -o nodev,nosuid,noexec,relatime sysfs /sys
mount -t devtmpfs -o nosuid,noexec,relatime,mode=755 devtmpfs /dev

for arg in $(cat /proc/cmdline); do
    case $arg in
        linuxkit.root_wait=*) ROOT_WAIT=${arg#*=} ;;
        linuxkit.stage1=shell) on_failure=shell ;;
        linuxkit.stage1=debug) set -x ;;
        init=*) INIT=${arg#*=} ;;
    esac
done

# Drivers by modalias, repeated until no new module loads (devices behind a bus driver appear once it binds).
coldplug() {
    [ -f "/lib/modules/$(uname -r)/modules.dep" ] || return 0
    local before=-1 now
    now=$(wc -l </proc/modules)
    while [ "$now" != "$before" ]; do
        before=$now
        find /sys/devices -name modalias -exec cat {} + 2>/dev/null | sort -u | xargs modprobe -abq 2>/dev/null
        now=$(wc -l </proc/modules)
    done
}

# has_root_id FILE: the first 4 KiB of FILE are those of the root image (and, with ROOT_PROBE_SHA256, so is
# the 4 KiB block ROOT_PROBE_BLOCK, the top of its verity tree; with ROOT_SHA256, its first ROOT_SIZE bytes are
# the whole image)
has_root_id() {
    set -- "$1" $(head -c 4096 "$1" 2>/dev/null | sha256sum)
    [ "$2" = "$ROOT_ID" ] || return 1
    if [ -n "$ROOT_PROBE_SHA256" ]; then
        set -- $(dd if="$1" bs=4096 skip="$ROOT_PROBE_BLOCK" count=1 2>/dev/null | sha256sum)
        [ "$1" = "$ROOT_PROBE_SHA256" ]
        return
    fi
    [ -n "$ROOT_SHA256" ] || return 0
    set -- $(head -c "$ROOT_SIZE" "$1" 2>/dev/null | sha256sum)
    [ "$1" = "$ROOT_SHA256" ]
}

# find_root: sets root_device (and leaves the medium on /medium when the image is a file on it)
find_root() {
    local sys name dev fs
    for sys in /sys/class/block/*; do
        name=${sys##*/}
        case $name in loop*|ram*|zram*) continue ;; esac
        dev=/dev/$name
        [ -b "$dev" ] || continue
        if has_root_id "$dev"; then
            root_device=$dev
            return 0
        fi
        [ -n "$ROOT_IMAGE" ] || continue
        for fs in $MEDIUM_FSTYPES; do
            mount -t "$fs" -o ro "$dev" /medium 2>/dev/null || continue
            if [ -f "/medium/$ROOT_IMAGE" ] && has_root_id "/medium/$ROOT_IMAGE"; then
                root_device=$dev
                return 0
            fi
            umount /medium
        done
    done
    return 1
}

if [ -n "$SOFTDEPS" ]; then  # softdep pre: modules first; one that cannot load leaves its fallback in use
    modprobe -qa $SOFTDEPS 2>/dev/null || :
fi
if [ -n "$MODULES" ]; then
    modprobe -a $MODULES || fail "cannot load the modules $MODULES"
fi
coldplug

short_id=${ROOT_ID%"${ROOT_ID#????????????}"}
what="the $ROOT_FSTYPE root image (id $short_id)${ROOT_IMAGE:+ as /$ROOT_IMAGE on $MEDIUM_FSTYPES}"
tries=0
until find_root; do
    [ "$tries" = 0 ] && say "waiting up to ${ROOT_WAIT}s for $what"
    [ "$tries" -ge $((ROOT_WAIT * 4)) ] && fail "no block device holds $what"
    sleep 0.25
    tries=$((tries + 1))
    coldplug
done

# open_verity FILE|DEVICE: the read-only dm-verity device over the image (data and hash tree in one, the
# table from stage1.conf and the command line's root hash), read once from end to end so that a changed
# byte anywhere stops the boot here rather than later; sets source to the device
open_verity() {
    local image=$1 dev=$1 hash= arg table
    for arg in $(cat /proc/cmdline); do
        case $arg in linuxkit.verity=*) hash=${arg#*=} ;; esac
    done
    [ -n "$hash" ] ||
        fail "the kernel command line has no linuxkit.verity= root hash: the root image is not mounted unverified"
    [ "$hash" = "$VERITY_ROOT_HASH" ] || fail "the root image fails dm-verity verification: linuxkit.verity= on" \
        "the kernel command line is not its root hash (the command line or the image was changed after the build)"
    if [ -f "$image" ]; then
        dev=$(losetup -f) && losetup -r "$dev" "$image" || fail "cannot attach $image to a loop device"
    fi
    # <start> <sectors> verity <version> <data dev> <hash dev> <data block> <hash block> <data blocks>
    # <hash start block> <algorithm> <root hash> <salt>  (the kernel's device-mapper/verity.rst)
    table="0 $((VERITY_DATA_BLOCKS * VERITY_BLOCK_SIZE / 512)) verity 1 $dev $dev $VERITY_BLOCK_SIZE"
    table="$table $VERITY_BLOCK_SIZE $VERITY_DATA_BLOCKS $VERITY_HASH_START $VERITY_HASH_ALGORITHM $hash $VERITY_SALT"
    DM_DISABLE_UDEV=1 "$DMSETUP" create --readonly --noudevsync "$VERITY_NAME" --table "$table" ||
        fail "cannot open $image as a dm-verity device"
    source=/dev/mapper/$VERITY_NAME
    [ -b "$source" ] || fail "dmsetup made no $source"
    cat "$source" >/dev/null 2>&1 || fail "the root image fails dm-verity verification: it was changed after the build"
    say "dm-verity: $image verified (root hash ${hash%"${hash#????????????????}"})"
}

if [ -n "$ROOT_IMAGE" ] && [ -f "/medium/$ROOT_IMAGE" ]; then
    source="/medium/$ROOT_IMAGE"
    options=ro,loop
else
    source=$root_device
    options=ro
fi
if [ -n "$VERITY_ROOT_HASH" ]; then
    open_verity "$source"
    options=ro
fi
mount -t "$ROOT_FSTYPE" -o "$options" "$source" /lower || fail "cannot mount $source ($ROOT_FSTYPE)"
mount -t tmpfs -o mode=755 tmpfs /overlay || fail "cannot mount a tmpfs for the overlay"
mkdir -p /overlay/upper /overlay/work
mount -t overlay -o lowerdir=/lower,upperdir=/overlay/upper,workdir=/overlay/work overlay /newroot ||
    fail "cannot mount the overlay"
[ -L "/newroot$INIT" ] || [ -x "/newroot$INIT" ] || fail "the root image has no $INIT"
for dir in dev proc sys; do
    mkdir -p "/newroot/$dir"
    mount --move "/$dir" "/newroot/$dir" || fail "cannot move /$dir to the new root"
done
say "root: $source${ROOT_IMAGE:+ on $root_device} ($ROOT_FSTYPE, read-only) under a tmpfs overlay; starting $INIT"
exec switch_root -c /dev/console /newroot "$INIT" "$@"
"""
