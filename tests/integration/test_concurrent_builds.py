"""Two and four builds at once sharing one cache, pulling overlapping images through the build_proxy."""

from __future__ import annotations

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


@pytest.mark.parametrize("builds", [2, 4])
def test_builds_sharing_a_cache_download_each_blob_once(builds: int, build_proxy: FaultProxy,
                                                        tmp_path: Path) -> None:
    build_proxy.slow = 0.005  # per 16 KiB: the big layer takes a few tenths of a second, so pulls overlap
    spec = write_spec(tmp_path, build_proxy)
    cache = tmp_path / "cache"
    outputs = [tmp_path / f"out{i}.tar" for i in range(builds)]
    children = [start_build(spec, cache, out) for out in outputs]
    results = [(child.communicate(timeout=120)[1].decode(), child.returncode) for child in children]
    assert results == [(f"wrote {out}\n", 0) for out in outputs]
    first = outputs[0].read_bytes()
    assert all(out.read_bytes() == first for out in outputs[1:])
    gets = build_proxy.blob_gets()
    assert len(gets) == 5  # two configs, the shared layer, the big layer, the zeros layer
    assert set(gets.values()) == {1}, gets  # no blob downloaded twice
    assert verify_cache(Cache(cache)).problems == []
