"""Boot the Debian kernel with a hand-made initramfs through linuxkit_py.run.qemu.boot()."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from linuxkit_py.errors import UserError
from linuxkit_py.run.kvm import PROBE_TIMEOUT, choose_accel, kvm_works, probe_accel
from linuxkit_py.run.qemu import QemuOptions, boot
from tests.bootimages import INIT_END, INIT_MARKER, VIRTIO_NET_MODULES
from tests.debian import DebianKernel

MakeInitrd = Callable[..., Path]  # the make_initrd fixture of tests/boot/conftest.py
TCG = QemuOptions(accel="tcg")
HANG_SCRIPT = "#!/bin/sh\necho LINUXKIT-PY-HANGING\nexec /bin/sleep 600\n"


def qemu_still_running(initrd: Path) -> bool:
    """Whether any process has `initrd` on its command line (our qemu, if it survived)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(initrd).encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue  # the process ended while we looked
    return False


def console_lines_between(output: str, first: str, last: str) -> list[str]:
    lines = output.splitlines()
    return lines[lines.index(first) + 1 : lines.index(last)]


@pytest.mark.boot
def test_init_image_boots_prints_markers_and_powers_off(
    boot_kernel: Path, make_initrd: MakeInitrd, tmp_path: Path
) -> None:
    initrd = make_initrd(files={"etc/marker": "marker from the test\n",
                                "containers/onboot/000-hello/config.json": "{}\n"})
    log = tmp_path / "console.log"

    result = boot(boot_kernel, initrd, "quiet", TCG, timeout=60, log=log)

    assert (result.timed_out, result.matched, result.exit_code) == (False, False, 0), result.stderr
    assert console_lines_between(result.output, INIT_MARKER, INIT_END) == [
        "marker from the test",
        "/containers",
        "/containers/onboot",
        "/containers/onboot/000-hello",
        "/containers/onboot/000-hello/config.json",
    ]
    assert "reboot: Power down" in result.output
    assert result.seconds < 30
    assert log.read_bytes().decode().replace("\r\n", "\n") == result.output
    assert not qemu_still_running(initrd)


@pytest.mark.boot
def test_until_stops_qemu_as_soon_as_the_marker_appears(boot_kernel: Path, make_initrd: MakeInitrd) -> None:
    initrd = make_initrd(scripts={"bin/hang": HANG_SCRIPT})

    started = time.monotonic()
    result = boot(boot_kernel, initrd, "quiet rdinit=/bin/hang", TCG, timeout=60,
                  until=lambda output: "LINUXKIT-PY-HANGING" in output)

    assert (result.matched, result.timed_out, result.exit_code) == (True, False, None)
    assert "LINUXKIT-PY-HANGING" in result.output
    assert time.monotonic() - started < 30
    assert not qemu_still_running(initrd)


@pytest.mark.boot
def test_timeout_stops_a_guest_that_never_finishes(boot_kernel: Path, make_initrd: MakeInitrd) -> None:
    initrd = make_initrd(scripts={"bin/hang": HANG_SCRIPT})

    started = time.monotonic()
    # long enough for the kernel's first line even when other tests load both cores
    result = boot(boot_kernel, initrd, "rdinit=/bin/hang", TCG, timeout=5)

    assert (result.timed_out, result.matched, result.exit_code) == (True, False, None)
    assert 5 <= result.seconds < 7
    assert time.monotonic() - started < 5 + 5  # stopping qemu is bounded too
    assert "Linux version" in result.output  # the console was read while the kernel booted
    assert not qemu_still_running(initrd)


@pytest.mark.boot
def test_kernel_panic_ends_qemu(boot_kernel: Path, make_initrd: MakeInitrd) -> None:
    initrd = make_initrd()

    result = boot(boot_kernel, initrd, "quiet rdinit=/no-such-init", TCG, timeout=60)

    # panic=-1 reboots at once and -no-reboot turns that into qemu exiting (with status 0).
    assert (result.timed_out, result.exit_code) == (False, 0)
    assert "Kernel panic - not syncing" in result.output
    assert INIT_MARKER not in result.output


