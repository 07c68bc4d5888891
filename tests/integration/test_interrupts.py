"""A build killed (SIGINT, SIGKILL) during a pull or while writing its output: the cache stays valid,
no output appears under its final name, and the next build succeeds (resuming the download)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.cache.verify import verify_cache
from tests.integration.registry_builds import (  # noqa: F401 - fixtures
    build_proxy_fixture,
    build_registry,
    start_build,
    write_spec,
)
from tests.registry.faultproxy import FaultProxy

pytestmark = pytest.mark.registry


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the build never got there"
        time.sleep(0.002)


def big_layer_sent(fp: FaultProxy) -> int:
    return max((n for path, n in fp.sent.items() if "/blobs/" in path), default=0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("moment", ["pull", "output"])
def test_killed_build_leaves_a_valid_cache(sig: signal.Signals, moment: str, build_proxy: FaultProxy,
                                           tmp_path: Path) -> None:
    spec = write_spec(tmp_path, build_proxy)
    cache = tmp_path / "cache"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "system.tar"
    if moment == "pull":
        build_proxy.slow = 0.02  # the 1 MiB layer takes over a second
    build = start_build(spec, cache, output)
    if moment == "pull":
        wait_for(lambda: big_layer_sent(build_proxy) >= 256 << 10)
    else:
        wait_for(lambda: any(out_dir.iterdir()))  # the output's temp file: writing has begun
    build.send_signal(sig)
    _, stderr = build.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert (build.returncode, stderr.decode()) == (130, "linuxkit-py: interrupted\n")
    else:
        assert build.returncode == -signal.SIGKILL
    assert not output.exists()
    assert verify_cache(Cache(cache)).problems == []

    build_proxy.slow = 0
    build_proxy.ranges.clear()
    again = start_build(spec, cache, output)
    _, stderr = again.communicate(timeout=120)
    assert (again.returncode, stderr.decode()) == (0, f"wrote {output}\n")
    assert verify_cache(Cache(cache)).problems == []
    if moment == "pull":  # the interrupted download was kept and resumed, not fetched whole again
        assert [r for _, r in build_proxy.ranges if r.startswith("bytes=")], build_proxy.ranges
    assert [p.name for p in out_dir.iterdir() if not p.name.startswith(".")] == ["system.tar"]
