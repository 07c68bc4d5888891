"""`linuxkit-py run [qemu] [options] PATH`: boot a build output in qemu, like `linuxkit run qemu`.

Interactive when stdin is a terminal (the serial console on it, Ctrl-A X quits); otherwise, or with
--timeout/--until, the console is copied to stdout and the exit status says how the guest ended:
0 when qemu exited 0 (or --until matched), 124 when --timeout stopped it, 1 otherwise.
With --detached, the same run goes on in the background (console to a log file) and its pid is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from linuxkit_py.arch import normalize_arch
from linuxkit_py.errors import UserError
from linuxkit_py.run.disks import DISK_SYNTAX, name_unnamed_disks, parse_disk
from linuxkit_py.run.image import BootImage, arch_in_bytes, detect_image, forced_image, sniff_arch
from linuxkit_py.run.kvm import ACCELERATORS
from linuxkit_py.run.metadata import DATA_ISO, read_data_option, write_metadata_iso
from linuxkit_py.run.qemu import NETWORKING, BootResult, QemuOptions, boot_image, run_interactive
from linuxkit_py.tools import start

log = logging.getLogger(__name__)

BACKEND = "qemu"
TIMEOUT_STATUS = 124  # as timeout(1)
STATE_SUFFIX = "-state"
DETACHED_CONSOLE = "console.log"  # in the state directory, unless --console-log names a file
DETACHED_STDERR = "run.log"
DETACHED_PID = "run.pid"

# LinuxKit `run qemu` flags linuxkit-py declines, each with the reason given when one is used (docs/run.md).
NOT_SUPPORTED = {
    "gui": ("--gui", "guests run headless; their console is the serial console on this terminal"),
    "virtiofs": ("--virtiofs", "no virtiofsd shares; attach a --disk or put the files in the image with files:"),
    "virtiofsd": ("--virtiofsd", "no virtiofsd shares; attach a --disk or put the files in the image with files:"),
    "usb": ("--usb", "no USB controller; disks and the network are virtio"),
    "device": ("--device", "qemu -device options are not passed through"),
}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}")
    return value


def add_run_parser(subparsers: Any) -> None:
    """Add the `run` verb to the top-level subparsers."""
    p = subparsers.add_parser(
        "run", help="boot a build output in qemu", usage="%(prog)s [qemu] [options] PATH",
        description="Boot PATH in qemu: a kernel output prefix (PATH-kernel with PATH-initrd.img, "
                    "-squashfs.img or -erofs.img), an .iso, a disk image (.img .raw .qcow2 .vhd .vhdx .vmdk) "
                    "or a UKI (.efi). -efi in the name implies --uefi. Options may come before or after "
                    "qemu and PATH.")
    p.add_argument("target", nargs="+", metavar="[qemu] PATH", help="the output to boot (qemu is the only backend)")
    p.add_argument("--mem", type=int, default=1024, metavar="MIB", help="memory in MiB (default 1024)")
    p.add_argument("--cpus", type=int, default=1, help="number of CPUs (default 1)")
    p.add_argument("--uefi", action="store_true", help="boot through UEFI firmware (OVMF)")
    p.add_argument("--fw", type=Path, metavar="FILE", help="UEFI firmware (default: Debian's OVMF_CODE_4M.fd)")
    p.add_argument("--fw-vars", type=Path, metavar="FILE", help="UEFI variable store to start from, e.g. one with "
                   "your Secure Boot keys enrolled (`keys create` writes DIR/OVMF_VARS_4M.fd); copied per run")
    p.add_argument("--secure-boot", action="store_true", help="UEFI with Secure Boot enforced (OVMF secboot, "
                   "q35 with SMM); keys from --fw-vars, default Debian's snakeoil set")
    p.add_argument("--disk", action="append", default=[], metavar=DISK_SYNTAX,
                   help="attach a disk, created when missing and a size is given (repeatable)")
    p.add_argument("--state", type=Path, metavar="DIR",
                   help="directory for disks given only a size and --detached's files (default: PATH-state)")
    p.add_argument("--publish", action="append", default=[], metavar="HOST:GUEST[/tcp|udp]",
                   help="forward 127.0.0.1:HOST to the guest's port GUEST (repeatable)")
    p.add_argument("--accel", choices=ACCELERATORS, help="default: kvm if it provably works here, else tcg")
    p.add_argument("--networking", choices=NETWORKING, default="user", help="default: user")
    p.add_argument("--append", default="", metavar="TEXT", help="add TEXT to the kernel command line")
    p.add_argument("--data", metavar="STRING",
                   help="metadata for the guest: a config CD-ROM holding STRING (read by pkg/metadata), "
                        "written to the state directory as data.iso")
    p.add_argument("--data-file", type=Path, metavar="FILE", help="the same with the contents of FILE")
    p.add_argument("--guestfwd", action="append", default=[], metavar="IP:PORT=HOSTPORT",
                   help="send the guest's TCP connections to IP:PORT to 127.0.0.1:HOSTPORT, e.g. "
                        "169.254.169.254:80=8080 for a local stand-in of a cloud's metadata server (repeatable)")
    p.add_argument("--net", metavar="CIDR", help="the user network's addresses (default 10.0.2.0/24), e.g. "
                                                 "169.254.0.0/16 to have the metadata addresses on it")
    p.add_argument("--isolated", action="store_true",
                   help="the guest reaches nothing but --publish and --guestfwd ports (qemu's restrict=on; "
                        "DHCP gives no router: use --net 169.254.0.0/16 for 169.254.169.254)")
    p.add_argument("--reboot", action="store_true", help="let the guest reboot (default: a reboot or a kernel panic "
                   "ends qemu, except in an interactive run)")
    p.add_argument("--console-log", type=Path, metavar="FILE", help="also write the console to FILE")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help="stop the guest after SECONDS (exit status 124); implies non-interactive")
    p.add_argument("--until", metavar="TEXT",
                   help="stop the guest as soon as TEXT appears on the console (exit status 0); "
                        "implies non-interactive")
    p.add_argument("--poweroff-on", metavar="TEXT",
                   help="press the guest's ACPI power button as soon as TEXT appears on the console (a clean "
                        "shutdown: onshutdown containers run), then wait for qemu to exit; implies non-interactive")
    kinds = p.add_mutually_exclusive_group()
    for kind, help_text in (("kernel", "PATH is a kernel output: PATH-kernel with PATH-initrd.img"),
                            ("squashfs", "PATH is a kernel output: PATH-kernel with PATH-squashfs.img"),
                            ("iso", "PATH is an ISO image, whatever its name")):
        kinds.add_argument(f"--{kind}", dest="forced_kind", action="store_const", const=kind, help=help_text)
    p.add_argument("--arch", help="the guest's architecture: x86_64/amd64, aarch64/arm64 (default: the host's)")
    p.add_argument("--qemu", metavar="PATH", help="the qemu-system-* binary to run (default: from PATH)")
    p.add_argument("--detached", action="store_true",
                   help="run in the background: print the pid (SIGTERM stops the guest); the console goes to "
                        f"--console-log, else PATH-state/{DETACHED_CONSOLE}")
    p.add_argument("--gui", action="store_true", help="not supported (LinuxKit: a graphical console)")
    p.add_argument("--usb", action="store_true", help="not supported (LinuxKit: a USB controller)")
    p.add_argument("--device", action="append", default=[], help="not supported (LinuxKit: qemu -device VALUE)")
    p.add_argument("--virtiofs", action="append", default=[], metavar="DIR",
                   help="not supported (LinuxKit: share DIR through virtiofsd)")
    p.add_argument("--virtiofsd", metavar="PATH", help="not supported (LinuxKit: the virtiofsd binary)")


def _image_path(target: list[str]) -> Path:
    if len(target) == 1:
        return Path(target[0])
    if len(target) == 2 and target[0] == BACKEND:
        return Path(target[1])
    if len(target) == 2:
        raise UserError(f"unknown run backend {target[0]!r}", hint="linuxkit-py runs images in qemu only")
    raise UserError("run takes one PATH", hint="linuxkit-py run [qemu] PATH")


def _refuse_unsupported(args: argparse.Namespace) -> None:
    for dest, (flag, reason) in NOT_SUPPORTED.items():
        if getattr(args, dest):
            raise UserError(f"not supported: {flag}: {reason}")


def _state_dir(args: argparse.Namespace, image: BootImage) -> Path:
    return Path(args.state or image.prefix.with_name(image.prefix.name + STATE_SUFFIX))


def _options(args: argparse.Namespace, image: BootImage) -> QemuOptions:
    state_dir = _state_dir(args, image)
    if args.accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise UserError("--accel kvm: /dev/kvm is not usable here", hint="use --accel tcg")
    if image.uefi and not args.uefi:
        log.info("booting %s with UEFI (its name says so)", image.image)
    return QemuOptions(
        mem=args.mem,
        cpus=args.cpus,
        accel=args.accel,
        publish=args.publish,
        disks=name_unnamed_disks([parse_disk(d) for d in args.disk], state_dir),
        extra_append=args.append,
        uefi=args.uefi,
        firmware=args.fw,
        fw_vars=args.fw_vars,
        secure_boot=args.secure_boot,
        networking=args.networking,
        arch=_guest_arch(args.arch, image),
        qemu=args.qemu,
        cdroms=_data_iso(args, state_dir),
        guestfwd=dict(_guest_forward(text) for text in args.guestfwd),
        net=args.net,
        isolated=args.isolated,
        reboot=args.reboot,
    )


def _guest_arch(given: str | None, image: BootImage) -> str:
    """--arch, else what the output's bytes say (arm64 Image, UKI machine, BOOTAA64.EFI), else the host's.

    An --arch the bytes contradict is refused here: qemu would start and hang, or fail obscurely."""
    if given is None:
        return normalize_arch(sniff_arch(image))
    arch = normalize_arch(given)
    found = arch_in_bytes(image)
    if found is not None and found[1] != arch:
        path, shown = found
        raise UserError(f"--arch {given}, but {path}'s bytes show an {shown} output",
                        hint="drop --arch: run reads the architecture from the output")
    return arch


def _data_iso(args: argparse.Namespace, state_dir: Path) -> list[Path]:
    """--data/--data-file: the config ISO in the state directory (LinuxKit's CreateMetadataISO)."""
    data = read_data_option(args.data, args.data_file)
    return [] if data is None else [write_metadata_iso(state_dir / DATA_ISO, data)]


def _guest_forward(text: str) -> tuple[str, int]:
    guest, _, port = text.rpartition("=")
    if not guest or not port.isdigit():
        raise UserError(f"invalid --guestfwd {text!r}", hint="use IP:PORT=HOSTPORT, e.g. 169.254.169.254:80=8080")
    return guest, int(port)


def _exit_status(result: BootResult, args: argparse.Namespace) -> int:
    if result.matched:
        return 0
    if result.timed_out:
        what = f"{args.until!r} did not appear on the console" if args.until else "the guest was still running"
        print(f"linuxkit-py: {what} after {args.timeout:g} s; stopped qemu", file=sys.stderr)
        return TIMEOUT_STATUS
    if result.exit_code != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        detail = f": {lines[-1].strip()}" if lines else ""
        raise UserError(f"qemu exited with status {result.exit_code}{detail}")
    if args.until:
        raise UserError(f"the guest stopped before {args.until!r} appeared on the console")
    return 0


@contextlib.contextmanager
def _exit_on_termination() -> Iterator[None]:
    """SIGTERM/SIGHUP end the run like Ctrl-C does: qemu is stopped on the way out."""
    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _detach(args: argparse.Namespace, image: BootImage) -> int:
    """Start this same run in the background (stdin not a terminal: non-interactive) and print its pid."""
    state = _state_dir(args, image)
    state.mkdir(parents=True, exist_ok=True)
    argv = [word for word in args.argv if word != "--detached"]
    if args.console_log is None:
        argv += ["--console-log", str(state / DETACHED_CONSOLE)]
    with open(state / DETACHED_STDERR, "wb") as stderr:
        proc = start([sys.executable, "-m", "linuxkit_py", *argv], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    (state / DETACHED_PID).write_text(f"{proc.pid}\n")
    print(proc.pid)
    return 0


def run_command(args: argparse.Namespace) -> int:
    """`linuxkit-py run`; returns the exit status."""
    _refuse_unsupported(args)
    path = _image_path(args.target)
    image = forced_image(path, args.forced_kind) if args.forced_kind else detect_image(path)
    options = _options(args, image)
    if args.qemu is not None and not (Path(args.qemu).is_file() and os.access(args.qemu, os.X_OK)):
        raise UserError(f"--qemu {args.qemu}: not an executable file")
    if args.detached:
        return _detach(args, image)
    interactive = args.timeout is None and args.until is None and args.poweroff_on is None and sys.stdin.isatty()
    with _exit_on_termination():
        if interactive:
            options.reboot = True  # as on real hardware; Ctrl-A X is the way out
            print("linuxkit-py: the console is on this terminal; Ctrl-A X quits qemu", file=sys.stderr, flush=True)
            return 0 if run_interactive(image, options, log=args.console_log) == 0 else 1
        until = (lambda output: args.until in output) if args.until else None
        powerdown_on = (lambda output: args.poweroff_on in output) if args.poweroff_on else None
        try:
            result = boot_image(image, options, timeout=args.timeout, log=args.console_log, until=until,
                                echo=sys.stdout.buffer, powerdown_on=powerdown_on)
        except BrokenPipeError:
            # stdout was closed (`| head`): qemu is already stopped; keep Python from complaining at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return _exit_status(result, args)
