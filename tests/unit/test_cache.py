"""The cache (an OCI image layout), platform selection, and reading cached images back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from linuxkit_py.arch import normalize_arch, uname_arch
from linuxkit_py.cache.image import Image, load_cached_image
from linuxkit_py.cache.layout import (
    REF_NAME,
    BlobMismatch,
    Cache,
    canonical_json,
    default_cache_dir,
    sha256_digest,
)
from linuxkit_py.cache.platform import is_index, select_platform
from linuxkit_py.errors import UserError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- layout and blobs ---------------------------------------------------------------------


def test_ensure_writes_an_empty_layout(cache: Cache) -> None:
    cache.ensure()
    assert json.loads((cache.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((cache.root / "index.json").read_text()) == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
    }
    assert (cache.root / "blobs" / "sha256").is_dir()
    cache.set_ref("a/b:1", {"mediaType": OCI_MANIFEST, "digest": sha256_digest(b"x"), "size": 1})
    cache.ensure()  # never resets an existing index
    assert [name for name, _ in cache.refs()] == ["a/b:1"]


def test_ensure_on_an_unusable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"cannot use cache directory .*/file/cache: Not a directory"):
        Cache(tmp_path / "file" / "cache").ensure()


def test_write_blob_verifies_and_stores(cache: Cache) -> None:
    data = b"hello blob"
    path = cache.write_blob([data[:3], data[3:]], sha256_digest(data), len(data))
    assert path == cache.blob_path(sha256_digest(data))
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o644
    assert cache.has_blob(sha256_digest(data))
    assert cache.read_blob(sha256_digest(data)) == data


@pytest.mark.parametrize(
    ("chunks", "size", "message"),
    [
        ([b"hello", b"!"], 6, "blob content has digest sha256:"),
        ([b"hel"], 5, "has 3 bytes, its descriptor says 5"),
        ([b"hello", b" world"], 5, "is larger than its descriptor's 5 bytes"),
    ],
)
def test_write_blob_rejects_bad_content_and_leaves_nothing(
    cache: Cache, chunks: list[bytes], size: int, message: str
) -> None:
    digest = sha256_digest(b"hello")
    with pytest.raises(BlobMismatch, match=message):
        cache.write_blob(chunks, digest, size)
    assert not cache.has_blob(digest)
    assert files_under(cache.root / "blobs") == []


def test_write_blob_stops_reading_once_too_large(cache: Cache) -> None:
    consumed = []

    def endless() -> Iterator[bytes]:
        while True:
            consumed.append(1)
            yield b"x" * 10

    with pytest.raises(BlobMismatch):
        cache.write_blob(endless(), sha256_digest(b"x" * 25), 25)
    assert len(consumed) == 3


def test_write_blob_cleans_up_when_the_source_fails(cache: Cache) -> None:
    def broken() -> Iterator[bytes]:
        yield b"part"
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        cache.write_blob(broken(), sha256_digest(b"partial"), 7)
    assert files_under(cache.root / "blobs") == []


def test_put_blob_and_json(cache: Cache) -> None:
    doc = {"b": 1, "a": [1, 2]}
    digest = cache.put_blob(canonical_json(doc))
    assert canonical_json(doc) == b'{"a":[1,2],"b":1}'
    assert digest == sha256_digest(b'{"a":[1,2],"b":1}')
    assert cache.put_blob(canonical_json(doc)) == digest
    assert cache.read_json(digest) == doc


def test_blob_errors_are_user_errors(cache: Cache) -> None:
    missing = sha256_digest(b"missing")
    with pytest.raises(UserError, match=f"blob {missing} is missing"):
        cache.read_blob(missing)
    bad_json = cache.put_blob(b"{not json")
    with pytest.raises(UserError, match=f"blob {bad_json} is not valid JSON"):
        cache.read_json(bad_json)
    for digest in ("sha512:" + "0" * 128, "sha256:" + "0" * 63, "sha256:" + "G" * 64, "sha256:../../etc"):
        with pytest.raises(UserError, match="unsupported or malformed digest"):
            cache.blob_path(digest)


# -- index.json -----------------------------------------------------------------------------


def desc(data: bytes, media_type: str = OCI_MANIFEST) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}


def test_refs_set_replace_remove(cache: Cache) -> None:
    cache.set_ref("quay.io/b:1", desc(b"b"))
    cache.set_ref("docker.io/library/a:1", {**desc(b"a"), "annotations": {"x": "y"}})
    cache.set_ref("quay.io/b:1", desc(b"b2"))
    assert cache.refs() == [
        (
            "docker.io/library/a:1",
            {**desc(b"a"), "annotations": {"x": "y", REF_NAME: "docker.io/library/a:1"}},
        ),
        ("quay.io/b:1", {**desc(b"b2"), "annotations": {REF_NAME: "quay.io/b:1"}}),
    ]
    assert cache.get_ref("quay.io/b:1")["digest"] == sha256_digest(b"b2")  # type: ignore[index]
    assert cache.get_ref("quay.io/c:1") is None
    assert cache.remove_ref("quay.io/b:1") is True
    assert cache.remove_ref("quay.io/b:1") is False
    assert [name for name, _ in cache.refs()] == ["docker.io/library/a:1"]
    # What other tools read: a plain OCI index with the ref names as annotations.
    doc = json.loads((cache.root / "index.json").read_text())
    assert doc["manifests"] == [{**desc(b"a"), "annotations": {"x": "y", REF_NAME: "docker.io/library/a:1"}}]


def test_concurrent_set_ref_loses_nothing(cache: Cache) -> None:
    names = [f"example.com/img{i}:1" for i in range(24)]
    threads = [threading.Thread(target=cache.set_ref, args=(name, desc(name.encode()))) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [name for name, _ in cache.refs()] == sorted(names)


@pytest.mark.parametrize("content", ["{broken", "[]", '{"manifests": {}}', '{"manifests": [1]}'])
def test_corrupt_index_is_a_user_error(cache: Cache, content: str) -> None:
    cache.ensure()
    (cache.root / "index.json").write_text(content)
    with pytest.raises(UserError) as err:
        cache.refs()
    assert err.value.message.startswith(f"cache {cache.root}: index.json is corrupt")
    assert err.value.hint == "linuxkit-py cache clean"


def test_clean(cache: Cache) -> None:
    cache.set_ref("a:1", desc(b"a"))
    cache.put_blob(b"a")
    (cache.derived_dir / "layers").mkdir(parents=True)
    (cache.derived_dir / "layers" / "x").write_text("derived")
    cache.clean()
    assert cache.refs() == []
    assert files_under(cache.root) == [".lock", "index.json", "oci-layout"]


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LINUXKIT_CACHE", "~/lk")
    assert default_cache_dir() == Path.home() / "lk"
    monkeypatch.delenv("LINUXKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "linuxkit-py"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "linuxkit-py"


# -- platforms ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "arch"),
    [
        ("amd64", "amd64"),
        ("x86_64", "amd64"),
        ("AMD64", "amd64"),
        ("arm64", "arm64"),
        ("aarch64", "arm64"),
    ],
)
def test_normalize_arch(given: str, arch: str) -> None:
    assert normalize_arch(given) == arch


@pytest.mark.parametrize("given", ["s390x", "armhf", "riscv64", "i386"])
def test_normalize_arch_rejects_what_has_no_images_here(given: str) -> None:
    with pytest.raises(UserError) as err:
        normalize_arch(given)
    assert str(err.value) == f"unsupported architecture {given!r} (hint: supported: amd64 (x86_64), arm64 (aarch64))"


def test_normalize_arch_defaults_to_the_host() -> None:
    assert normalize_arch(None) in ("amd64", "arm64")
    assert [uname_arch(a) for a in ("amd64", "arm64")] == ["x86_64", "aarch64"]


def test_is_index() -> None:
    assert is_index({"mediaType": OCI_INDEX, "manifests": []})
    assert is_index({"mediaType": DOCKER_LIST, "manifests": []})
    assert is_index({"schemaVersion": 2, "manifests": []})  # OCI allows the mediaType to be missing
    assert is_index({"schemaVersion": 2, "manifests": []}, OCI_INDEX)
    assert not is_index({"mediaType": OCI_MANIFEST, "config": {}, "layers": []})
    assert not is_index({"schemaVersion": 2, "config": {}, "layers": []})


def entry(os_: str, arch: str, digest: str, variant: str | None = None) -> dict[str, Any]:
    platform = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1, "platform": platform}


INDEX = {
    "mediaType": OCI_INDEX,
    "manifests": [
        entry("unknown", "unknown", "att"),  # buildkit attestation: skipped even when it comes first
        entry("linux", "arm", "arm7", "v7"),
        entry("linux", "arm64", "arm64-v8", "v8"),  # the variant is ignored
        entry("linux", "arm64", "arm64-second"),
        entry("windows", "amd64", "win"),
        entry("linux", "amd64", "amd"),
    ],
}


def test_select_platform() -> None:
    assert select_platform(INDEX, "arm64", "r")["digest"] == "arm64-v8"  # the first match wins
    assert select_platform(INDEX, "amd64", "r")["digest"] == "amd"
    with pytest.raises(UserError) as err:
        select_platform(INDEX, "riscv64", "quay.io/x:1")
    assert str(err.value) == (
        "quay.io/x:1: no image for linux/riscv64 (the index has: linux/arm, linux/arm64, "
        "linux/arm64, windows/amd64, linux/amd64) (hint: choose another --arch)"
    )


# -- cached images --------------------------------------------------------------------------


def store_image(cache: Cache, arch: str, layers: list[bytes]) -> dict[str, Any]:
    """Store config, layers and manifest; return the manifest's descriptor."""
    config = canonical_json({"architecture": arch, "os": "linux", "config": {"Cmd": ["/x"]}})
    layer_descs = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": cache.put_blob(data),
            "size": len(data),
        }
        for data in layers
    ]
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cache.put_blob(config),
                "size": len(config),
            },
            "layers": layer_descs,
        }
    )
    cache.put_blob(manifest)
    return desc(manifest)


