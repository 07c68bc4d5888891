"""Pushing from the cache to a real docker-registry: read back by our client and by skopeo, auth,
retries, indexes, and `pkg build --push` end to end."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import RegistryError, UserError
from linuxkit_py.registry.pull import RegistryOptions, pull_image
from linuxkit_py.registry.push import push_image, registry_destination
from tests.debstore import DEB_STORE, link_files
from tests.imagetools import F, ImageSpec, Layout, tar_layer
from tests.integration import test_pkg
from tests.integration.conftest import run_cli
from tests.registry.conftest import image_files, write_docker_config
from tests.registry.servers import BASIC_PASSWORD, BASIC_USER, RegistryProcess, TokenServer
from tests.registry.test_auth import b64

pytestmark = pytest.mark.registry

LAYERS = [tar_layer(F("etc/one", "one")), tar_layer(F("bin/two", "two", mode=0o755))]
FILES = {"etc/one": b"one", "bin/two": b"two"}


def cached_image(cache: Cache, name: str, spec: ImageSpec | None = None) -> str:
    """Put an image into a fresh cache under the normalised `name`; its manifest digest."""
    return Layout(cache.root).add_image(name, spec or ImageSpec(LAYERS, config={"Cmd": ["/bin/two"]}))


def skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout


def blob_writes(registry: RegistryProcess, since: int) -> list[tuple[str, str, int]]:
    """The upload requests (POST and PUT of blobs) the registry logged after the first `since`."""
    return [(method, path, status) for method, path, status in registry.requests_log()[since:]
            if method in ("POST", "PUT", "PATCH") and "/blobs/" in path]


def test_pushed_image_reads_back_the_same(registry: RegistryProcess, cache: Cache, options: RegistryOptions,
                                          tmp_path: Path) -> None:
    digest = cached_image(cache, "docker.io/test/src:1")
    dest = f"{registry.host}/pushed/basic:1"
    assert push_image(cache, "test/src:1", dest, options) == digest

    fresh = Cache(tmp_path / "fresh")
    image = pull_image(fresh, dest, "amd64", options)
    assert image.digest == digest
    assert fresh.read_blob(digest) == cache.read_blob(digest)  # the manifest's own bytes
    assert image_files(fresh, image.layers) == FILES
    assert image.runtime_config == {"Cmd": ["/bin/two"]}

    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dest}"))
    assert inspected["Digest"] == digest
    assert inspected["Layers"] == [layer["digest"] for layer in image.layers]
    copied = tmp_path / "copied"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{dest}", f"oci:{copied}:copy")
    [entry] = json.loads((copied / "index.json").read_text())["manifests"]
    assert entry["digest"] == digest


def test_a_second_push_uploads_no_blob_again(registry: RegistryProcess, cache: Cache,
                                             options: RegistryOptions) -> None:
    cached_image(cache, "docker.io/test/src:1")
    dest = f"{registry.host}/pushed/again:1"
    seen = len(registry.requests_log())
    push_image(cache, "test/src:1", dest, options)
    # Config and two layers: one upload session and one PUT each.
    first = blob_writes(registry, seen)
    assert sorted((method, status) for method, _, status in first) == [("POST", 202)] * 3 + [("PUT", 201)] * 3

    seen = len(registry.requests_log())
    push_image(cache, "test/src:1", dest, options)
    log = registry.requests_log()[seen:]
    assert blob_writes(registry, seen) == []
    assert sorted((method, status) for method, path, status in log) == [("HEAD", 200)] * 3 + [("PUT", 201)]

    # Another image in the repository sharing the first layer: its config and new layer go up, no more.
    shared = cached_image(cache, "docker.io/test/shared:1",
                          ImageSpec([LAYERS[0], tar_layer(F("etc/three", "3"))]))
    seen = len(registry.requests_log())
    push_image(cache, "test/shared:1", f"{registry.host}/pushed/again:shared", options)
    puts = [path for method, path, _ in blob_writes(registry, seen) if method == "PUT"]
    manifest = cache.read_json(shared)
    new = {manifest["config"]["digest"], manifest["layers"][1]["digest"]}
    assert {urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)["digest"][0] for path in puts} == new
    assert len(puts) == 2


def test_oci_index_with_two_platforms(registry: RegistryProcess, cache: Cache, options: RegistryOptions,
                                      tmp_path: Path) -> None:
    specs = [ImageSpec([tar_layer(F("arch", arch))], arch=arch) for arch in ("amd64", "arm64")]
    index = Layout(cache.root).add_index("docker.io/test/multi:1", specs, attestation=True)
    dest = f"{registry.host}/pushed/multi:1"
    assert push_image(cache, "test/multi:1", dest, options) == index

    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    assert raw.encode() == cache.read_blob(index)
    fresh = Cache(tmp_path / "fresh")
    for arch in ("amd64", "arm64"):
        image = pull_image(fresh, dest, arch, options)
        assert image_files(fresh, image.layers) == {"arch": arch.encode()}
        inspected = json.loads(skopeo("--override-arch", arch, "inspect", "--tls-verify=false", f"docker://{dest}"))
        assert inspected["Architecture"] == arch


def test_an_index_cached_with_one_platform_is_refused(registry: RegistryProcess, cache: Cache,
                                                      options: RegistryOptions) -> None:
    specs = [ImageSpec([tar_layer(F("arch", arch))], arch=arch) for arch in ("amd64", "arm64")]
    index = Layout(cache.root).add_index("docker.io/test/multi:1", specs)
    arm = cache.read_json(index)["manifests"][1]["digest"]
    cache.blob_path(arm).unlink()  # what a pull for amd64 alone leaves
    seen = len(registry.requests_log())
    with pytest.raises(UserError) as err:
        push_image(cache, "test/multi:1", f"{registry.host}/pushed/partial:1", options)
    assert str(err.value) == (f"test/multi:1: manifest {arm} (linux/arm64) is not in the cache {cache.root} "
                              "(hint: the cache keeps only the platforms that were pulled or built)")
    assert registry.requests_log()[seen:] == []


def test_push_by_digest_and_wrong_digest(registry: RegistryProcess, cache: Cache, options: RegistryOptions) -> None:
    digest = cached_image(cache, "docker.io/test/src:1")
    assert push_image(cache, "test/src:1", f"{registry.host}/pushed/bydigest@{digest}", options) == digest
    # Pushed by digest alone, the repository has no tags: --no-tags, else skopeo asks for them.
    assert json.loads(skopeo("inspect", "--no-tags", "--tls-verify=false",
                             f"docker://{registry.host}/pushed/bydigest@{digest}"))["Digest"] == digest
    wrong = "sha256:" + "0" * 64
    with pytest.raises(UserError) as err:
        push_image(cache, "test/src:1", f"{registry.host}/pushed/bydigest@{wrong}", options)
    assert str(err.value) == (f"{registry.host}/pushed/bydigest@{wrong}: test/src:1 has digest {digest}, "
                              "not the one given")
    with pytest.raises(UserError) as err:
        push_image(cache, "test/nothing:1", f"{registry.host}/pushed/x:1", options)
    assert str(err.value) == f"test/nothing:1 is not in the cache {cache.root} (hint: linuxkit-py cache ls)"


def test_token_auth_push_with_credentials(token_registry: RegistryProcess, token_server: TokenServer,
                                          cache: Cache, options: RegistryOptions, docker_config: Path,
                                          tmp_path: Path) -> None:
    digest = cached_image(cache, "docker.io/test/src:1")
    write_docker_config(docker_config, {"auths": {token_registry.host: {"auth": b64("alice:wonderland")}}})
    issued = len(token_server.issued)
    dest = f"{token_registry.host}/private/pushed:1"
    assert push_image(cache, "test/src:1", dest, options) == digest
    # The HEADs' challenge asks for pull; the first upload's for pull and push: the pull token is replaced,
    # once for all the parallel uploads.
    # (the registry names the actions in either order)
    assert [(scope.rsplit(":", 1)[0], set(scope.rsplit(":", 1)[1].split(",")), user)
            for scope, user in token_server.issued[issued:]] == [
        ("repository:private/pushed", {"pull"}, "alice"),
        ("repository:private/pushed", {"pull", "push"}, "alice"),
    ]
    image = pull_image(Cache(tmp_path / "fresh"), dest, "amd64", options)
    assert image.digest == digest


def test_token_auth_push_without_credentials_fails_in_one_line(
        token_registry: RegistryProcess, cache: Cache, options: RegistryOptions, docker_config: Path) -> None:
    cached_image(cache, "docker.io/test/src:1")
    dest = f"{token_registry.host}/private/refused:1"
    with pytest.raises(RegistryError) as err:
        push_image(cache, "test/src:1", dest, options)
    assert str(err.value) == (
        f"{dest}: registry {token_registry.host}: authentication required (HTTP 401) "
        f"(hint: the repository does not exist or needs credentials for {token_registry.host} "
        f"in {docker_config}/config.json)")


def test_basic_auth_push(basic_registry: RegistryProcess, cache: Cache, options: RegistryOptions,
                         docker_config: Path) -> None:
    digest = cached_image(cache, "docker.io/test/src:1")
    wrong = "wrong-password-8d1e"
    write_docker_config(docker_config, {"auths": {basic_registry.host: {"auth": b64(f"{BASIC_USER}:{wrong}")}}})
    dest = f"{basic_registry.host}/pushed/basic-auth:1"
    with pytest.raises(RegistryError) as err:
        push_image(cache, "test/src:1", dest, options)
    assert str(err.value) == (
        f"{dest}: authentication refused by registry {basic_registry.host} (HTTP 401) "
        f"(hint: check the credentials for {basic_registry.host} in {docker_config}/config.json)")
    assert wrong not in str(err.value)
    write_docker_config(docker_config,
                        {"auths": {basic_registry.host: {"auth": b64(f"{BASIC_USER}:{BASIC_PASSWORD}")}}})
    assert push_image(cache, "test/src:1", dest, RegistryOptions(docker_config_dir=docker_config,
                                                                 progress=False)) == digest


# -- faults: a proxy in front of the real registry ----------------------------------------------------

class FaultProxy:
    """Forwards requests to a registry, except that the first blob PUTs get the scripted faults:
    `503` (an error answer) or `drop` (the connection closed without an answer)."""

    def __init__(self, upstream: RegistryProcess, faults: list[str]) -> None:
        self.upstream = upstream
        self.faults = list(faults)
        self.log: list[tuple[str, str, int]] = []  # method, path, status (0: dropped)
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = None
                if self.command == "PUT" and "/blobs/uploads/" in self.path:
                    with proxy.lock:
                        fault = proxy.faults.pop(0) if proxy.faults else None
                if fault == "drop":
                    proxy.log.append((self.command, self.path, 0))
                    self.close_connection = True
                    return
                if fault == "503":
                    answer = b'{"errors":[{"code":"UNAVAILABLE","message":"storage is busy"}]}'
                    proxy.log.append((self.command, self.path, 503))
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                headers["Host"] = proxy.host  # so that the registry's Locations point at the proxy
                reply = requests.request(self.command, proxy.upstream.url + self.path, headers=headers,
                                         data=body, allow_redirects=False, timeout=10)
                proxy.log.append((self.command, self.path, reply.status_code))
                self.send_response(reply.status_code)
                for name, value in reply.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                            "content-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = forward  # noqa: N815 - http.server's names

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_proxy(registry: RegistryProcess) -> Iterator[Callable[[list[str]], FaultProxy]]:
    """Starts FaultProxy instances in front of the plain registry."""
    proxies: list[FaultProxy] = []

    def start(faults: list[str]) -> FaultProxy:
        proxies.append(FaultProxy(registry, faults))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


def test_a_failed_blob_upload_starts_a_new_session(fault_proxy: Callable[[list[str]], FaultProxy], cache: Cache,
                                                   options: RegistryOptions, tmp_path: Path) -> None:
    digest = cached_image(cache, "docker.io/test/src:1")
    proxy = fault_proxy(["503", "drop"])
    options.retries = 2
    dest = f"{proxy.host}/pushed/faults:1"
    assert push_image(cache, "test/src:1", dest, options) == digest
    puts = [(urllib.parse.parse_qs(urllib.parse.urlsplit(p).query)["digest"][0], s)
            for m, p, s in proxy.log if m == "PUT" and "/blobs/" in p]
    assert sorted(s for _, s in puts) == [0, 201, 201, 201, 503]
    # Each failed PUT was followed by a new upload session, and every blob arrived once.
    posts = [p for m, p, _ in proxy.log if m == "POST"]
    assert len(posts) == 5
    assert sorted(d for d, s in puts if s == 201) == sorted({d for d, _ in puts})
    image = pull_image(Cache(tmp_path / "fresh"), dest, "amd64", options)
    assert image_files(Cache(tmp_path / "fresh"), image.layers) == FILES


def test_a_blob_upload_failing_every_time(fault_proxy: Callable[[list[str]], FaultProxy], cache: Cache,
                                          options: RegistryOptions) -> None:
    cached_image(cache, "docker.io/test/src:1", ImageSpec([LAYERS[0]]))
    proxy = fault_proxy(["503"] * 10)
    options.retries, options.workers = 1, 1
    dest = f"{proxy.host}/pushed/unavailable:1"
    with pytest.raises(RegistryError) as err:
        push_image(cache, "test/src:1", dest, options)
    assert str(err.value) == f"{dest}: registry {proxy.host}: storage is busy (HTTP 503)"
    assert [s for m, p, s in proxy.log if m == "PUT"] == [503, 503]  # one try and one retry
    assert not [p for m, p, _ in proxy.log if m == "PUT" and "/manifests/" in p]


def test_unreachable_registry(cache: Cache, options: RegistryOptions) -> None:
    cached_image(cache, "docker.io/test/src:1")
    with pytest.raises(RegistryError) as err:
        push_image(cache, "test/src:1", "127.0.0.1:1/pushed/x:1", options)
    assert str(err.value) == "127.0.0.1:1/pushed/x:1: cannot connect to registry 127.0.0.1:1 (connection refused)"


def test_registry_destination() -> None:
    name = "linuxkit-py/init:" + "a" * 40
    assert registry_destination("127.0.0.1:5000", name) == f"127.0.0.1:5000/{name}"
    assert registry_destination("ghcr.io/me/", name) == f"ghcr.io/me/{name}"
    assert registry_destination("docker.io", name) == f"docker.io/{name}"
    with pytest.raises(UserError) as err:
        registry_destination("myregistry", name)
    assert str(err.value) == ("push destination 'myregistry' does not start with a registry host "
                              "(hint: a host name with a dot or a port, e.g. registry.example.com or 127.0.0.1:5000)")


# -- the command line ---------------------------------------------------------------------------------

@pytest.fixture
def pkg_cache(tmp_path: Path) -> Path:
    """A cache seeded with the .debs earlier test runs kept (else they are downloaded)."""
    cache = tmp_path / "pkg-cache"
    if DEB_STORE.is_dir():
        link_files(DEB_STORE, test_pkg.debs_dir(Cache(cache)))
    return cache


def test_pkg_build_push_then_a_spec_builds_from_the_registry(registry: RegistryProcess, pkg_cache: Path,
                                                             docker_config: Path, tmp_path: Path) -> None:
    directory = test_pkg.write_package(tmp_path / "busybox", test_pkg.BUSYBOX_YML,
                                       {"rc.init": (test_pkg.RC_INIT, 0o755)})
    env = {"DOCKER_CONFIG": str(docker_config)}
    built = run_cli("pkg", "build", "--push", registry.host, "--cache", pkg_cache, directory, env=env)
    assert built.returncode == 0, built.stderr.decode()
    name = built.stdout.decode().strip()
    digest = Cache(pkg_cache).get_ref(f"docker.io/{name}")["digest"]  # type: ignore[index]
    pushed = f"{registry.host}/{name}"
    assert f"pushed {pushed} {digest}\n" in built.stderr.decode()
    assert json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{pushed}"))["Digest"] == digest

    spec = tmp_path / "from-registry.yml"
    spec.write_text(f"init:\n  - {pushed}\nonboot:\n  - name: hello\n    image: {pushed}\n"
                    "    command: [/bin/busybox, echo, hello]\n")
    fresh = tmp_path / "fresh-cache"
    out = tmp_path / "out"
    result = run_cli("build", "-f", "tar", "--dir", out, "--cache", fresh, spec, env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert Cache(fresh).get_ref(pushed)["digest"] == digest  # type: ignore[index]
    listing = subprocess.run(["tar", "-tf", out / "from-registry.tar"], check=True, capture_output=True,
                             text=True).stdout.split()
    assert {"bin/busybox", "etc/rc.init", "containers/onboot/000-hello/lower/bin/busybox"} <= set(listing)

    # `cache push` sends the cached image under another name, and prints it pinned.
    other = f"{registry.host}/mirrored/busybox:copy"
    copied = run_cli("cache", "push", "--cache", pkg_cache, name, "--remote-name", other, env=env)
    assert copied.returncode == 0, copied.stderr.decode()
    assert copied.stdout.decode() == f"{other}@{digest}\n"


def test_cli_errors_are_one_line(token_registry: RegistryProcess, tmp_path: Path, docker_config: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cached_image(cache, "docker.io/test/src:1")
    env = {"DOCKER_CONFIG": str(docker_config)}
    dest = f"{token_registry.host}/private/cli:1"
    result = run_cli("cache", "push", "--cache", cache.root, "test/src:1", "--remote-name", dest, env=env)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == (
        f"linuxkit-py: {dest}: registry {token_registry.host}: authentication required (HTTP 401) "
        f"(hint: the repository does not exist or needs credentials for {token_registry.host} "
        f"in {docker_config}/config.json)\n")
    package = test_pkg.write_package(tmp_path / "p", "image: linuxkit-py/x\nlibraries: none\n")
    result = run_cli("pkg", "build", "--push", "myregistry", "--cache", cache.root, package, env=env)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == (
        "linuxkit-py: push destination 'myregistry' does not start with a registry host "
        "(hint: a host name with a dot or a port, e.g. registry.example.com or 127.0.0.1:5000)\n")
