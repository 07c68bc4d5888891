"""Partition tables (media/partitions.py) read back by sfdisk and sgdisk, and the raw disk writers' sizes and errors."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.errors import UserError
from linuxkit_py.formats import FormatOptions, Rootfs, get_format
from linuxkit_py.formats.convert import fixed_vhd_footer, patch_vhd, patch_vmdk, write_disk_tar
from linuxkit_py.formats.raw import RawDisk
from linuxkit_py.media.partitions import (
    ESP_TYPE_GUID,
    MBR_TYPE_FAT16_LBA,
    SECTOR,
    GptPartition,
    MbrPartition,
    chs_address,
    derived_disk_signature,
    derived_guid,
    gpt_tables,
    mbr,
    protective_mbr,
)

MIB = 1 << 20


def _disk(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    return path


def _sfdisk(path: Path) -> dict[str, Any]:
    result = subprocess.run(["sfdisk", "-J", str(path)], capture_output=True, text=True, check=True)
    table: dict[str, Any] = json.loads(result.stdout)["partitiontable"]
    return table


def test_mbr_reads_back_with_sfdisk(tmp_path: Path) -> None:
    part = MbrPartition(first_lba=2048, sectors=8 * 2048, type=MBR_TYPE_FAT16_LBA, active=True)
    sector = mbr([part], disk_signature=0x12345678, boot_code=b"\xfa" * 440)
    disk = _disk(tmp_path / "mbr.img", 10 * MIB, [(0, sector)])

    table = _sfdisk(disk)

    assert (table["label"], table["id"]) == ("dos", "0x12345678")
    assert table["partitions"] == [{"node": f"{disk}1", "start": 2048, "size": 16384, "type": "e",
                                    "bootable": True}]
    assert sector[:440] == b"\xfa" * 440 and sector[510:] == b"\x55\xaa"
    check = subprocess.run(["sfdisk", "-V", str(disk)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_chs_addresses_follow_the_255_heads_63_sectors_geometry() -> None:
    assert chs_address(0) == bytes([0, 1, 0])
    assert chs_address(2048) == bytes([32, 33, 0])  # cylinder 0, head 32, sector 33
    assert chs_address(1023 * 255 * 63) == bytes([0, 1 | 0xC0, 0xFF])  # cylinder 1023: high bits in the sector byte
    assert chs_address(1 << 30) == bytes([254, 63 | 0xC0, 0xFF])  # beyond CHS: saturated


def test_mbr_refuses_what_it_cannot_hold() -> None:
    part = MbrPartition(first_lba=2048, sectors=2048, type=MBR_TYPE_FAT16_LBA)
    with pytest.raises(ValueError, match="at most 440"):
        mbr([part], disk_signature=1, boot_code=bytes(441))
    with pytest.raises(ValueError, match="holds 4 partitions"):
        mbr([part] * 5, disk_signature=1)
    with pytest.raises(ValueError, match="does not fit an MBR"):
        mbr([MbrPartition(first_lba=1 << 32, sectors=1, type=1)], disk_signature=1)


def test_gpt_passes_sgdisk_verify_and_reads_back(tmp_path: Path) -> None:
    size = 64 * MIB
    disk_guid, part_guid = uuid.UUID(int=0x1234), derived_guid(b"seed", "esp")
    esp = GptPartition(ESP_TYPE_GUID, part_guid, first_lba=2048, last_lba=2048 + 40 * 2048 - 1,
                       name="EFI System")
    disk = _disk(tmp_path / "gpt.img", size, gpt_tables(size // SECTOR, [esp], disk_guid))

    verify = subprocess.run(["sgdisk", "-v", str(disk)], capture_output=True, text=True)
    table = _sfdisk(disk)

    assert verify.returncode == 0 and "No problems found" in verify.stdout, verify.stdout
    assert table["label"] == "gpt" and table["id"] == str(disk_guid).upper()
    assert (table["firstlba"], table["lastlba"]) == (34, size // SECTOR - 34)
    assert table["partitions"] == [{"node": f"{disk}1", "start": 2048, "size": 40 * 2048,
                                    "type": str(ESP_TYPE_GUID).upper(), "uuid": str(part_guid).upper(),
                                    "name": "EFI System"}]


def test_gpt_backup_table_mirrors_the_primary(tmp_path: Path) -> None:
    size = 8 * MIB
    esp = GptPartition(ESP_TYPE_GUID, uuid.UUID(int=7), first_lba=2048, last_lba=4095)
    pieces = dict(gpt_tables(size // SECTOR, [esp], uuid.UUID(int=9)))
    primary, backup = pieces[SECTOR], pieces[size - SECTOR]
    # the backup swaps MyLBA/AlternateLBA and points at its own entries; the rest is the same
    assert primary[:16] == backup[:16]
    assert primary[24:32] == backup[32:40] and primary[32:40] == backup[24:32]
    assert pieces[2 * SECTOR] == pieces[size - 33 * SECTOR]
    # HeaderCRC32 over the 92 bytes with the field zeroed
    header = primary[:16] + bytes(4) + primary[20:92]
    assert int.from_bytes(primary[16:20], "little") == zlib.crc32(header)
    # protective MBR: one 0xEE record from LBA 1 over the rest of the disk
    pmbr = pieces[0]
    first_lba, sectors = int.from_bytes(pmbr[454:458], "little"), int.from_bytes(pmbr[458:462], "little")
    assert (pmbr[450], first_lba, sectors) == (0xEE, 1, size // SECTOR - 1)
    assert pmbr == protective_mbr(size // SECTOR)


def test_gpt_refuses_a_partition_over_its_tables() -> None:
    esp = GptPartition(ESP_TYPE_GUID, uuid.UUID(int=7), first_lba=2048, last_lba=8 * 2048 - 1)
    with pytest.raises(ValueError, match="outside the usable LBAs 34-16350"):
        gpt_tables(8 * 2048, [esp], uuid.UUID(int=9))


def test_derived_ids_depend_on_seed_and_purpose_only() -> None:
    assert derived_guid(b"a", "esp") == derived_guid(b"a", "esp")
    assert len({derived_guid(b"a", "esp"), derived_guid(b"b", "esp"), derived_guid(b"a", "disk")}) == 3
    assert derived_guid(b"a", "esp").version == 5  # name-based (RFC 4122): not random
    assert derived_disk_signature(b"a") == derived_disk_signature(b"a") != derived_disk_signature(b"b")


# -- the raw disk writers with a tiny kernel: sizes and errors ---------------------------------------------


def _rootfs(size: int | None = None, kernel_bytes: int = 300_000) -> Rootfs:
    kernel = os.urandom(kernel_bytes)
    entries = [
        Entry("boot", Kind.DIR, 0o755),
        Entry("boot/kernel", Kind.FILE, 0o644, size=len(kernel), data=kernel),
        Entry("boot/cmdline", Kind.FILE, 0o644, size=13, data=b"console=ttyS0"),
        Entry("etc", Kind.DIR, 0o755),
        Entry("etc/motd", Kind.FILE, 0o644, size=6, data=b"hello\n"),
    ]
    return Rootfs(entries, 1_700_000_000, options=FormatOptions(size=size))


def _write(tmp_path: Path, fmt: str, rootfs: Rootfs) -> Path:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / f"out-{fmt}"
    with open(path, "wb") as out:
        get_format(fmt).write(rootfs, [out])
    return path


@pytest.mark.parametrize(("fmt", "default_size"), [("raw-bios", 3 * MIB), ("raw-efi", 4 * MIB),
                                                    ("aws", 1 << 30)])
def test_disk_sizes_default_to_what_fits_or_follow_size(tmp_path: Path, fmt: str, default_size: int) -> None:
    default = _write(tmp_path, fmt, _rootfs())
    given = _write(tmp_path / "given", fmt, _rootfs(size=7 * MIB + 512)) if fmt != "aws" else None

    assert default.stat().st_size == default_size
    [part] = _sfdisk(default)["partitions"]
    assert part["start"] == 2048
    if given is not None:
        assert given.stat().st_size == 7 * MIB + 512
        [part] = _sfdisk(given)["partitions"]
        assert (part["start"], part["size"]) == (2048, (6 if fmt == "raw-bios" else 5) * 2048)


@pytest.mark.parametrize("fmt", ["raw-bios", "raw-efi", "qcow2-bios", "vmdk"])
def test_a_size_too_small_names_both_sizes(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(UserError) as error:
        _write(tmp_path, fmt, _rootfs(size=20 * MIB, kernel_bytes=30 * MIB))
    assert str(error.value) == (f"{fmt}: the image needs at least 33 MiB; --size is 20 MiB "
                                "(hint: give --size 33M or more, or leave --size out)")


def test_size_must_be_whole_sectors_and_gcp_whole_gib(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="^--size 5243000 is not a whole number of 512-byte sectors$"):
        _write(tmp_path, "raw-bios", _rootfs(size=5_243_000))
    with pytest.raises(UserError, match=r"^gcp: --size 1536 MiB is not a whole number of GiB \(hint"):
        _write(tmp_path, "gcp", _rootfs(size=1536 * MIB))


def test_a_disk_writer_failing_leaves_no_work_files(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        _write(tmp_path, "qcow2-bios", _rootfs(size=1 * MIB))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-qcow2-bios"]



@pytest.mark.parametrize("fmt", ["raw-bios", "raw-efi"])
def test_the_size_named_in_the_error_is_enough(tmp_path: Path, fmt: str) -> None:
    disk = _write(tmp_path, fmt, _rootfs(size=33 * MIB, kernel_bytes=30 * MIB))
    [part] = _sfdisk(disk)["partitions"]
    partition = tmp_path / "partition"
    with open(disk, "rb") as src:
        src.seek(part["start"] * SECTOR)
        partition.write_bytes(src.read(part["size"] * SECTOR))
    check = subprocess.run(["fsck.vfat", "-n", str(partition)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


# -- qemu-img conversions made reproducible (formats/convert.py) -------------------------------------------


def _qemu_img(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)


def _small_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "disk.img"
    with open(raw, "wb") as f:
        f.truncate(4 * MIB)
        f.seek(MIB)
        f.write(os.urandom(100_000))
    return raw


DISK = RawDisk(size=4 * MIB, digest=b"\x01" * 32)


@pytest.mark.parametrize("subformat", ["fixed", "dynamic"])
def test_vhd_footers_get_the_epoch_a_derived_id_and_a_valid_checksum(tmp_path: Path, subformat: str) -> None:
    raw = _small_raw(tmp_path)
    outputs = []
    for name in ("a.vhd", "b.vhd"):
        out = tmp_path / name
        assert _qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={subformat},force_size",
                         raw, out).returncode == 0
        patch_vhd(out, DISK, 1_700_000_000)
        outputs.append(out.read_bytes())
        time.sleep(1.1)  # qemu-img's own time stamp changes

    footer = outputs[0][-512:]
    assert outputs[0] == outputs[1]
    assert int.from_bytes(footer[24:28], "big") == 1_700_000_000 - 946_684_800
    assert footer[68:84] == derived_guid(DISK.digest, "vhd").bytes
    info = _qemu_img("info", "--output", "json", "-f", "vpc", tmp_path / "a.vhd")  # verifies the checksum
    assert info.returncode == 0 and json.loads(info.stdout)["virtual-size"] == 4 * MIB, info.stderr
    assert _qemu_img("compare", "-f", "vpc", "-F", "raw", tmp_path / "a.vhd", raw).returncode == 0
    if subformat == "dynamic":
        assert outputs[0][:512] == footer


def test_a_bad_vhd_footer_is_refused_by_qemu(tmp_path: Path) -> None:
    raw = _small_raw(tmp_path)
    out = tmp_path / "a.vhd"
    _qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", raw, out)
    patch_vhd(out, DISK, 1_700_000_000)
    with open(out, "r+b") as f:  # one byte of the unique id, checksum unchanged
        f.seek(-512 + 70, 2)
        f.write(b"\xff")
    assert "Incorrect header checksum" in _qemu_img("info", "-f", "vpc", out).stderr
    with pytest.raises(ValueError, match="not a VHD footer"):
        fixed_vhd_footer(bytes(512), epoch=0, unique_id=bytes(16))


def _vmdk_with_cid(directory: Path, raw: Path, cid: bytes, left: bytes = b"") -> Path:
    """A streamOptimized VMDK of `raw` whose descriptor says CID=`cid`, `left` after its terminating NUL:
    what qemu leaves when it rewrites the descriptor in place with a CID two or more digits shorter."""
    directory.mkdir()
    out = directory / "disk.vmdk"  # qemu writes the name into the descriptor
    _qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, out)
    data = bytearray(out.read_bytes())
    offset, sectors = (int.from_bytes(data[at : at + 8], "little") * 512 for at in (28, 36))
    text = re.sub(rb"\nCID=[0-9a-f]+", b"\nCID=" + cid, bytes(data[offset : offset + sectors]).split(b"\0", 1)[0])
    data[offset : offset + sectors] = (text + b"\0" + left).ljust(sectors, b"\0")
    out.write_bytes(bytes(data))
    assert _qemu_img("info", out).stdout.count(f"cid: {int(cid, 16)}\n") == 1
    return out


def test_vmdk_content_id_is_derived_whatever_length_qemu_wrote(tmp_path: Path) -> None:
    raw = _small_raw(tmp_path)
    # a random CID below 0x10000000 has fewer than 8 digits; one that replaced a longer one leaves bytes behind
    out = _vmdk_with_cid(tmp_path / "short", raw, b"5a")
    left = _vmdk_with_cid(tmp_path / "left", raw, b"5a", left=b"47\n")
    assert out.read_bytes() != left.read_bytes()

    patch_vmdk(out, DISK, 0)
    patch_vmdk(left, DISK, 0)

    assert out.read_bytes() == left.read_bytes()

    info = _qemu_img("info", "--output", "json", out)
    check = _qemu_img("check", out)
    expected = int(derived_guid(DISK.digest, "vmdk-cid").hex[:8], 16)
    assert json.loads(info.stdout)["format-specific"]["data"]["cid"] == expected
    assert check.returncode == 0, check.stdout + check.stderr
    assert _qemu_img("compare", out, raw).returncode == 0


def test_the_gcp_tar_is_what_write_tar_writes_without_reading_holes(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(5 * MIB + 512)
        f.seek(2 * MIB + 100)
        f.write(os.urandom(3 * MIB))
    ours, reference = io.BytesIO(), io.BytesIO()
    write_disk_tar(disk, "disk.raw", ours, 1_700_000_000)
    write_tar([Entry("disk.raw", Kind.FILE, 0o644, size=disk.stat().st_size,
                     data=FileRegion(str(disk), 0, disk.stat().st_size))], reference, 1_700_000_000)
    assert ours.getvalue() == reference.getvalue()
