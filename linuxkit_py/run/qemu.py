"""qemu command lines for every bootable output (see image.py), and the two ways to run them:
`boot_image()` reads the serial console (tests, `run --timeout/--until`), `run_interactive()` puts it
on the terminal.

Unless `QemuOptions.reboot` is set, qemu runs with `-no-reboot` and the kernel with `panic=-1`, so a
guest that powers off, reboots or panics ends qemu; `boot_image()` bounds everything else with its
timeout. Both runners always stop qemu before they return.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from linuxkit_py.arch import Arch, get_arch
from linuxkit_py.boards import BOARDS, QEMU_BOARD, Board
from linuxkit_py.errors import UserError
from linuxkit_py.run.disks import Disk, as_disk, create_missing_disks
from linuxkit_py.run.firmware import (
    SECURE_BOOT,
    Firmware,
    copy_vars,
    find_firmware,
    secure_boot_firmware,
)
from linuxkit_py.run.image import BootImage, kernel_image
from linuxkit_py.run.kvm import choose_accel
from linuxkit_py.run.rpi import PiBoot, prepare_pi_boot
from linuxkit_py.tools import require, start, stop

QEMU = "qemu-system-x86_64"  # amd64's; QemuOptions.arch chooses (arch.py), QemuOptions.qemu overrides
PANIC_EXITS = "panic=-1"  # panic -> immediate reboot, which -no-reboot turns into qemu exiting
NO_CRYPTO_SELF_TESTS = "cryptomgr.notests"  # on emulated kernel boots (kernel_cmdline)
ROOT_DEVICE = "/dev/vda"  # kernel+squashfs/erofs: the root image is the first virtio disk
NETWORKING = ("user", "none")
NET_ID = "net0"
CONSOLE_ID = "console"
_PUBLISH = re.compile(r"(\d+):(\d+)(?:/(tcp|udp))?")


@dataclass
class QemuOptions:
    mem: int = 1024  # MiB, LinuxKit's default
    cpus: int = 1
    accel: str | None = None  # kvm or tcg; None: kvm only if it provably works, else tcg
    publish: list[str] = field(default_factory=list)  # "HOST:GUEST[/tcp|udp]", forwarded from 127.0.0.1
    disks: Sequence[Disk | str | Path] = field(default_factory=list)  # extra virtio disks (a path: see as_disk)
    extra_append: str = ""  # appended to the kernel command line (kernel boots only)
    uefi: bool = False  # boot through OVMF instead of SeaBIOS (implied by -efi in the image's name)
    firmware: Path | None = None  # UEFI firmware instead of Debian's OVMF (see firmware.py)
    fw_vars: Path | None = None  # the UEFI variable store to start from (a copy is used per run)
    secure_boot: bool = False  # OVMF with Secure Boot enforced (q35 with SMM); implies uefi
    networking: str = "user"  # user (qemu's user-mode network) or none
    reboot: bool = False  # let the guest reboot; otherwise a reboot or a panic ends qemu
    arch: str = "amd64"  # the guest's architecture (arch.py names); arm64 boots on -M virt
    qemu: str | None = None  # the qemu binary; default: qemu-system-x86_64 / -aarch64 for `arch`
    cdroms: list[Path] = field(default_factory=list)  # ISO images attached read-only as CD-ROMs (run --data)
    # guest "IP:PORT" -> a port of 127.0.0.1: the guest's TCP connections to IP:PORT reach that host port
    # (user networking's guestfwd, one relay.py per connection), e.g. {"169.254.169.254:80": 8080} for a
    # local stand-in of a cloud's metadata server (docs/run.md)
    guestfwd: dict[str, int] = field(default_factory=dict)
    net: str | None = None  # the user network's address range (qemu's net=, default 10.0.2.0/24)
    isolated: bool = False  # qemu's restrict=on: the guest reaches nothing but --publish and guestfwd


@dataclass
class BootResult:
    output: str  # serial console text, with "\r\n" turned into "\n"
    exit_code: int | None  # qemu's exit status; None when boot() stopped qemu (until matched, timeout)
    timed_out: bool
    matched: bool  # `until` returned True
    seconds: float  # from starting qemu until it exited or was stopped
    stderr: str  # qemu's own messages (bad options, missing files)
    command: list[str]


def hostfwd(publish: str) -> str:
    """`HOST:GUEST[/tcp|udp]` -> a qemu user-network `hostfwd=` rule listening on 127.0.0.1."""
    m = _PUBLISH.fullmatch(publish.strip())
    ports = [int(m.group(1)), int(m.group(2))] if m else []
    if not m or not all(1 <= p <= 65535 for p in ports):
        raise UserError(f"invalid port mapping {publish!r}",
                        hint="use HOST:GUEST or HOST:GUEST/udp, e.g. 8080:80")
    proto = m.group(3) or "tcp"
    return f"hostfwd={proto}:127.0.0.1:{ports[0]}-:{ports[1]}"


def _has_param(cmdline: str, name: str) -> bool:
    return re.search(rf"(?:^|\s){re.escape(name)}=", cmdline) is not None


def qemu_binary(options: QemuOptions) -> str:
    return options.qemu or get_arch(options.arch).qemu


def kernel_cmdline(cmdline: str, extra_append: str = "", panic_exits: bool = True, console: str = "ttyS0",
                   emulated: bool = False) -> str:
    """The command line qemu passes: `cmdline`, `extra_append`, then a serial console and (with
    `panic_exits`) `panic=-1`, unless the line already chooses a console or a panic timeout.

    `emulated` (TCG) adds `cryptomgr.notests` unless the line sets it: the kernel's boot-time self-tests
    of its crypto algorithms cost about 0.25 s of an emulated boot (crypto_algapi_init, measured with
    initcall_debug) and check qemu's emulation of the CPU more than the image. `cryptomgr.notests=0` in
    the spec or in --append keeps them."""
    line = " ".join(part for part in (cmdline.strip(), extra_append.strip()) if part)
    if not _has_param(line, "console"):
        line = f"{line} console={console}".strip()
    if panic_exits and not _has_param(line, "panic"):
        line = f"{line} {PANIC_EXITS}"
    if emulated and re.search(r"(?:^|\s)cryptomgr\.notests(?:=|\s|$)", line) is None:
        line = f"{line} {NO_CRYPTO_SELF_TESTS}"
    return line


def qemu_file_arg(path: Path | str) -> str:
    # qemu option values separate keys with commas; a literal comma is written twice.
    return str(path).replace(",", ",,")


def uses_uefi(image: BootImage, options: QemuOptions) -> bool:
    return options.uefi or options.secure_boot or image.uefi


def check_options(image: BootImage, options: QemuOptions) -> None:
    """Raise a UserError for options qemu would refuse or that cannot apply to `image`."""
    if options.mem < 16 or options.cpus < 1:
        raise UserError(f"invalid VM size: {options.mem} MiB of memory, {options.cpus} CPUs",
                        hint="use at least 16 MiB and 1 CPU")
    if options.networking not in NETWORKING:
        raise UserError(f"unknown networking mode {options.networking!r}", hint="use user or none")
    if options.networking == "none" and options.publish:
        raise UserError("--publish needs user networking", hint="drop --networking none")
    if options.networking == "none" and options.guestfwd:
        raise UserError("--guestfwd needs user networking", hint="drop --networking none")
    for publish in options.publish:
        hostfwd(publish)
    if image.kind == "rpi" and (options.publish or options.disks):
        raise UserError(f"{image.image}: qemu's {BOARDS[QEMU_BOARD].qemu_machine} has no network card or disk "
                        "controller besides the SD card", hint="drop --publish and --disk")
    if options.extra_append and not image.boots_kernel and image.kind != "rpi":
        raise UserError(f"--append needs a kernel boot; the boot loader of {image.image} sets its own command line")


def _machine_args(options: QemuOptions, accel: str) -> list[str]:
    args = ["-accel", accel]
    machine = list(get_arch(options.arch).qemu_machine)
    if accel == "kvm":
        if "-cpu" in machine:
            del machine[machine.index("-cpu"):machine.index("-cpu") + 2]
        machine += ["-cpu", "host"]
    secure = SECURE_BOOT.get(options.arch) if options.secure_boot else None
    args += secure.machine if secure and secure.machine else machine
    args += ["-m", str(options.mem), "-smp", str(options.cpus)]
    if not options.reboot:
        args.append("-no-reboot")
    # -nodefaults: none of the devices qemu adds unasked (on a PC an empty IDE CD-ROM drive, a floppy
    # controller, a parallel port), which the kernel would probe and load drivers for on every boot
    # (0.3-0.4 s of a TCG boot); every device a boot needs is named below.
    return [*args, "-nodefaults", "-display", "none", "-vga", "none", "-monitor", "none"]


def firmware_args(firmware: Firmware, vars_copy: Path | None) -> list[str]:
    """OVMF code as read-only pflash with the per-run variable store, or a single image as -bios."""
    if firmware.vars_template is None or vars_copy is None:
        return ["-bios", str(firmware.code)]
    return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_file_arg(firmware.code)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={qemu_file_arg(vars_copy)}"]


def serial_console_args(serial: str) -> list[str]:
    """The serial console on qemu's -serial `serial` (stdio, file:PATH)."""
    return ["-serial", serial]


