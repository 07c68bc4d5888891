"""`linuxkit-py cache ls | rm | clean` on a cache filled with the test images."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.integration.conftest import BUSYBOX_REF, INIT_REF, KERNEL_REF, TOOLS_REF, run_cli


def test_cache_ls_rm_clean(tmp_path: Path, warm_cache: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    listed = run_cli("cache", "ls", "--cache", cache)
    assert listed.returncode == 0
    names = [line.split("\t")[0] for line in listed.stdout.decode().splitlines()]
    assert names == sorted([BUSYBOX_REF, INIT_REF, KERNEL_REF, TOOLS_REF])
    assert all(line.split("\t")[1].startswith("sha256:") for line in listed.stdout.decode().splitlines())

    assert run_cli("cache", "rm", "--cache", cache, TOOLS_REF).returncode == 0
    after = run_cli("cache", "ls", "--cache", cache).stdout.decode()
    assert TOOLS_REF not in after and BUSYBOX_REF in after

    missing = run_cli("cache", "rm", "--cache", cache, "localhost:5000/nothing:1")
    assert missing.returncode == 1
    assert missing.stderr.decode().strip() == "linuxkit-py: localhost:5000/nothing:1 is not in the cache"

    assert run_cli("cache", "clean", "--cache", cache).returncode == 0
    assert run_cli("cache", "ls", "--cache", cache).stdout == b""
    assert list((cache / "blobs" / "sha256").iterdir()) == []
