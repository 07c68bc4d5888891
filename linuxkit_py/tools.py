"""External tools: find them (a missing one names the Debian package to install) and run them.

Every subprocess of linuxkit-py goes through `run()`, which logs the command at debug level.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from linuxkit_py.errors import UserError

log = logging.getLogger(__name__)

# Tool -> the Debian package(s) that provide it (for the "apt-get install ..." hint).
DEBIAN_PACKAGES: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "cpio": "cpio",
    "busybox": "busybox-static",
    "runc": "runc",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "docker-registry": "docker-registry",
    "mkfs.vfat": "dosfstools",
    "mformat": "mtools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mattrib": "mtools",
    "syslinux": "syslinux",
    "sfdisk": "fdisk",
    "sgdisk": "gdisk",
    "xorriso": "xorriso",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.erofs": "erofs-utils",
    "fsck.erofs": "erofs-utils",
    "dump.erofs": "erofs-utils",
    "fakeroot": "fakeroot",
    "mkfs.ext4": "e2fsprogs",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "objcopy": "binutils",
    "aarch64-linux-gnu-objcopy": "binutils-aarch64-linux-gnu",
    "x86_64-linux-gnu-objcopy": "binutils-x86-64-linux-gnu",
    "objdump": "binutils",
    "readelf": "binutils",
    "grub-mkstandalone": "grub-common grub-efi-amd64-bin",
    "grub-mkimage": "grub-common grub-efi-amd64-bin",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "gzip": "gzip",
    "zstd": "zstd",
    "xz": "xz-utils",
    "lz4": "lz4",
    "tar": "tar",
    "git": "git",
}

# Tools such as mkfs.vfat and sgdisk live in sbin, which a normal user's PATH often lacks.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def install_hint(package: str) -> str:
    return f"apt-get install {package}"


def require(tool: str) -> str:
    """The full path of `tool`, or a UserError naming the Debian package that provides it."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN_DIRS])
    found = shutil.which(tool, path=search)
    if found is None:
        package = DEBIAN_PACKAGES.get(tool)
        raise UserError(f"{tool} not found", hint=install_hint(package) if package else None)
    return found


def require_file(path: str | Path, package: str) -> Path:
    """A data file another package installs (firmware, boot loader blobs), or a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found", hint=install_hint(package))
    return path


def _last_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run(
    cmd: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = False,
    timeout: float | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """Run `cmd` (its first word looked up with `require`), logging it at debug level.

    `capture=True` collects stdout and stderr. With `check`, a non-zero exit is a UserError
    naming the tool and the last line it printed on stderr (when captured); a command that
    outlives `timeout` seconds is killed and reported the same way.
    """
    argv = [str(c) for c in cmd]
    name = argv[0]
    argv[0] = require(name)
    if capture:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    log.debug("run: %s", shlex.join(argv))
    try:
        proc = subprocess.run(argv, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired:
        raise UserError(f"{name} did not finish within {timeout:g} s: {shlex.join(argv)}") from None
    if check and proc.returncode != 0:
        detail = _last_line(proc.stderr)
        message = f"{name} failed with exit status {proc.returncode}"
        raise UserError(f"{message}: {detail}" if detail else message)
    return proc


def start(cmd: Sequence[str | Path], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a long-running `cmd` (its first word looked up with `require`), logged like `run`."""
    argv = [str(c) for c in cmd]
    argv[0] = require(argv[0])
    log.debug("start: %s", shlex.join(argv))
    return subprocess.Popen(argv, **kwargs)


def stop(proc: subprocess.Popen[Any], grace: float = 2.0, reap: float = 5.0) -> int | None:
    """End `proc` if it still runs: SIGTERM, then SIGKILL after `grace` seconds.

    Never blocks longer than grace + reap: a process stuck in the kernel (a hung KVM ioctl)
    may ignore even SIGKILL for a while; it is then left behind with a warning. Returns the
    exit status, or None if the process could not be reaped.
    """
    if proc.poll() is not None:
        return proc.returncode
    proc.terminate()
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    proc.kill()
    try:
        return proc.wait(timeout=reap)
    except subprocess.TimeoutExpired:
        log.warning("process %d (%s) survived SIGKILL; leaving it behind", proc.pid, proc.args)
        return None