def terminal_console_args(log: Path | None = None) -> list[str]:
    """The serial console on this terminal with qemu's monitor multiplexed in (Ctrl-A X quits, Ctrl-A C
    switches to the monitor); Ctrl-C goes to the guest. `log` also gets everything the console shows."""
    chardev = f"stdio,id={CONSOLE_ID},mux=on,signal=off"
    if log is not None:
        chardev += f",logfile={qemu_file_arg(log)}"
    return ["-chardev", chardev, "-serial", f"chardev:{CONSOLE_ID}", "-mon", f"chardev={CONSOLE_ID},mode=readline"]


def _drive(drive_id: str, file: str, fmt: str, *, readonly: bool = False, boot: bool = False) -> list[str]:
    drive = f"if=none,id={drive_id},file={file},format={fmt}" + (",readonly=on" if readonly else "")
    device = f"virtio-blk-pci,drive={drive_id}" + (",bootindex=0" if boot else "")
    return ["-drive", drive, "-device", device]


def _kernel_args(image: BootImage, options: QemuOptions) -> list[str]:
    assert image.kernel is not None
    args = ["-kernel", str(image.kernel)]
    cmdline = image.cmdline
    if image.initrd is not None:
        args += ["-initrd", str(image.initrd)]
    elif not _has_param(f"{cmdline} {options.extra_append}", "root"):
        cmdline = f"{cmdline} root={ROOT_DEVICE}"
    return [*args, "-append", kernel_cmdline(cmdline, options.extra_append, panic_exits=not options.reboot,
                                             console=get_arch(options.arch).console,
                                             emulated=(options.accel or "tcg") == "tcg")]


