"""Registry credentials and tokens never leak; TLS is verified unless a registry is loopback or named insecure.

Builds run as a user runs them (`python -m linuxkit_py -vv build`) against real docker-registry
processes: one with Docker-Hub-style token auth (a Basic password buys a bearer token), one
with TLS from a private CA. stderr at -vv, the error lines, the `metadata: yaml` file, the
built image and the cache are all searched for the password, its base64 form and any token.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import RegistryError
from linuxkit_py.registry.client import RegistryOptions, resolve_remote
from linuxkit_py.registry.pull import pull_image
from linuxkit_py.registry.reference import parse_reference
from tests.imagetools import F, ImageSpec, Layout, skopeo_push, tar_layer
from tests.integration.conftest import run_cli
from tests.registry.servers import ISSUER, SERVICE, KeyPair, RegistryProcess, TokenServer, make_cert

USER, PASSWORD = "alice", "wonderland"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
IDENTITY_TOKEN = "identity-token-0123456789abcdef"  # for another registry in the same config
JWT_PREFIX = "eyJ"  # every bearer token the token server issues is a JWT: base64url of '{"'
IMAGE = "private/secret:1"


@dataclass
class Registries:
    token: RegistryProcess
    token_server: TokenServer
    tls: RegistryProcess
    ca_file: Path


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    """An image pushed once; a token-auth registry and a TLS registry serve the same storage."""
    for tool in ("docker-registry", "skopeo"):
        assert shutil.which(tool), f"{tool} is needed (apt-get install docker-registry skopeo)"
    root = tmp_path_factory.mktemp("secrets")
    storage = root / "storage"
    layout = Layout(root / "layout")
    layout.add_image("app", ImageSpec([tar_layer(F("bin/app", "#!/bin/sh\n", 0o755))], config={"Cmd": ["/bin/app"]}))
    anonymous = RegistryProcess(root / "anonymous", storage).start()
    try:
        skopeo_push(layout.root, "app", f"{anonymous.host}/{IMAGE}")
    finally:
        anonymous.stop()
    server = TokenServer(make_cert("token-signer")).start()
    bundle, _ = server.signer.write(root, "token")
    auth = {"token": {"realm": server.realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(bundle)}}
    token = RegistryProcess(root / "token", storage, auth=auth).start()
    ca: KeyPair = make_cert("linuxkit-py secrets test CA")
    ca_file, _ = ca.write(root, "ca")
    cert, key = make_cert("127.0.0.1", issuer=ca, ip="127.0.0.1").write(root, "server")
    tls = RegistryProcess(root / "tls", storage, tls=(cert, key), ca=ca_file).start()
    try:
        yield Registries(token, server, tls, ca_file)
    finally:
        tls.stop()
        token.stop()
        server.stop()


def docker_config(directory: Path, host: str, password: str = PASSWORD) -> Path:
    directory.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    doc = {"auths": {host: {"auth": auth}, "other.example": {"identitytoken": IDENTITY_TOKEN}}}
    (directory / "config.json").write_text(json.dumps(doc))
    return directory


def build(tmp_path: Path, ref: str, config_dir: Path, *args: str) -> tuple[int, str]:
    spec = tmp_path / "secret.yml"
    spec.write_text(f"services:\n  - name: app\n    image: {ref}\n"
                    "files:\n  - path: etc/linuxkit.yml\n    metadata: yaml\n")
    result = run_cli("-vv", "build", "--cache", tmp_path / "cache", "--dir", tmp_path / "out", "-f", "tar",
                     *args, spec, env={"DOCKER_CONFIG": str(config_dir), "LINUXKIT_MIRROR": ""})
    return result.returncode, result.stderr.decode(errors="replace")


def assert_no_secret(text: str | bytes, what: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in (PASSWORD, BASIC, IDENTITY_TOKEN, JWT_PREFIX):
        assert secret.encode() not in data, f"{secret!r} appears in {what}"


def test_credentials_and_tokens_stay_out_of_logs_metadata_image_and_cache(tmp_path: Path,
                                                                          registries: Registries) -> None:
    ref = f"{registries.token.host}/{IMAGE}"
    status, stderr = build(tmp_path, ref, docker_config(tmp_path / "docker", registries.token.host))
    assert status == 0, stderr
    assert registries.token_server.issued[-1][1] == USER  # the password was used: a token was bought with it
    assert '"GET /token?scope=repository%3Aprivate%2Fsecret%3Apull' in stderr, stderr  # -vv logs every request
    assert_no_secret(stderr, "stderr at -vv")
    image = (tmp_path / "out" / "secret.tar").read_bytes()
    assert b"containers/services/app/lower/bin/app" in image and b"image: " + ref.encode() in image
    assert_no_secret(image, "the built image")
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_bytes(), str(path))


def test_wrong_password_error_names_the_registry_not_the_password(tmp_path: Path, registries: Registries) -> None:
    ref = f"{registries.token.host}/{IMAGE}"
    wrong = "not-" + PASSWORD
    status, stderr = build(tmp_path, ref, docker_config(tmp_path / "docker", registries.token.host, wrong))
    assert status == 1
    token_host = registries.token_server.realm.split("/")[2]
    assert stderr.strip().splitlines()[-1] == (
        f"linuxkit-py: {ref}: registry {registries.token.host}: authentication refused by {token_host} (HTTP 401) "
        f"(hint: check the credentials for {registries.token.host} in {tmp_path / 'docker' / 'config.json'})")
    assert wrong not in stderr and base64.b64encode(f"{USER}:{wrong}".encode()).decode() not in stderr
    assert_no_secret(stderr, "stderr of a refused login")


def test_unreachable_registry_error_and_debug_log_hold_no_secret(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """In-process (retries off, so it takes no time) with every logger at DEBUG, as -vv sets them."""
    config = docker_config(tmp_path / "docker", "127.0.0.1:1")
    options = RegistryOptions(docker_config_dir=config, progress=False, timeout=2, retries=0)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RegistryError) as err:
        pull_image(Cache(tmp_path / "cache"), "127.0.0.1:1/private/secret:1", "amd64", options)
    assert str(err.value) == ("127.0.0.1:1/private/secret:1: cannot connect to registry 127.0.0.1:1 "
                              "(connection refused)")
    assert caplog.records  # the debug log did run
    assert_no_secret(caplog.text, "the debug log")


# -- TLS ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ref", "insecure", "scheme"), [
    ("registry.example.com/a/b:1", (), "https"),
    ("registry.example.com:5000/a/b:1", (), "https"),
    ("docker.io/library/alpine:3", (), "https"),
    ("10.0.0.5:5000/a:1", (), "https"),  # a private address is not loopback
    ("localhost:5000/a:1", (), "http"),
    ("127.0.0.1:5000/a:1", (), "http"),
    ("127.9.9.9/a:1", (), "http"),
    ("[::1]:5000/a:1", (), "http"),
    ("registry.example.com:5000/a:1", ("registry.example.com:5000",), "http"),
    ("registry.example.com:5000/a:1", ("other.example.com:5000",), "https"),
    ("registry.example.com:5000/a:1", ("registry.example.com",), "https"),  # the port is part of the name
])
def test_plain_http_only_for_loopback_and_insecure_registries(ref: str, insecure: tuple[str, ...],
                                                              scheme: str) -> None:
    remote = resolve_remote(parse_reference(ref), RegistryOptions(insecure=frozenset(insecure)))
    assert remote.scheme == scheme


def test_tls_certificate_is_verified_by_default(tmp_path: Path, registries: Registries) -> None:
    """A registry with a certificate nobody trusts is refused; --cert-file trusts its CA."""
    mirror = ("--mirror", f"secure.example=https://{registries.tls.host}")
    ref = f"secure.example/{IMAGE}"
    config = tmp_path / "docker"
    config.mkdir()
    status, stderr = build(tmp_path, ref, config, *mirror)
    assert status == 1
    assert stderr.strip().splitlines()[-1].endswith(
        f"{ref}: registry {registries.tls.host}: TLS certificate not trusted: unable to get local issuer certificate")
    status, stderr = build(tmp_path, ref, config, *mirror, "--cert-file", str(registries.ca_file))
    assert status == 0, stderr
