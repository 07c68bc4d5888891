"""The shell scripts of our service packages (pkg/*/), run by busybox sh as in their images, for what
can be checked without booting: sysctl's file rules, the argument checks of format and mount.
Their real work is tested by booting the example specs (tests/boot/test_specs.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "pkg"


def run_script(busybox: Path, script: str, *args: str, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(busybox), "sh", str(PKG / script), *args], env={"PATH": "/nonexistent", **(env or {})},
                          cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def sysctl_dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(image's sysctl.d, host's sysctl.d, a fake /proc/sys with a few keys)."""
    image, host, proc = tmp_path / "image", tmp_path / "host", tmp_path / "proc"
    for directory in (image, host, proc / "net" / "ipv4", proc / "kernel"):
        directory.mkdir(parents=True)
    for key in ("net/ipv4/ip_forward", "kernel/pid_max", "kernel/ping_range"):
        (proc / key).write_text("0\n")
    return image, host, proc


def apply_sysctl(busybox: Path, dirs: tuple[Path, Path, Path]) -> subprocess.CompletedProcess[str]:
    image, host, proc = dirs
    env = {"SYSCTL_IMAGE_DIR": str(image), "SYSCTL_HOST_DIR": str(host), "SYSCTL_PROC_SYS": str(proc)}
    return run_script(busybox, "sysctl/apply-sysctl", env=env)


def test_sysctl_applies_image_then_host_files_in_name_order(
    busybox_static: Path, sysctl_dirs: tuple[Path, Path, Path]
) -> None:
    image, host, proc = sysctl_dirs
    (image / "00-defaults.conf").write_text("kernel.pid_max = 100\nnet.ipv4.ip_forward=0\n")
    (image / "50-replaced.conf").write_text("kernel.pid_max = 200\n")
    (image / "README").write_text("kernel.pid_max = 999\n")  # not a .conf file
    (host / "50-replaced.conf").write_text(
        "# comment\n; comment too\n\n  net/ipv4/ip_forward  =  1  \nkernel.ping_range = 999\t59999")

    result = apply_sysctl(busybox_static, sysctl_dirs)

    assert (result.returncode, result.stdout) == (0, "4 settings applied from 2 files\n")
    # the host's 50-replaced.conf replaced the image's: pid_max keeps 00-defaults' value
    assert (proc / "kernel" / "pid_max").read_text() == "100\n"
    assert (proc / "net" / "ipv4" / "ip_forward").read_text() == "1\n"
    assert (proc / "kernel" / "ping_range").read_text() == "999\t59999\n"  # no last newline, inner space kept


def test_sysctl_reports_bad_lines_and_still_applies_the_rest(
    busybox_static: Path, sysctl_dirs: tuple[Path, Path, Path]
) -> None:
    image, _, proc = sysctl_dirs
    (image / "10-bad.conf").write_text(
        "kernel.no_such_key = 1\n-kernel.optional_key = 1\nthis is not a setting\nkernel.pid_max = 7\n")

    result = apply_sysctl(busybox_static, sysctl_dirs)

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "sysctl: kernel.no_such_key: no such key",
        f"sysctl: {image}/10-bad.conf: cannot parse 'this is not a setting'",
        "1 settings applied from 1 files",
    ]
    assert (proc / "kernel" / "pid_max").read_text() == "7\n"


@pytest.mark.parametrize(("args", "status", "message"), [
    (["-type", "xfs"], 1, "format: -type xfs is not supported (ext4, ext3, ext2)"),
    (["-partition", "mbr"], 1, "format: -partition mbr is not supported (dos, gpt)"),
    (["-force"], 1, "format: -force needs a DEVICE"),
    (["/etc/hostname"], 1, "format: /etc/hostname is not a block device"),
    (["/dev/vda", "/dev/vdb"], 1, "format: only one device, got /dev/vda and /dev/vdb"),
    (["-label"], 2, "usage: format [-type ext4|ext3|ext2] [-label LABEL] [-partition dos|gpt] [-force] "
                    "[-verbose] [DEVICE]"),
])
def test_format_refuses_bad_arguments(busybox_static: Path, args: list[str], status: int, message: str) -> None:
    result = run_script(busybox_static, "format/format", *args)

    assert (result.returncode, result.stderr, result.stdout) == (status, message + "\n", "")


@pytest.mark.parametrize(("args", "status", "message"), [
    ([], 2, "usage: mount [-label LABEL | -uuid UUID | -device DEVICE] [-options OPTS] [-timeout SECONDS] "
            "[DEVICE] MOUNTPOINT"),
    (["-timeout", "soon", "/var/x"], 1, "mount: -timeout soon is not a number of seconds"),
    (["/etc/hostname", "/var/x"], 1, "mount: /etc/hostname is not a block device"),
])
def test_mount_refuses_bad_arguments(busybox_static: Path, args: list[str], status: int, message: str) -> None:
    result = run_script(busybox_static, "mount/mount-disk", *args)

    assert (result.returncode, result.stderr, result.stdout) == (status, message + "\n", "")


@pytest.mark.parametrize(("interface", "waits"), [("lo", False), ("nosuch0", True), ("--interface=nosuch0", True)])
def test_udhcpc_waits_a_bounded_time_for_its_interface(busybox_static: Path, interface: str, waits: bool) -> None:
    """pkg/dhcpcd's /sbin/udhcpc: an interface that does not exist yet (USB Ethernet enumerates late) is
    waited for up to UDHCPC_LINK_WAIT seconds, then busybox udhcpc runs with the arguments as given."""
    script = (PKG / "dhcpcd" / "udhcpc").read_text().replace("/bin/busybox", str(busybox_static))
    args = ["-i", interface] if not interface.startswith("--") else [interface]
    started = time.monotonic()
    result = subprocess.run([str(busybox_static), "sh", "-c", script, "udhcpc", *args, "--help"],
                            env={"PATH": "/nonexistent", "UDHCPC_LINK_WAIT": "1"}, capture_output=True, text=True,
                            timeout=30)
    took = time.monotonic() - started
    assert "Usage: udhcpc" in result.stderr + result.stdout  # busybox's udhcpc ran, with our arguments
    assert (0.9 < took < 5) if waits else took < 0.5
