"""`linuxkit-py run` booting real outputs under TCG, driven the way a user drives it: non-interactive with
--timeout/--until, --publish, an interactive console on a pseudo-terminal, ISO/disk/UKI detection."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from tests.boot.test_qemu_runner import (
    MakeInitrd,
    free_port,
    qemu_still_running,
    read_published_port,
    serve_once_script,
)
from tests.bootimages import INIT_MARKER, LayoutImage
from tests.debian import DebianKernel
from tests.integration.conftest import INIT_REF, KERNEL_REF, run_cli

TCG = ("--accel", "tcg")
MARKER_FILE = "marker from the run test"
SPEC = f"""\
kernel:
  image: {KERNEL_REF}
  cmdline: "console=ttyS0 quiet"
init:
  - {INIT_REF}
files:
  - path: etc/marker
    contents: "{MARKER_FILE}\\n"
"""
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
ISOHYBRID_MBR = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")


@pytest.fixture(scope="module")
def built(kernel_image: LayoutImage, init_image: LayoutImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prefix of a kernel+initrd built by `linuxkit-py build` from the test images (os-kernel, ...)."""
    root = tmp_path_factory.mktemp("run-cli")
    cache = Cache(root / "cache")
    kernel_image.load_into(cache, KERNEL_REF)
    init_image.load_into(cache, INIT_REF)
    (root / "os.yml").write_text(SPEC)
    result = run_cli("build", "--cache", root / "cache", "--dir", root / "out", root / "os.yml", stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    return root / "out" / "os"


def run(*args: str | Path) -> tuple[subprocess.CompletedProcess[bytes], float]:
    """`linuxkit-py run ARGS` with stdin not a terminal; the result and how long it took."""
    started = time.monotonic()
    result = run_cli("run", *args, stdin=b"")
    return result, time.monotonic() - started


def console(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.boot
def test_guest_that_powers_off_with_uefi_disks_and_a_console_log(built: Path, tmp_path: Path) -> None:
    log, data = tmp_path / "console.log", tmp_path / "disks" / "data.qcow2"

    result, _ = run("qemu", built, *TCG, "--uefi", "--timeout", "120", "--console-log", log,
                    "--disk", f"file={data},size=64M", "--disk", "size=32M", "--append", "ignore_loglevel")

    assert result.returncode == 0, result.stderr.decode()
    text = console(result)
    assert "efi: EFI v" in text  # OVMF, not SeaBIOS
    assert f"{INIT_MARKER}\n" in text and f"\n{MARKER_FILE}\n" in text
    assert "reboot: Power down" in text
    assert text.count("[1af4:1001]") == 2  # two virtio block devices on the guest's PCI bus
    assert log.read_bytes() == result.stdout
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", data], check=True,
                                     capture_output=True).stdout)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 << 20)
    assert (built.parent / "os-state" / "disk1.qcow2").is_file()  # the unnamed disk, as LinuxKit's state dir


@pytest.mark.boot
def test_until_stops_a_guest_that_never_ends(built: Path) -> None:
    until = "Run /bin/cat as init process"

    result, seconds = run(built, *TCG, "--append", "rdinit=/bin/cat ignore_loglevel", "--until", until,
                          "--timeout", "90")

    assert (result.returncode, result.stderr) == (0, b"")
    assert until in console(result)
    assert seconds < 30
    assert not qemu_still_running(built.with_name("os-initrd.img"))


@pytest.mark.boot
def test_timeout_stops_the_guest_with_status_124(built: Path) -> None:
    result, seconds = run(built, *TCG, "--append", "rdinit=/bin/cat", "--until", "NEVER-PRINTED", "--timeout", "3")

    assert result.returncode == 124
    assert result.stderr == b"linuxkit-py: 'NEVER-PRINTED' did not appear on the console after 3 s; stopped qemu\n"
    assert 3 <= seconds < 3 + 8
    assert not qemu_still_running(built.with_name("os-initrd.img"))


