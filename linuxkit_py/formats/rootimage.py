"""Root filesystem images for root-on-media boots, and the `kernel+squashfs` / `kernel+erofs` outputs.

The image holds the root filesystem minus boot/ (as LinuxKit's mkimage-squashfs/-erofs), with owners,
modes, device nodes, hard links and xattrs, every time the build epoch; the same entries give the
same bytes. Nothing is extracted as root:

* squashfs: `mksquashfs -tar` reads the tar we stream to it (no tree on disk at all);
* erofs: mkfs.erofs 1.5 (Debian 12) reads only a directory tree, so the tar is extracted under
  fakeroot, which records owners, modes and device nodes in its database instead of on disk
  (fakeroot's state file carries them to the mkfs.erofs run). Two fakeroot quirks shape the steps:
  files extracted with mode 000 are unreadable for the real user (so the tree is made readable
  outside fakeroot, where the recorded modes stay untouched), and xattrs set by tar lose the file
  type while its state file drops xattrs (so they are set by us, in the session that runs mkfs.erofs).

The outputs `kernel+squashfs` and `kernel+erofs` are LinuxKit's NAME-kernel, NAME-cmdline and
NAME-squashfs.img / NAME-erofs.img, plus NAME-squashfs-initrd.img / NAME-erofs-initrd.img: the stage-one
initramfs (formats/stage1.py) that loads the modules a Debian kernel needs and mounts the image, which
the boot attaches as a disk.

With `--verity` the image file gets its dm-verity hash tree appended (media/verity.py, `root_location`),
and the command line the root hash (`linuxkit.verity=`); stage one verifies the image before mounting it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, cast

from linuxkit_py.archive.entry import ContentReader, Entry, Kind
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Format, Rootfs, register
from linuxkit_py.formats.initrd import split_boot
from linuxkit_py.formats.stage1 import RootLocation, verity_cmdline, write_stage1_initrd
from linuxkit_py.media.verity import append_verity_tree
from linuxkit_py.tools import require, run, start, stop

ROOT_FILESYSTEMS = ("squashfs", "erofs")
# What boot_files names the image on a medium, and the kernel+X output suffixes.
IMAGE_NAMES = {"squashfs": "rootfs.squashfs", "erofs": "rootfs.erofs"}
IMAGE_SUFFIXES = {"squashfs": "-squashfs.img", "erofs": "-erofs.img"}
STAGE1_SUFFIXES = {"squashfs": "-squashfs-initrd.img", "erofs": "-erofs-initrd.img"}
ROOT_IMAGE_FORMATS = ("kernel+squashfs", "kernel+erofs")  # a root image whatever --root says
ROOT_ID_BYTES = 4096  # the root id is the sha256 of the image's first bytes (squashfs/erofs superblock)
ROOT_DIR_MODE = 0o755

MKSQUASHFS = "mksquashfs"
MKFS_EROFS = "mkfs.erofs"
FAKEROOT = "fakeroot"
TAR = "tar"
TOOLS = {"squashfs": (MKSQUASHFS,), "erofs": (MKFS_EROFS, FAKEROOT, TAR)}
TOOL_TIMEOUT = 3600.0


def check_root_fs(fs: str) -> None:
    if fs not in ROOT_FILESYSTEMS:
        raise ValueError(f"unknown root filesystem {fs!r}")


def root_entries(rootfs: Rootfs) -> list[Entry]:
    """The entries of the root image: everything outside boot/, without LinuxKit's provenance records
    (neither mksquashfs nor tar knows those pax keywords)."""
    return [entry.evolve(source="", location="") for entry in split_boot(rootfs.entries).initrd]


def write_root_image(rootfs: Rootfs, out_path: Path, fs: str) -> None:
    """Write the root filesystem minus boot/ to `out_path` as a squashfs or erofs image."""
    check_root_fs(fs)
    for tool in TOOLS[fs]:
        require(tool)
    entries = root_entries(rootfs)
    if fs == "squashfs":
        write_squashfs(entries, out_path, rootfs.epoch)
    else:
        write_erofs(entries, out_path, rootfs.epoch)


def root_image_id(path: Path) -> str:
    """What stage one compares to find the image: sha256 (hex) of its first ROOT_ID_BYTES bytes."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(ROOT_ID_BYTES)).hexdigest()


