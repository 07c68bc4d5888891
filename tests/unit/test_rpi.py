"""Raspberry Pi outputs (formats/rpi.py, boards.py): the raw-rpi SD-card image read back by sfdisk, fsck.vfat and
mtools, every file config.txt names on the card for every board, reproducible bytes, one-line errors; the rpi3
tar; and how `run` finds what to boot on qemu's raspi3b (run/rpi.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest

from linuxkit_py.archive.entry import Entry, Kind
from linuxkit_py.boards import BOARDS, CMDLINE_TXT, CONFIG_TXT, QEMU_BOARD, cmdline_txt, config_files, firmware_files
from linuxkit_py.errors import UserError
from linuxkit_py.formats import FormatOptions, Rootfs, bootfiles, get_format, rpi
from linuxkit_py.formats.rootimage import root_image_id
from linuxkit_py.formats.rpi import PARTITION_START
from linuxkit_py.formats.stage1 import RootLocation
from linuxkit_py.media.fat import fat_bits, read_fat_file
from linuxkit_py.run.image import detect_image
from linuxkit_py.run.qemu import QemuOptions, boot_command, boot_image, serial_console_args
from linuxkit_py.run.rpi import prepare_pi_boot
from tests.integration.conftest import run_cli

MIB = 1 << 20
EPOCH = 1_700_000_000
SPEC_CMDLINE = "console=ttyS0 console=ttyAMA0 quiet"
KERNEL = bytes(range(256)) * 1200  # 300 KiB
DTBS = {board.dtb: f"dtb of {board.model}".encode() for board in BOARDS.values()}


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for Debian's /usr/lib/raspi-firmware (the real one is fetched by the build)."""
    directory = tmp_path_factory.mktemp("raspi-firmware")
    for name in [*firmware_files(), "start_x.elf", "fixup_x.dat"]:
        (directory / name).write_bytes(f"firmware {name}".encode())
    return directory


def _rootfs(firmware: Path, size: int | None = None, dtbs: dict[str, bytes] = DTBS) -> Rootfs:
    entries = [
        Entry("boot", Kind.DIR, 0o755),
        Entry("boot/kernel", Kind.FILE, 0o644, size=len(KERNEL), data=KERNEL),
        Entry("boot/cmdline", Kind.FILE, 0o644, size=len(SPEC_CMDLINE), data=SPEC_CMDLINE.encode()),
        Entry("boot/dtb", Kind.DIR, 0o755),
        Entry("boot/dtb/broadcom", Kind.DIR, 0o755),
        *(Entry(f"boot/dtb/{name}", Kind.FILE, 0o644, size=len(data), data=data) for name, data in dtbs.items()),
        Entry("etc", Kind.DIR, 0o755),
        Entry("etc/motd", Kind.FILE, 0o644, size=6, data=b"hello\n"),
    ]
    return Rootfs(entries, EPOCH, options=FormatOptions(size=size, arch="arm64", assets={"raspi-firmware": firmware}))


