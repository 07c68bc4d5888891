"""Where a boot's time goes: specs/webserver.yml from qemu start to the first HTTP answer through a published
port, under TCG, as a table of phases read from the serial console.

    .venv/bin/python -m bench.boot [--runs 5] [--format kernel+initrd|raw-efi] [--trace] [--cache DIR]

The spec is built once (`linuxkit-py build`, warm after the first time), then booted `--runs` times, one at a
time, with the qemu command line `linuxkit-py run qemu --publish PORT:80 --accel tcg` uses (linuxkit_py.run).
Each console line is stamped with the host's time since qemu started; the host polls
http://127.0.0.1:PORT/ every 50 ms with short tries. `--trace` adds `linuxkit.trace=1` to the kernel command
line: rc.init and the runtime then print `trace: [UPTIME] WHAT` lines (docs/runtime.md), which split the
rc.init phase further. The table gives, per milestone, the best run's time and the range over all runs;
others' load (CPU time of the rest of the machine per second of boot) is printed with each run.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.build_bench import busy_cpu_seconds, wait_for_quiet
from linuxkit_py.arch import get_arch
from linuxkit_py.run.firmware import copy_vars, find_firmware
from linuxkit_py.run.image import BootImage, detect_image
from linuxkit_py.run.qemu import QemuOptions, boot_command, firmware_args, serial_console_args

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "webserver.yml"
WORK = ROOT / "bench" / ".work" / "boot"
HTTP_TIMEOUT = 60.0

# (label, pattern of the console line that ends the phase); the first match of each counts
MILESTONES: list[tuple[str, re.Pattern[str]]] = [
    ("kernel starts (firmware, loading kernel + initrd)", re.compile(r"Linux version ")),
    ("kernel runs /init", re.compile(r"Run /init as init process")),
    ("rc.init starts", re.compile(r"trace: \[[\d.]+\] rc.init: start")),
    ("rc.init: file systems mounted", re.compile(r"trace: \[[\d.]+\] rc.init: mounted")),
    ("rc.init: modules loaded (coldplug)", re.compile(r"trace: \[[\d.]+\] rc.init: modules")),
    ("rc.init banner (hooks start)", re.compile(r"^linuxkit-py: .* up \d")),
    ("onboot dhcpcd: runc run starts", re.compile(r"trace: \[[\d.]+\] onboot dhcpcd: starting")),
    ("onboot dhcpcd: container exited", re.compile(r"trace: \[[\d.]+\] onboot dhcpcd: exited")),
    ("onboot dhcpcd: done", re.compile(r"onboot dhcpcd: done")),
    ("services: first runc run starts", re.compile(r"trace: \[[\d.]+\] service \S+: starting")),
    ("service httpd: started", re.compile(r"service httpd: started")),
]
HTTP_LABEL = "HTTP answers on the published port"
KERNEL_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


@dataclass
class Boot:
    times: dict[str, float] = field(default_factory=dict)  # label -> seconds after qemu start
    kernel_init: float | None = None  # the kernel's own timestamp of "Run /init"
    others_load: float = 0.0  # CPU seconds of other processes per second of this boot
    console: str = ""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build(spec: Path, cache: Path, out: Path, fmt: str) -> Path:
    """`linuxkit-py build` of the spec; the output prefix."""
    cmd = [sys.executable, "-m", "linuxkit_py", "build", "--cache", str(cache), "--dir", str(out),
           "--name", "webserver", "-f", fmt, str(spec)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out / ("webserver-efi.img" if fmt == "raw-efi" else "webserver")


def http_poller(port: int, started: float, result: dict[str, float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.5) as response:
                if response.status == 200:
                    result[HTTP_LABEL] = time.monotonic() - started
                    return
        except OSError:
            pass
        time.sleep(0.05)


def boot_once(target: Path, append: str, cpus: int, qemu_args: list[str]) -> Boot:
    port = free_port()
    image = detect_image(target)
    options = QemuOptions(accel="tcg", cpus=cpus, publish=[f"{port}:80"],
                          extra_append=append if image.boots_kernel else "")
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        argv = [*boot_command(image, options, serial_console_args("stdio"), _firmware(image, Path(tmp))), *qemu_args]
        boot = Boot()
        http: dict[str, float] = {}
        stop = threading.Event()
        busy = busy_cpu_seconds()
        cpu_before = os.times()
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        poller = threading.Thread(target=http_poller, args=(port, started, http, stop), daemon=True)
        poller.start()
        lines: list[str] = []
        assert proc.stdout is not None
        try:
            pending = b""
            while HTTP_LABEL not in http and time.monotonic() - started < HTTP_TIMEOUT:
                # the console may go quiet before the HTTP answer: never block on it
                if not select.select([proc.stdout], [], [], 0.05)[0]:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                now = time.monotonic() - started
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    line = raw.decode(errors="replace").rstrip("\r")
                    lines.append(line)
                    _stamp(boot, line, now)
        finally:
            stop.set()
            proc.terminate()
            proc.wait(10)
            poller.join(5)
        elapsed = time.monotonic() - started
        ours = sum(os.times()[:4]) - sum(cpu_before[:4])  # this process and qemu (a waited-for child)
        boot.others_load = max(0.0, busy_cpu_seconds() - busy - ours) / elapsed
        boot.times.update(http)
        boot.console = "\n".join(lines)
        return boot


def _firmware(image: BootImage, tmp: Path) -> list[str]:
    """OVMF's arguments for a UEFI image (a copy of the variable store in `tmp`), else none."""
    if not image.uefi:
        return []
    firmware = find_firmware(None, get_arch("amd64"))
    return firmware_args(firmware, copy_vars(firmware, tmp))


