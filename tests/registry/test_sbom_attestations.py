"""SBOM attestations through a real registry (Debian's docker-registry on 127.0.0.1).

`pkg build --push` publishes each package's SBOM as BuildKit does (an attestation manifest in the index); a
build on a machine that only pulls merges it into NAME.spdx.json. An image pushed by another tool (skopeo)
with a BuildKit-style SPDX attestation is merged too, its file names prefixed with where the image sits in
the root filesystem; a broken attestation costs the SBOM that part and nothing else.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from linuxkit_py.cache.layout import Cache
from tests.imagetools import F, ImageSpec, Layout, digest_of, tar_layer
from tests.integration import test_pkg
from tests.integration.conftest import run_cli
from tests.registry.servers import RegistryProcess
from tests.registry.test_push import pkg_cache  # noqa: F401 - fixture

pytestmark = pytest.mark.registry

ATTESTATION = {"vnd.docker.reference.type": "attestation-manifest"}
SPDX_PREDICATE = "https://spdx.dev/Document"


def raw_manifest(registry: RegistryProcess, ref: str) -> dict[str, Any]:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out))


def spdx_of(out: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((out / f"{name}.spdx.json").read_bytes()))


def test_pkg_build_push_publishes_the_sbom_and_a_pulling_build_merges_it(
        registry: RegistryProcess, pkg_cache: Path, docker_config: Path, tmp_path: Path) -> None:  # noqa: F811
    directory = test_pkg.write_package(tmp_path / "busybox", test_pkg.BUSYBOX_YML,
                                       {"rc.init": (test_pkg.RC_INIT, 0o755)})
    env = {"DOCKER_CONFIG": str(docker_config)}
    built = run_cli("pkg", "build", "--push", registry.host, "--cache", pkg_cache, directory, env=env)
    assert built.returncode == 0, built.stderr.decode()
    pushed = f"{registry.host}/{built.stdout.decode().strip()}"

    index = raw_manifest(registry, pushed)
    image, attestation = index["manifests"]
    assert image["platform"] == {"architecture": "amd64", "os": "linux"}
    assert attestation["platform"] == {"architecture": "unknown", "os": "unknown"}
    assert attestation["annotations"] == {**ATTESTATION, "vnd.docker.reference.digest": image["digest"]}
    repository = pushed.split("/", 1)[1].rsplit(":", 1)[0]
    layer = raw_manifest(registry, f"{pushed.rsplit(':', 1)[0]}@{attestation['digest']}")["layers"][0]
    assert (layer["mediaType"], layer["annotations"]) == ("application/vnd.in-toto+json",
                                                          {"in-toto.io/predicate-type": SPDX_PREDICATE})
    statement = requests.get(f"http://{registry.host}/v2/{repository}/blobs/{layer['digest']}", timeout=10).json()
    assert statement["subject"][0]["digest"] == {"sha256": image["digest"].removeprefix("sha256:")}
    assert [p["name"] for p in statement["predicate"]["packages"]][1:] == ["busybox-static"]

    spec = tmp_path / "pulled.yml"
    spec.write_text(f"init:\n  - {pushed}\n")
    out = tmp_path / "out"
    fresh = tmp_path / "fresh-cache"
    result = run_cli("build", "-f", "tar", "--dir", out, "--cache", fresh, spec, env=env)
    assert result.returncode == 0, result.stderr.decode()
    packages = {p["name"]: p for p in spdx_of(out, "pulled")["packages"]}
    busybox = packages["busybox-static"]
    assert busybox["externalRefs"][0]["referenceLocator"].startswith("pkg:deb/debian/busybox-static@")
    assert busybox["sourceInfo"].startswith("built package from: busybox ")


def _attested_layout(root: Path, predicate: bytes) -> str:
    """An OCI layout `app` whose index has the image and a BuildKit-style attestation holding `predicate`."""
    layout = Layout(root)
    image = layout._image_manifest(ImageSpec([tar_layer(F("usr/bin/app", "#!/bin/sh\necho app\n", 0o755))],
                                             config={"Cmd": ["/usr/bin/app"]}))
    layer = layout.blob(predicate)
    config = json.dumps({"architecture": "unknown", "os": "unknown", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": layout.blob(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": layer, "size": len(predicate),
                    "annotations": {"in-toto.io/predicate-type": SPDX_PREDICATE}}]}).encode()
    attestation = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": layout.blob(manifest),
                   "size": len(manifest), "platform": {"architecture": "unknown", "os": "unknown"},
                   "annotations": {**ATTESTATION, "vnd.docker.reference.digest": image["digest"]}}
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [image, attestation]}).encode()
    layout.manifests.append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": layout.blob(index),
                             "size": len(index), "annotations": {"org.opencontainers.image.ref.name": "app"}})
    layout._save()
    return image["digest"]


def _statement(digest: str) -> bytes:
    sbom = {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT", "name": "app",
        "documentNamespace": "https://example.org/app", "creationInfo": {"created": "2024-01-01T00:00:00Z",
                                                                       "creators": ["Tool: syft-1.0"]},
        "packages": [{"SPDXID": "SPDXRef-Package-app-tool", "name": "app-tool", "versionInfo": "1.2.3",
                      "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "licenseConcluded": "NOASSERTION",
                      "licenseDeclared": "MIT", "copyrightText": "NOASSERTION"}],
        "files": [{"fileName": "/usr/bin/app", "SPDXID": "SPDXRef-File-app",
                   "checksums": [{"algorithm": "SHA1", "checksumValue": "0" * 40}],
                   "licenseConcluded": "NOASSERTION", "copyrightText": "NOASSERTION"}],
        "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                           "relatedSpdxElement": "SPDXRef-Package-app-tool"}],
    }
    return json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "predicateType": SPDX_PREDICATE,
                       "subject": [{"name": "app", "digest": {"sha256": digest.removeprefix("sha256:")}}],
                       "predicate": sbom}).encode()


@pytest.mark.parametrize("broken", [False, True], ids=["spdx", "broken"])
def test_buildkit_style_attestations_of_pulled_images_are_merged(registry: RegistryProcess, tmp_path: Path,
                                                                 docker_config: Path, broken: bool) -> None:
    layout_dir = tmp_path / "layout"
    if broken:
        predicate = b"this is not JSON"
    else:
        probe = Layout(tmp_path / "probe")._image_manifest(ImageSpec(
            [tar_layer(F("usr/bin/app", "#!/bin/sh\necho app\n", 0o755))], config={"Cmd": ["/usr/bin/app"]}))
        predicate = _statement(probe["digest"])  # the image manifest's digest depends only on the image
    digest = _attested_layout(layout_dir, predicate)
    ref = f"{registry.host}/foreign/app:{'broken' if broken else 'spdx'}"
    subprocess.run(["skopeo", "copy", "--all", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
                    f"oci:{layout_dir}:app", f"docker://{ref}"], check=True, capture_output=True)

    spec = tmp_path / "uses.yml"
    spec.write_text(f"onboot:\n  - name: app\n    image: {ref}\n")
    out, fresh = tmp_path / "out", Cache(tmp_path / "fresh")
    result = run_cli("build", "-f", "tar", "--dir", out, "--cache", fresh.root, spec,
                     env={"DOCKER_CONFIG": str(docker_config)})
    assert result.returncode == 0, result.stderr.decode()
    doc = spdx_of(out, "uses")
    packages = {p["name"]: p for p in doc["packages"]}
    image = packages[f"{registry.host}/foreign/app"]
    assert image["checksums"][0]["checksumValue"] == digest.removeprefix("sha256:")
    names = {f["fileName"] for f in doc["files"]}
    assert "./containers/onboot/000-app/lower/usr/bin/app" in names  # the image's file, hashed by us
    if broken:
        assert "app-tool" not in packages
        assert fresh.has_blob(digest_of(predicate))  # fetched, then found not to be an SPDX statement
        return
    tool = packages["app-tool"]
    assert (tool["versionInfo"], tool["licenseDeclared"]) == ("1.2.3", "MIT")
    assert {"spdxElementId": image["SPDXID"], "relationshipType": "CONTAINS",
            "relatedSpdxElement": tool["SPDXID"]} in doc["relationships"]
    # the attestation's own file list, placed where the image's files are in the root filesystem
    assert [f["fileName"] for f in doc["files"] if f["SPDXID"].endswith("-File-app")] == \
        ["./containers/onboot/000-app/lower/usr/bin/app"]