def _boot_args(image: BootImage, options: QemuOptions, esp: Path | None) -> list[str]:
    """How qemu finds what to boot: -kernel, the root or boot disk, the CD, or an ESP holding the UKI."""
    args = _kernel_args(image, options) if image.boots_kernel else []
    if image.image is None:
        return args
    file = qemu_file_arg(image.image)
    if image.kind == "iso":
        cd = ["-drive", f"if=none,id=cd,file={file},format=raw,media=cdrom,readonly=on"]
        if get_arch(options.arch).bios:  # a PC has an IDE/AHCI controller; arm's virt has none: virtio-scsi
            return [*cd, "-device", "ide-cd,drive=cd,bootindex=0"]
        return [*cd, "-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-cd,bus=scsi0.0,drive=cd,bootindex=0"]
    if image.kind == "uki":
        if esp is None:
            raise ValueError("a UKI boot needs the ESP directory (see prepare_esp)")
        # qemu's vvfat presents the directory to the guest as a FAT disk: an ESP without writing one.
        return _drive("esp", f"fat:{qemu_file_arg(esp)}", "raw", readonly=True, boot=True)
    readonly = image.boots_kernel  # a squashfs/erofs root is read-only; a boot disk is the guest's own
    return [*args, *_drive("boot", file, image.image_format, readonly=readonly, boot=not image.boots_kernel)]


def _disk_args(options: QemuOptions) -> list[str]:
    args = []
    for index, disk in enumerate(map(as_disk, options.disks)):
        if disk.path is None:
            raise ValueError("unnamed disk: call name_unnamed_disks first")
        args += _drive(f"disk{index}", qemu_file_arg(disk.path), disk.format)
    return args


# The PC's free IDE places: a boot CD takes ide.0 unit 0, qemu's default (empty) CD-ROM drive ide.1 unit 0.
PC_DATA_CDROMS = ("bus=ide.0,unit=1", "bus=ide.1,unit=1")


