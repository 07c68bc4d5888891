"""`--cache-from`/`--cache-to` values, and the artifact tags a builder derives from them (registry/buildcache.py)."""

from __future__ import annotations

import io

import pytest

from linuxkit_py.errors import UserError
from linuxkit_py.registry.buildcache import _items_tar, latest_deflate_key, parse_cache_ref


@pytest.mark.parametrize(("value", "repository", "tag"), [
    ("127.0.0.1:5000/ci/cache", "127.0.0.1:5000/ci/cache", "cache"),
    ("registry.example.com/ci/cache:main", "registry.example.com/ci/cache", "main"),
    ("type=registry,ref=registry.example.com/ci/cache:main", "registry.example.com/ci/cache", "main"),
    ("type=registry,ref=localhost:5000/c,mode=max", "localhost:5000/c", "cache"),
    ("ref=ghcr.io/me/cache", "ghcr.io/me/cache", "cache"),
])
def test_a_cache_ref_names_a_repository_and_a_tag_prefix(value: str, repository: str, tag: str) -> None:
    ref = parse_cache_ref(value, "--cache-to")
    assert (f"{ref.repository.registry}/{ref.repository.repository}", ref.tag) == (repository, tag)
    assert ref.ref("layer", "ab" * 32) == f"{repository}:{tag}-layer-{'ab' * 32}"


@pytest.mark.parametrize("value", ["cache", "ci/cache", "type=local,dest=/tmp/c", "type=registry",
                                   "type=registry,ref=x,compression=zstd", "127.0.0.1:5000/ci@sha256:" + "0" * 64])
def test_other_values_are_refused(value: str) -> None:
    with pytest.raises(UserError, match=r"^--cache-from "):
        parse_cache_ref(value, "--cache-from")


def test_the_same_items_pack_into_the_same_bytes() -> None:
    items = {"b": b"two", "a": b"one", "c": b"three"}
    first, second = io.BytesIO(), io.BytesIO()
    assert _items_tar(items, items.get, first) == ["a", "b", "c"]
    assert _items_tar(reversed(list(items)), items.get, second) == ["a", "b", "c"]
    assert first.getvalue() == second.getvalue()


def test_the_latest_blocks_of_an_output_are_keyed_by_name_formats_and_arch() -> None:
    key = latest_deflate_key("system", ["kernel+initrd", "iso-efi"], "amd64")
    assert key == latest_deflate_key("system", ["iso-efi", "kernel+initrd"], "amd64")
    assert key != latest_deflate_key("system", ["kernel+initrd", "iso-efi"], "arm64")
    assert key != latest_deflate_key("other", ["kernel+initrd", "iso-efi"], "amd64")
