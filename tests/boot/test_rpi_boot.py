"""specs/minimal.yml as a Raspberry Pi SD card (`-f raw-rpi --arch arm64`), booted with `linuxkit-py run` on
qemu's raspi3b (TCG) from the card's own boot partition: the kernel, initramfs, device tree and command line
its config.txt names for the Pi 3 Model B, the card itself as the SD card, the console on the mini UART.

qemu cannot run the GPU firmware (bootcode.bin, start.elf): what the firmware does on a board, reading
config.txt and loading those files, `run` does here (docs/formats.md, "Raspberry Pi", says what no test
covers). raspi3b has no network card the kernel drives, so dhcpcd fails and the boot goes on to getty.
The card is built once per session and booted once: qemu reads a 33 MB kernel slowly on raspi3b.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from linuxkit_py.boards import BOARDS, firmware_files
from linuxkit_py.cache.layout import Cache
from linuxkit_py.formats.rpi import PARTITION_START
from linuxkit_py.media.fat import read_fat_file
from linuxkit_py.pkg.debs import debs_dir
from tests.boot.test_specs import SPECS, line_numbers
from tests.debstore import DEB_STORE, link_files
from tests.imagetools import file_sha256
from tests.integration.conftest import run_cli

GETTY = "service getty: started"
DHCPCD = "onboot dhcpcd: "  # "failed with status 1 after N s": raspi3b has no eth0
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
BOOT_TIMEOUT = 300  # seconds; the boot takes ~13 s here under TCG


@dataclass(frozen=True)
class Card:
    path: Path
    again: Path  # the same build into another directory
    build_seconds: float  # `build -f raw-rpi` from a warm cache (packages already built)
    tar: Path  # minimal.tar, `-f rpi3`: the card's boot partition as a tar
    tar_again: Path  # the same, from the second build


def _build(cache: Path, out: Path, *formats: str) -> float:
    started = time.monotonic()
    args = [arg for fmt in formats for arg in ("-f", fmt)]
    result = run_cli("build", "--arch", "arm64", "--cache", cache, "--dir", out, "--name", "minimal", *args,
                     SPECS / "minimal.yml", stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    return time.monotonic() - started


@pytest.fixture(scope="session")
def rpi_card(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Card]:
    """minimal-rpi.img and the rpi3 minimal.tar, each built twice per session in a cache seeded with the stored
    .debs (rpi3 rides along with builds the card needs anyway: no build of its own)."""
    cache = tmp_path_factory.mktemp("rpi") / "cache"
    debs = debs_dir(Cache(cache))
    if DEB_STORE.is_dir():
        link_files(DEB_STORE, debs)
    out = tmp_path_factory.mktemp("rpi-out")
    _build(cache, out, "kernel+initrd", "rpi3")  # builds the arm64 packages: not part of the timing
    seconds = _build(cache, out, "raw-rpi")
    print(f"\nraw-rpi of minimal.yml: {seconds:.1f} s from a warm cache, "
          f"{(out / 'minimal-rpi.img').stat().st_size / (1 << 20):.0f} MiB")
    again = tmp_path_factory.mktemp("rpi-again")
    _build(cache, again, "raw-rpi", "rpi3")
    yield Card(out / "minimal-rpi.img", again / "minimal-rpi.img", seconds, out / "minimal.tar", again / "minimal.tar")
    if debs.is_dir():
        link_files(debs, DEB_STORE)




def test_card_is_the_same_bytes_every_build_with_debians_firmware(rpi_card: Card) -> None:
    files = subprocess.run(["mdir", "-b", "-i", f"{rpi_card.path}@@{PARTITION_START}", "::/"], capture_output=True,
                           text=True, check=True, env=MTOOLS_ENV).stdout.split()

    assert file_sha256(rpi_card.again) == file_sha256(rpi_card.path)
    # the real raspi-firmware, the kernel image's device trees, our files: nothing else
    assert sorted(name.removeprefix("::/") for name in files) == sorted(
        [*firmware_files(), "config.txt", "cmdline.txt", "kernel8.img", "initrd.img",
         *(board.dtb_file for board in BOARDS.values())])


def test_rpi3_tar_is_the_same_bytes_every_build_and_holds_the_cards_files(rpi_card: Card) -> None:
    assert file_sha256(rpi_card.tar_again) == file_sha256(rpi_card.tar)
    with tarfile.open(rpi_card.tar) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert sorted(members) == sorted(
        [*firmware_files(), "config.txt", "cmdline.txt", "kernel8.img", "initrd.img",
         *(board.dtb_file for board in BOARDS.values())])
    for name, data in members.items():  # what a FAT32 card formatted by hand gets: the raw-rpi card's files
        assert read_fat_file(rpi_card.path, name, PARTITION_START) == data, name


# Devicetree Specification v0.4, 5.4 (structure block tokens) and 3.3 (/aliases).
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9
MINI_UART = "/soc/serial@7e215040"  # the BCM283x/BCM2711 aux mini UART on GPIO 14/15


def fdt_aliases(blob: bytes) -> dict[str, str]:
    """The /aliases properties of a flattened device tree (dtb)."""
    _magic, _size, off_struct, off_strings = struct.unpack(">IIII", blob[:16])

    def string(offset: int) -> str:
        start = off_strings + offset
        return blob[start:blob.index(b"\0", start)].decode()

    path: list[str] = []
    found: dict[str, str] = {}
    pos = off_struct
    while True:
        (token,) = struct.unpack(">I", blob[pos:pos + 4])
        pos += 4
        if token == FDT_BEGIN_NODE:
            end = blob.index(b"\0", pos)
            path.append(blob[pos:end].decode())
            pos = (end + 4) & ~3
        elif token == FDT_END_NODE:
            path.pop()
        elif token == FDT_PROP:
            length, name = struct.unpack(">II", blob[pos:pos + 8])
            value = blob[pos + 8:pos + 8 + length]
            pos = (pos + 8 + length + 3) & ~3
            if path[1:] == ["aliases"]:
                found[string(name)] = value.rstrip(b"\0").decode()
        elif token == FDT_END:
            return found
        elif token != FDT_NOP:
            raise AssertionError(f"bad device tree token {token}")


def test_every_boards_device_tree_names_the_mini_uart_as_its_console(rpi_card: Card) -> None:
    # Linux's 8250 driver numbers the mini UART by its serialN alias: serial1 is ttyS1, cmdline.txt's console
    for board in BOARDS.values():
        blob = read_fat_file(rpi_card.path, board.dtb_file, PARTITION_START)
        assert blob is not None, board.dtb_file
        assert fdt_aliases(blob)[f"serial{board.console.removeprefix('ttyS')}"] == MINI_UART, board.model


@pytest.mark.boot
def test_minimal_card_boots_on_raspi3b_to_getty(rpi_card: Card) -> None:
    before = file_sha256(rpi_card.path)
    started = time.monotonic()

    result = run_cli("run", "--arch", "arm64", "--until", GETTY, "--timeout", str(BOOT_TIMEOUT), rpi_card.path,
                     stdin=b"")
    seconds = time.monotonic() - started
    console = result.stdout.decode(errors="replace")
    print(f"\nraspi3b: qemu start -> {GETTY!r} in {seconds:.1f} s")

    assert result.returncode == 0, console[-3000:] + result.stderr.decode()
    # The kernel's own messages are on the mini UART, so cmdline.txt's console reached the kernel ...
    assert "Kernel command line: console=ttyS1,115200" in console
    # ... with the device tree of the Pi 3 B and the card on its SD host.
    assert "Machine model: Raspberry Pi 3 Model B" in console
    assert "mmcblk0: p1" in console
    # Then our init ran the onboot container and started the services.
    dhcpcd, getty = line_numbers(console, DHCPCD, GETTY)
    assert dhcpcd < getty
    assert file_sha256(rpi_card.path) == before  # run never writes the user's card