def _cdrom_args(options: QemuOptions) -> list[str]:
    """Each of `options.cdroms` as a read-only CD-ROM: IDE on a PC, virtio-scsi on arm's virt."""
    args: list[str] = []
    pc = get_arch(options.arch).bios
    if pc and len(options.cdroms) > len(PC_DATA_CDROMS):
        raise UserError(f"{len(options.cdroms)} CD-ROMs: a PC has room for {len(PC_DATA_CDROMS)} besides a boot CD")
    if options.cdroms and not pc:
        args += ["-device", "virtio-scsi-pci,id=scsi-data"]
    for index, iso in enumerate(options.cdroms):
        args += ["-drive", f"if=none,id=data{index},file={qemu_file_arg(iso)},format=raw,media=cdrom,readonly=on"]
        args += ["-device", f"ide-cd,{PC_DATA_CDROMS[index]},drive=data{index}" if pc
                 else f"scsi-cd,bus=scsi-data.0,drive=data{index}"]
    return args


def guestfwd_rule(guest: str, host_port: int) -> str:
    """A user-network rule sending the guest's TCP connections to `guest` ("IP:PORT") to 127.0.0.1:`host_port`,
    through a relay started per connection (a chardev target would be one connection shared by all)."""
    ip, _, port = guest.rpartition(":")
    if not (re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", ip) and port.isdigit() and 1 <= host_port <= 65535):
        raise UserError(f"invalid guest forward {guest}={host_port}", hint="use IP:PORT=HOSTPORT")
    relay = f"{sys.executable} -m linuxkit_py.run.relay 127.0.0.1 {host_port}"
    return f"guestfwd=tcp:{ip}:{port}-cmd:{qemu_file_arg(relay)}"


def _network_args(options: QemuOptions) -> list[str]:
    if options.networking == "none":
        return ["-nic", "none"]
    rules = [*(hostfwd(p) for p in options.publish), *(guestfwd_rule(g, p) for g, p in options.guestfwd.items())]
    rules += [f"net={options.net}"] if options.net else []
    rules += ["restrict=on"] if options.isolated else []
    netdev = ",".join(["user", f"id={NET_ID}", *rules])
    # The Debian kernels have no e1000 (qemu's default NIC): always virtio.
    return ["-netdev", netdev, "-device", f"virtio-net-pci,netdev={NET_ID}"]


# A guest that needs entropy early (sshd keys, TLS) gets it from the host, as in LinuxKit.
RNG_ARGS = ["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]


def board_command(pi: PiBoot, board: Board, options: QemuOptions, console: Sequence[str]) -> list[str]:
    """The qemu argv booting a Raspberry Pi card on qemu's model of `board`: the kernel, initramfs and device
    tree its config.txt names, the card as the SD card, the console on the board's header UART (the
    `board.qemu_serial`th serial port). The machine has its own memory size and CPUs, and no PCI (no virtio);
    TCG only."""
    args = [qemu_binary(options), "-accel", "tcg", "-machine", board.qemu_machine, "-m", str(board.qemu_memory)]
    if not options.reboot:
        args.append("-no-reboot")
    args += ["-display", "none", "-monitor", "none", *["-serial", "null"] * board.qemu_serial, *console]
    args += ["-kernel", str(pi.kernel)]
    args += ["-dtb", str(pi.dtb)] if pi.dtb else []
    args += ["-initrd", str(pi.initrd)] if pi.initrd else []
    args += ["-append", kernel_cmdline(pi.cmdline, options.extra_append, panic_exits=not options.reboot,
                                       console=board.console, emulated=True)]
    return [*args, "-drive", f"if=sd,format=qcow2,file={qemu_file_arg(pi.card)}", "-nic", "none"]


def boot_command(image: BootImage, options: QemuOptions, console: Sequence[str],
                 firmware: Sequence[str] = (), esp: Path | None = None, pi: PiBoot | None = None) -> list[str]:
    """The qemu argv booting `image`. Pure: `options.accel` None counts as tcg, `console` comes from
    serial_console_args/terminal_console_args, `firmware` from firmware_args (UEFI), `esp` is the
    directory holding a UKI at EFI/BOOT/BOOTX64.EFI (see prepare_esp), `pi` the files of a Raspberry Pi
    card (see prepare_pi_boot)."""
    check_options(image, options)
    if image.kind == "rpi":
        if pi is None:
            raise ValueError("a Raspberry Pi boot needs the card's files (see prepare_pi_boot)")
        return board_command(pi, BOARDS[QEMU_BOARD], replace(options, arch=image.arch or options.arch), console)
    return [qemu_binary(options), *_machine_args(options, options.accel or "tcg"), *firmware, *console,
            *_boot_args(image, options, esp), *_disk_args(options), *_cdrom_args(options), *_network_args(options),
            *RNG_ARGS]


def qemu_command(kernel: Path, initrd: Path, cmdline: str, options: QemuOptions, serial: str,
                 firmware: Sequence[str] = ()) -> list[str]:
    """The qemu argv booting `kernel` + `initrd`; `serial` is qemu's -serial value (stdio, file:PATH)."""
    return boot_command(kernel_image(kernel, initrd, cmdline), options, serial_console_args(serial), firmware)


def _check_inputs(image: BootImage) -> None:
    named = [("kernel", image.kernel), ("initrd", image.initrd), (image.kind, image.image)]
    for what, path in named:
        if path is not None and not path.is_file():
            raise UserError(f"{what} {path} not found")


def prepare_esp(uki: Path, directory: Path, arch: Arch | None = None) -> Path:
    """A directory laid out as an EFI system partition that boots `uki` (at EFI/BOOT/BOOT<arch>.EFI)."""
    esp = directory / "esp"
    target = esp / (arch or get_arch("amd64")).efi_boot_path
    target.parent.mkdir(parents=True)
    target.symlink_to(uki.resolve())
    return esp


def _firmware(options: QemuOptions, arch: Arch) -> Firmware:
    if options.secure_boot:
        return secure_boot_firmware(arch, options.firmware, options.fw_vars)
    firmware = find_firmware(options.firmware, arch)
    if options.fw_vars is not None:
        if not options.fw_vars.is_file():
            raise UserError(f"--fw-vars {options.fw_vars}: no such file")
        return replace(firmware, vars_template=options.fw_vars)
    return firmware


@contextlib.contextmanager
def _prepared_command(image: BootImage, options: QemuOptions, console: Sequence[str]) -> Iterator[list[str]]:
    """Check the inputs, create missing disks, choose the accelerator and set up per-run files (UEFI
    variables, the ESP of a UKI) that live until the block ends; yields the qemu argv."""
    check_options(image, options)
    _check_inputs(image)
    options = replace(options, arch=image.arch or options.arch)  # NAME-rpi.img is arm64 whatever --arch says
    qemu = qemu_binary(options)
    require(qemu)
    arch = get_arch(options.arch)
    uefi = uses_uefi(image, options)
    firmware = _firmware(options, arch) if uefi else None
    create_missing_disks([as_disk(disk) for disk in options.disks])
    options = replace(options, accel=choose_accel(options.accel, qemu))
    with tempfile.TemporaryDirectory(prefix="linuxkit-py-run-") as tmp:
        run_dir = Path(tmp)
        fw_args = firmware_args(firmware, copy_vars(firmware, run_dir)) if firmware else []
        esp = prepare_esp(image.image, run_dir, arch) if image.kind == "uki" and image.image else None
        pi = prepare_pi_boot(image.image, BOARDS[QEMU_BOARD], run_dir) if image.kind == "rpi" and image.image else None
        yield boot_command(image, options, console, fw_args, esp, pi)


def _open_log(path: Path) -> BinaryIO:
    try:
        return open(path, "wb")  # noqa: SIM115 - the caller's ExitStack closes it
    except OSError as exc:
        raise UserError(f"cannot write console log {path}: {exc.strerror}") from exc


class _Console:
    """The serial console text read so far, kept with "\\n" line ends."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pieces: list[str] = []
        self._pending_cr = False  # a chunk ended in "\r": the "\n" may start the next one
        self.stderr = b""
        self.matched = False
        self.timed_out = False

    def add(self, chunk: bytes, final: bool = False) -> None:
        text = ("\r" if self._pending_cr else "") + self._decoder.decode(chunk, final=final)
        self._pending_cr = text.endswith("\r") and not final
        if self._pending_cr:
            text = text[:-1]
        self._pieces.append(text.replace("\r\n", "\n"))

    @property
    def text(self) -> str:
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""


def _read_console(
    proc: subprocess.Popen[bytes],
    deadline: float | None,
    until: Callable[[str], bool] | None,
    sinks: list[BinaryIO],
) -> _Console:
    """Read qemu's stdout (the serial console, copied to `sinks`) and stderr until both close, `until`
    matches or the deadline passes."""
    assert proc.stdout is not None and proc.stderr is not None
    console = _Console()
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "console")
        selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        while selector.get_map():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                console.timed_out = True
                break
            for key, _ in selector.select(0.5 if remaining is None else min(remaining, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data == "stderr":
                    console.stderr += chunk
                else:
                    console.add(chunk)
                    for sink in sinks:
                        sink.write(chunk)
                        sink.flush()
                    if until is not None and until(console.text):
                        console.matched = True
                        return console
    console.add(b"", final=True)
    return console


def _with_power_button(until: Callable[[str], bool] | None, powerdown_on: Callable[[str], bool],
                       qmp: Path) -> Callable[[str], bool]:
    pressed = False

    def watch(output: str) -> bool:
        nonlocal pressed
        if not pressed and powerdown_on(output):
            pressed = True
            try:
                press_power_button(qmp)
            except OSError as exc:
                raise UserError(f"cannot press the power button through qemu's QMP socket: {exc}") from exc
        return until is not None and until(output)

    return watch


def _stop_qemu(proc: subprocess.Popen[bytes]) -> None:
    stop(proc)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def press_power_button(qmp_socket: Path, timeout: float = 5.0) -> None:
    """Press the guest's ACPI power button through qemu's QMP socket (`system_powerdown`)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(qmp_socket))
        reader = sock.makefile("rb")
        reader.readline()  # the QMP greeting
        for command in (b'{"execute": "qmp_capabilities"}', b'{"execute": "system_powerdown"}'):
            sock.sendall(command + b"\n")
            reader.readline()


def boot_image(
    image: BootImage,
    options: QemuOptions | None = None,
    *,
    timeout: float | None,
    log: Path | None = None,
    until: Callable[[str], bool] | None = None,
    echo: BinaryIO | None = None,
    powerdown_on: Callable[[str], bool] | None = None,
) -> BootResult:
    """Boot `image` and collect the serial console until qemu exits, `until(output)` is true, or
    `timeout` seconds passed (None: no limit); qemu is stopped in every case. `log` and `echo` get
    the console bytes as they arrive. When `powerdown_on(output)` first holds, the guest's ACPI power
    button is pressed (a clean shutdown) and the console is read on until qemu exits."""
    options = options or QemuOptions()
    if powerdown_on is not None and image.kind == "rpi":
        raise UserError(f"--poweroff-on: qemu's {BOARDS[QEMU_BOARD].qemu_machine} has no power button",
                        hint="power off from the guest (pkg/poweroff), or stop at a line with --until")
    exit_code: int | None = None
    with contextlib.ExitStack() as stack:
        argv = stack.enter_context(_prepared_command(image, options, serial_console_args("stdio")))
        if powerdown_on is not None:
            qmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="linuxkit-py-qmp-"))) / "qmp.sock"
            argv = [*argv, "-qmp", f"unix:{qemu_file_arg(qmp)},server=on,wait=off"]
            until = _with_power_button(until, powerdown_on, qmp)
        sinks = [stack.enter_context(_open_log(log))] if log else []
        sinks += [echo] if echo else []
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        proc = start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stack.callback(_stop_qemu, proc)
        console = _read_console(proc, deadline, until, sinks)
        if not (console.matched or console.timed_out):
            # Both pipes closed: qemu is exiting; give it what is left of the timeout.
            try:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                exit_code = proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                console.timed_out = True
        seconds = time.monotonic() - started
    return BootResult(
        output=console.text,
        exit_code=exit_code,
        timed_out=console.timed_out,
        matched=console.matched,
        seconds=seconds,
        stderr=console.stderr.decode(errors="replace"),
        command=argv,
    )


def boot(
    kernel: Path,
    initrd: Path,
    cmdline: str,
    options: QemuOptions | None = None,
    *,
    timeout: float,
    log: Path | None = None,
    until: Callable[[str], bool] | None = None,
) -> BootResult:
    """boot_image() for a kernel + initrd + command line."""
    return boot_image(kernel_image(Path(kernel), Path(initrd), cmdline), options,
                      timeout=timeout, log=log, until=until)


def run_interactive(image: BootImage, options: QemuOptions | None = None, *, log: Path | None = None) -> int:
    """Boot `image` with its serial console on this terminal until qemu exits; returns qemu's exit status."""
    options = options or QemuOptions()
    with contextlib.ExitStack() as stack:
        if log is not None:
            _open_log(log).close()  # a clear error now rather than qemu's after it took the terminal
        argv = stack.enter_context(_prepared_command(image, options, terminal_console_args(log)))
        proc = start(argv)
        stack.callback(stop, proc)
        return proc.wait()