def _write(path: Path, fmt: str, rootfs: Rootfs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        get_format(fmt).write(rootfs, [out])
    return path


@pytest.fixture(scope="module")
def card(firmware: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("card") / "test-rpi.img", "raw-rpi", _rootfs(firmware))


def _fat(card: Path, name: str) -> bytes | None:
    return read_fat_file(card, name, PARTITION_START)


def test_card_has_one_bootable_fat32_partition_at_4_mib(card: Path) -> None:
    dump = subprocess.run(["sfdisk", "-d", str(card)], capture_output=True, text=True, check=True).stdout
    table = json.loads(subprocess.run(["sfdisk", "-J", str(card)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]

    assert f"{card}1 : start=        8192, size=" in dump and "type=c, bootable" in dump
    assert table["label"] == "dos" and len(table["partitions"]) == 1
    (partition,) = table["partitions"]
    assert partition["start"] * 512 == PARTITION_START
    assert (partition["start"] + partition["size"]) * 512 == card.stat().st_size  # the FAT fills the card
    assert card.stat().st_size % MIB == 0
    assert fat_bits(card, PARTITION_START) == 32


def test_boot_partition_passes_fsck(card: Path, tmp_path: Path) -> None:
    partition = tmp_path / "p1.img"
    with open(card, "rb") as src, open(partition, "wb") as dst:
        src.seek(PARTITION_START)
        dst.write(src.read())

    result = subprocess.run(["fsck.vfat", "-n", str(partition)], capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 files" not in result.stdout


@pytest.mark.parametrize("board", list(BOARDS))
def test_every_file_config_txt_names_is_on_the_card(card: Path, board: str) -> None:
    config = _fat(card, CONFIG_TXT)
    assert config is not None
    boot = config_files(config.decode(), BOARDS[board])

    assert boot.dtb == BOARDS[board].dtb_file
    assert _fat(card, boot.dtb) == DTBS[BOARDS[board].dtb]  # each board gets its own device tree
    assert _fat(card, boot.kernel) == KERNEL
    assert boot.initrd is not None and (_fat(card, boot.initrd) or b"")[:2] == b"\x1f\x8b"  # a gzip initramfs
    assert _fat(card, boot.cmdline_file) == b"quiet console=ttyS1,115200\n"
    for name in BOARDS[board].firmware:
        assert _fat(card, name) == f"firmware {name}".encode()


def test_config_txt_says_what_the_boards_need(card: Path) -> None:
    text = (_fat(card, CONFIG_TXT) or b"").decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]

    assert lines[:6] == ["[all]", "arm_64bit=1", "enable_uart=1", "kernel=kernel8.img",
                         "initramfs initrd.img followkernel", "cmdline=cmdline.txt"]
    assert re.findall(r"^\[(\w+\+?)\]$", text, re.M) == ["all", "pi3", "pi3+", "pi02", "pi4", "pi400", "all"]
    assert lines[-1] == "[all]"  # anything appended later applies to every board


def test_card_carries_no_firmware_it_does_not_need(card: Path) -> None:
    assert _fat(card, "start_x.elf") is None and _fat(card, "fixup_x.dat") is None


def test_cmdline_replaces_the_vm_serial_consoles_with_the_header_uart() -> None:
    line = cmdline_txt("console=ttyS0 console=tty1 console=ttyAMA0,115200 rw")

    assert line == b"console=tty1 rw console=ttyS1,115200\n"
    assert cmdline_txt("") == b"console=ttyS1,115200\n"


def test_builds_are_byte_for_byte_the_same(firmware: Path, card: Path, tmp_path: Path) -> None:
    again = _write(tmp_path / "again-rpi.img", "raw-rpi", _rootfs(firmware))

    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(card.read_bytes()).digest()


def test_size_is_honoured(firmware: Path, tmp_path: Path) -> None:
    card = _write(tmp_path / "big-rpi.img", "raw-rpi", _rootfs(firmware, size=100 * MIB))
    table = json.loads(subprocess.run(["sfdisk", "-J", str(card)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]

    assert card.stat().st_size == 100 * MIB
    assert table["partitions"][0]["size"] * 512 == 96 * MIB
    assert os.stat(card).st_blocks * 512 < 20 * MIB  # sparse: the free space is a hole


def test_too_small_size_is_one_line(firmware: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        _write(tmp_path / "small-rpi.img", "raw-rpi", _rootfs(firmware, size=20 * MIB))

    # 4 MiB before the partition, and FAT32's smallest size with 512-byte clusters
    assert caught.value.message == "raw-rpi: the image needs at least 38 MiB; --size is 20 MiB"
    assert caught.value.hint == "give --size 38M or more, or leave --size out"

    with pytest.raises(UserError, match=r"^raw-rpi: an MBR card holds at most 2 TiB; --size is 3145728 MiB$"):
        _write(tmp_path / "huge-rpi.img", "raw-rpi", _rootfs(firmware, size=3 << 40))


def test_a_kernel_without_the_pi_device_trees_is_one_line(firmware: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        _write(tmp_path / "nodtb-rpi.img", "raw-rpi", _rootfs(firmware, dtbs={}))

    assert caught.value.message == ("the kernel image has no Raspberry Pi device tree: looked for "
                                    "/boot/dtb/broadcom/bcm2837-rpi-3-b.dtb and 4 more")
    assert caught.value.hint and "kernels/rpi-arm64" in caught.value.hint


def test_a_board_the_kernel_has_no_device_tree_for_is_left_off(
        firmware: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    older = {name: data for name, data in DTBS.items() if "zero-2-w" not in name}  # as a kernel before 5.16
    card = _write(tmp_path / "older-rpi.img", "raw-rpi", _rootfs(firmware, dtbs=older))
    config = (_fat(card, CONFIG_TXT) or b"").decode()

    assert "[pi02]" not in config and "[pi3+]" in config and "[pi4]" in config
    assert _fat(card, "bcm2837-rpi-zero-2-w.dtb") is None
    assert "the card will not boot the Raspberry Pi Zero 2 W" in caplog.text


def test_amd64_is_a_one_line_error(tmp_path: Path) -> None:
    spec = tmp_path / "plain.yml"
    spec.write_text('kernel:\n  image: linuxkit/kernel:6.6.13\n  cmdline: "console=ttyS0"\n'
                    "init:\n  - linuxkit/init:v1.0.0\n")

    result = run_cli("build", "--cache", tmp_path / "cache", "--dir", tmp_path / "out", "--arch", "amd64",
                     "-f", "raw-rpi", spec)

    assert result.returncode == 1
    assert result.stderr.decode() == "linuxkit-py: format raw-rpi has no amd64 image: it is built for arm64\n"
    assert not (tmp_path / "out").exists()


def test_rpi3_tar_holds_the_cards_boot_files(firmware: Path, card: Path, tmp_path: Path) -> None:
    tar_path = _write(tmp_path / "test.tar", "rpi3", _rootfs(firmware))

    with tarfile.open(tar_path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]

    assert list(members)[:5] == firmware_files()
    assert {CONFIG_TXT, CMDLINE_TXT, "kernel8.img", "initrd.img"} <= set(members)
    for name, data in members.items():
        assert _fat(card, name) == data, name
    assert get_format("rpi3").suffixes == (".tar",)  # LinuxKit's NAME.tar


def test_run_boots_a_card_on_raspi3b_from_its_own_files(card: Path, tmp_path: Path) -> None:
    before = hashlib.sha256(card.read_bytes()).hexdigest()
    image = detect_image(card)
    board = BOARDS[QEMU_BOARD]

    pi = prepare_pi_boot(card, board, tmp_path)
    argv = boot_command(image, QemuOptions(arch="amd64"), serial_console_args("stdio"), pi=pi)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(pi.card)], capture_output=True,
                                     text=True, check=True).stdout)

    assert (image.kind, image.arch) == ("rpi", "arm64")
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-machine") + 1] == "raspi3b" and argv[argv.index("-m") + 1] == "1024"
    serial = [argv[i + 1] for i, word in enumerate(argv) if word == "-serial"]
    assert serial == ["null", "stdio"]  # the mini UART is raspi3b's second serial port
    assert pi.kernel.read_bytes() == KERNEL and pi.dtb is not None
    assert pi.dtb.read_bytes() == DTBS[board.dtb]
    assert argv[argv.index("-append") + 1] == "quiet console=ttyS1,115200 panic=-1 cryptomgr.notests"
    assert f"if=sd,format=qcow2,file={pi.card}" in argv
    assert info["virtual-size"] == 64 * MIB and info["backing-filename"] == str(card.resolve())
    assert hashlib.sha256(card.read_bytes()).hexdigest() == before


def test_run_refuses_what_raspi3b_does_not_have(card: Path) -> None:
    with pytest.raises(UserError, match="has no network card or disk controller"):
        boot_command(detect_image(card), QemuOptions(publish=["8080:80"]), serial_console_args("stdio"))
    with pytest.raises(UserError, match=r"^--poweroff-on: qemu's raspi3b has no power button"):
        boot_image(detect_image(card), timeout=1, powerdown_on=lambda output: True)


ROOT_IMAGE = b"hsqs" + bytes(range(256)) * 40  # stands for a squashfs image (formats/rootimage.py is tested apart)


@pytest.fixture
def fake_root(monkeypatch: pytest.MonkeyPatch) -> list[tuple[RootLocation, str]]:
    """Root image and stage one replaced by stand-ins (stage1.py and rootimage.py have their own tests); the
    stage-one calls are recorded as (location, medium)."""
    calls: list[tuple[RootLocation, str]] = []

    def root_image(rootfs: Rootfs, out_path: Path, fs: str) -> None:
        out_path.write_bytes(ROOT_IMAGE)

    def stage1(rootfs: Rootfs, out: BinaryIO, *, location: RootLocation, medium: str) -> None:
        calls.append((location, medium))
        out.write(b"\x1f\x8bstage one")

    for module in (rpi, bootfiles):
        monkeypatch.setattr(module, "write_root_image", root_image)
        monkeypatch.setattr(module, "write_stage1_initrd", stage1)
    return calls


def _with_root(rootfs: Rootfs, root: str) -> Rootfs:
    rootfs.options.root = root
    return rootfs


def test_root_image_is_a_second_partition_that_stage_one_finds(
        firmware: Path, tmp_path: Path, fake_root: list[tuple[RootLocation, str]]) -> None:
    card = _write(tmp_path / "root-rpi.img", "raw-rpi", _with_root(_rootfs(firmware), "squashfs"))
    table = json.loads(subprocess.run(["sfdisk", "-J", str(card)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    boot, root = table["partitions"]
    with open(card, "rb") as f:
        f.seek(root["start"] * 512)
        on_card = f.read(len(ROOT_IMAGE))

    assert (boot["type"], boot.get("bootable"), root["type"]) == ("c", True, "83")
    assert root["start"] == boot["start"] + boot["size"] and root["start"] % 8192 == 0  # on a 4 MiB unit
    assert (root["start"] + root["size"]) * 512 == card.stat().st_size == 44 * MIB  # 4 + 36 (FAT32) + 4
    assert on_card == ROOT_IMAGE
    assert _fat(card, "initrd.img") == b"\x1f\x8bstage one" and _fat(card, "rootfs.squashfs") is None
    ((location, medium),) = fake_root
    (tmp_path / "image").write_bytes(ROOT_IMAGE)
    assert medium == "virtio" and location == RootLocation("squashfs", root_image_id(tmp_path / "image"))


def test_rpi3_root_image_is_a_file_among_the_boot_files(
        firmware: Path, tmp_path: Path, fake_root: list[tuple[RootLocation, str]]) -> None:
    tar_path = _write(tmp_path / "root.tar", "rpi3", _with_root(_rootfs(firmware), "squashfs"))

    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        image = tar.extractfile("rootfs.squashfs").read()  # type: ignore[union-attr]

    assert names[-1] == "rootfs.squashfs" and image == ROOT_IMAGE
    ((location, medium),) = fake_root
    assert medium == "disk" and location.image_path == "rootfs.squashfs"
