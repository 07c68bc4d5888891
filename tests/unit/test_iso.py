"""The ISO outputs (iso-bios, iso-efi, iso-efi-initrd): what pycdlib, xorriso, mtools and fsck read back,
and the same bytes from every build."""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.errors import UserError
from linuxkit_py.formats import FormatOptions, Rootfs, get_format, iso
from linuxkit_py.formats.bootfiles import BootFiles
from linuxkit_py.formats.iso_grub import GrubBoot, grub_config, kernel_arguments

EPOCH = 1_700_000_000  # 2023-11-14 22:13:20 UTC
CMDLINE = "console=ttyS0 quiet"
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin").read_bytes()
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32").read_bytes()


def _rootfs(tmp_path: Path, cmdline: str = CMDLINE, **options: object) -> Rootfs:
    layer = tmp_path / "layer.tar"
    if not layer.exists():
        layer.write_bytes(b"\0" * 512 + os.urandom(300_000) + b"\0" * 512)
    kernel = FileRegion(str(layer), 512, 300_000)
    raw = cmdline.encode()
    return Rootfs([
        Entry("boot", Kind.DIR, 0o755),
        Entry("boot/kernel", Kind.FILE, 0o644, size=kernel.size, data=kernel),
        Entry("boot/cmdline", Kind.FILE, 0o644, size=len(raw), data=raw),
        Entry("bin", Kind.DIR, 0o755),
        Entry("bin/busybox", Kind.FILE, 0o755, size=40_000, data=os.urandom(20_000) * 2),
        Entry("etc", Kind.DIR, 0o755),
        Entry("etc/motd", Kind.FILE, 0o644, size=6, data=b"hello\n"),
    ], EPOCH, options=FormatOptions(**options))  # type: ignore[arg-type]


def _build(fmt: str, rootfs: Rootfs, directory: Path) -> Path:
    out = directory / f"image{get_format(fmt).suffixes[0]}"
    with open(out, "wb") as f:
        get_format(fmt).write(rootfs, [f])
    return out


def _kernel_initrd(rootfs: Rootfs, directory: Path) -> tuple[bytes, bytes]:
    outs = [directory / name for name in ("k", "i", "c")]
    files = [open(p, "wb") for p in outs]  # noqa: SIM115
    get_format("kernel+initrd").write(rootfs, files)  # type: ignore[arg-type]
    for f in files:
        f.close()
    return outs[0].read_bytes(), outs[1].read_bytes()


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[pycdlib.PyCdlib]:
    image = pycdlib.PyCdlib()
    image.open(str(path))
    try:
        yield image
    finally:
        image.close()


def _rr_tree(image: pycdlib.PyCdlib) -> list[str]:
    paths = []
    for root, dirs, files in image.walk(rr_path="/"):
        paths += [f"{root.rstrip('/')}/{name}" for name in [*dirs, *files]]
    return sorted(paths)


def _read(image: pycdlib.PyCdlib, **path: str) -> bytes:
    out = io.BytesIO()
    image.get_file_from_iso_fp(out, **path)
    return out.getvalue()


def _report(path: Path) -> str:
    result = subprocess.run(["xorriso", "-indev", str(path), "-report_el_torito", "plain", "-report_system_area",
                             "plain"], capture_output=True, text=True, check=True)
    return result.stdout


def _lines(report: str, key: str) -> list[list[str]]:
    """The values of xorriso's `KEY : VALUES` report lines with this key."""
    lines = [line.split(":", 1) for line in report.splitlines() if ":" in line]
    return [value.split() for name, value in lines if name.strip() == key]


def test_format_rows() -> None:
    rows = {name: get_format(name) for name in ("iso-bios", "iso-efi", "iso-efi-initrd")}
    assert {name: row.suffixes for name, row in rows.items()} == {
        "iso-bios": (".iso",), "iso-efi": ("-efi.iso",), "iso-efi-initrd": ("-efi-initrd.iso",)}
    assert rows["iso-bios"].tools == ()
    assert rows["iso-efi"].tools == rows["iso-efi-initrd"].tools == ("grub-mkimage", "mkfs.vfat", "mmd", "mcopy")
    assert not any(row.streamable for row in rows.values())


