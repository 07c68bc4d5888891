"""Choose qemu's accelerator: KVM only when a probe guest proved that it runs, else TCG.

`/dev/kvm` can exist, open, create VMs and run real-mode code, yet hang the guest for ever
as soon as it enters protected mode (seen under nested virtualisation). So the probe boots
a tiny firmware that goes real mode -> protected mode -> long mode and then writes to
qemu's isa-debug-exit port; KVM counts as working only if qemu exits with that code within
a few seconds. The probe runs in its own qemu process, which is killed when it overruns.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import tempfile
from pathlib import Path

from linuxkit_py.errors import UserError
from linuxkit_py.tools import require, start, stop

log = logging.getLogger(__name__)

ACCELERATORS = ("kvm", "tcg")
PROBE_TIMEOUT = 2.0  # seconds; a working KVM answers in well under 0.5 s

DEBUG_EXIT_PORT = 0xF4
DEBUG_EXIT_VALUE = 0x2A
# isa-debug-exit makes qemu exit with status (value << 1) | 1.
PROBE_EXIT_STATUS = (DEBUG_EXIT_VALUE << 1) | 1
# The probe prints one letter on COM1 per mode reached: Real, Protected, Long.
PROBE_STAGES = "RPL"

# The firmware is mapped at 0xF0000 (64 KiB); the CPU starts at offset 0xFFF0 in real mode.
_FIRMWARE_SIZE = 0x10000
_RESET_VECTOR = 0xFFF0
_RESET_JUMP = bytes.fromhex("e90d00")  # jmp 0x0000 (16-bit IP wraps to the start of the image)
# Hand-assembled (GNU as, linked at 0xF0000), stage by stage.
_FIRMWARE_CODE = bytes.fromhex(
    # real mode: cli; ds=0xf000; out 'R' to 0x3f8; lgdt [0xc0]; cr0.PE=1; ljmp 0x08:0xf0024
    "fab800f08ed8baf803b052ee660f0116c0000f20c06683c8010f22c066ea24000f000800"
    # protected mode: ds=es=ss=0x10; out 'P'; zero 0x1000-0x3fff; PML4 -> PDPT -> PD with one
    # 2 MiB identity page; cr4.PAE; cr3=0x1000; EFER.LME; cr0.PG; ljmp 0x18:0xf0092
    "66b810008ed88ec08ed066baf803b050eebf0010000031c0b9000c0000f3ab"
    "c7050010000003200000c7050020000003300000c70500300000830000000f20e083c8200f22e0"
    "b8001000000f22d8b9800000c00f320d000100000f300f20c00d000000800f22c0ea92000f001800"
    # long mode: out 'L'; out 0x2a to port 0xf4; hlt loop
    "66baf803b04ceeb02ae6f4f4ebfd"
    # GDT at 0xa0: null, 32-bit code, data, 64-bit code; its descriptor at 0xc0
    "0000000000000000ffff0000009acf00ffff00000092cf00ffff0000009aaf00"
    "1f00a0000f00"
)


def probe_firmware() -> bytes:
    """The 64 KiB probe firmware image (pass it to qemu with -bios)."""
    image = bytearray(_FIRMWARE_SIZE)
    image[: len(_FIRMWARE_CODE)] = _FIRMWARE_CODE
    image[_RESET_VECTOR : _RESET_VECTOR + len(_RESET_JUMP)] = _RESET_JUMP
    return bytes(image)


def probe_command(qemu: str, accel: str, firmware: Path, serial_log: Path) -> list[str]:
    cpu = ["-cpu", "host"] if accel == "kvm" else []
    return [qemu, "-accel", accel, *cpu, "-machine", "pc", "-m", "16", "-nodefaults", "-no-reboot",
            "-display", "none", "-vga", "none", "-monitor", "none", "-serial", f"file:{serial_log}",
            "-bios", str(firmware),
            "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=1"]


def probe_accel(accel: str, qemu: str = "qemu-system-x86_64", timeout: float = PROBE_TIMEOUT) -> bool:
    """True if the probe guest reaches long mode under `accel` within `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="linuxkit-py-probe-") as tmp:
        firmware = Path(tmp) / "probe.bin"
        firmware.write_bytes(probe_firmware())
        serial_log = Path(tmp) / "serial"
        argv = probe_command(require(qemu), accel, firmware, serial_log)
        proc = start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            status: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            stop(proc)
        reached = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    works = status == PROBE_EXIT_STATUS and reached == PROBE_STAGES
    log.debug("accelerator probe %s: exit status %s, stages reached %r -> %s",
              accel, status, reached, "works" if works else "unusable")
    return works


@functools.cache
def kvm_works(qemu: str = "qemu-system-x86_64") -> bool:
    """Whether KVM provably runs guests here (probed once per process)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    return probe_accel("kvm", qemu)


def choose_accel(requested: str | None, qemu: str = "qemu-system-x86_64") -> str:
    """`requested` if given (kvm or tcg), else kvm when it provably works, else tcg."""
    if requested is not None:
        if requested not in ACCELERATORS:
            raise UserError(f"unknown accelerator {requested!r}", hint="use kvm or tcg")
        return requested
    return "kvm" if kvm_works(qemu) else "tcg"
