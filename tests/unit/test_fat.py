"""FAT filesystems written by media/fat.py, read back by fsck.vfat and mtools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from linuxkit_py.archive.entry import FileRegion
from linuxkit_py.errors import UserError
from linuxkit_py.media.fat import fat_bits, fat_directories, fat_min_size, write_fat

MIB = 1 << 20
EPOCH = 1_492_533_000  # 2017-04-18 16:30:00 UTC
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}


def _mtools(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, env=MTOOLS_ENV)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _partition(image: Path, offset: int, size: int, out: Path) -> Path:
    with open(image, "rb") as src:
        src.seek(offset)
        out.write_bytes(src.read(size))
    return out


def _files(tmp_path: Path) -> list[tuple[str, bytes | Path | FileRegion]]:
    host = tmp_path / "initrd.img"
    host.write_bytes(os.urandom(300_000))
    layer = tmp_path / "layer.tar"
    layer.write_bytes(b"H" * 512 + b"kernel bytes" * 1000 + b"T" * 512)
    return [
        ("kernel", FileRegion(str(layer), 512, 12_000)),  # a region of a bigger file
        ("initrd.img", host),
        ("syslinux.cfg", b"DEFAULT linux\n"),
        ("EFI/BOOT/BOOTX64.EFI", b"MZ" + bytes(100)),
    ]


def test_fat_at_an_offset_holds_the_files_with_the_epoch_as_time(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xaa" * 1000)  # existing bytes before the filesystem stay

    size = write_fat(image, _files(tmp_path), label="linuxkit", epoch=EPOCH, offset=MIB, directories=["syslinux"])

    assert size == 2 * MIB and image.stat().st_size == MIB + size
    assert image.read_bytes()[:1000] == b"\xaa" * 1000
    part = _partition(image, MIB, size, tmp_path / "part.img")
    check = subprocess.run(["fsck.vfat", "-n", str(part)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    listing = _mtools("mdir", "-i", f"{image}@@{MIB}", "::/")
    assert "Volume in drive : is LINUXKIT" in listing
    assert "kernel           12000 2017-04-18  16:30" in listing
    assert "initrd   img    300000 2017-04-18  16:30" in listing
    assert "syslinux     <DIR>     2017-04-18  16:30" in listing
    assert "EFI          <DIR>     2017-04-18  16:30" in listing
    assert _mtools("mtype", "-i", str(part), "::/syslinux.cfg") == "DEFAULT linux\n"
    copied = tmp_path / "copied"
    _mtools("mcopy", "-i", str(part), "::/EFI/BOOT/BOOTX64.EFI", str(copied))
    assert copied.read_bytes() == b"MZ" + bytes(100)
    _mtools("mcopy", "-i", str(part), "::/kernel", str(tmp_path / "kernel"))
    assert (tmp_path / "kernel").read_bytes() == b"kernel bytes" * 1000
    # hidden sectors = the partition's first sector, as a boot loader reading the BPB expects
    assert "hidden sectors: 2048" in _mtools("minfo", "-i", f"{image}@@{MIB}")


def test_same_files_same_bytes_and_the_volume_id_follows_the_content(tmp_path: Path) -> None:
    files = _files(tmp_path)
    first, second, changed = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "c.img"
    write_fat(first, files, label="EFI", epoch=EPOCH)
    write_fat(second, files, label="EFI", epoch=EPOCH)
    write_fat(changed, [*files[:2], ("syslinux.cfg", b"DEFAULT other\n"), *files[3:]], label="EFI", epoch=EPOCH)

    def serial(path: Path) -> str:
        [line] = [x for x in _mtools("minfo", "-i", str(path)).splitlines() if "serial number" in x]
        return line.split(":")[1].strip()

    assert first.read_bytes() == second.read_bytes()
    assert serial(first) != serial(changed)


def test_a_later_epoch_changes_only_time_stamps(tmp_path: Path) -> None:
    files = _files(tmp_path)
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    write_fat(a, files, label="EFI", epoch=EPOCH)
    write_fat(b, files, label="EFI", epoch=EPOCH + 86400 * 365)
    assert a.read_bytes() != b.read_bytes()
    assert "2018-04-18  16:30" in _mtools("mdir", "-i", str(b), "::/")


def test_fat_type_follows_the_size(tmp_path: Path) -> None:
    sizes = {12: 2 * MIB, 16: 64 * MIB, 32: 600 * MIB}
    for bits, size in sizes.items():
        image = tmp_path / f"fat{bits}.img"
        write_fat(image, [("a", b"a")], label="T", epoch=EPOCH, size=size)
        check = subprocess.run(["fsck.vfat", "-n", "-v", str(image)], capture_output=True, text=True)
        assert f"2 FATs, {bits} bit entries" in check.stdout, check.stdout
        assert fat_bits(image) == bits


def test_a_size_too_small_is_a_user_error(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(bytes(3 * MIB))
    with pytest.raises(UserError, match=r"^the files need a FAT filesystem of at least 4 MiB; only 2 MiB is "
                                        r"available \(hint: give a larger --size\)$"):
        write_fat(tmp_path / "x.img", [("big", big)], label="T", epoch=EPOCH, size=2 * MIB)


def test_bad_names_are_refused(tmp_path: Path) -> None:
    for bad in ("/abs", "a/../b", "a//b", ""):
        with pytest.raises(ValueError):
            write_fat(tmp_path / "x.img", [(bad, b"x")], label="T", epoch=EPOCH)
    with pytest.raises(ValueError, match="names given twice"):
        write_fat(tmp_path / "x.img", [("a", b"x"), ("a", b"y")], label="T", epoch=EPOCH)


def test_directories_parents_first_and_the_size_estimate() -> None:
    assert fat_directories(["kernel", "EFI/BOOT/BOOTX64.EFI", "EFI/Linux/a.efi"], ["syslinux", "x/y"]) == [
        "EFI", "EFI/BOOT", "EFI/Linux", "syslinux", "x", "x/y"]
    assert fat_min_size([]) == MIB
    assert fat_min_size([100 * MIB]) == 102 * MIB  # 1.6% tables and some slack, in whole MiB
