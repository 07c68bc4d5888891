"""Fixtures: real docker-registry instances (anonymous, token auth, basic auth, TLS) over one storage.

Images are pushed once, with skopeo, to the anonymous registry; the others serve the same
storage directory, so every registry holds the same images.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from linuxkit_py.cache.layout import Cache
from linuxkit_py.registry.pull import RegistryOptions
from tests.imagetools import F, ImageSpec, Layout, skopeo_push, tar_layer
from tests.registry.servers import (
    HTPASSWD,
    ISSUER,
    SERVICE,
    FakeRegistry,
    KeyPair,
    RegistryProcess,
    TokenServer,
    make_cert,
)

for tool in ("docker-registry", "skopeo"):
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is needed by the registry tests (apt-get install docker-registry skopeo)")

LABEL = '{"net":"host","capabilities":["CAP_NET_ADMIN"]}'


@dataclass
class PushedImages:
    """What was pushed, by repository path (prefix the registry host to make a ref)."""

    digests: dict[str, str] = field(default_factory=dict)  # "test/basic:1" -> root digest
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # "test/multi:1@arm64" -> files


def _push_all(registry: RegistryProcess, root: Path) -> PushedImages:
    layout = Layout(root)
    pushed = PushedImages()

    def image(tag: str, dests: list[str], spec: ImageSpec, files: dict[str, bytes]) -> None:
        digest = layout.add_image(tag, spec)
        for dest in dests:
            skopeo_push(layout.root, tag, f"{registry.host}/{dest}")
            pushed.digests[dest] = digest
            pushed.files[f"{dest}@{spec.arch}"] = files

    basic_layers = [tar_layer(F("etc/basic", "one")), tar_layer(F("bin/tool", "two", mode=0o755))]
    image(
        "basic",
        [
            "test/basic:1",
            "private/secret:1",
            "library/busybox:mirrored",
            "hub/library/busybox:mirrored",
            "foo/bar:1",
            "expiring/img:1",
        ],
        ImageSpec(
            layers=basic_layers, config={"Cmd": ["/bin/tool"], "Labels": {"org.mobyproject.config": LABEL}}
        ),
        {"etc/basic": b"one", "bin/tool": b"two"},
    )
    # Shares its first layer with test/basic.
    image(
        "shared",
        ["test/shared:1"],
        ImageSpec(layers=[basic_layers[0], tar_layer(F("etc/shared", "3"))]),
        {"etc/basic": b"one", "etc/shared": b"3"},
    )
    image(
        "zstd",
        ["test/zstd:1"],
        ImageSpec(layers=[tar_layer(F("z", "zstd data"))], compression="zstd"),
        {"z": b"zstd data"},
    )
    image(
        "plain",
        ["test/plain:1"],
        ImageSpec(layers=[tar_layer(F("p", "plain data"))], compression="none"),
        {"p": b"plain data"},
    )
    image(
        "arm-only",
        ["test/armonly:1"],
        ImageSpec(layers=[tar_layer(F("a", "arm"))], arch="arm64"),
        {"a": b"arm"},
    )

    specs = [
        ImageSpec(layers=[tar_layer(F("arch", arch)), tar_layer(F(f"only-{arch}", arch))], arch=arch)
        for arch in ("amd64", "arm64")
    ]
    index_digest = layout.add_index("multi", specs, attestation=True)
    skopeo_push(layout.root, "multi", f"{registry.host}/test/multi:1")
    skopeo_push(layout.root, "multi", f"{registry.host}/test/list:1", v2s2=True)
    pushed.digests["test/multi:1"] = index_digest
    for dest in ("test/multi:1", "test/list:1"):
        for arch in ("amd64", "arm64"):
            pushed.files[f"{dest}@{arch}"] = {"arch": arch.encode(), f"only-{arch}": arch.encode()}
    return pushed


@pytest.fixture(scope="session")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry-storage")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, storage: Path) -> Iterator[RegistryProcess]:
    """An anonymous registry holding the test images."""
    reg = RegistryProcess(tmp_path_factory.mktemp("registry"), storage).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def images(registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> PushedImages:
    return _push_all(registry, tmp_path_factory.mktemp("layout"))


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(make_cert("token-signer")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, storage: Path, images: PushedImages, token_server: TokenServer
) -> Iterator[RegistryProcess]:
    """Bearer-token auth like Docker Hub's, over the same images."""
    work = tmp_path_factory.mktemp("token-registry")
    bundle, _ = token_server.signer.write(work, "token")
    auth = {
        "token": {
            "realm": token_server.realm,
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(bundle),
        }
    }
    reg = RegistryProcess(work, storage, auth=auth).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def basic_registry(
    tmp_path_factory: pytest.TempPathFactory, storage: Path, images: PushedImages
) -> Iterator[RegistryProcess]:
    """Basic auth (htpasswd), over the same images."""
    work = tmp_path_factory.mktemp("basic-registry")
    (work / "htpasswd").write_text(HTPASSWD)
    reg = RegistryProcess(
        work, storage, auth={"htpasswd": {"realm": "basic-realm", "path": str(work / "htpasswd")}}
    ).start()
    try:
        yield reg
    finally:
        reg.stop()


@dataclass
class TlsRegistry:
    registry: RegistryProcess
    ca_file: Path


@pytest.fixture(scope="session")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, storage: Path, images: PushedImages
) -> Iterator[TlsRegistry]:
    """https with a certificate from a private CA, over the same images."""
    work = tmp_path_factory.mktemp("tls-registry")
    ca: KeyPair = make_cert("linuxkit-py test CA")
    ca_file, _ = ca.write(work, "ca")
    server_cert, server_key = make_cert("127.0.0.1", issuer=ca, ip="127.0.0.1").write(work, "server")
    reg = RegistryProcess(work, storage, tls=(server_cert, server_key), ca=ca_file).start()
    try:
        yield TlsRegistry(reg, ca_file)
    finally:
        reg.stop()


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    server = registry.serve()
    try:
        yield registry
    finally:
        registry.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    """An empty Docker config directory (the tests never read the real ~/.docker)."""
    path = tmp_path / "docker-config"
    path.mkdir()
    return path


@pytest.fixture
def options(docker_config: Path) -> RegistryOptions:
    return RegistryOptions(
        docker_config_dir=docker_config, progress=False, timeout=5, retries=1, backoff=0.01
    )


def write_docker_config(directory: Path, doc: dict[str, object]) -> None:
    (directory / "config.json").write_text(json.dumps(doc))


def layer_files(cache: Cache, layer: dict[str, object]) -> dict[str, bytes]:
    """The regular files of a cached layer blob (gzip, zstd or uncompressed tar)."""
    data = cache.read_blob(str(layer["digest"]))
    media_type = str(layer["mediaType"])
    if media_type.endswith("gzip"):
        data = gzip.decompress(data)
    elif media_type.endswith("zstd"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for member in tf.getmembers():
            if member.isfile():
                out[member.name] = tf.extractfile(member).read()  # type: ignore[union-attr]
    return out


def image_files(cache: Cache, layers: list[dict[str, object]]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for layer in layers:
        files.update(layer_files(cache, layer))
    return files


def cache_listing(cache: Cache) -> list[str]:
    """Every file under the cache's blobs/ (temp files included)."""
    return sorted(p.name for p in (cache.root / "blobs").rglob("*") if p.is_file())
