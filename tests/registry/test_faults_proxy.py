"""Faults injected between the client and a real docker-registry (and its token server).

Transient faults are survived (retried with a short back-off; a broken blob resumes with a
Range request); permanent ones end the pull with one line naming the reference, the registry
and the cause. After each, `verify_cache` finds nothing wrong. Every survived case is recorded
in FAULT_RESULTS, which docs/reliability.md's table is generated from (bench/reliability_table.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.cache.verify import verify_cache
from linuxkit_py.errors import RegistryError
from linuxkit_py.registry.pull import RegistryOptions, pull_image
from tests.imagetools import F, ImageSpec, Layout, skopeo_push, tar_layer
from tests.registry.conftest import image_files
from tests.registry.faultproxy import CORRUPT, RESET, STALL, TRUNCATE, Fault, FaultProxy, status
from tests.registry.servers import RegistryProcess, TokenServer

pytestmark = pytest.mark.registry

BIG = os.urandom(320 << 10)  # incompressible: the layer blob is about as large (several 64 KiB chunks)
REPO = "faults/big:1"


@pytest.fixture(scope="module")
def big_image(registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An image with one ~320 KiB layer, pushed to the real registry; its manifest's blob digests."""
    layout = Layout(tmp_path_factory.mktemp("big-layout"))
    layout.add_image("big", ImageSpec(layers=[tar_layer(F("big", BIG), F("small", "x"))]))
    skopeo_push(layout.root, "big", f"{registry.host}/{REPO}")
    return {"repo": REPO}


@pytest.fixture
def proxy(registry: RegistryProcess, big_image: dict[str, str]) -> Iterator[FaultProxy]:
    fp = FaultProxy(registry.host)
    try:
        yield fp
    finally:
        fp.close()


@pytest.fixture
def fast(options: RegistryOptions) -> RegistryOptions:
    options.retries = 3
    options.backoff = 0.01
    options.timeout = 0.5
    return options


def _layer_digest(proxy: FaultProxy) -> str:
    """The largest blob the proxy sent (the big layer)."""
    return max(((p, n) for p, n in proxy.sent.items() if "/blobs/" in p), key=lambda item: item[1])[0] \
        .rsplit("/", 1)[1]


TRANSIENT = {
    "HTTP 500 on the manifest": ("/manifests/", status(500)),
    "HTTP 502 on a blob": ("/blobs/", status(502)),
    "HTTP 503 on the manifest": ("/manifests/", status(503)),
    "HTTP 429 with Retry-After": ("/manifests/", status(429, "0")),
    "HTTP 429 without Retry-After": ("/blobs/", status(429)),
    "connection reset mid-blob": ("/blobs/", RESET),
    "truncated blob": ("/blobs/", TRUNCATE),
    "no answer (timeout) once": ("/manifests/", STALL),
}


@pytest.mark.parametrize("case", list(TRANSIENT))
def test_transient_fault_is_survived(case: str, proxy: FaultProxy, cache: Cache, fast: RegistryOptions) -> None:
    match, fault = TRANSIENT[case]
    times = 2 if fault.kind == "status" else 1
    proxy.inject(match, fault, times)
    image = pull_image(cache, f"{proxy.host}/{REPO}", "amd64", fast)
    assert image_files(cache, image.layers) == {"big": BIG, "small": b"x"}
    assert sum(proxy.injected.values()) == times
    assert verify_cache(cache).problems == []
    assert not [p for p in cache.root.joinpath("blobs", "sha256").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("fault", [RESET, TRUNCATE], ids=["reset", "truncate"])
def test_a_broken_blob_resumes_with_a_range_request(
    fault: Fault, proxy: FaultProxy, cache: Cache, fast: RegistryOptions
) -> None:
    """Half the big layer arrives, then the connection breaks: one Range request for the rest."""
    probe = pull_image(cache, f"{proxy.host}/{REPO}", "amd64", fast)
    digest = probe.layers[0]["digest"]
    size = int(probe.layers[0]["size"])
    other = Cache(cache.root.parent / "second")
    proxy.gets.clear()
    proxy.sent.clear()
    proxy.inject(digest, fault, 1)
    image = pull_image(other, f"{proxy.host}/{REPO}", "amd64", fast)
    path = f"/v2/faults/big/blobs/{digest}"
    assert proxy.gets[path] == 2
    (ranged,) = [r for p, r in proxy.ranges if p == path]
    start = int(ranged.removeprefix("bytes=").rstrip("-"))
    assert 64 << 10 <= start < size
    # Half, then the rest from the last byte kept: not the whole blob again.
    assert proxy.sent[path] == size // 2 + (size - start)
    assert image_files(other, image.layers)["big"] == BIG
    assert verify_cache(other).problems == []


PERMANENT = {
    "HTTP 503 every time": ("/manifests/", status(503), "registry {host}: injected fault (HTTP 503)"),
    "blob not matching its digest": ("{layer}", CORRUPT,
                                     "registry {host}: blob {layer} does not match its digest (got "),
    "registry stops answering": ("/manifests/", STALL, "registry {host}: no answer within 0.5 s"),
}


@pytest.mark.parametrize("case", list(PERMANENT))
def test_permanent_fault_ends_in_one_line(case: str, proxy: FaultProxy, cache: Cache, tmp_path: Path,
                                          fast: RegistryOptions) -> None:
    layer = pull_image(Cache(tmp_path / "probe"), f"{proxy.host}/{REPO}", "amd64", fast).layers[0]["digest"]
    match, fault, expected = PERMANENT[case]
    proxy.inject(match.format(layer=layer), fault, -1)
    ref = f"{proxy.host}/{REPO}"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", fast)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{ref}: " + expected.format(host=proxy.host, layer=layer))
    assert cache.refs() == []
    assert verify_cache(cache).problems == []
    assert not [p for p in cache.root.joinpath("blobs", "sha256").iterdir() if p.name.startswith(".")]


def test_token_server_failing_once(token_registry: RegistryProcess, token_server: TokenServer, cache: Cache,
                                   fast: RegistryOptions) -> None:
    token_proxy = FaultProxy(f"127.0.0.1:{token_server.port}")
    registry_proxy = FaultProxy(token_registry.host, rewrite=(token_server.realm, f"http://{token_proxy.host}/token"))
    try:
        token_proxy.inject("/token", status(500), 1)
        image = pull_image(cache, f"{registry_proxy.host}/test/basic:1", "amd64", fast)
        assert image_files(cache, image.layers) == {"etc/basic": b"one", "bin/tool": b"two"}
        assert token_proxy.injected["status 500"] == 1
        assert token_proxy.gets["/token"] >= 2
        assert verify_cache(cache).problems == []
    finally:
        registry_proxy.close()
        token_proxy.close()
