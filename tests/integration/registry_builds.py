"""Builds that pull through a fault proxy from a real docker-registry (for interrupt and concurrency tests).

Two small images share a layer; `alpha` also has a big incompressible layer (slow to pull through
a paced proxy) and `beta` a large all-zero file (cheap to pull, slow enough to write out).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.imagetools import F, ImageSpec, Layout, skopeo_push, tar_layer
from tests.registry.faultproxy import FaultProxy
from tests.registry.servers import RegistryProcess

SHARED = tar_layer(F("etc/shared", "shared by both images\n"))
BIG = os.urandom(1 << 20)
ZEROS = bytes(24 << 20)


@pytest.fixture(scope="module")
def build_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    registry = RegistryProcess(tmp_path_factory.mktemp("registry"), tmp_path_factory.mktemp("storage")).start()
    try:
        layout = Layout(tmp_path_factory.mktemp("layout"))
        layout.add_image("alpha", ImageSpec(layers=[SHARED, tar_layer(F("opt/big", BIG))],
                                            config={"Cmd": ["/bin/true"]}))
        layout.add_image("beta", ImageSpec(layers=[SHARED, tar_layer(F("opt/zeros", ZEROS))],
                                           config={"Cmd": ["/bin/true"]}))
        for tag in ("alpha", "beta"):
            skopeo_push(layout.root, tag, f"{registry.host}/build/{tag}:1")
        yield registry
    finally:
        registry.stop()


@pytest.fixture(name="build_proxy")
def build_proxy_fixture(build_registry: RegistryProcess) -> Iterator[FaultProxy]:
    fp = FaultProxy(build_registry.host)
    try:
        yield fp
    finally:
        fp.close()


def write_spec(directory: Path, proxy: FaultProxy) -> Path:
    spec = directory / "system.yml"
    spec.write_text(f"""\
onboot:
  - name: alpha
    image: {proxy.host}/build/alpha:1
services:
  - name: beta
    image: {proxy.host}/build/beta:1
""")
    return spec


def start_build(spec: Path, cache: Path, output: Path) -> subprocess.Popen[bytes]:
    """`linuxkit-py build -o OUTPUT` (a tar) as a child process."""
    return subprocess.Popen([sys.executable, "-m", "linuxkit_py", "build", "--cache", str(cache), "-o",
                             str(output), str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
