"""`pkg build --arch amd64,arm64 --push REGISTRY`: one OCI index with both platforms in a real docker-registry
(LinuxKit's `pkg build --platforms`), which a spec then builds from for either architecture."""

from __future__ import annotations

import json
from pathlib import Path

from linuxkit_py.cache.layout import Cache
from linuxkit_py.pkg.debs import debs_dir
from tests.debstore import DEB_STORE, link_files
from tests.integration.conftest import run_cli
from tests.registry.servers import RegistryProcess
from tests.registry.test_push import skopeo

REPO = Path(__file__).resolve().parents[2]


def test_a_two_platform_package_is_one_index_in_the_registry(registry: RegistryProcess, tmp_path: Path,
                                                              docker_config: Path) -> None:
    cache = tmp_path / "cache"
    if DEB_STORE.is_dir():
        link_files(DEB_STORE, debs_dir(Cache(cache)))
    env = {"DOCKER_CONFIG": str(docker_config)}
    built = run_cli("pkg", "build", "--platforms", "linux/amd64,linux/arm64", "--push", registry.host,
                    "--cache", cache, REPO / "pkg" / "busybox", env=env)
    assert built.returncode == 0, built.stderr.decode()
    name = built.stdout.decode().strip()
    pushed = f"{registry.host}/{name}"

    index = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{pushed}"))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    platforms = [m["platform"]["architecture"] for m in index["manifests"]]
    assert platforms == ["amd64", "arm64", "unknown", "unknown"]  # each image, then its SBOM attestation
    assert [m["annotations"]["vnd.docker.reference.digest"] for m in index["manifests"][2:]] == \
        [m["digest"] for m in index["manifests"][:2]]
    for arch in ("amd64", "arm64"):
        seen = json.loads(skopeo("--override-arch", arch, "inspect", "--tls-verify=false", f"docker://{pushed}"))
        assert seen["Architecture"] == arch

    # a spec naming the pushed image builds for either architecture from a fresh cache
    spec = tmp_path / "hello.yml"
    spec.write_text(f"onboot:\n  - name: hello\n    image: {pushed}\n    command: [/bin/busybox, echo, hi]\n")
    for arch in ("amd64", "arm64"):
        out = tmp_path / f"out-{arch}"
        result = run_cli("build", "--arch", arch, "-f", "tar", "--dir", out, "--cache", tmp_path / f"fresh-{arch}",
                         spec, env=env)
        assert result.returncode == 0, result.stderr.decode()
        with open(out / "hello.tar", "rb") as f:
            data = f.read()
        machine = {"amd64": (62).to_bytes(2, "little"), "arm64": (183).to_bytes(2, "little")}[arch]
        start = data.index(b"\x7fELF")  # the first ELF in the tar: the container's busybox
        assert data[start + 18:start + 20] == machine
