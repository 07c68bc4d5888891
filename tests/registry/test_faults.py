"""Faults a real registry cannot produce, served by a tiny fake: corrupt blobs, wrong manifests,
transient errors and broken downloads."""

from __future__ import annotations

import pytest

from linuxkit_py.cache.image import load_cached_image
from linuxkit_py.cache.layout import Cache
from linuxkit_py.cache.verify import verify_cache
from linuxkit_py.errors import RegistryError
from linuxkit_py.registry.pull import RegistryOptions, pull_image
from tests.imagetools import F, compress, tar_layer
from tests.registry.conftest import cache_listing, image_files
from tests.registry.servers import FakeRegistry, digest, send, stall

pytestmark = pytest.mark.registry

LAYER = compress(tar_layer(F("hello", "world")), "gzip")


def test_blob_digest_mismatch_leaves_nothing_behind(
    fake: FakeRegistry, cache: Cache, options: RegistryOptions
) -> None:
    good = fake.add_image("fake/good", "1", LAYER)
    other = compress(tar_layer(F("other", "layer")), "gzip")
    corrupt = other[:-1] + bytes([other[-1] ^ 0xFF])
    bad = fake.add_image("fake/bad", "1", other, served_layer=corrupt)
    assert good["config"] == bad["config"]  # a blob an earlier image brought must survive the failure
    kept = pull_image(cache, f"{fake.host}/fake/good:1", "amd64", options)
    before = cache_listing(cache)

    ref = f"{fake.host}/fake/bad:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == (
        f"{ref}: registry {fake.host}: blob {bad['layer']} does not match its digest (got {digest(corrupt)})"
    )
    assert [name for name, _ in cache.refs()] == [f"{fake.host}/fake/good:1"]
    assert cache_listing(cache) == before  # no stray blob, no temp file
    assert load_cached_image(cache, kept.ref, "amd64") == kept


def test_blob_of_the_wrong_size(fake: FakeRegistry, cache: Cache, options: RegistryOptions) -> None:
    bad = fake.add_image("fake/short", "1", LAYER, served_layer=LAYER + b"extra")
    ref = f"{fake.host}/fake/short:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == (
        f"{ref}: registry {fake.host}: blob {bad['layer']} is larger than the "
        f"{len(LAYER)} bytes its descriptor says"
    )
    # A verified config may stay (another build may use it); the bad layer left no file behind.
    assert cache.refs() == [] and set(cache_listing(cache)) <= {bad["config"].removeprefix("sha256:")}
    assert verify_cache(cache).problems == []


def test_pinned_digest_must_match_the_manifest(
    fake: FakeRegistry, cache: Cache, options: RegistryOptions
) -> None:
    got = fake.add_image("fake/pinned", "1", LAYER)
    pinned = "sha256:" + "ab" * 32
    ref = f"{fake.host}/fake/pinned@{pinned}"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == (
        f"{ref}: registry {fake.host}: manifest {pinned} does not match its digest (got {got['manifest']})"
    )
    assert cache.refs() == [] and cache_listing(cache) == []
    assert (
        pull_image(cache, f"{fake.host}/fake/pinned@{got['manifest']}", "amd64", options).digest
        == got["manifest"]
    )


def test_transient_faults_are_retried(fake: FakeRegistry, cache: Cache, options: RegistryOptions) -> None:
    options.retries = 2
    got = fake.add_image(
        "fake/flaky",
        "1",
        LAYER,
        first_replies={
            "manifest": [send(503, headers={"Retry-After": "0"}), send(429, headers={"Retry-After": "0"})],
            "layer": [send(200, LAYER, truncate=10)],  # connection dropped mid-download
        },
    )
    image = pull_image(cache, f"{fake.host}/fake/flaky:1", "amd64", options)
    assert image.digest == got["manifest"]
    assert image_files(cache, image.layers) == {"hello": b"world"}
    assert fake.hits["/v2/fake/flaky/manifests/1"] == 3
    assert fake.hits[f"/v2/fake/flaky/blobs/{got['layer']}"] == 2
    assert not [p for p in (cache.root / "blobs" / "sha256").iterdir() if p.name.startswith(".tmp")]


def test_retries_are_bounded(fake: FakeRegistry, cache: Cache, options: RegistryOptions) -> None:
    options.retries = 2
    fake.routes["/v2/fake/down/manifests/1"] = [
        send(503, b'{"errors":[{"code":"UNAVAILABLE","message":"service unavailable"}]}', "application/json")
    ]
    ref = f"{fake.host}/fake/down:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == f"{ref}: registry {fake.host}: service unavailable (HTTP 503)"
    assert fake.hits["/v2/fake/down/manifests/1"] == 3


def test_a_silent_registry_times_out(fake: FakeRegistry, cache: Cache, options: RegistryOptions) -> None:
    options.timeout = 0.3
    fake.routes["/v2/fake/silent/manifests/1"] = [stall(fake.release)]
    ref = f"{fake.host}/fake/silent:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == f"{ref}: registry {fake.host}: no answer within 0.3 s"
    assert fake.hits["/v2/fake/silent/manifests/1"] == 2  # retries=1


def test_a_stalled_download_times_out(fake: FakeRegistry, cache: Cache, options: RegistryOptions) -> None:
    options.timeout = 0.3
    got = fake.add_image(
        "fake/stalled", "1", LAYER, first_replies={"layer": [stall(fake.release, LAYER, 20)] * 2}
    )
    ref = f"{fake.host}/fake/stalled:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == (
        f"{ref}: registry {fake.host}: download of blob {got['layer']} interrupted (no answer within 0.3 s)"
    )
    assert fake.hits[f"/v2/fake/stalled/blobs/{got['layer']}"] == 2
    # no image named, no layer blob; the bytes that came before the stall are kept to resume from
    partial = f".partial-{got['layer'].removeprefix('sha256:')}"
    assert cache.refs() == [] and set(cache_listing(cache)) <= {got["config"].removeprefix("sha256:"), partial}
    assert cache.partial_path(got["layer"]).read_bytes() == LAYER[:20]
    assert verify_cache(cache).problems == []
