"""Fixtures for end-to-end builds: a cache holding the kernel, init and a busybox container image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from tests.bootimages import LayoutImage, load_layout_into_cache
from tests.imagetools import D, F, ImageSpec, L, Layout, tar_layer

KERNEL_REF = "localhost:5000/test/kernel:6.1"
INIT_REF = "localhost:5000/test/init:1"
BUSYBOX_REF = "localhost:5000/test/busybox:1"
TOOLS_REF = "localhost:5000/test/tools:1"


def busybox_layers(busybox: Path) -> list[bytes]:
    """Two layers: busybox with a few applets, then a change (a whiteout and a new file)."""
    base = tar_layer(
        D("bin"), F("bin/busybox", busybox.read_bytes(), 0o755),
        L("bin/sh", "busybox"), L("bin/echo", "busybox"), L("bin/cat", "busybox"),
        D("etc"), F("etc/hostname", "builder\n"), F("etc/os-release", "ID=test\n"),
        F("etc/obsolete", "gone\n"),
    )
    change = tar_layer(D("etc"), F("etc/.wh.obsolete"), F("etc/motd", "hello from layer 2\n"))
    return [base, change]


@pytest.fixture(scope="session")
def container_layout(busybox_static: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout with `busybox` (Cmd echo) and `tools` (with an org.mobyproject.config label)."""
    root = tmp_path_factory.mktemp("containers")
    layout = Layout(root)
    layers = busybox_layers(busybox_static)
    layout.add_image("busybox", ImageSpec(layers, config={
        "Cmd": ["/bin/echo", "hello"], "Env": ["PATH=/bin"], "WorkingDir": "/"}))
    label = {"pid": "host", "readonly": True, "capabilities": ["CAP_SYS_BOOT"], "binds": ["/var:/var"]}
    layout.add_image("tools", ImageSpec(layers, config={
        "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"],
        "Labels": {"org.mobyproject.config": json.dumps(label)}}))
    return root


@dataclass
class Images:
    cache_dir: Path


def fill_cache(cache_dir: Path, kernel_image: LayoutImage, init_image: LayoutImage, containers: Path) -> None:
    cache = Cache(cache_dir)
    kernel_image.load_into(cache, KERNEL_REF)
    init_image.load_into(cache, INIT_REF)
    load_layout_into_cache(containers, "busybox", cache, BUSYBOX_REF)
    load_layout_into_cache(containers, "tools", cache, TOOLS_REF)


@pytest.fixture(scope="session")
def warm_cache(kernel_image: LayoutImage, init_image: LayoutImage, container_layout: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory with every test image; builds from it need no registry."""
    cache_dir = tmp_path_factory.mktemp("cache")
    fill_cache(cache_dir, kernel_image, init_image, container_layout)
    return cache_dir


def run_cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m linuxkit_py ARGS` the way a user runs the command."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "linuxkit_py", *map(str, args)], cwd=cwd, env=full_env,
                          input=stdin, capture_output=True, timeout=300)
