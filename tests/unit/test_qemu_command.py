"""The qemu argv for a kernel + initrd boot (no qemu is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linuxkit_py.errors import UserError
from linuxkit_py.run.kvm import choose_accel
from linuxkit_py.run.qemu import QemuOptions, hostfwd, kernel_cmdline, qemu_command

KERNEL, INITRD = Path("/out/linuxkit-kernel"), Path("/out/linuxkit-initrd.img")


def test_kernel_boot_argv() -> None:
    argv = qemu_command(KERNEL, INITRD, "console=ttyS0 quiet", QemuOptions(accel="tcg"), serial="stdio")
    assert argv == [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "1", "-no-reboot",
        "-display", "none", "-vga", "none", "-monitor", "none", "-serial", "stdio",
        "-kernel", "/out/linuxkit-kernel", "-initrd", "/out/linuxkit-initrd.img",
        "-append", "console=ttyS0 quiet panic=-1",
        "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip


def test_size_serial_file_and_publish() -> None:
    options = QemuOptions(mem=1024, cpus=2, accel="tcg", publish=["8080:80", "5353:53/udp", "2222:22/tcp"])
    argv = qemu_command(KERNEL, INITRD, "", options, serial="file:/tmp/console.log")
    assert argv[argv.index("-m") + 1] == "1024"
    assert argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-serial") + 1] == "file:/tmp/console.log"
    assert argv[argv.index("-netdev") + 1] == (
        "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53,hostfwd=tcp:127.0.0.1:2222-:22"
    )


@pytest.mark.parametrize("bad", ["80", "a:80", "8080:80/sctp", "0:80", "8080:70000", "1:2:3"])
def test_invalid_publish_is_a_user_error(bad: str) -> None:
    with pytest.raises(UserError) as err:
        hostfwd(bad)
    hint = "use HOST:GUEST or HOST:GUEST/udp, e.g. 8080:80"
    assert str(err.value) == f"invalid port mapping {bad!r} (hint: {hint})"


@pytest.mark.parametrize(
    ("cmdline", "extra", "expected"),
    [
        ("", "", "console=ttyS0 panic=-1"),
        ("quiet", "", "quiet console=ttyS0 panic=-1"),
        # the spec's own console choice is kept (LinuxKit's usual line lists several)
        ("console=tty0 console=ttyAMA0", "", "console=tty0 console=ttyAMA0 panic=-1"),
        ("console=ttyS1", "", "console=ttyS1 panic=-1"),
        ("quiet", "console=hvc0", "quiet console=hvc0 panic=-1"),
        # consoleblank= is not a console
        ("consoleblank=0", "", "consoleblank=0 console=ttyS0 panic=-1"),
        ("panic=10", "", "panic=10 console=ttyS0"),
        ("  root=/dev/vda  ", " rw ", "root=/dev/vda rw console=ttyS0 panic=-1"),
    ],
)
def test_kernel_cmdline(cmdline: str, extra: str, expected: str) -> None:
    assert kernel_cmdline(cmdline, extra) == expected


def test_extra_append_reaches_the_argv() -> None:
    argv = qemu_command(KERNEL, INITRD, "quiet", QemuOptions(accel="tcg", extra_append="rdinit=/bin/sh"),
                        serial="stdio")
    assert argv[argv.index("-append") + 1] == "quiet rdinit=/bin/sh console=ttyS0 panic=-1"


def test_kvm_uses_the_host_cpu() -> None:
    argv = qemu_command(KERNEL, INITRD, "", QemuOptions(accel="kvm"), serial="stdio")
    assert argv[1:5] == ["-accel", "kvm", "-cpu", "host"]


def test_unresolved_accel_means_tcg_in_the_pure_command() -> None:
    argv = qemu_command(KERNEL, INITRD, "", QemuOptions(), serial="stdio")
    assert argv[1:4] == ["-accel", "tcg", "-m"]


def test_uefi_uses_ovmf() -> None:
    argv = qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", uefi=True), serial="stdio")
    assert argv[argv.index("-bios") + 1] == "/usr/share/ovmf/OVMF.fd"


def test_disks_are_virtio_drives_with_their_format() -> None:
    options = QemuOptions(accel="tcg", disks=["/d/data.img", "/d/root.qcow2", "/d/odd,name.raw"])
    argv = qemu_command(KERNEL, INITRD, "", options, serial="stdio")
    drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"]
    assert drives == [
        "file=/d/data.img,format=raw,if=virtio",
        "file=/d/root.qcow2,format=qcow2,if=virtio",
        "file=/d/odd,,name.raw,format=raw,if=virtio",
    ]


def test_invalid_vm_size_is_a_user_error() -> None:
    with pytest.raises(UserError) as err:
        qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", cpus=0), serial="stdio")
    assert str(err.value) == (
        "invalid VM size: 512 MiB of memory, 0 CPUs (hint: use at least 16 MiB and 1 CPU)"
    )


def test_unknown_accelerator_is_a_user_error() -> None:
    assert choose_accel("tcg") == "tcg"
    with pytest.raises(UserError) as err:
        choose_accel("xen")
    assert str(err.value) == "unknown accelerator 'xen' (hint: use kvm or tcg)"
