"""`run --disk`: LinuxKit's syntax, the format from the name, disks created by qemu-img, UEFI firmware files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from linuxkit_py.errors import UserError
from linuxkit_py.run.disks import Disk, create_missing_disks, name_unnamed_disks, parse_disk
from linuxkit_py.run.firmware import OVMF_CODE, OVMF_VARS, Firmware, copy_vars, find_firmware


@pytest.mark.parametrize(
    ("text", "disk"),
    [
        ("data.img", Disk(Path("data.img"), "raw")),
        ("file=/d/data.qcow2", Disk(Path("/d/data.qcow2"), "qcow2")),
        ("/d/x.vhd", Disk(Path("/d/x.vhd"), "vpc")),
        ("/d/x.bin,size=2", Disk(Path("/d/x.bin"), "raw", 2048)),  # no unit: GiB, as LinuxKit
        ("file=/d/x.img,size=1G,format=qcow2", Disk(Path("/d/x.img"), "qcow2", 1024)),
        ("size=512m,file=/d/x.raw", Disk(Path("/d/x.raw"), "raw", 512)),
        ("size=1G", Disk(None, "qcow2", 1024)),  # LinuxKit makes a qcow2 in the state directory
        ("size=1G,format=raw", Disk(None, "raw", 1024)),
        ("/d/x,format=VHD", Disk(Path("/d/x"), "vpc")),
    ],
)
def test_parse_disk(text: str, disk: Disk) -> None:
    assert parse_disk(text) == disk


SYNTAX_HINT = " (hint: use [file=]PATH[,size=1G][,format=raw|qcow2])"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x.img,size=0", "invalid disk size '0' (hint: use a whole number of GiB or MiB, e.g. size=1G or 512M)"),
        ("x.img,size=1T", "invalid disk size '1T' (hint: use a whole number of GiB or MiB, e.g. size=1G or 512M)"),
        ("x.img,bus=ide", "invalid disk option 'bus=ide' in --disk 'x.img,bus=ide'" + SYNTAX_HINT),
        ("x.img,format=zip", "invalid disk option 'format=zip' in --disk 'x.img,format=zip'" + SYNTAX_HINT),
        ("file=,size=1G", "invalid disk option 'file=' in --disk 'file=,size=1G'" + SYNTAX_HINT),
        ("format=raw", "--disk 'format=raw' names no file and no size" + SYNTAX_HINT),
    ],
)
def test_bad_disk_options(text: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        parse_disk(text)
    assert str(err.value) == message


def test_unnamed_disks_get_files_in_the_state_directory() -> None:
    disks = [parse_disk("size=1G"), parse_disk("/d/x.img"), parse_disk("size=64M,format=raw")]
    assert name_unnamed_disks(disks, Path("/out/os-state")) == [
        Disk(Path("/out/os-state/disk.qcow2"), "qcow2", 1024),
        Disk(Path("/d/x.img"), "raw"),
        Disk(Path("/out/os-state/disk2.img"), "raw", 64),
    ]


def qemu_img_info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True).stdout
    info: dict[str, object] = json.loads(out)
    return info


def test_missing_disks_with_a_size_are_created(tmp_path: Path) -> None:
    qcow2, raw = tmp_path / "state" / "disk.qcow2", tmp_path / "data.img"
    create_missing_disks([Disk(qcow2, "qcow2", 64), Disk(raw, "raw", 1024)])

    assert {k: qemu_img_info(qcow2)[k] for k in ("format", "virtual-size")} == {
        "format": "qcow2", "virtual-size": 64 << 20}
    assert raw.stat().st_size == 1 << 30
    assert raw.stat().st_blocks * 512 < 1 << 20  # sparse


def test_existing_disks_are_used_as_they_are(tmp_path: Path) -> None:
    disk = tmp_path / "data.img"
    disk.write_bytes(b"keep me")
    create_missing_disks([Disk(disk, "raw", 1024)])
    assert disk.read_bytes() == b"keep me"


def test_a_missing_disk_without_a_size(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        create_missing_disks([Disk(tmp_path / "data.img")])
    assert str(err.value) == f"disk {tmp_path}/data.img not found (hint: add ,size=1G to create it)"


def test_default_uefi_firmware_is_debians_4m_pair_and_vars_are_copied_per_run(tmp_path: Path) -> None:
    firmware = find_firmware()
    assert firmware == Firmware(OVMF_CODE, OVMF_VARS)

    copy = copy_vars(firmware, tmp_path)

    assert copy == tmp_path / "OVMF_VARS_4M.fd"
    assert copy.read_bytes() == OVMF_VARS.read_bytes()
    copy.write_bytes(b"changed by a guest")  # writable, and the template is untouched
    assert OVMF_VARS.read_bytes() != b"changed by a guest"


def test_fw_option(tmp_path: Path) -> None:
    code, vars_ = tmp_path / "OVMF_CODE.secboot.fd", tmp_path / "OVMF_VARS.secboot.fd"
    unified = tmp_path / "bios.bin"
    for path in (code, vars_, unified):
        path.write_bytes(b"fw")

    assert find_firmware(code) == Firmware(code, vars_)
    assert find_firmware(unified) == Firmware(unified, None)
    assert copy_vars(Firmware(unified), tmp_path) is None
    with pytest.raises(UserError) as err:
        find_firmware(tmp_path / "missing.fd")
    assert str(err.value) == f"firmware {tmp_path}/missing.fd not found"
