"""`run` without --arch: the architecture an output's own bytes show (docs/run.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linuxkit_py.run.image import BootImage, detect_image, sniff_arch


def _kernel_output(tmp_path: Path, header: bytes) -> BootImage:
    (tmp_path / "x-kernel").write_bytes(header)
    (tmp_path / "x-initrd.img").write_bytes(b"initrd")
    return detect_image(tmp_path / "x")


def test_kernels_by_their_boot_headers(tmp_path: Path) -> None:
    arm64 = bytearray(64)
    arm64[56:60] = b"ARM\x64"
    assert sniff_arch(_kernel_output(tmp_path, bytes(arm64))) == "arm64"
    x86 = bytearray(0x300)
    x86[0x202:0x206] = b"HdrS"
    assert sniff_arch(_kernel_output(tmp_path, bytes(x86))) == "amd64"
    assert sniff_arch(_kernel_output(tmp_path, b"\0" * 1024)) is None  # unknown: the host's


@pytest.mark.parametrize(("machine", "arch"), [(0xAA64, "arm64"), (0x8664, "amd64"), (0x14C, None)])
def test_a_uki_by_its_pe_machine(tmp_path: Path, machine: int, arch: str | None) -> None:
    pe = bytearray(512)
    pe[:2] = b"MZ"
    pe[0x3C:0x40] = (0x80).to_bytes(4, "little")
    pe[0x80:0x84] = b"PE\0\0"
    pe[0x84:0x86] = machine.to_bytes(2, "little")
    (tmp_path / "x.efi").write_bytes(bytes(pe))
    assert sniff_arch(detect_image(tmp_path / "x.efi")) == arch


@pytest.mark.parametrize(("suffix", "name", "arch"), [
    ("-efi.img", b"BOOTAA64EFI", "arm64"), ("-efi.qcow2", b"BOOTAA64EFI", "arm64"),
    ("-efi.iso", b"BOOTX64 EFI", "amd64"),
])
def test_disks_and_isos_by_the_name_of_their_efi_loader(tmp_path: Path, suffix: str, name: bytes,
                                                        arch: str) -> None:
    path = tmp_path / f"x{suffix}"
    # the directory entry straddles a read boundary: the scan keeps the tail of each chunk
    path.write_bytes(b"\0" * ((1 << 20) - 5) + name + b"\x20" * 21 + b"\0" * 4096)
    assert sniff_arch(detect_image(path)) == arch
    (tmp_path / "y.img").write_bytes(b"\0" * 8192)
    assert sniff_arch(detect_image(tmp_path / "y.img")) is None
