"""Authentication against real registries: bearer tokens (with our token server) and basic auth."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import RegistryError, UserError
from linuxkit_py.registry.auth import Credential, CredentialStore, parse_challenge
from linuxkit_py.registry.client import RegistryClient, resolve_remote
from linuxkit_py.registry.pull import RegistryOptions, pull_image, pull_images
from linuxkit_py.registry.reference import parse_reference
from tests.registry.conftest import PushedImages, image_files, write_docker_config
from tests.registry.servers import BASIC_PASSWORD, BASIC_USER, RegistryProcess, TokenServer

pytestmark = pytest.mark.registry

WRONG_PASSWORD = "not-the-password-7f3a"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_token_auth_fetches_one_token_per_repository(
    token_registry: RegistryProcess,
    token_server: TokenServer,
    images: PushedImages,
    cache: Cache,
    options: RegistryOptions,
) -> None:
    basic, multi = f"{token_registry.host}/test/basic:1", f"{token_registry.host}/test/multi:1"
    issued = len(token_server.issued)
    got = pull_images(cache, [basic, multi], "amd64", options)
    assert image_files(cache, got[multi].layers) == images.files["test/multi:1@amd64"]
    # Anonymous tokens, one per repository, although each image needed several requests.
    assert sorted(token_server.issued[issued:]) == [
        ("repository:test/basic:pull", None),
        ("repository:test/multi:pull", None),
    ]


def test_private_repository_with_credentials_from_docker_config(
    token_registry: RegistryProcess,
    token_server: TokenServer,
    images: PushedImages,
    cache: Cache,
    options: RegistryOptions,
    docker_config: Path,
) -> None:
    write_docker_config(docker_config, {"auths": {token_registry.host: {"auth": b64("alice:wonderland")}}})
    issued = len(token_server.issued)
    image = pull_image(cache, f"{token_registry.host}/private/secret:1", "amd64", options)
    assert image.digest == images.digests["private/secret:1"]
    assert token_server.issued[issued:] == [("repository:private/secret:pull", "alice")]


def test_private_repository_without_credentials(
    token_registry: RegistryProcess,
    images: PushedImages,
    cache: Cache,
    options: RegistryOptions,
    docker_config: Path,
) -> None:
    ref = f"{token_registry.host}/private/secret:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value) == (
        f"{ref}: registry {token_registry.host}: authentication required (HTTP 401) "
        f"(hint: the repository does not exist or needs credentials for {token_registry.host} "
        f"in {docker_config}/config.json)"
    )
    assert cache.refs() == []


def test_refused_credentials_give_one_line_without_secrets(
    token_registry: RegistryProcess,
    token_server: TokenServer,
    images: PushedImages,
    cache: Cache,
    options: RegistryOptions,
    docker_config: Path,
) -> None:
    encoded = b64(f"alice:{WRONG_PASSWORD}")
    write_docker_config(docker_config, {"auths": {token_registry.host: {"auth": encoded}}})
    ref = f"{token_registry.host}/private/secret:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    message = str(err.value)
    assert message == (
        f"{ref}: registry {token_registry.host}: authentication refused by 127.0.0.1:{token_server.port} "
        f"(HTTP 401) (hint: check the credentials for {token_registry.host} in {docker_config}/config.json)"
    )
    assert "\n" not in message and WRONG_PASSWORD not in message and encoded not in message
    assert cache.refs() == []


def test_docker_config_env_and_username_password(
    token_registry: RegistryProcess,
    token_server: TokenServer,
    images: PushedImages,
    cache: Cache,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_dir = tmp_path / "elsewhere"
    config_dir.mkdir()
    # Keys are matched by host, whatever scheme or path `docker login` recorded.
    write_docker_config(
        config_dir,
        {"auths": {f"https://{token_registry.host}/v2/": {"username": "alice", "password": "wonderland"}}},
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    options = RegistryOptions(progress=False, retries=0)
    issued = len(token_server.issued)
    pull_image(cache, f"{token_registry.host}/private/secret:1", "amd64", options)
    assert token_server.issued[issued:] == [("repository:private/secret:pull", "alice")]


def test_credential_helper(
    token_registry: RegistryProcess,
    token_server: TokenServer,
    images: PushedImages,
    cache: Cache,
    options: RegistryOptions,
    docker_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-testhelper"
    helper.write_text(f"""#!/bin/sh
