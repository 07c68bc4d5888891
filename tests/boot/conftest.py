"""Boot-test fixtures: the kernel and the initramfs contents taken from the test OCI images.

The initramfs is written here by a deliberately tiny newc cpio writer (the project's own
writer is tested separately), so these tests only depend on the qemu runner.
"""

from __future__ import annotations

import gzip
import io
import json
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bootimages import LayoutImage

NEWC_MAGIC = b"070701"
NEWC_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class CpioFile:
    name: str  # without a leading slash
    mode: int  # with the file type bits (stat.S_IFREG, S_IFDIR, S_IFLNK)
    data: bytes = b""  # file content, or the symlink target


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_archive(files: list[CpioFile]) -> bytes:
    """An uncompressed newc ("070701") cpio archive, the format the kernel unpacks as initramfs."""
    out = bytearray()
    for ino, f in enumerate([*files, CpioFile(NEWC_TRAILER, 0)], start=1):
        name = f.name.encode() + b"\0"
        # ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
        # namesize, check
        fields = (ino, f.mode, 0, 0, 1, 0, len(f.data), 0, 0, 0, 0, len(name), 0)
        header = NEWC_MAGIC + b"".join(b"%08x" % v for v in fields)
        out += header + name + _pad4(len(header) + len(name)) + f.data + _pad4(len(f.data))
    return bytes(out)


def tar_to_cpio_files(tar_bytes: bytes) -> list[CpioFile]:
    files = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        for m in tf:
            name = m.name.removeprefix("./").lstrip("/")
            if m.isdir():
                files.append(CpioFile(name, stat.S_IFDIR | m.mode))
            elif m.issym():
                files.append(CpioFile(name, stat.S_IFLNK | 0o777, m.linkname.encode()))
            elif m.isfile():
                data = tf.extractfile(m)
                assert data is not None
                files.append(CpioFile(name, stat.S_IFREG | m.mode, data.read()))
            else:
                raise AssertionError(f"unexpected tar member type in test image: {m.name}")
    return files


def image_layers(image: LayoutImage) -> list[bytes]:
    """The uncompressed layer tars of a single-platform image in an OCI layout."""
    blobs = image.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / image.digest.split(":")[1]).read_bytes())
    layer_blobs = [blobs / layer["digest"].split(":")[1] for layer in manifest["layers"]]
    return [gzip.decompress(blob.read_bytes()) for blob in layer_blobs]


def image_file(image: LayoutImage, path: str) -> bytes:
    for tar_bytes in image_layers(image):
        for f in tar_to_cpio_files(tar_bytes):
            if f.name == path:
                return f.data
    raise AssertionError(f"{image.tag} image has no {path}")


@pytest.fixture(scope="session")
def boot_kernel(kernel_image: LayoutImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/kernel of the kernel image, as a file qemu can load."""
    path = tmp_path_factory.mktemp("boot-kernel") / "kernel"
    path.write_bytes(image_file(kernel_image, "kernel"))
    return path


@pytest.fixture(scope="session")
def base_initramfs_files(init_image: LayoutImage, kernel_image: LayoutImage) -> list[CpioFile]:
    """The init image's files plus the modules of the kernel image's /kernel.tar."""
    files = [f for layer in image_layers(init_image) for f in tar_to_cpio_files(layer)]
    return files + tar_to_cpio_files(image_file(kernel_image, "kernel.tar"))


MakeInitrd = Callable[..., Path]


@pytest.fixture
def make_initrd(base_initramfs_files: list[CpioFile], tmp_path: Path) -> MakeInitrd:
    """make_initrd(files={path: text}, scripts={path: text}) -> an initrd of the base files plus
    those (files mode 0644, scripts 0755, missing parent directories added)."""
    known = {f.name for f in base_initramfs_files}

    def make(files: dict[str, str] | None = None, scripts: dict[str, str] | None = None) -> Path:
        extra = [CpioFile(p, stat.S_IFREG | 0o644, t.encode()) for p, t in (files or {}).items()]
        extra += [CpioFile(p, stat.S_IFREG | 0o755, t.encode()) for p, t in (scripts or {}).items()]
        parents = {str(parent) for f in extra for parent in Path(f.name).parents if str(parent) != "."}
        # The kernel's unpacker does not create parent directories: add them first.
        extra = [CpioFile(d, stat.S_IFDIR | 0o755) for d in sorted(parents - known)] + extra
        path = tmp_path / "initrd.img"
        path.write_bytes(newc_archive(base_initramfs_files + extra))
        return path

    return make
