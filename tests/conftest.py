"""Shared fixtures: Debian packages (cached under tests/.cache/) and the boot-test OCI images."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import debian
from tests.bootimages import LayoutImage, build_init_image, build_kernel_image


@pytest.fixture(scope="session")
def debian_kernel() -> debian.DebianKernel:
    """The Debian cloud kernel: bzImage, modules directory, version (downloaded once, then cached)."""
    return debian.debian_kernel()


@pytest.fixture(scope="session")
def busybox_static() -> Path:
    """A static busybox binary from busybox-static (downloaded once, then cached)."""
    return debian.busybox_static()


@pytest.fixture(scope="session")
def kernel_image(debian_kernel: debian.DebianKernel, tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    """OCI layout with tag `kernel`: /kernel (bzImage) and /kernel.tar (virtio + overlay modules)."""
    return build_kernel_image(debian_kernel, tmp_path_factory.mktemp("kernel-image"))


@pytest.fixture(scope="session")
def init_image(busybox_static: Path, tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    """OCI layout with tag `init`: busybox and an /init that prints markers and powers off."""
    return build_init_image(busybox_static, tmp_path_factory.mktemp("init-image"))
