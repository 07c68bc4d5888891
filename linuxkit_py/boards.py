"""Raspberry Pi boards: one frozen row of facts per board (as arch.py has per architecture), and the two
text files the Pi's GPU firmware reads from the boot partition, config.txt and cmdline.txt.

One SD card boots every board here: config.txt gives each board its own device tree in a conditional
section (raspberrypi/documentation, config_txt/conditional.adoc: `[pi3]` applies to the 3B, 3B+ and 3A+,
`[pi3+]` to the 3B+ and 3A+ after `[pi3]`, `[pi4]` to the 4B and the 400, `[pi400]` to the 400 after
`[pi4]`, `[pi02]` to the Zero 2 W; a later line overrides an earlier one), and every board shares the
kernel, the initramfs and the command line. The firmware loads the kernel, the initramfs right after it
(`initramfs NAME followkernel`) and the device tree, puts cmdline.txt into the device tree and starts
the ARM cores in 64-bit mode (`arm_64bit=1`) at the kernel (config_txt/boot.adoc).

`run` reads config.txt back (`config_files`) to boot the same files on qemu's model of a board.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from linuxkit_py.errors import UserError

# The GPU firmware files of Debian's raspi-firmware package (/usr/lib/raspi-firmware/) each SoC reads:
# the BCM2837 (Pi 3, Zero 2 W) loads bootcode.bin from the card, then start.elf and its fixup.dat; the
# BCM2711 (Pi 4) has its boot code in EEPROM and loads start4.elf and fixup4.dat.
BCM2837_FIRMWARE = ("bootcode.bin", "start.elf", "fixup.dat")
BCM2711_FIRMWARE = ("start4.elf", "fixup4.dat")
# The UART on GPIO 14/15 (header pins 8 and 10) is the mini UART on these boards (the PL011 drives
# Bluetooth); with the upstream device trees Debian's kernel names it ttyS1 (seen under qemu raspi3b).
MINI_UART = "ttyS1"
CONSOLE_SPEED = 115200

CONFIG_TXT = "config.txt"
CMDLINE_TXT = "cmdline.txt"
KERNEL_FILE = "kernel8.img"  # the firmware's own default name for a 64-bit kernel, named explicitly too
INITRD_FILE = "initrd.img"


@dataclass(frozen=True)
class Board:
    name: str  # ours, e.g. pi3b
    model: str  # the product's name
    section: str  # config.txt conditional filter whose settings this board applies last
    dtb: str  # device tree, as the kernel package has it under boot/dtb/ (kernel.tar)
    firmware: tuple[str, ...]  # raspi-firmware files its boot needs
    console: str = MINI_UART  # the header UART's device name with this device tree
    qemu_machine: str = ""  # qemu-system-aarch64 -machine modelling this board ("" none in qemu 7.2)
    qemu_serial: int = 1  # which -serial of that machine is `console` (raspi3b: 0 PL011, 1 mini UART)
    qemu_memory: int = 0  # MiB; qemu's raspi machines accept only the board's own size

    @property
    def dtb_file(self) -> str:
        """The device tree's name on the boot partition (the top directory, as the firmware expects)."""
        return self.dtb.rsplit("/", 1)[-1]


# In config.txt order: a section that refines another comes after it.
BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board("pi3b", "Raspberry Pi 3 Model B", "pi3", "broadcom/bcm2837-rpi-3-b.dtb", BCM2837_FIRMWARE,
              qemu_machine="raspi3b", qemu_memory=1024),
        Board("pi3b+", "Raspberry Pi 3 Model B+", "pi3+", "broadcom/bcm2837-rpi-3-b-plus.dtb", BCM2837_FIRMWARE),
        Board("pi02w", "Raspberry Pi Zero 2 W", "pi02", "broadcom/bcm2837-rpi-zero-2-w.dtb", BCM2837_FIRMWARE),
        Board("pi4b", "Raspberry Pi 4 Model B", "pi4", "broadcom/bcm2711-rpi-4-b.dtb", BCM2711_FIRMWARE),
        Board("pi400", "Raspberry Pi 400", "pi400", "broadcom/bcm2711-rpi-400.dtb", BCM2711_FIRMWARE),
    )
}
# Sections each board applies, in file order (conditional.adoc's table): a board applies its own
# section and the ones it "also sees".
SECTIONS_SEEN = {"pi3": ("pi3",), "pi3+": ("pi3", "pi3+"), "pi02": ("pi0", "pi0w", "pi02"),
                 "pi4": ("pi4",), "pi400": ("pi4", "pi400")}
