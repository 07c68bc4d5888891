"""Boot build outputs in qemu with the serial console captured (for users and for boot tests).

Today: a kernel + initrd + cmdline (the `kernel+initrd` outputs). ISO and disk boots will
add their own `-cdrom`/`-drive` arguments next to `_kernel_args`. qemu always runs with
`-no-reboot` and the kernel with `panic=-1`, so a guest that panics or powers off ends
qemu; `boot()` bounds everything else with its timeout and always stops qemu.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from linuxkit_py.errors import UserError
from linuxkit_py.run.kvm import choose_accel
from linuxkit_py.tools import require_file, start, stop

QEMU = "qemu-system-x86_64"
SERIAL_CONSOLE = "console=ttyS0"
PANIC_EXITS = "panic=-1"  # panic -> immediate reboot, which -no-reboot turns into qemu exiting
OVMF_FIRMWARE = "/usr/share/ovmf/OVMF.fd"
OVMF_PACKAGE = "ovmf"
NET_ID = "net0"

# Disk image suffix -> qemu block format; anything else is raw.
_DISK_FORMATS = {".qcow2": "qcow2", ".vmdk": "vmdk", ".vhd": "vpc", ".vhdx": "vhdx"}
_PUBLISH = re.compile(r"(\d+):(\d+)(?:/(tcp|udp))?")


@dataclass
class QemuOptions:
    mem: int = 512  # MiB
    cpus: int = 1
    accel: str | None = None  # kvm or tcg; None: kvm only if it provably works, else tcg
    publish: list[str] = field(default_factory=list)  # "HOST:GUEST[/tcp|udp]", forwarded from 127.0.0.1
    disks: list[str] = field(default_factory=list)  # image paths, attached as virtio disks
    extra_append: str = ""  # appended to the kernel command line
    uefi: bool = False  # boot through OVMF instead of SeaBIOS


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


def kernel_cmdline(cmdline: str, extra_append: str = "") -> str:
    """The command line qemu passes: `cmdline`, `extra_append`, then a serial console and
    `panic=-1` unless the line already chooses a console or a panic timeout."""
    line = " ".join(part for part in (cmdline.strip(), extra_append.strip()) if part)
    if not _has_param(line, "console"):
        line = f"{line} {SERIAL_CONSOLE}".strip()
    if not _has_param(line, "panic"):
        line = f"{line} {PANIC_EXITS}"
    return line


def _qemu_path_arg(path: Path | str) -> str:
    # qemu option values separate keys with commas; a literal comma is written twice.
    return str(path).replace(",", ",,")


def _machine_args(options: QemuOptions, accel: str) -> list[str]:
    if options.mem < 16 or options.cpus < 1:
        raise UserError(f"invalid VM size: {options.mem} MiB of memory, {options.cpus} CPUs",
                        hint="use at least 16 MiB and 1 CPU")
    args = ["-accel", accel]
    if accel == "kvm":
        args += ["-cpu", "host"]
    args += ["-m", str(options.mem), "-smp", str(options.cpus), "-no-reboot",
             "-display", "none", "-vga", "none", "-monitor", "none"]
    if options.uefi:
        args += ["-bios", OVMF_FIRMWARE]
    return args


def _network_args(options: QemuOptions) -> list[str]:
    netdev = ",".join(["user", f"id={NET_ID}", *(hostfwd(p) for p in options.publish)])
    # The Debian kernels have no e1000 (qemu's default NIC): always virtio.
    return ["-netdev", netdev, "-device", f"virtio-net-pci,netdev={NET_ID}"]


def _disk_args(options: QemuOptions) -> list[str]:
    args = []
    for disk in options.disks:
        fmt = _DISK_FORMATS.get(Path(disk).suffix.lower(), "raw")
        args += ["-drive", f"file={_qemu_path_arg(disk)},format={fmt},if=virtio"]
    return args


def _kernel_args(kernel: Path, initrd: Path, cmdline: str, options: QemuOptions) -> list[str]:
    return ["-kernel", str(kernel), "-initrd", str(initrd),
            "-append", kernel_cmdline(cmdline, options.extra_append)]


def qemu_command(kernel: Path, initrd: Path, cmdline: str, options: QemuOptions, serial: str) -> list[str]:
    """The qemu argv booting `kernel` + `initrd`; `serial` is qemu's -serial value (stdio, file:PATH).

    Pure: `options.accel` None counts as tcg here (boot() resolves it by probing KVM first).
    """
    return [QEMU, *_machine_args(options, options.accel or "tcg"), "-serial", serial,
            *_kernel_args(kernel, initrd, cmdline, options), *_network_args(options), *_disk_args(options)]


def _check_inputs(kernel: Path, initrd: Path, options: QemuOptions) -> None:
    for what, path in [("kernel", kernel), ("initrd", initrd), *(("disk", Path(d)) for d in options.disks)]:
        if not Path(path).is_file():
            raise UserError(f"{what} {path} not found")
    if options.uefi:
        require_file(OVMF_FIRMWARE, OVMF_PACKAGE)


def _open_log(path: Path) -> BinaryIO:
    try:
        return open(path, "wb")  # noqa: SIM115 - the caller's ExitStack closes it
    except OSError as exc:
        raise UserError(f"cannot write console log {path}: {exc.strerror}") from exc


def _console_text(raw: str) -> str:
    return raw.replace("\r\n", "\n")


@dataclass
class _Console:
    """What boot() read from qemu so far."""

    raw: str = ""  # serial console text as qemu wrote it ("\r\n" line ends)
    stderr: bytes = b""
    matched: bool = False
    timed_out: bool = False


def _read_console(
    proc: subprocess.Popen[bytes],
    deadline: float,
    until: Callable[[str], bool] | None,
    log_file: BinaryIO | None,
) -> _Console:
    """Read qemu's stdout (the serial console) and stderr until both close, `until` matches or
    the deadline passes."""
    assert proc.stdout is not None and proc.stderr is not None
    console = _Console()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "console")
        selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                console.timed_out = True
                break
            for key, _ in selector.select(min(remaining, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data == "stderr":
                    console.stderr += chunk
                else:
                    console.raw += decoder.decode(chunk)
                    if log_file:
                        log_file.write(chunk)
                        log_file.flush()
                    if until is not None and until(_console_text(console.raw)):
                        console.matched = True
                        return console
    console.raw += decoder.decode(b"", final=True)
    return console


def _stop_qemu(proc: subprocess.Popen[bytes]) -> None:
    stop(proc)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


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
    """Boot in qemu and collect the serial console until qemu exits, `until(output)` is true,
    or `timeout` seconds passed; qemu is stopped in every case. `log` gets the raw console."""
    options = options or QemuOptions()
    kernel, initrd = Path(kernel), Path(initrd)
    _check_inputs(kernel, initrd, options)
    options = replace(options, accel=choose_accel(options.accel, QEMU))
    argv = qemu_command(kernel, initrd, cmdline, options, serial="stdio")

    exit_code: int | None = None
    with contextlib.ExitStack() as stack:
        log_file = stack.enter_context(_open_log(log)) if log else None
        started = time.monotonic()
        deadline = started + timeout
        proc = start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stack.callback(_stop_qemu, proc)
        console = _read_console(proc, deadline, until, log_file)
        if not (console.matched or console.timed_out):
            # Both pipes closed: qemu is exiting; give it what is left of the timeout.
            try:
                exit_code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                console.timed_out = True
        seconds = time.monotonic() - started
    return BootResult(
        output=_console_text(console.raw),
        exit_code=exit_code,
        timed_out=console.timed_out,
        matched=console.matched,
        seconds=seconds,
        stderr=console.stderr.decode(errors="replace"),
        command=argv,
    )
