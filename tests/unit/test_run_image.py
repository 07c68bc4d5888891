"""What `linuxkit-py run PATH` boots: the kind of output told from the path, like `linuxkit run qemu`."""

from __future__ import annotations

from pathlib import Path

import pytest

from linuxkit_py.errors import UserError
from linuxkit_py.run.image import BootImage, detect_image


def touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"x")


def test_prefix_of_a_kernel_initrd_output(tmp_path: Path) -> None:
    touch(tmp_path, "os-kernel", "os-initrd.img")
    (tmp_path / "os-cmdline").write_text("console=ttyS0 quiet\n")

    assert detect_image(tmp_path / "os") == BootImage(
        "kernel+initrd", tmp_path / "os", kernel=tmp_path / "os-kernel", initrd=tmp_path / "os-initrd.img",
        cmdline="console=ttyS0 quiet")


@pytest.mark.parametrize("named", ["os-kernel", "os-initrd.img", "os-cmdline"])
def test_any_file_of_a_kernel_output_names_it(tmp_path: Path, named: str) -> None:
    touch(tmp_path, "os-kernel", "os-initrd.img", "os-cmdline")

    image = detect_image(tmp_path / named)

    assert (image.kind, image.prefix, image.initrd) == ("kernel+initrd", tmp_path / "os", tmp_path / "os-initrd.img")


def test_cmdline_file_is_optional(tmp_path: Path) -> None:
    touch(tmp_path, "os-kernel", "os-initrd.img")
    assert detect_image(tmp_path / "os").cmdline == ""


def test_squashfs_is_preferred_like_linuxkit_unless_the_initrd_is_named(tmp_path: Path) -> None:
    touch(tmp_path, "os-kernel", "os-initrd.img", "os-squashfs.img")

    squashfs = detect_image(tmp_path / "os")
    assert (squashfs.kind, squashfs.image, squashfs.initrd) == ("kernel+squashfs", tmp_path / "os-squashfs.img", None)
    assert detect_image(tmp_path / "os-initrd.img").kind == "kernel+initrd"


def test_erofs_root(tmp_path: Path) -> None:
    touch(tmp_path, "os-kernel", "os-erofs.img")
    image = detect_image(tmp_path / "os")
    assert (image.kind, image.kernel, image.image) == (
        "kernel+erofs", tmp_path / "os-kernel", tmp_path / "os-erofs.img")


@pytest.mark.parametrize("fs", ["squashfs", "erofs"])
def test_root_image_boots_with_its_stage_one_initramfs_when_there_is_one(tmp_path: Path, fs: str) -> None:
    touch(tmp_path, "os-kernel", "os-initrd.img", f"os-{fs}.img", f"os-{fs}-initrd.img")

    for named in ("os", f"os-{fs}.img", f"os-{fs}-initrd.img"):
        image = detect_image(tmp_path / named)
        assert (image.kind, image.image, image.initrd) == (
            f"kernel+{fs}", tmp_path / f"os-{fs}.img", tmp_path / f"os-{fs}-initrd.img"), named
    assert detect_image(tmp_path / "os-initrd.img").kind == "kernel+initrd"


def test_kernel_without_a_root_filesystem(tmp_path: Path) -> None:
    touch(tmp_path, "os-kernel")
    with pytest.raises(UserError) as err:
        detect_image(tmp_path / "os")
    p = tmp_path / "os"
    assert str(err.value) == (f"{p}-kernel has no root filesystem next to it: looked for "
                              f"{p}-initrd.img, {p}-erofs.img, {p}-squashfs.img")


@pytest.mark.parametrize(
    ("name", "kind", "image_format", "uefi"),
    [
        ("os.iso", "iso", "raw", False),
        ("os-efi.iso", "iso", "raw", True),
        ("os-efi-initrd.iso", "iso", "raw", True),
        ("os-bios.img", "disk", "raw", False),
        ("os-efi.img", "disk", "raw", True),
        ("os.raw", "disk", "raw", False),
        ("os.qcow2", "disk", "qcow2", False),
        ("os-efi.qcow2", "disk", "qcow2", True),
        ("os.vhd", "disk", "vpc", False),
        ("os.vhdx", "disk", "vhdx", False),
        ("os.VMDK", "disk", "vmdk", False),
        ("os.efi", "uki", "raw", True),
    ],
)
def test_files_by_suffix(tmp_path: Path, name: str, kind: str, image_format: str, uefi: bool) -> None:
    touch(tmp_path, name)
    image = detect_image(tmp_path / name)
    assert (image.kind, image.image, image.image_format, image.uefi) == (kind, tmp_path / name, image_format, uefi)
    assert image.prefix == tmp_path / name.rsplit(".", 1)[0]
    assert not image.boots_kernel


def test_a_file_whose_name_says_nothing(tmp_path: Path) -> None:
    touch(tmp_path, "os.tar")
    with pytest.raises(UserError) as err:
        detect_image(tmp_path / "os.tar")
    assert str(err.value) == (f"cannot tell how to boot {tmp_path}/os.tar: the name ends in none of -kernel, "
                              "-initrd.img, .iso, .img, .raw, .qcow2, .vhd, .vhdx, .vmdk, .efi")


def test_nothing_there_lists_what_was_looked_for(tmp_path: Path) -> None:
    touch(tmp_path, "os-initrd.img")  # no kernel: not an output
    p = tmp_path / "os"
    with pytest.raises(UserError) as err:
        detect_image(p)
    assert str(err.value) == (f"nothing to run at {p}: looked for {p}-kernel with {p}-initrd.img, -squashfs.img "
                              f"or -erofs.img, and for {p} itself as a file ending in .iso, .img, .raw, .qcow2, "
                              ".vhd, .vhdx, .vmdk or .efi")
