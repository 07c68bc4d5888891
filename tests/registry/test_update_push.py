"""`linuxkit-py update push NAME.update REF`: a bundle as an OCI artifact in a real docker-registry, and
pkg/update's `update apply oci+http://...` fetching it from there with the same checks as any bundle.

The updater runs here on the host as in tests/unit/test_update_script.py (a bundle that passes every check is
refused only for the slot partitions this machine lacks); on a device it is tests/boot/test_ab_updates.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from linuxkit_py.registry.artifact import ARTIFACT_TYPE, BUNDLE_MEDIA_TYPE, EMPTY_MEDIA_TYPE
from tests.imagetools import file_sha256
from tests.integration.conftest import run_cli
from tests.registry.servers import RegistryProcess
from tests.registry.test_push import skopeo
from tests.unit.test_update_script import ACCEPTED, _apply, _bundle, _refusal
from tests.unit.test_update_script import keys as keys  # the module-scoped key pairs

Keys = tuple[Path, Path]


def _push(bundle: Path, ref: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli("update", "push", bundle, ref, stdin=b"")


def test_a_pushed_bundle_is_one_artifact_layer_and_the_same_bundle_the_same_digest(
        registry: RegistryProcess, keys: Keys, tmp_path: Path) -> None:
    ours, _ = keys
    bundle = _bundle(tmp_path / "device.update", ours, version="2")
    pushed = _push(bundle, f"{registry.host}/updates/device:2")
    assert pushed.returncode == 0, pushed.stderr.decode()
    printed = pushed.stdout.decode().strip()
    assert printed.startswith(f"{registry.host}/updates/device:2@sha256:")
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/updates/device:2"))
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == EMPTY_MEDIA_TYPE
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == BUNDLE_MEDIA_TYPE
    assert layer["digest"] == f"sha256:{file_sha256(bundle)}" and layer["size"] == bundle.stat().st_size
    assert layer["annotations"] == {"org.opencontainers.image.title": "device.update"}
    assert manifest["annotations"]["org.opencontainers.image.version"] == "2"
    again = _push(bundle, f"{registry.host}/updates/device:latest")
    assert again.stdout.decode().strip().split("@")[1] == printed.split("@")[1]  # reproducible: same digest


def test_update_apply_from_the_registry_checks_it_like_any_bundle(registry: RegistryProcess, keys: Keys,
                                                                 tmp_path: Path) -> None:
    ours, theirs = keys
    for tag, signer in (("2", ours), ("other-key", theirs)):
        assert _push(_bundle(tmp_path / f"{tag}.update", signer), f"{registry.host}/fleet/device:{tag}").returncode == 0
    assert _refusal(_apply(tmp_path, ours, f"oci+http://{registry.host}/fleet/device:2")) == ACCEPTED
    assert not (tmp_path / "work").exists()
    line = _refusal(_apply(tmp_path, ours, f"oci+http://{registry.host}/fleet/device:other-key"))
    assert "the signature does not verify with" in line
    line = _refusal(_apply(tmp_path, ours, f"oci+http://{registry.host}/fleet/device:9"))
    assert line == (f"update: refused: cannot download oci+http://{registry.host}/fleet/device:9 "
                    f"(no manifest at http://{registry.host}/v2/fleet/device/manifests/9)")


def test_what_is_no_update_artifact_is_refused(registry: RegistryProcess, images: object, keys: Keys,
                                              tmp_path: Path) -> None:
    ours, _ = keys
    line = _refusal(_apply(tmp_path, ours, f"oci+http://{registry.host}/test/basic:1"))
    assert line.endswith("is not an update artifact (no application/vnd.linuxkit-py.update.v1.tar layer)")


def test_pushing_what_is_no_bundle_or_to_no_registry_is_one_line(registry: RegistryProcess, keys: Keys,
                                                                 tmp_path: Path) -> None:
    junk = tmp_path / "junk.update"
    junk.write_bytes(b"not a tar" * 100)
    result = _push(junk, f"{registry.host}/updates/junk:1")
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"linuxkit-py: {junk} is not an update bundle (hint: make one with `linuxkit-py build -f update`)"]
    bundle = _bundle(tmp_path / "device.update", keys[0])
    for ref in ("device:1", f"{registry.host}/updates/device@sha256:{'0' * 64}"):
        result = _push(bundle, ref)
        assert result.returncode == 1
        assert result.stderr.decode().strip().splitlines() == [
            f"linuxkit-py: {ref}: give REGISTRY/REPOSITORY[:TAG] (hint: e.g. 127.0.0.1:5000/device:2 (the digest is "
            "the bundle's, printed after the push))"]
