"""Unified kernel images (formats/uki.py): the sections objdump finds, their contents, a fixed time stamp and
a valid PE checksum. Booting one under OVMF is in tests/boot/test_disk_formats.py."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
from pathlib import Path

from linuxkit_py.archive.entry import FileRegion
from linuxkit_py.formats.uki import (
    OS_RELEASE,
    SECTION_ALIGNMENT,
    PeLayout,
    pe_layout,
    section_addresses,
    stub_path,
    write_uki,
)
from linuxkit_py.sign.pe import pe_checksum

EPOCH = 1_492_533_000


def _sections(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, VMA) as objdump reads them."""
    out = subprocess.run(["objdump", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    return {m[1]: (int(m[2], 16), int(m[3], 16))
            for m in re.finditer(r"^\s*\d+ (\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s", out, re.MULTILINE)}


def _pe_header(path: Path) -> dict[str, str]:
    out = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^(Time/Date|CheckSum|SizeOfImage)\s+(.+)$", out, re.MULTILINE))


def _dump(path: Path, section: str, tmp_path: Path) -> bytes:
    out = tmp_path / section.strip(".")
    subprocess.run(["objcopy", "--dump-section", f"{section}={out}", str(path), str(tmp_path / "scratch")],
                   check=True, capture_output=True)
    return out.read_bytes()


def test_the_stub_layout_matches_objdump() -> None:
    stub = stub_path()
    layout = pe_layout(stub.read_bytes()[:4096])
    sections = _sections(stub)
    assert layout.image_base == 0
    assert layout.end_of_sections == max(vma + size for size, vma in sections.values())


def test_new_sections_are_aligned_past_the_stub_and_each_other() -> None:
    layout = PeLayout(image_base=0x1000000, end_of_sections=0x19134, time_stamp_offset=0, checksum_offset=0)
    assert section_addresses(layout, [0x1C, 0x2000, 1, 5]) == [0x101A000, 0x101B000, 0x101D000, 0x101E000]


def test_uki_sections_hold_kernel_initrd_cmdline_os_release(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    kernel = os.urandom(200_000)
    layer.write_bytes(b"H" * 512 + kernel)
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(os.urandom(50_000))
    uki = tmp_path / "linux.efi"

    write_uki(uki, kernel=FileRegion(str(layer), 512, len(kernel)), initrd=initrd,
              cmdline="console=ttyS0 quiet", epoch=EPOCH)

    sections = _sections(uki)
    stub_end = pe_layout(stub_path().read_bytes()[:4096]).end_of_sections
    added = [".osrel", ".cmdline", ".linux", ".initrd"]
    assert list(sections)[-4:] == added
    vmas = [sections[name][1] for name in added]
    assert all(vma % SECTION_ALIGNMENT == 0 for vma in vmas) and vmas == sorted(vmas) and vmas[0] >= stub_end
    for (size, vma), (_, next_vma) in zip([sections[n] for n in added], [sections[n] for n in added[1:]],
                                          strict=False):
        assert vma + size <= next_vma
    assert _dump(uki, ".linux", tmp_path) == kernel
    assert _dump(uki, ".initrd", tmp_path) == initrd.read_bytes()
    assert _dump(uki, ".cmdline", tmp_path) == b"console=ttyS0 quiet"
    assert _dump(uki, ".osrel", tmp_path) == OS_RELEASE


def test_uki_time_stamp_is_the_epoch_and_checksum_valid(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"initrd")
    first, second = io.BytesIO(), io.BytesIO()
    write_uki(first, kernel=b"kernel" * 1000, initrd=initrd, cmdline="x", epoch=EPOCH)
    write_uki(second, kernel=b"kernel" * 1000, initrd=initrd, cmdline="x", epoch=EPOCH)
    uki = tmp_path / "a.efi"
    uki.write_bytes(first.getvalue())

    header = _pe_header(uki)
    layout = pe_layout(uki.read_bytes()[:4096])

    assert first.getvalue() == second.getvalue()
    assert header["Time/Date"] == "Tue Apr 18 16:30:00 2017"
    assert int(header["CheckSum"], 16) == pe_checksum(uki, layout.checksum_offset)
    (stamp,) = struct.unpack_from("<I", uki.read_bytes(), layout.time_stamp_offset)
    assert stamp == EPOCH


def test_pe_checksum_agrees_with_binutils(tmp_path: Path) -> None:
    """objcopy computes the checksum of what it writes: ours gives the same number."""
    data = tmp_path / "data"
    data.write_bytes(os.urandom(12_345))
    out = tmp_path / "out.efi"
    subprocess.run(["objcopy", "--add-section", f".extra={data}", "--change-section-vma", ".extra=0x40000",
                    str(stub_path()), str(out)], check=True, capture_output=True)
    layout = pe_layout(out.read_bytes()[:4096])
    assert int(_pe_header(out)["CheckSum"], 16) == pe_checksum(out, layout.checksum_offset)