def test_load_cached_manifest(cache: Cache) -> None:
    manifest = store_image(cache, "amd64", [b"layer one", b"layer two"])
    cache.set_ref("example.com/x:1", manifest)
    image = load_cached_image(cache, "example.com/x:1", "amd64")
    assert isinstance(image, Image)
    assert (image.ref, image.digest) == ("example.com/x:1", manifest["digest"])
    assert [layer["digest"] for layer in image.layers] == [
        sha256_digest(b"layer one"),
        sha256_digest(b"layer two"),
    ]
    assert image.runtime_config == {"Cmd": ["/x"]}
    # Another architecture, an unknown ref, or a missing blob: not in the cache.
    assert load_cached_image(cache, "example.com/x:1", "arm64") is None
    assert load_cached_image(cache, "example.com/y:1", "amd64") is None
    cache.blob_path(sha256_digest(b"layer two")).unlink()
    assert load_cached_image(cache, "example.com/x:1", "amd64") is None


def test_load_cached_index(cache: Cache) -> None:
    amd = store_image(cache, "amd64", [b"amd layer"])
    arm = store_image(cache, "arm64", [b"arm layer"])
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
                {**arm, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            ],
        }
    )
    cache.put_blob(index)
    cache.set_ref("example.com/multi:1", desc(index, OCI_INDEX))
    assert load_cached_image(cache, "example.com/multi:1", "arm64").digest == arm["digest"]  # type: ignore[union-attr]
    assert load_cached_image(cache, "example.com/multi:1", "amd64").digest == amd["digest"]  # type: ignore[union-attr]
    # Only the amd64 image's blobs: arm64 is not cached (a pull will add it).
    cache.blob_path(arm["digest"]).unlink()
    assert load_cached_image(cache, "example.com/multi:1", "arm64") is None
    with pytest.raises(UserError, match="example.com/multi:1: no image for linux/riscv64"):
        load_cached_image(cache, "example.com/multi:1", "riscv64")