def test_iso_bios_holds_the_kernel_initrd_and_isolinux(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    path = _build("iso-bios", rootfs, tmp_path)
    kernel, initrd = _kernel_initrd(rootfs, tmp_path)

    with _opened(path) as image:
        assert _rr_tree(image) == ["/boot", "/boot/initrd.img", "/boot/kernel", "/isolinux", "/isolinux/boot.cat",
                                   "/isolinux/isolinux.bin", "/isolinux/isolinux.cfg", "/isolinux/ldlinux.c32"]
        assert _read(image, rr_path="/boot/kernel") == kernel
        assert _read(image, rr_path="/boot/initrd.img") == initrd  # the kernel+initrd output's initrd
        assert _read(image, joliet_path="/boot/initrd.img") == initrd
        assert _read(image, iso_path="/BOOT/INITRD.IMG;1") == initrd
        assert _read(image, rr_path="/isolinux/ldlinux.c32") == LDLINUX_C32
        # the boot info table (bytes 8-63) is ISOLINUX's own business; the rest is Debian's file
        bin_ = _read(image, rr_path="/isolinux/isolinux.bin")
        assert (bin_[:8], bin_[64:]) == (ISOLINUX_BIN[:8], ISOLINUX_BIN[64:])
        assert _read(image, rr_path="/isolinux/isolinux.cfg").decode() == (
            "DEFAULT linux\nLABEL linux\n  KERNEL /boot/kernel\n  INITRD /boot/initrd.img\n"
            f"  APPEND {CMDLINE}\n")
        kernel_record: Any = image.get_record(rr_path="/boot/kernel")
        assert kernel_record.rock_ridge.get_file_mode() == 0o100444


def test_iso_bios_boots_isolinux_from_el_torito_and_from_the_hybrid_mbr(tmp_path: Path) -> None:
    path = _build("iso-bios", _rootfs(tmp_path), tmp_path)

    report = _report(path)
    assert _lines(report, "El Torito cat path") == [["/isolinux/boot.cat"]]
    [entry] = _lines(report, "El Torito boot img")
    assert entry[:7] == ["1", "BIOS", "y", "none", "0x0000", "0x00", "4"]
    assert _lines(report, "El Torito img path") == [["1", "/isolinux/isolinux.bin"]]
    assert _lines(report, "El Torito img opts") == [["1", "boot-info-table", "isohybrid-suitable"]]
    assert _lines(report, "System area summary") == [["MBR", "isohybrid", "cyl-align-on"]]
    # one active partition of type 0x17 from sector 0 over the whole (cylinder-padded) image
    [partition] = _lines(report, "MBR partition")
    assert partition == ["1", "0x80", "0x17", "0", str(path.stat().st_size // 512)]
    assert path.stat().st_size % (1 << 20) == 0


def _gpt_crcs_hold(data: bytes, header_lba: int) -> bool:
    header = data[header_lba * 512:][:92]
    entries_lba, count, size, entries_crc = struct.unpack_from("<QIII", header, 72)
    entries = data[entries_lba * 512:][:count * size]
    unsummed = header[:16] + bytes(4) + header[20:]
    return zlib.crc32(entries) == entries_crc and zlib.crc32(unsummed) == struct.unpack_from("<I", header, 16)[0]


def test_iso_efi_adds_a_uefi_entry_and_an_esp_partition(tmp_path: Path) -> None:
    path = _build("iso-efi", _rootfs(tmp_path), tmp_path)

    report = _report(path)
    entries = _lines(report, "El Torito boot img")
    assert [e[:5] for e in entries] == [["1", "BIOS", "y", "none", "0x0000"], ["2", "UEFI", "y", "none", "0x0000"]]
    assert _lines(report, "El Torito img path") == [["1", "/isolinux/isolinux.bin"], ["2", "/boot/efiboot.img"]]
    assert _lines(report, "System area summary") == [["MBR", "isohybrid", "cyl-align-on", "GPT"]]
    whole, esp = _lines(report, "MBR partition")
    efi_sectors = int(entries[1][6])
    assert whole == ["1", "0x80", "0x00", "0", str(path.stat().st_size // 512)]
    assert esp[:3] == ["2", "0x00", "0xef"] and esp[4] == str(efi_sectors)
    assert _lines(report, "MBR partition path") == [["2", "/boot/efiboot.img"]]
    assert "CRC" not in report  # xorriso checks both GPTs' CRCs
    data = path.read_bytes()
    backup_lba = struct.unpack_from("<Q", data, 512 + 32)[0]
    assert backup_lba == len(data) // 512 - 1
    assert _gpt_crcs_hold(data, 1) and _gpt_crcs_hold(data, backup_lba)


def _efi_image(path: Path, iso_image_path: str, directory: Path) -> Path:
    with _opened(path) as image:
        data = _read(image, rr_path=iso_image_path)
    fat = directory / "efiboot.img"
    fat.write_bytes(data)
    return fat


def test_the_uefi_boot_image_is_a_fat_holding_grub_that_finds_this_iso(tmp_path: Path) -> None:
    path = _build("iso-efi", _rootfs(tmp_path), tmp_path)
    fat = _efi_image(path, "/boot/efiboot.img", tmp_path)

    fsck = subprocess.run(["fsck.vfat", "-n", str(fat)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(["mdir", "-b", "-/", "-i", str(fat), "::/"], capture_output=True, text=True, env=env,
                             check=True).stdout.split()
    assert listing == ["::/EFI/", "::/EFI/BOOT/", "::/EFI/BOOT/BOOTX64.EFI"]
    loader = tmp_path / "BOOTX64.EFI"
    subprocess.run(["mcopy", "-i", str(fat), "::/EFI/BOOT/BOOTX64.EFI", str(loader)], env=env, check=True)
    pe = loader.read_bytes()
    assert pe[:2] == b"MZ" and pe[struct.unpack_from("<I", pe, 0x3C)[0]:][:6] == b"PE\0\0\x64\x86"  # x86-64
    with _opened(path) as image:
        tree = _rr_tree(image)
        [id_file] = [p for p in tree if p.startswith("/boot/grub/") and p.endswith(".id")]
        config = _read(image, rr_path="/boot/grub/grub.cfg").decode()
        assert _read(image, rr_path="/boot/kernel") and "/boot/initrd.img" in tree
    assert re.fullmatch(r"/boot/grub/[0-9a-f]{16}\.id", id_file)
    assert f"search --no-floppy --set=root --file {id_file}\nset prefix=($root)/boot/grub\n".encode() in pe
    assert config == ("set timeout=0\nmenuentry 'linuxkit-py' {\n\tlinux /boot/kernel console=ttyS0 quiet\n"
                      "\tinitrd /boot/initrd.img\n}\n")


def test_iso_efi_initrd_has_linuxkits_layout_on_a_uefi_only_cd(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    path = _build("iso-efi-initrd", rootfs, tmp_path)
    kernel, initrd = _kernel_initrd(rootfs, tmp_path)

    with _opened(path) as image:
        tree = _rr_tree(image)
        assert _read(image, rr_path="/kernel") == kernel
        assert _read(image, rr_path="/initrd.img") == initrd
        config = _read(image, rr_path="/EFI/BOOT/grub.cfg").decode()
    [id_file] = [p for p in tree if p.endswith(".id")]
    assert tree == sorted(["/EFI", "/EFI/BOOT", "/EFI/BOOT/grub.cfg", id_file, "/boot.catalog", "/boot.img",
                           "/initrd.img", "/kernel"])
    assert "\tlinux /kernel console=ttyS0 quiet\n\tinitrd /initrd.img\n" in config
    report = _report(path)
    [entry] = _lines(report, "El Torito boot img")
    assert entry[:2] == ["1", "UEFI"]
    assert _lines(report, "El Torito img path") == [["1", "/boot.img"]]
    assert path.read_bytes()[:32768] == bytes(32768)  # not hybrid: an empty system area, as LinuxKit's
    fat = _efi_image(path, "/boot.img", tmp_path)
    assert subprocess.run(["fsck.vfat", "-n", str(fat)], capture_output=True).returncode == 0


@pytest.mark.parametrize("fmt", ["iso-bios", "iso-efi", "iso-efi-initrd"])
def test_same_bytes_at_another_time_in_another_time_zone(fmt: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rootfs = _rootfs(tmp_path)
    first = _build(fmt, rootfs, tmp_path).read_bytes()

    monkeypatch.setenv("TZ", "Asia/Kathmandu")  # +05:45: a local date differs from UTC
    time.tzset()
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.5)
    try:
        again = _build(fmt, rootfs, tmp_path).read_bytes()
    finally:
        monkeypatch.undo()
        time.tzset()

    assert again == first


def test_every_date_is_the_build_epoch_in_utc(tmp_path: Path) -> None:
    path = _build("iso-efi", _rootfs(tmp_path), tmp_path)

    pvd = subprocess.run(["xorriso", "-indev", str(path), "-pvd_info"], capture_output=True, text=True,
                         check=True).stdout
    for field in ("Creation Time", "Modif. Time", "Eff. Time"):
        assert _lines(pvd, field) == [["2023111422132000"]], field
    with _opened(path) as image:
        for rr_path in ("/boot", "/boot/kernel", "/isolinux/isolinux.cfg"):
            record: Any = image.get_record(rr_path=rr_path)
            date = record.date
            assert (date.years_since_1900 + 1900, date.month, date.day_of_month, date.hour, date.minute,
                    date.second, date.gmtoffset) == (2023, 11, 14, 22, 13, 20, 0), rr_path
            tf = record.rock_ridge.dr_entries.tf_record
            assert tf.modification_time.hour == 22 and tf.modification_time.gmtoffset == 0


def test_a_new_kernel_gets_new_ids(tmp_path: Path) -> None:
    """The MBR id, the GPT GUIDs and GRUB's id file come from the contents: another kernel, other ids."""
    first = _build("iso-efi", _rootfs(tmp_path), tmp_path).read_bytes()
    (tmp_path / "layer.tar").write_bytes(b"\0" * 512 + os.urandom(300_000) + b"\0" * 512)
    second = _build("iso-efi", _rootfs(tmp_path), tmp_path).read_bytes()

    assert first[440:444] != second[440:444]  # MBR disk signature
    assert first[512 + 56:512 + 72] != second[512 + 56:512 + 72]  # GPT disk GUID


def test_root_image_and_other_extra_files_go_under_their_names(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """What boot_files lists in `extra` (the root image in root-on-media mode) is on the medium as named."""
    root_image = tmp_path / "root.img"
    root_image.write_bytes(os.urandom(5000))
    real_boot_files = iso.boot_files

    @contextlib.contextmanager
    def with_extra(rootfs: Rootfs, medium: str, workdir: Path) -> Iterator[BootFiles]:
        with real_boot_files(rootfs, medium, workdir) as bf:
            bf.extra.append(("boot/root.squashfs", root_image))
            yield bf

    monkeypatch.setattr(iso, "boot_files", with_extra)
    for fmt in ("iso-bios", "iso-efi"):
        with _opened(_build(fmt, _rootfs(tmp_path), tmp_path)) as image:
            assert _read(image, rr_path="/boot/root.squashfs") == root_image.read_bytes(), fmt


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^format iso-bios has no arm64 image: it is built for amd64 "
                                        r"\(hint: BIOS boot exists on x86 only: use the -efi formats\)$"):
        get_format("iso-bios").check_arch("arm64")
    with pytest.raises(UserError, match=r"^iso-efi-initrd always boots from its initrd, not --root squashfs "
                                        r"\(hint: use iso-efi for the root filesystem on the medium\)$"):
        _build("iso-efi-initrd", _rootfs(tmp_path, root="squashfs"), tmp_path)
    with pytest.raises(UserError, match=r"kernel argument 'path=C:\\\\x' cannot pass through GRUB unchanged"):
        _build("iso-efi", _rootfs(tmp_path, cmdline=r"console=ttyS0 path=C:\x"), tmp_path)
    assert list(tmp_path.glob(".iso-*")) == []  # work directories are gone


def test_kernel_arguments_split_like_the_kernel() -> None:
    assert kernel_arguments(' console=ttyS0  a="b c" "d=e f" g="" h ') == ["console=ttyS0", "a=b c", "d=e f", "g=",
                                                                          "h"]
    with pytest.raises(UserError, match="quotes or backslashes inside it"):
        kernel_arguments('a=b"c d"')
    with pytest.raises(UserError):
        kernel_arguments("msg='hi'")


def test_grub_config_quotes_what_grub_would_interpret() -> None:
    grub = GrubBoot(directory="boot/grub", kernel="boot/kernel", initrd="boot/initrd.img",
                    cmdline='console=ttyS0 note="two words" x=$y;z', seed=b"\1" * 32)
    assert grub.id_file == "boot/grub/0101010101010101.id"
    assert "\tlinux /boot/kernel console=ttyS0 'note=two words' 'x=$y;z'\n" in grub_config(grub)