@pytest.mark.boot
def test_sigterm_stops_qemu_too(built: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "linuxkit_py", "run", str(built), *TCG,
                             "--append", "rdinit=/bin/cat ignore_loglevel", "--timeout", "90"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        output = b""
        while b"Run /bin/cat as init process" not in output:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, output[-2000:]
            output += chunk
        assert qemu_still_running(built.with_name("os-initrd.img"))
        proc.terminate()
        assert proc.wait(10) == 128 + 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not qemu_still_running(built.with_name("os-initrd.img"))


@pytest.mark.boot
def test_published_port_reaches_the_guest(boot_kernel: Path, make_initrd: MakeInitrd,
                                          debian_kernel: DebianKernel, tmp_path: Path) -> None:
    initrd = make_initrd(scripts={"bin/serve": serve_once_script(debian_kernel)})
    initrd.rename(tmp_path / "serve-initrd.img")
    (tmp_path / "serve-kernel").symlink_to(boot_kernel)
    (tmp_path / "serve-cmdline").write_text("quiet rdinit=/bin/serve\n")
    port = free_port()
    output = bytearray()
    serving = threading.Event()

    proc = subprocess.Popen([sys.executable, "-m", "linuxkit_py", "run", str(tmp_path / "serve"), *TCG,
                             "--publish", f"{port}:80", "--timeout", "90"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def read_console() -> None:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 4096):
            output.extend(chunk)
            if b"LINUXKIT-PY-SERVING" in output:
                serving.set()

    reader = threading.Thread(target=read_console)
    reader.start()
    try:
        assert serving.wait(60), "the guest never configured its network"
        assert read_published_port(port, time.monotonic() + 30) == b"hello-from-the-guest\n"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()  # linuxkit-py stops its qemu on SIGTERM
            proc.wait(10)
        reader.join(10)
    assert b"LINUXKIT-PY-SERVED" in output


class Terminal:
    """A program on a pseudo-terminal, as a user at a terminal runs it."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execv(argv[0], argv)
        self.output = b""
        self.status: int | None = None  # once the program ended

    def expect(self, text: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self.output and time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:  # the program ended and closed the terminal
                    break
        return text in self.output

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exit_status(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() >= deadline:
                break
            else:
                self.expect(b"\0never\0", 0.2)  # keep draining the terminal
        return self.status

    def close(self) -> None:
        if self.exit_status(0) is None:
            os.kill(self.pid, 15)
            self.exit_status(10)
        os.close(self.fd)


@pytest.mark.boot
def test_interactive_console_on_a_terminal(built: Path, tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    term = Terminal([sys.executable, "-m", "linuxkit_py", "run", str(built), *TCG,
                     "--append", "rdinit=/bin/sh", "--console-log", str(log)])
    try:
        assert term.expect(b"Ctrl-A X quits qemu", 10), term.output
        assert term.expect(b"/ # ", 60), term.output[-2000:]
        term.type(b"echo typed''-on-the-terminal\r")
        assert term.expect(b"typed-on-the-terminal", 20), term.output[-2000:]
        term.type(b"\x03")  # Ctrl-C goes to the guest's shell, not to qemu
        assert term.exit_status(1) is None
        term.type(b"\x01x")  # Ctrl-A X
        assert term.exit_status(15) == 0
    finally:
        term.close()
    assert b"typed-on-the-terminal" in log.read_bytes()


def hybrid_iso(built: Path, directory: Path) -> Path:
    """An isolinux hybrid ISO (bootable as a CD and as a disk) holding the built kernel and initrd."""
    tree = directory / "iso"
    (tree / "isolinux").mkdir(parents=True)
    for source in (ISOLINUX_BIN, LDLINUX):
        shutil.copy(source, tree / "isolinux")
    shutil.copy(built.with_name("os-kernel"), tree / "kernel")
    shutil.copy(built.with_name("os-initrd.img"), tree / "initrd.img")
    cmdline = built.with_name("os-cmdline").read_text()
    (tree / "isolinux" / "isolinux.cfg").write_text(
        f"DEFAULT linux\nLABEL linux\n  KERNEL /kernel\n  APPEND initrd=/initrd.img {cmdline} panic=-1\n")
    iso = directory / "os.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-b", "isolinux/isolinux.bin",
                    "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
                    "-isohybrid-mbr", ISOHYBRID_MBR, tree], check=True, capture_output=True)
    return iso


@pytest.mark.boot
def test_iso_boots_as_a_cd_and_as_a_qcow2_disk(built: Path, tmp_path: Path) -> None:
    iso = hybrid_iso(built, tmp_path)
    qcow2 = tmp_path / "os.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", iso, qcow2], check=True)

    for image in (iso, qcow2):
        result, _ = run(image, *TCG, "--timeout", "90")
        assert result.returncode == 0, result.stderr.decode()
        assert f"{INIT_MARKER}\n{MARKER_FILE}\n" in console(result), image


@pytest.mark.boot
def test_uki_is_started_by_uefi_firmware_from_an_esp(built: Path, tmp_path: Path) -> None:
    # No UKI writer yet: the Debian kernel is an EFI application too (EFI stub), so it stands in for one.
    uki = tmp_path / "os.efi"
    shutil.copy(built.with_name("os-kernel"), uki)

    result, _ = run(uki, *TCG, "--until", 'BdsDxe: starting Boot0001 "UEFI Misc Device"', "--timeout", "90")

    assert (result.returncode, result.stderr) == (0, b"")