def _stamp(boot: Boot, line: str, now: float) -> None:
    for label, pattern in MILESTONES:
        if label not in boot.times and pattern.search(line):
            boot.times[label] = now
            if label == "kernel runs /init" and (m := KERNEL_STAMP.match(line)):
                boot.kernel_init = float(m.group(1))


def table(boots: list[Boot]) -> str:
    best = min(boots, key=lambda b: b.times.get(HTTP_LABEL, float("inf")))
    rows = ["| milestone (qemu start →) | best run (s) | phase (s) | all runs (s) |", "|---|---:|---:|---:|"]
    previous = 0.0
    for label in [label for label, _ in MILESTONES] + [HTTP_LABEL]:
        if label not in best.times:
            continue
        at = best.times[label]
        seen = sorted(b.times[label] for b in boots if label in b.times)
        rows.append(f"| {label} | {at:.2f} | {at - previous:.2f} | {seen[0]:.2f}–{seen[-1]:.2f} |")
        previous = at
    if best.kernel_init is not None:
        rows.append(f"\nkernel's own clock at `Run /init`: {best.kernel_init:.2f} s (best run)")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--format", default="kernel+initrd", choices=["kernel+initrd", "raw-efi"])
    parser.add_argument("--trace", action="store_true", help="boot with linuxkit.trace=1 (kernel boots only)")
    parser.add_argument("--append", default="", help="more kernel command line (kernel boots only)")
    parser.add_argument("--cpus", type=int, default=QemuOptions.cpus, help="the guest's CPUs (run --cpus)")
    parser.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                        help="one more qemu argument, for experiments (repeatable), e.g. --qemu-arg=-nodefaults")
    parser.add_argument("--spec", type=Path, default=SPEC,
                        help="the spec (default specs/webserver.yml; e.g. that file of an older checkout, to compare)")
    parser.add_argument("--cache", type=Path, default=WORK / "cache")
    parser.add_argument("--quiet", type=float, default=0.3, metavar="CORES",
                        help="wait until others use at most this many cores before each boot (-1: never wait)")
    parser.add_argument("--console", type=Path, help="write the best run's console here")
    args = parser.parse_args()
    target = build(args.spec, args.cache, WORK / "out", args.format)
    append = " ".join(part for part in (args.append, "linuxkit.trace=1" if args.trace else "") if part)
    boots = []
    for run in range(args.runs):
        if args.quiet >= 0:
            wait_for_quiet(args.quiet, 120)
        boot = boot_once(target, append, args.cpus, args.qemu_arg)
        boots.append(boot)
        http = boot.times.get(HTTP_LABEL)
        print(f"run {run + 1}: HTTP {'never' if http is None else f'{http:.2f} s'}, "
              f"others' load {boot.others_load:.2f} cores", file=sys.stderr)
    extras = [f"--append '{append}'"] if append else []
    extras += [f"qemu {' '.join(args.qemu_arg)}"] if args.qemu_arg else []
    print(f"{args.spec.name}, {args.format}, qemu TCG, {args.cpus} CPU(s), best of {args.runs}"
          f"{''.join(', ' + extra for extra in extras)}; load average {os.getloadavg()[0]:.2f}\n")
    print(table(boots))
    if args.console:
        best = min(boots, key=lambda b: b.times.get(HTTP_LABEL, float("inf")))
        args.console.write_text(best.console)
    return 0 if all(HTTP_LABEL in b.times for b in boots) else 1


if __name__ == "__main__":
    sys.exit(main())