# What qemu can boot: the board the boot tests and `run` use.
QEMU_BOARD = "pi3b"


def firmware_files(boards: list[Board] | None = None) -> list[str]:
    """Every GPU firmware file the boards need, each once, in table order."""
    return list(dict.fromkeys(f for b in (boards or list(BOARDS.values())) for f in b.firmware))


def config_txt(boards: list[Board] | None = None, *, kernel: str = KERNEL_FILE, initrd: str = INITRD_FILE) -> bytes:
    """config.txt: the settings every board shares under [all], then each board's device tree."""
    lines = [
        "# Written by linuxkit-py: one card for every board below (see docs/formats.md, Raspberry Pi).",
        "[all]",
        "arm_64bit=1",  # start the cores in AArch64 state: Debian's arm64 kernel
        "enable_uart=1",  # the mini UART on GPIO 14/15, at a fixed core clock so its baud rate holds
        f"kernel={kernel}",
        f"initramfs {initrd} followkernel",
        f"cmdline={CMDLINE_TXT}",
    ]
    for board in boards or list(BOARDS.values()):
        lines += ["", f"# {board.model}", f"[{board.section}]", f"device_tree={board.dtb_file}"]
    lines += ["", "[all]", ""]
    return "\n".join(lines).encode()


_SERIAL_CONSOLE = re.compile(r"console=(ttyS|ttyAMA)\d+(,\S*)?")


def cmdline_txt(cmdline: str, boards: list[Board] | None = None) -> bytes:
    """cmdline.txt: the spec's command line with its serial consoles replaced by the boards' header UART.

    The spec's `console=ttyS0 console=ttyAMA0` name a VM's serial ports: on a Pi there is no ttyS0, and
    Linux's 8250 driver gives the kernel console only to the first ttyS named, so console=ttyS0 would
    take it from ttyS1; ttyAMA0 is the Bluetooth UART. The board console comes last: it is /dev/console.
    """
    consoles = dict.fromkeys(b.console for b in (boards or list(BOARDS.values())))
    words = [w for w in cmdline.split() if not _SERIAL_CONSOLE.fullmatch(w)]
    words += [f"console={console},{CONSOLE_SPEED}" for console in consoles]
    return (" ".join(words) + "\n").encode()


@dataclass(frozen=True)
class BootConfig:
    """What the firmware of one board loads, read from config.txt."""

    kernel: str
    initrd: str | None
    dtb: str | None
    cmdline_file: str


def config_files(text: str, board: Board) -> BootConfig:
    """The kernel, initramfs, device tree and command line file `board` boots with this config.txt."""
    seen = SECTIONS_SEEN.get(board.section, (board.section,))
    applies = True
    settings: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1]
            applies = name == "all" or name in seen
            continue
        if not applies:
            continue
        if line.startswith("initramfs "):
            settings["initramfs"] = line.split()[1]
        elif "=" in line:
            key, value = line.split("=", 1)
            settings[key] = value
    kernel = settings.get("kernel", KERNEL_FILE if settings.get("arm_64bit", "0") != "0" else "")
    if not kernel:
        raise UserError(f"{CONFIG_TXT} boots no 64-bit kernel on the {board.model} (no arm_64bit=1)")
    return BootConfig(kernel=kernel.lstrip("/"), initrd=settings.get("initramfs", "").lstrip("/") or None,
                      dtb=settings.get("device_tree", "").lstrip("/") or None,
                      cmdline_file=settings.get("cmdline", CMDLINE_TXT).lstrip("/"))