def root_location(rootfs: Rootfs, image: Path, fs: str, image_path: str = "") -> RootLocation:
    """What stage one looks for to find the root image written at `image` (`image_path`: its name on the
    medium); with --verity, first append the image's hash tree, which the location then carries."""
    tree = append_verity_tree(image) if rootfs.options.verity else None
    return RootLocation(fs, root_image_id(image), image_path=image_path, verity=tree)


def file_sha256(path: Path) -> str:
    """sha256 (hex) of the whole file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tool_env(epoch: int | None) -> dict[str, str]:
    """UTC, C locale and SOURCE_DATE_EPOCH=`epoch`; None leaves it out (mksquashfs refuses it together with
    its own time options, which say the same)."""
    env = {**os.environ, "TZ": "UTC", "LC_ALL": "C"}
    env.pop("SOURCE_DATE_EPOCH", None)
    return env if epoch is None else {**env, "SOURCE_DATE_EPOCH": str(epoch)}


class _HashingWriter:
    """Passes writes on to `out` and keeps their sha256."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._out.write(data)


def _last_line(text: bytes) -> str:
    lines = [line.strip() for line in text.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _failed(what: str, status: int, stderr: bytes) -> UserError:
    detail = _last_line(stderr)
    return UserError(f"{what} failed with exit status {status}" + (f": {detail}" if detail else ""))


def _feed_tar(argv: Sequence[str | Path], entries: Sequence[Entry], epoch: int, workdir: Path, what: str,
              env: dict[str, str]) -> bytes:
    """Run `argv` with the tar of `entries` on its stdin; returns the tar's sha256. A failure is a
    UserError naming `what` with the last line the tool printed."""
    errors = workdir / "stderr"
    with open(errors, "w+b") as stderr:
        proc = start(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        assert proc.stdin is not None
        sink = _HashingWriter(cast(BinaryIO, proc.stdin))
        try:
            write_tar(entries, cast(BinaryIO, sink), epoch)
            proc.stdin.close()
        except BrokenPipeError:
            # The tool stopped reading: its exit status and message say why.
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        except BaseException:
            stop(proc)
            raise
        try:
            status = proc.wait(timeout=TOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop(proc)
            raise UserError(f"{what} did not finish within {TOOL_TIMEOUT:g} s") from None
        if status != 0:
            stderr.seek(0)
            raise _failed(what, status, stderr.read())
    return sink.digest.digest()


def write_squashfs(entries: Sequence[Entry], out_path: Path, epoch: int) -> None:
    """`entries` as a squashfs image (mksquashfs's defaults: gzip, 128 KiB blocks), root dir 0755 root:root."""
    with tempfile.TemporaryDirectory(prefix=".squashfs-", dir=out_path.parent) as tmp:
        _feed_tar([MKSQUASHFS, "-", out_path, "-tar", "-no-strip", "-noappend", "-quiet", "-no-progress",
                   "-mkfs-time", str(epoch), "-all-time", str(epoch), "-root-time", str(epoch),
                   "-root-mode", f"{ROOT_DIR_MODE:o}", "-root-uid", "0", "-root-gid", "0"],
                  entries, epoch, Path(tmp), MKSQUASHFS, tool_env(None))


# Run by the python of this process under fakeroot, in the session that runs mkfs.erofs: sets the root
# directory's owner and mode and every xattr (JSON on stdin), then becomes mkfs.erofs.
_EROFS_FINISH = """
import json, os, sys
job = json.load(sys.stdin)
os.chown(job["tree"], 0, 0)
os.chmod(job["tree"], job["mode"])
for path, xattrs in job["xattrs"]:
    for key, value in xattrs:
        os.setxattr(os.path.join(job["tree"], path), key, bytes.fromhex(value), follow_symlinks=False)
os.execvp(job["argv"][0], job["argv"])
"""


def _make_readable(directory: Path) -> None:
    """Give the real user read access to every file and directory (fakeroot keeps the recorded modes)."""
    mode = stat.S_IMODE(os.lstat(directory).st_mode)
    if mode & 0o700 != 0o700:
        os.chmod(directory, mode | 0o700)
    with os.scandir(directory) as it:
        for child in it:
            if child.is_dir(follow_symlinks=False):
                _make_readable(Path(child.path))
            elif child.is_file(follow_symlinks=False):
                mode = stat.S_IMODE(child.stat(follow_symlinks=False).st_mode)
                if mode & 0o600 != 0o600:
                    os.chmod(child.path, mode | 0o600)


def erofs_uuid(tar_digest: bytes) -> str:
    """The filesystem UUID: from the content (a version 4 layout of the tar's sha256), never random."""
    return str(uuid.UUID(bytes=tar_digest[:16], version=4))


def write_erofs(entries: Sequence[Entry], out_path: Path, epoch: int) -> None:
    """`entries` as an (uncompressed, as LinuxKit) erofs image: extracted under fakeroot, then mkfs.erofs."""
    with tempfile.TemporaryDirectory(prefix=".erofs-", dir=out_path.parent) as tmp:
        work = Path(tmp)
        tree, state = work / "tree", work / "fakeroot.state"
        tree.mkdir()
        # -p/--same-owner: fakeroot makes tar think it is root; the xattrs come later (see above).
        digest = _feed_tar([FAKEROOT, "-s", state, "--", TAR, "-x", "-p", "--same-owner", "--numeric-owner",
                            "--no-xattrs", "--warning=no-unknown-keyword", "-C", tree, "-f", "-"],
                           entries, epoch, work, "tar (under fakeroot)", tool_env(epoch))
        _make_readable(tree)
        job = {
            "tree": str(tree),
            "mode": ROOT_DIR_MODE,
            "xattrs": [[entry.path, [[key, value.hex()] for key, value in entry.xattrs]]
                       for entry in entries if entry.xattrs and entry.kind is not Kind.HARDLINK],
            "argv": [require(MKFS_EROFS), f"-T{epoch}", "-U", erofs_uuid(digest), "--quiet", str(out_path),
                     str(tree)],
        }
        proc = run([FAKEROOT, "-i", state, "--", sys.executable, "-c", _EROFS_FINISH], check=False, capture=True,
                   input=json.dumps(job).encode(), env=tool_env(epoch), timeout=TOOL_TIMEOUT)
        if proc.returncode != 0:
            raise _failed(MKFS_EROFS, proc.returncode, proc.stderr)


def _write_kernel_root(rootfs: Rootfs, outs: list[BinaryIO], fs: str) -> None:
    kernel_out, cmdline_out, image_out, stage1_out = outs
    boot = split_boot(rootfs.entries)
    with ContentReader() as reader:
        for chunk in reader.chunks(boot.kernel.data):
            kernel_out.write(chunk)
    image = Path(image_out.name)
    write_root_image(rootfs, image, fs)
    location = root_location(rootfs, image, fs)
    if location.verity is None:
        cmdline_out.write(boot.cmdline)
    else:
        cmdline_out.write(verity_cmdline(boot.cmdline.decode(errors="replace").strip(), location).encode())
    write_stage1_initrd(rootfs, stage1_out, location=location, medium="virtio")


def write_kernel_squashfs(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    """`kernel+squashfs`: NAME-kernel, NAME-cmdline, NAME-squashfs.img and its stage-one initramfs."""
    _write_kernel_root(rootfs, outs, "squashfs")


def write_kernel_erofs(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    """`kernel+erofs`: NAME-kernel, NAME-cmdline, NAME-erofs.img and its stage-one initramfs."""
    _write_kernel_root(rootfs, outs, "erofs")


register(Format(
    name="kernel+squashfs",
    suffixes=("-kernel", "-cmdline", IMAGE_SUFFIXES["squashfs"], STAGE1_SUFFIXES["squashfs"]),
    write=write_kernel_squashfs,
    tools=TOOLS["squashfs"],
    description="kernel, command line, the root filesystem as squashfs and the stage-one initramfs that mounts it",
))
register(Format(
    name="kernel+erofs",
    suffixes=("-kernel", "-cmdline", IMAGE_SUFFIXES["erofs"], STAGE1_SUFFIXES["erofs"]),
    write=write_kernel_erofs,
    tools=TOOLS["erofs"],
    description="kernel, command line, the root filesystem as erofs and the stage-one initramfs that mounts it",
))
