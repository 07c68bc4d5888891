"""Pulling from a real docker-registry (anonymous): formats, platforms, the cache, errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from linuxkit_py.cache.image import load_cached_image
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import RegistryError, UserError
from linuxkit_py.registry.pull import RegistryOptions, pull_image, pull_images
from tests.imagetools import F, ImageSpec, Layout, skopeo_push, tar_layer
from tests.registry.conftest import LABEL, PushedImages, cache_listing, image_files
from tests.registry.servers import RegistryProcess

pytestmark = pytest.mark.registry


def skopeo_inspect(cache: Cache, ref: str, arch: str = "amd64") -> dict[str, object]:
    out = subprocess.run(
        ["skopeo", "--override-arch", arch, "inspect", f"oci:{cache.root}:{ref}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    doc: dict[str, object] = json.loads(out)
    return doc


def blob_gets(registry: RegistryProcess, digest: str) -> int:
    return sum(1 for method, path, _ in registry.requests_log() if method == "GET" and path.endswith(digest))


def test_anonymous_pull_stores_an_oci_layout_skopeo_reads(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    ref = f"{registry.host}/test/basic:1"
    image = pull_image(cache, ref, "amd64", options)

    assert image.ref == ref
    assert image.digest == images.digests["test/basic:1"]
    assert image.runtime_config["Cmd"] == ["/bin/tool"]
    assert image.moby_config_label() == json.loads(LABEL)
    assert image_files(cache, image.layers) == images.files["test/basic:1@amd64"]
    assert cache.get_ref(ref) == {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": image.digest,
        "size": len(cache.read_blob(image.digest)),
        "annotations": {"org.opencontainers.image.ref.name": ref},
    }
    inspected = skopeo_inspect(cache, ref)
    assert inspected["Digest"] == image.digest
    assert inspected["Layers"] == [layer["digest"] for layer in image.layers]
    # Manifest, config and two layers: nothing else.
    assert len(cache_listing(cache)) == 4


def test_oci_index_pulls_only_the_requested_platform(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    ref = f"{registry.host}/test/multi:1"
    amd = pull_image(cache, ref, "amd64", options)
    assert image_files(cache, amd.layers) == images.files["test/multi:1@amd64"]
    index = cache.read_json(images.digests["test/multi:1"])
    entries = {e["platform"]["architecture"]: e for e in index["manifests"]}
    assert amd.digest == entries["amd64"]["digest"]
    # Index + amd64 manifest + config + 2 layers; arm64 and the attestation are not fetched.
    assert len(cache_listing(cache)) == 5
    assert not cache.has_blob(entries["arm64"]["digest"])
    assert not cache.has_blob(entries["unknown"]["digest"])

    arm = pull_image(cache, ref, "aarch64", options)  # the uname spelling works too
    assert arm.digest == entries["arm64"]["digest"]
    assert image_files(cache, arm.layers) == images.files["test/multi:1@arm64"]
    assert len(cache_listing(cache)) == 9
    assert cache.get_ref(ref)["digest"] == images.digests["test/multi:1"]  # type: ignore[index]
    assert skopeo_inspect(cache, ref, "arm64")["Architecture"] == "arm64"
    assert skopeo_inspect(cache, ref, "amd64")["Architecture"] == "amd64"


def test_docker_manifest_list(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    ref = f"{registry.host}/test/list:1"
    image = pull_image(cache, ref, "arm64", options)
    assert image.manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert cache.get_ref(ref)["mediaType"] == (  # type: ignore[index]
        "application/vnd.docker.distribution.manifest.list.v2+json"
    )
    assert image.config["architecture"] == "arm64"
    assert image_files(cache, image.layers) == images.files["test/list:1@arm64"]
    # The list keeps its Docker media type in index.json, as LinuxKit's cache does (skopeo 1.9's
    # oci: transport only looks at entries with OCI media types, so it cannot name this one).


@pytest.mark.parametrize(
    ("repo", "media_type"),
    [
        ("test/zstd:1", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("test/plain:1", "application/vnd.oci.image.layer.v1.tar"),
    ],
)
def test_zstd_and_uncompressed_layers(
    registry: RegistryProcess,
    images: PushedImages,
    cache: Cache,
    options: RegistryOptions,
    repo: str,
    media_type: str,
) -> None:
    image = pull_image(cache, f"{registry.host}/{repo}", "amd64", options)
    assert [layer["mediaType"] for layer in image.layers] == [media_type]
    assert image_files(cache, image.layers) == images.files[f"{repo}@amd64"]


def test_pinned_digest(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    digest = images.digests["test/multi:1"]
    ref = f"{registry.host}/test/multi:1@{digest}"
    image = pull_image(cache, ref, "amd64", options)
    assert cache.get_ref(ref)["digest"] == digest  # type: ignore[index]
    assert image_files(cache, image.layers) == images.files["test/multi:1@amd64"]
    # Digest only (no tag), against a repository where the tag points elsewhere: the digest wins.
    ref = f"{registry.host}/test/list@{digest}"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == f"{ref}: registry {registry.host}: manifest unknown (HTTP 404)"


def test_several_refs_share_blobs_and_identical_refs_are_pulled_once(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    options.mirrors = {"docker.io": registry.url}  # so that Docker Hub's spellings can be used
    spellings = ["busybox:mirrored", "docker.io/library/busybox:mirrored", "index.docker.io/busybox:mirrored"]
    shared = f"{registry.host}/test/shared:1"
    seen = len(registry.requests_log())
    got = pull_images(cache, [*spellings, shared, spellings[0]], "amd64", options)

    assert list(got) == [*spellings, shared]  # keyed by the refs as given
    assert got[spellings[0]] is got[spellings[1]] is got[spellings[2]]
    assert got[spellings[0]].ref == "docker.io/library/busybox:mirrored"
    assert [name for name, _ in cache.refs()] == [shared, "docker.io/library/busybox:mirrored"]
    assert image_files(cache, got[shared].layers) == images.files["test/shared:1@amd64"]
    common = got[shared].layers[0]["digest"]
    assert got[spellings[0]].layers[0]["digest"] == common
    # One manifest request per distinct image, and the common layer is downloaded once.
    new = [path for method, path, _ in registry.requests_log()[seen:] if method == "GET"]
    assert sorted(p for p in new if "/manifests/" in p) == [
        "/v2/library/busybox/manifests/mirrored",
        "/v2/test/shared/manifests/1",
    ]
    assert len([p for p in new if p.endswith(f"/blobs/{common}")]) == 1
    assert len([p for p in new if "/blobs/" in p]) == 5  # 2 configs + 3 distinct layers


def test_cache_hit_needs_no_network(
    tmp_path: Path, storage: Path, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    reg = RegistryProcess(tmp_path / "reg", storage).start()
    ref = f"{reg.host}/test/multi:1"
    try:
        first = pull_image(cache, ref, "amd64", options)
    finally:
        reg.stop()
    # The registry is gone: the cached image is used as it is.
    again = pull_image(cache, ref, "amd64", options)
    assert again == first
    # Asking for a fresh pull, or for a platform the cache lacks, needs the registry.
    for arch, pull in (("amd64", True), ("arm64", False)):
        with pytest.raises(RegistryError) as err:
            pull_image(cache, ref, arch, options, pull=pull)
        assert str(err.value) == f"{ref}: cannot connect to registry {reg.host} (connection refused)"
    assert pull_image(cache, ref, "amd64", options) == first


def test_image_not_found(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    ref = f"{registry.host}/test/nope:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == f"{ref}: registry {registry.host}: manifest unknown (HTTP 404)"
    assert cache.refs() == []


def test_registry_unreachable(cache: Cache, options: RegistryOptions) -> None:
    with pytest.raises(RegistryError) as err:
        pull_image(cache, "127.0.0.1:1/test/x:1", "amd64", options)
    assert (
        str(err.value) == "127.0.0.1:1/test/x:1: cannot connect to registry 127.0.0.1:1 (connection refused)"
    )
    assert isinstance(err.value, UserError)


def test_unresolvable_host(cache: Cache, options: RegistryOptions) -> None:
    with pytest.raises(RegistryError) as err:
        pull_image(cache, "no-such-host.invalid/test/x:1", "amd64", options)
    assert str(err.value).startswith(
        "no-such-host.invalid/test/x:1: cannot connect to registry no-such-host.invalid "
        "(cannot resolve host name"
    )


def test_wrong_architecture(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions, tmp_path: Path
) -> None:
    ref = f"{registry.host}/test/armonly:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == f"{ref}: image is for linux/arm64, not linux/amd64 (hint: choose another --arch)"
    # Its verified blobs stay unreferenced (harmless; another build may share them); no temp file.
    assert cache.refs() == [] and not [name for name in cache_listing(cache) if name.startswith(".")]
    assert pull_image(cache, ref, "arm64", options).config["architecture"] == "arm64"

    # an index without the target platform: one line naming the image and the platforms it has
    layout = Layout(tmp_path / "layout")
    layout.add_index("x86", [ImageSpec(layers=[tar_layer(F("arch", "amd64"))], arch="amd64")], attestation=True)
    ref = f"{registry.host}/test/x86only:1"
    skopeo_push(layout.root, "x86", ref)
    with pytest.raises(UserError) as uerr:
        pull_image(cache, ref, "arm64", options)
    assert str(uerr.value) == (f"{ref}: no image for linux/arm64 (the index has: linux/amd64) "
                               "(hint: choose another --arch)")


def test_bad_reference_is_a_user_error(cache: Cache, options: RegistryOptions) -> None:
    with pytest.raises(UserError, match="invalid image reference 'Test/UPPER'"):
        pull_image(cache, "Test/UPPER", "amd64", options)


def test_cached_image_found_by_load_cached_image(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    ref = f"{registry.host}/test/zstd:1"
    image = pull_image(cache, ref, "x86_64", options)
    assert load_cached_image(cache, ref, "amd64") == image


def test_progress_bar_only_when_asked_or_on_a_tty(
    registry: RegistryProcess,
    images: PushedImages,
    cache: Cache,
    options: RegistryOptions,
    capfd: pytest.CaptureFixture[str],
) -> None:
    options.progress = None  # stderr is not a TTY here: silent
    pull_image(cache, f"{registry.host}/test/zstd:1", "amd64", options)
    assert capfd.readouterr() == ("", "")
    options.progress = True
    pull_image(cache, f"{registry.host}/test/plain:1", "amd64", options)
    out, err = capfd.readouterr()
    assert out == "" and "pulling 1 image" in err
