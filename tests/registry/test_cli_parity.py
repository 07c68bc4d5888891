"""LinuxKit's test 080_mirrors, as its test.sh types it: `--mirror URL --cache DIR` before `build`. A bare URL
mirrors every registry without a mirror of its own, here Docker Hub's `busybox`."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.integration.conftest import run_cli
from tests.registry.conftest import PushedImages
from tests.registry.servers import RegistryProcess

pytestmark = pytest.mark.registry

SPEC = """\
onboot:
  - name: mirrored
    image: busybox:mirrored
"""


def test_global_mirror_before_build(registry: RegistryProcess, images: PushedImages, tmp_path: Path) -> None:
    spec = tmp_path / "test.yml"
    spec.write_text(SPEC)
    cache = tmp_path / "cache"

    dead = run_cli("--mirror", "http://127.0.0.1:1", "--cache", cache, "build", "--format", "tar", "--name", "t",
                   "--dir", tmp_path, spec)
    assert dead.returncode == 1
    assert dead.stderr.decode() == ("linuxkit-py: docker.io/library/busybox:mirrored: cannot connect to registry "
                                    "127.0.0.1:1 "
                                    "(connection refused)\n")

    built = run_cli("--mirror", registry.url, "--cache", cache, "build", "--format", "tar", "--name", "t",
                    "--dir", tmp_path, spec)
    assert built.returncode == 0, built.stderr.decode()
    with tarfile.open(tmp_path / "t.tar") as tar:
        member = tar.extractfile("containers/onboot/000-mirrored/lower/etc/basic")
        assert member is not None and member.read() == b"one"
    assert any("/v2/library/busybox/manifests/mirrored" in path for _, path, _ in registry.requests_log())
