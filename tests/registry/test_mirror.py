"""Mirrors (LinuxKit's --mirror / LINUXKIT_MIRROR), http vs https, and CA files."""

from __future__ import annotations

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import RegistryError, UserError
from linuxkit_py.registry.client import Remote, resolve_remote
from linuxkit_py.registry.pull import RegistryOptions, parse_mirrors, pull_image
from linuxkit_py.registry.reference import parse_reference
from tests.registry.conftest import PushedImages, TlsRegistry, image_files
from tests.registry.servers import RegistryProcess

pytestmark = pytest.mark.registry


def test_parse_mirrors() -> None:
    assert parse_mirrors([], None) == {}
    assert parse_mirrors([], "") == {}
    assert parse_mirrors(["docker.io=http://m.local:5000/"], None) == {"docker.io": "http://m.local:5000"}
    # Docker Hub's other names mean docker.io; a bare URL mirrors every registry not named.
    assert parse_mirrors(
        ["index.docker.io=https://a", "registry-1.docker.io=https://b", "https://c/x"], None
    ) == {"docker.io": "https://b", "*": "https://c/x"}
    # The environment's comma/space separated list comes first: flags override it.
    assert parse_mirrors(["quay.io=http://flag"], "quay.io=http://env, ghcr.io=http://g http://all") == {
        "quay.io": "http://flag",
        "ghcr.io": "http://g",
        "*": "http://all",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("docker.io=m.local:5000", "mirror 'm.local:5000' must start with http:// or https://"),
        ("m.local:5000", "mirror 'm.local:5000' must start with http:// or https://"),
        ("=http://m.local", "bad mirror '=http://m.local'"),
        ("docker.io=http://", "bad mirror 'docker.io=http://'"),
    ],
)
def test_parse_mirrors_rejects(value: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        parse_mirrors([value], None)
    assert err.value.message == message


@pytest.mark.parametrize(
    ("ref", "options", "remote"),
    [
        ("redis", RegistryOptions(), Remote("https", "registry-1.docker.io", "library/redis")),
        ("quay.io/a/b:1", RegistryOptions(), Remote("https", "quay.io", "a/b")),
        ("localhost:5000/x", RegistryOptions(), Remote("http", "localhost:5000", "x")),
        ("127.1.2.3:5000/x", RegistryOptions(), Remote("http", "127.1.2.3:5000", "x")),
        ("[::1]:5000/x", RegistryOptions(), Remote("http", "[::1]:5000", "x")),
        (
            "reg.lan:5000/x",
            RegistryOptions(insecure=frozenset({"reg.lan:5000"})),
            Remote("http", "reg.lan:5000", "x"),
        ),
        (
            "redis",
            RegistryOptions(mirrors={"docker.io": "https://m.lan/hub"}),
            Remote("https", "m.lan", "hub/library/redis"),
        ),
        (
            "quay.io/a/b",
            RegistryOptions(mirrors={"docker.io": "http://m.lan"}),
            Remote("https", "quay.io", "a/b"),
        ),
        ("quay.io/a/b", RegistryOptions(mirrors={"*": "http://m.lan:80"}), Remote("http", "m.lan:80", "a/b")),
    ],
)
def test_resolve_remote(ref: str, options: RegistryOptions, remote: Remote) -> None:
    assert resolve_remote(parse_reference(ref), options) == remote


def manifest_paths(registry: RegistryProcess, seen: int) -> list[str]:
    return [path for method, path, _ in registry.requests_log()[seen:] if "/manifests/" in path]


@pytest.mark.parametrize(
    ("mirror", "path"),
    [
        ("docker.io={url}", "/v2/library/busybox/manifests/mirrored"),
        ("docker.io={url}/hub/", "/v2/hub/library/busybox/manifests/mirrored"),
        ("{url}", "/v2/library/busybox/manifests/mirrored"),
    ],
)
def test_docker_hub_mirror(
    registry: RegistryProcess,
    images: PushedImages,
    cache: Cache,
    options: RegistryOptions,
    mirror: str,
    path: str,
) -> None:
    options.mirrors = parse_mirrors([mirror.format(url=registry.url)], None)
    seen = len(registry.requests_log())
    image = pull_image(cache, "busybox:mirrored", "amd64", options)
    assert image.ref == "docker.io/library/busybox:mirrored"
    assert cache.get_ref("docker.io/library/busybox:mirrored") is not None
    assert image_files(cache, image.layers) == images.files["library/busybox:mirrored@amd64"]
    assert manifest_paths(registry, seen) == [path]


def test_mirror_for_any_registry(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    options.mirrors = parse_mirrors([], f"docker.io=http://127.0.0.1:1 {registry.url}")
    seen = len(registry.requests_log())
    image = pull_image(cache, "quay.io/foo/bar:1", "amd64", options)
    assert image.ref == "quay.io/foo/bar:1"
    assert manifest_paths(registry, seen) == ["/v2/foo/bar/manifests/1"]
    # docker.io has its own (dead) mirror: no fallback, as in LinuxKit.
    with pytest.raises(RegistryError) as err:
        pull_image(cache, "busybox:mirrored", "amd64", options)
    assert str(err.value) == "busybox:mirrored: cannot connect to registry 127.0.0.1:1 (connection refused)"


def test_localhost_is_spoken_to_over_http(
    registry: RegistryProcess, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    ref = f"localhost:{registry.port}/test/basic:1"
    assert pull_image(cache, ref, "amd64", options).digest == images.digests["test/basic:1"]


def test_https_mirror_with_ca_file(
    tls_registry: TlsRegistry, images: PushedImages, cache: Cache, options: RegistryOptions
) -> None:
    host = tls_registry.registry.host
    options.mirrors = {"secure.example": f"https://{host}"}
    ref = "secure.example/test/basic:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == (
        f"{ref}: registry {host}: TLS certificate not trusted: unable to get local issuer certificate"
    )

    options.ca_files = (str(tls_registry.ca_file),)
    image = pull_image(cache, ref, "amd64", options)
    assert image.digest == images.digests["test/basic:1"]

    options.ca_files = (str(tls_registry.ca_file.with_name("missing.crt")),)
    with pytest.raises(UserError) as uerr:
        pull_image(cache, ref, "amd64", options, pull=True)
    assert (
        str(uerr.value) == f"cannot read CA file {tls_registry.ca_file.with_name('missing.crt')}: "
        "No such file or directory"
    )
