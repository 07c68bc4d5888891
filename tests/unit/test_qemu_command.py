"""The qemu argv for every bootable output (no qemu is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linuxkit_py.errors import UserError
from linuxkit_py.run.disks import Disk
from linuxkit_py.run.firmware import Firmware
from linuxkit_py.run.image import BootImage
from linuxkit_py.run.kvm import choose_accel
from linuxkit_py.run.qemu import (
    QemuOptions,
    boot_command,
    firmware_args,
    hostfwd,
    kernel_cmdline,
    qemu_command,
    serial_console_args,
    terminal_console_args,
)

KERNEL, INITRD = Path("/out/linuxkit-kernel"), Path("/out/linuxkit-initrd.img")
TCG = QemuOptions(accel="tcg")
SERIAL = serial_console_args("stdio")
MACHINE = ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "1", "-no-reboot", "-nodefaults",
           "-display", "none", "-vga", "none", "-monitor", "none"]
NETWORK = ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
RNG = ["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]


def values_of(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def test_kernel_boot_argv() -> None:
    argv = qemu_command(KERNEL, INITRD, "console=ttyS0 quiet", QemuOptions(accel="tcg"), serial="stdio")
    assert argv == [
        *MACHINE, "-serial", "stdio",
        "-kernel", "/out/linuxkit-kernel", "-initrd", "/out/linuxkit-initrd.img",
        "-append", "console=ttyS0 quiet panic=-1 cryptomgr.notests", *NETWORK, *RNG,
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


@pytest.mark.parametrize(
    ("cmdline", "extra", "expected"),
    [
        ("quiet", "", "quiet console=ttyS0 panic=-1 cryptomgr.notests"),
        # the spec or --append keeps the kernel's crypto self-tests; a bare flag of its own is not doubled
        ("cryptomgr.notests=0", "", "cryptomgr.notests=0 console=ttyS0 panic=-1"),
        ("quiet", "cryptomgr.notests=0", "quiet cryptomgr.notests=0 console=ttyS0 panic=-1"),
        ("cryptomgr.notests", "", "cryptomgr.notests console=ttyS0 panic=-1"),
        # a longer parameter name is another parameter
        ("cryptomgr.notestsx=1", "", "cryptomgr.notestsx=1 console=ttyS0 panic=-1 cryptomgr.notests"),
    ],
)
def test_an_emulated_boot_skips_the_kernels_crypto_self_tests(cmdline: str, extra: str, expected: str) -> None:
    assert kernel_cmdline(cmdline, extra, emulated=True) == expected


def test_a_kvm_boot_keeps_the_kernels_crypto_self_tests() -> None:
    argv = qemu_command(KERNEL, INITRD, "quiet", QemuOptions(accel="kvm"), serial="stdio")
    assert argv[argv.index("-append") + 1] == "quiet console=ttyS0 panic=-1"


def test_extra_append_reaches_the_argv() -> None:
    argv = qemu_command(KERNEL, INITRD, "quiet", QemuOptions(accel="tcg", extra_append="rdinit=/bin/sh"),
                        serial="stdio")
    assert argv[argv.index("-append") + 1] == "quiet rdinit=/bin/sh console=ttyS0 panic=-1 cryptomgr.notests"


def test_kvm_uses_the_host_cpu() -> None:
    argv = qemu_command(KERNEL, INITRD, "", QemuOptions(accel="kvm"), serial="stdio")
    assert argv[1:5] == ["-accel", "kvm", "-cpu", "host"]


def test_unresolved_accel_means_tcg_in_the_pure_command() -> None:
    argv = qemu_command(KERNEL, INITRD, "", QemuOptions(), serial="stdio")
    assert argv[1:4] == ["-accel", "tcg", "-m"]


def test_uefi_code_is_read_only_pflash_and_vars_a_writable_copy() -> None:
    firmware = firmware_args(Firmware(Path("/fw/OVMF_CODE_4M.fd"), Path("/fw/OVMF_VARS_4M.fd")),
                             Path("/run/1/OVMF_VARS_4M.fd"))
    argv = qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", uefi=True), serial="stdio", firmware=firmware)
    assert values_of(argv, "-drive") == [
        "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE_4M.fd",
        "if=pflash,format=raw,unit=1,file=/run/1/OVMF_VARS_4M.fd",
    ]
    assert "-bios" not in argv


def test_single_image_firmware_is_a_bios() -> None:
    assert firmware_args(Firmware(Path("/usr/share/ovmf/OVMF.fd")), None) == ["-bios", "/usr/share/ovmf/OVMF.fd"]


def test_extra_disks_are_virtio_drives_with_their_format() -> None:
    options = QemuOptions(accel="tcg", disks=[Disk(Path("/d/data.img")), "/d/root.qcow2", Path("/d/odd,name.raw")])
    argv = qemu_command(KERNEL, INITRD, "", options, serial="stdio")
    assert values_of(argv, "-drive") == [
        "if=none,id=disk0,file=/d/data.img,format=raw",
        "if=none,id=disk1,file=/d/root.qcow2,format=qcow2",
        "if=none,id=disk2,file=/d/odd,,name.raw,format=raw",
    ]
    assert values_of(argv, "-device")[:3] == [
        "virtio-blk-pci,drive=disk0", "virtio-blk-pci,drive=disk1", "virtio-blk-pci,drive=disk2"]


def test_iso_is_a_cd_booted_first() -> None:
    iso = BootImage("iso", Path("/out/x"), image=Path("/out/x.iso"))
    argv = boot_command(iso, TCG, SERIAL)
    assert argv == [*MACHINE, "-serial", "stdio",
                    "-drive", "if=none,id=cd,file=/out/x.iso,format=raw,media=cdrom,readonly=on",
                    "-device", "ide-cd,drive=cd,bootindex=0", *NETWORK, *RNG]


def test_boot_disk_comes_before_extra_disks() -> None:
    disk = BootImage("disk", Path("/out/x-efi"), image=Path("/out/x-efi.qcow2"), image_format="qcow2", uefi=True)
    argv = boot_command(disk, QemuOptions(accel="tcg", disks=[Disk(Path("/d/data.img"))]), SERIAL)
    assert values_of(argv, "-drive") == ["if=none,id=boot,file=/out/x-efi.qcow2,format=qcow2",
                                         "if=none,id=disk0,file=/d/data.img,format=raw"]
    assert values_of(argv, "-device")[:2] == ["virtio-blk-pci,drive=boot,bootindex=0", "virtio-blk-pci,drive=disk0"]
    assert "-kernel" not in argv


def test_squashfs_root_is_the_first_virtio_disk_read_only() -> None:
    squashfs = BootImage("kernel+squashfs", Path("/out/x"), kernel=Path("/out/x-kernel"), cmdline="quiet",
                         image=Path("/out/x-squashfs.img"))
    argv = boot_command(squashfs, QemuOptions(accel="tcg", disks=[Disk(Path("/d/data.img"))]), SERIAL)
    assert values_of(argv, "-kernel") == ["/out/x-kernel"]
    assert "-initrd" not in argv
    assert values_of(argv, "-append") == ["quiet root=/dev/vda console=ttyS0 panic=-1 cryptomgr.notests"]
    assert values_of(argv, "-drive") == ["if=none,id=boot,file=/out/x-squashfs.img,format=raw,readonly=on",
                                         "if=none,id=disk0,file=/d/data.img,format=raw"]
    assert values_of(argv, "-device")[0] == "virtio-blk-pci,drive=boot"  # booted by -kernel, not by the BIOS


def test_squashfs_root_with_a_stage_one_initramfs_gets_no_root_parameter() -> None:
    squashfs = BootImage("kernel+squashfs", Path("/out/x"), kernel=Path("/out/x-kernel"), cmdline="quiet",
                         initrd=Path("/out/x-squashfs-initrd.img"), image=Path("/out/x-squashfs.img"))
    argv = boot_command(squashfs, QemuOptions(accel="tcg"), SERIAL)
    assert values_of(argv, "-initrd") == ["/out/x-squashfs-initrd.img"]
    # stage one finds the disk itself
    assert values_of(argv, "-append") == ["quiet console=ttyS0 panic=-1 cryptomgr.notests"]
    assert values_of(argv, "-drive") == ["if=none,id=boot,file=/out/x-squashfs.img,format=raw,readonly=on"]


def test_a_root_on_the_command_line_wins() -> None:
    erofs = BootImage("kernel+erofs", Path("/out/x"), kernel=Path("/out/x-kernel"), image=Path("/out/x-erofs.img"))
    argv = boot_command(erofs, QemuOptions(accel="tcg", extra_append="root=/dev/vdb"), SERIAL)
    assert values_of(argv, "-append") == ["root=/dev/vdb console=ttyS0 panic=-1 cryptomgr.notests"]


def test_uki_boots_from_a_virtual_fat_esp() -> None:
    uki = BootImage("uki", Path("/out/x"), image=Path("/out/x.efi"), uefi=True)
    argv = boot_command(uki, TCG, SERIAL, esp=Path("/run/1/esp"))
    assert values_of(argv, "-drive") == ["if=none,id=esp,file=fat:/run/1/esp,format=raw,readonly=on"]
    assert values_of(argv, "-device")[0] == "virtio-blk-pci,drive=esp,bootindex=0"


def test_append_needs_a_kernel_boot() -> None:
    iso = BootImage("iso", Path("/out/x"), image=Path("/out/x.iso"))
    with pytest.raises(UserError) as err:
        boot_command(iso, QemuOptions(accel="tcg", extra_append="quiet"), SERIAL)
    assert str(err.value) == "--append needs a kernel boot; the boot loader of /out/x.iso sets its own command line"


def test_no_networking() -> None:
    argv = qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", networking="none"), serial="stdio")
    assert argv[argv.index("-nic"):] == ["-nic", "none", *RNG]
    assert "-netdev" not in argv
    with pytest.raises(UserError) as err:
        qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", networking="none", publish=["80:80"]),
                     serial="stdio")
    assert str(err.value) == "--publish needs user networking (hint: drop --networking none)"


def test_interactive_console_muxes_the_monitor_and_lets_the_guest_reboot() -> None:
    options = QemuOptions(accel="tcg", reboot=True)
    argv = boot_command(BootImage("kernel+initrd", Path("/out/x"), kernel=KERNEL, initrd=INITRD), options,
                        terminal_console_args(Path("/tmp/con,sole.log")))
    assert "-no-reboot" not in argv
    assert values_of(argv, "-chardev") == ["stdio,id=console,mux=on,signal=off,logfile=/tmp/con,,sole.log"]
    assert values_of(argv, "-serial") == ["chardev:console"]
    assert values_of(argv, "-mon") == ["chardev=console,mode=readline"]
    # a panic waits for the user instead of rebooting
    assert values_of(argv, "-append") == ["console=ttyS0 cryptomgr.notests"]


def test_invalid_vm_size_is_a_user_error() -> None:
    with pytest.raises(UserError) as err:
        qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", cpus=0), serial="stdio")
    assert str(err.value) == (
        "invalid VM size: 1024 MiB of memory, 0 CPUs (hint: use at least 16 MiB and 1 CPU)"
    )


def test_unknown_accelerator_is_a_user_error() -> None:
    assert choose_accel("tcg") == "tcg"
    with pytest.raises(UserError) as err:
        choose_accel("xen")
    assert str(err.value) == "unknown accelerator 'xen' (hint: use kvm or tcg)"