def serve_once_script(kernel: DebianKernel) -> str:
    modules = " ".join(f"/lib/modules/{kernel.version}/{m}" for m in VIRTIO_NET_MODULES)
    return f"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do insmod $m || echo "insmod $m failed"; done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo LINUXKIT-PY-SERVING
echo hello-from-the-guest | nc -l -p 80
echo LINUXKIT-PY-SERVED
poweroff -f
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_published_port(port: int, deadline: float) -> bytes:
    """What the guest sends on a connection to 127.0.0.1:port; retried while the guest still
    refuses (qemu accepts at once, then closes the connection when the guest resets it)."""
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.settimeout(5)
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        if data:
            return data
        time.sleep(0.2)
    raise AssertionError(f"nothing received on 127.0.0.1:{port}")


@pytest.mark.boot
def test_published_port_reaches_the_guest(
    boot_kernel: Path, make_initrd: MakeInitrd, debian_kernel: DebianKernel
) -> None:
    initrd = make_initrd(scripts={"bin/serve": serve_once_script(debian_kernel)})
    port = free_port()
    serving = threading.Event()

    def notice_serving(output: str) -> bool:
        if "LINUXKIT-PY-SERVING" in output:
            serving.set()
        return False  # keep the guest running

    options = QemuOptions(accel="tcg", publish=[f"{port}:80"])
    with ThreadPoolExecutor(1) as pool:
        guest = pool.submit(boot, boot_kernel, initrd, "quiet rdinit=/bin/serve", options, timeout=60,
                            until=notice_serving)
        assert serving.wait(60), "the guest never configured its network"
        assert read_published_port(port, time.monotonic() + 30) == b"hello-from-the-guest\n"
        result = guest.result(70)
    assert (result.timed_out, result.exit_code) == (False, 0)
    assert "LINUXKIT-PY-SERVED" in result.output
    assert "failed" not in result.output


@pytest.mark.boot
def test_uefi_boot_through_ovmf(boot_kernel: Path, make_initrd: MakeInitrd) -> None:
    result = boot(boot_kernel, make_initrd(), "", QemuOptions(accel="tcg", uefi=True), timeout=90)

    assert (result.timed_out, result.exit_code) == (False, 0)
    assert "efi: EFI v" in result.output  # the kernel found UEFI firmware, not SeaBIOS
    assert INIT_MARKER in result.output


@pytest.mark.boot
def test_kvm_probe_firmware_reaches_long_mode_under_tcg() -> None:
    assert probe_accel("tcg") is True


@pytest.mark.boot
def test_choosing_the_accelerator_is_bounded_even_when_kvm_hangs() -> None:
    kvm_works.cache_clear()
    started = time.monotonic()
    accel = choose_accel(None)
    assert time.monotonic() - started < PROBE_TIMEOUT + 5
    assert accel in ("kvm", "tcg")


def test_missing_qemu_names_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd.img"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(UserError) as err:
        boot(kernel, initrd, "", TCG, timeout=10)
    assert str(err.value) == "qemu-system-x86_64 not found (hint: apt-get install qemu-system-x86)"


def test_missing_kernel_is_a_user_error(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"i")

    with pytest.raises(UserError) as err:
        boot(tmp_path / "kernel", initrd, "", TCG, timeout=10)
    assert str(err.value) == f"kernel {tmp_path / 'kernel'} not found"


def test_unwritable_console_log_is_a_user_error(tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd.img"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    log = tmp_path / "no-such-dir" / "console.log"

    with pytest.raises(UserError) as err:
        boot(kernel, initrd, "", TCG, timeout=10, log=log)
    assert str(err.value) == f"cannot write console log {log}: No such file or directory"
