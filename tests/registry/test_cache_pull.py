"""`cache pull` from a real docker-registry, then `cache export` of what it pulled (read back by skopeo)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import run_cli
from tests.registry.conftest import PushedImages
from tests.registry.servers import RegistryProcess

pytestmark = pytest.mark.registry


def test_cache_pull_then_export(tmp_path: Path, registry: RegistryProcess, images: PushedImages,
                                docker_config: Path) -> None:
    cache, env = tmp_path / "cache", {"DOCKER_CONFIG": str(docker_config)}
    ref = f"{registry.host}/test/multi:1"
    pulled = run_cli("cache", "pull", "--cache", cache, "--platform", "linux/arm64", ref, env=env)
    assert pulled.returncode == 0, pulled.stderr.decode()
    assert pulled.stdout.decode() == f"{ref}\t{images.digests['test/multi:1']}\n"
    listed = run_cli("cache", "ls", "--cache", cache).stdout.decode()
    assert listed == f"{ref}\t{images.digests['test/multi:1']}\n"
    out = tmp_path / "arm.tar"
    exported = run_cli("cache", "export", "--cache", cache, "--platform", "linux/arm64", "-o", out, ref)
    assert exported.returncode == 0, exported.stderr.decode()
    inspected = json.loads(subprocess.run(["skopeo", "inspect", f"oci-archive:{out}"], check=True,
                                          capture_output=True, text=True).stdout)
    assert inspected["Architecture"] == "arm64"
    # only linux/arm64 was pulled: amd64 is named, not guessed
    amd = run_cli("cache", "export", "--cache", cache, "--platform", "linux/amd64", "-o", out, ref)
    assert amd.stderr.decode() == (f"linuxkit-py: {ref}: the cache has no linux/amd64 image of it (hint: "
                                   f"linuxkit-py cache pull --platform linux/amd64 {ref})\n")
    assert run_cli("cache", "pull", "--cache", cache, "--platform", "linux/amd64", ref, env=env).returncode == 0
    assert run_cli("cache", "export", "--cache", cache, "--platform", "linux/amd64", "-o", out, ref).returncode == 0


def test_cache_pull_of_a_missing_image_is_one_line(tmp_path: Path, registry: RegistryProcess,
                                                   images: PushedImages, docker_config: Path) -> None:
    ref = f"{registry.host}/test/nothing:1"
    failed = run_cli("cache", "pull", "--cache", tmp_path / "cache", ref, env={"DOCKER_CONFIG": str(docker_config)})
    assert failed.returncode == 1
    assert failed.stderr.decode().startswith(f"linuxkit-py: {ref}: ")
    assert len(failed.stderr.decode().splitlines()) == 1