[ "$1" = get ] || exit 2
read server
[ "$server" = "{token_registry.host}" ] || {{ echo "credentials not found in native keychain"; exit 1; }}
echo '{{"ServerURL":"'"$server"'","Username":"alice","Secret":"wonderland"}}'
""")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    write_docker_config(
        docker_config,
        {"auths": {token_registry.host: {}}, "credHelpers": {token_registry.host: "testhelper"}},
    )
    issued = len(token_server.issued)
    pull_image(cache, f"{token_registry.host}/private/secret:1", "amd64", options)
    assert token_server.issued[issued:] == [("repository:private/secret:pull", "alice")]


def test_expired_token_is_fetched_again(
    token_registry: RegistryProcess, token_server: TokenServer, images: PushedImages, options: RegistryOptions
) -> None:
    token_server.short_lived.add("expiring/img")
    remote = resolve_remote(parse_reference(f"{token_registry.host}/expiring/img:1"), options)
    with RegistryClient(options) as client:
        first = client.fetch_manifest(remote, "1")
        time.sleep(3)  # the registry now refuses the cached token
        again = client.fetch_manifest(remote, "1")
    assert again == first
    assert token_server.scopes_issued("repository:expiring/img:pull") == 2


def test_basic_auth(
    basic_registry: RegistryProcess,
    images: PushedImages,
    cache: Cache,
    options: RegistryOptions,
    docker_config: Path,
) -> None:
    ref = f"{basic_registry.host}/test/basic:1"
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", options)
    assert str(err.value).startswith(
        f"{ref}: registry {basic_registry.host}: authentication required (HTTP 401)"
    )

    write_docker_config(docker_config, {"auths": {basic_registry.host: {"auth": b64(f"{BASIC_USER}:x")}}})
    with pytest.raises(RegistryError) as err:
        pull_image(cache, ref, "amd64", RegistryOptions(docker_config_dir=docker_config, progress=False))
    assert str(err.value) == (
        f"{ref}: authentication refused by registry {basic_registry.host} (HTTP 401) "
        f"(hint: check the credentials for {basic_registry.host} in {docker_config}/config.json)"
    )

    write_docker_config(
        docker_config,
        {"auths": {f"http://{basic_registry.host}": {"auth": b64(f"{BASIC_USER}:{BASIC_PASSWORD}")}}},
    )
    seen = len(basic_registry.requests_log())
    image = pull_image(cache, ref, "amd64", RegistryOptions(docker_config_dir=docker_config, progress=False))
    assert image_files(cache, image.layers) == images.files["test/basic:1@amd64"]
    # After the first challenge, the credentials go with every request: one 401 for 4 requests.
    assert [status for _, _, status in basic_registry.requests_log()[seen:]] == [401, 200, 200, 200, 200]


def test_parse_challenge() -> None:
    assert parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/redis:pull",error="insufficient_scope"'
    ) == (
        "bearer",
        {
            "realm": "https://auth.docker.io/token",
            "service": "registry.docker.io",
            "scope": "repository:library/redis:pull",
            "error": "insufficient_scope",
        },
    )
    assert parse_challenge('Basic realm="a \\"quoted\\" realm"') == ("basic", {"realm": 'a "quoted" realm'})
    assert parse_challenge("") == ("", {})


def test_credential_store_lookup(docker_config: Path) -> None:
    store = CredentialStore(docker_config)
    assert store.get("quay.io") is None  # no config.json: anonymous
    write_docker_config(
        docker_config,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub-user:hub-pass")},
                "quay.io": {"username": "q", "password": "p"},
                "ghcr.io": {},
            }
        },
    )
    store = CredentialStore(docker_config)
    for host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        assert store.get(host) == Credential("hub-user", "hub-pass")
    assert store.get("QUAY.IO") == Credential("q", "p")
    assert store.get("ghcr.io") is None
    assert "hub-pass" not in repr(store.get("docker.io"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "config.json: not valid JSON"),
        (
            '{"auths": {"quay.io": {"auth": "bm9jb2xvbg=="}}}',
            "config.json: auths.quay.io.auth is not base64 of",
        ),
    ],
)
def test_bad_docker_config(docker_config: Path, content: str, message: str) -> None:
    (docker_config / "config.json").write_text(content)
    with pytest.raises(UserError, match=message):
        CredentialStore(docker_config).get("quay.io")
