"""`linuxkit-py cache verify [--repair]` on a cache pulled from the real registry, then damaged."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.registry.pull import RegistryOptions, pull_image
from tests.registry.conftest import PushedImages
from tests.registry.servers import RegistryProcess

pytestmark = pytest.mark.registry


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linuxkit_py", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_verify_reports_each_problem_and_repair_leaves_a_valid_layout(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions, tmp_path: Path
) -> None:
    basic = pull_image(cache, f"{registry.host}/test/basic:1", "amd64", options)
    shared = pull_image(cache, f"{registry.host}/test/shared:1", "amd64", options)
    multi = pull_image(cache, f"{registry.host}/test/multi:1", "amd64", options)
    clean = cli("cache", "verify", "--cache", cache.root)
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "", "")

    corrupt = basic.layers[1]["digest"]  # only test/basic uses it
    cache.blob_path(corrupt).write_bytes(b"not the layer")
    missing = shared.layers[1]["digest"]
    cache.blob_path(missing).unlink()
    stray = cache.root / "blobs" / "sha256" / ".tmp-left-by-a-killed-build"
    stray.write_bytes(b"half")
    partial = cache.partial_path("sha256:" + "ab" * 32)
    partial.write_bytes(b"resumable")  # an interrupted download: kept for the next pull, not a problem

    found = cli("cache", "verify", "--cache", cache.root)
    assert found.returncode == 1
    assert found.stdout.splitlines() == [
        "blobs/sha256/.tmp-left-by-a-killed-build: stale temp file",
        f"blob {corrupt}: content has digest sha256:{hashlib.sha256(b'not the layer').hexdigest()}",
        f"ref {registry.host}/test/basic:1: layer {corrupt} is missing or broken",
        f"ref {registry.host}/test/shared:1: layer {missing} is missing or broken",
    ]

    repaired = cli("cache", "verify", "--repair", "--cache", cache.root)
    assert repaired.returncode == 0, repaired.stdout
    assert [line for line in repaired.stdout.splitlines() if line.startswith("repaired: ")] == [
        "repaired: removed blobs/sha256/.tmp-left-by-a-killed-build",
        f"repaired: removed blobs/sha256/{corrupt.removeprefix('sha256:')}",
        "repaired: index.json: rewritten with 1 ref(s), 2 dropped",
    ]
    assert cli("cache", "verify", "--cache", cache.root).returncode == 0
    assert [name for name, _ in cache.refs()] == [f"{registry.host}/test/multi:1"]
    assert partial.exists()
    # skopeo reads the repaired layout (and checks the blobs it copies).
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{cache.root}:{registry.host}/test/multi:1",
                    f"dir:{tmp_path / 'copy'}"], check=True, capture_output=True, timeout=60)
    assert (tmp_path / "copy" / multi.layers[0]["digest"].removeprefix("sha256:")).exists()
    # The next pull brings back what the repair dropped.
    assert pull_image(cache, f"{registry.host}/test/basic:1", "amd64", options).digest == basic.digest
    assert cli("cache", "verify", "--cache", cache.root).returncode == 0


def test_verify_a_corrupt_index(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cache.ensure()
    (cache.root / "index.json").write_text("{not json")
    found = cli("cache", "verify", "--cache", cache.root)
    assert found.returncode == 1
    assert found.stdout.startswith("index.json: not valid JSON (")
    assert cli("cache", "verify", "--repair", "--cache", cache.root).returncode == 0
    assert cache.refs() == []

