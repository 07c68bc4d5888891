"""The build's SBOM (NAME.spdx.json) for specs/webserver.yml, built from the real Debian packages of pkg/.

The document is checked by the SPDX project's own validator (spdx-tools: parse + full validation of SPDX 2.3)
and against the image it describes: every file of the tar with its real checksums, every Debian package with
the version of the .deb apt downloaded, the kernel's release.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from linuxkit_py.arch import host_arch
from linuxkit_py.cache.layout import Cache
from linuxkit_py.pkg.debs import debs_dir
from tests.debstore import stored_debs
from tests.integration.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "specs" / "webserver.yml"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with stored_debs(tmp_path_factory.mktemp("sbom") / "cache") as cache:
        yield cache


def build(cache: Path, out: Path, *args: str | Path, env: dict[str, str] | None = None) -> Path:
    result = run_cli("build", "--cache", cache, "--dir", out, "-f", "tar", *args, SPEC, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return out


@pytest.fixture(scope="module")
def built(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(cache_dir, tmp_path_factory.mktemp("sbom-out"))


def sbom(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "webserver.spdx.json").read_bytes()))


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in doc["packages"]}


def test_the_spdx_validator_accepts_it(built: Path) -> None:
    document = parse_file(str(built / "webserver.spdx.json"))
    assert validate_full_spdx_document(document) == []
    doc = sbom(built)
    assert (doc["spdxVersion"], doc["name"], doc["documentDescribes"]) == ("SPDX-2.3", "webserver", ["SPDXRef-Image"])
    assert doc["creationInfo"]["created"] == "2017-04-18T16:30:00Z"  # the build's epoch: reproducible


def test_every_file_of_the_image_is_listed_with_its_checksums(built: Path) -> None:
    listed = {f["fileName"]: {c["algorithm"]: c["checksumValue"] for c in f["checksums"]}
              for f in sbom(built)["files"]}
    with tarfile.open(built / "webserver.tar") as tar:
        members = [m for m in tar.getmembers() if m.isreg()]
        assert len(members) > 50
        for member in members:
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            assert listed[f"./{member.name}"] == {"SHA1": hashlib.sha1(data).hexdigest(),
                                                  "SHA256": hashlib.sha256(data).hexdigest()}, member.name
    assert len(listed) == len(members)


def test_every_debian_package_is_listed_with_version_source_licence_and_purl(built: Path, cache_dir: Path) -> None:
    packages = by_name(sbom(built))
    debs = {p.name.split("_")[0]: p for p in debs_dir(Cache(cache_dir)).glob("*.deb")
            if p.name.endswith((f"_{host_arch()}.deb", "_all.deb"))}
    for name in ("busybox-static", "crun", "libseccomp2", "libc6"):
        fields = subprocess.run(["dpkg-deb", "-f", debs[name], "Version", "Architecture"], check=True,
                                capture_output=True, text=True).stdout
        version = fields.split("Version: ")[1].split("\n")[0]
        arch = fields.split("Architecture: ")[1].split("\n")[0]
        pkg = packages[name]
        assert pkg["versionInfo"] == version
        purl = pkg["externalRefs"][0]["referenceLocator"]
        assert purl.startswith(f"pkg:deb/debian/{name}@") and f"arch={arch}" in purl
        assert pkg["checksums"] == [{"algorithm": "SHA256",
                                     "checksumValue": hashlib.sha256(debs[name].read_bytes()).hexdigest()}]
    assert packages["libseccomp2"]["licenseDeclared"] == "LGPL-2.1-only"  # its DEP-5 copyright file
    assert packages["libseccomp2"]["sourceInfo"].startswith("built package from: libseccomp ")
    assert packages["busybox-static"]["licenseDeclared"] == "NOASSERTION"  # not a machine-readable file
    assert packages["busybox-static"]["sourceInfo"].startswith("built package from: busybox ")


def test_images_and_kernel_are_packages_of_the_image(built: Path, cache_dir: Path) -> None:
    doc = sbom(built)
    packages = by_name(doc)
    runtime = packages["docker.io/linuxkit-py/crun"]  # the example specs' runtime (pkg/crun)
    assert runtime["primaryPackagePurpose"] == "CONTAINER"
    assert runtime["externalRefs"][0]["referenceLocator"].startswith("pkg:oci/crun@sha256%3A")
    assert "used by: init" in runtime["comment"]
    assert "used by: services/httpd" in packages["docker.io/linuxkit-py/httpd"]["comment"]
    contains = {(r["spdxElementId"], r["relatedSpdxElement"]) for r in doc["relationships"]
                if r["relationshipType"] == "CONTAINS"}
    assert ("SPDXRef-Image", runtime["SPDXID"]) in contains
    assert (runtime["SPDXID"], packages["libseccomp2"]["SPDXID"]) in contains
    with tarfile.open(built / "webserver.tar") as tar:
        kernel = tar.extractfile("boot/kernel").read()  # type: ignore[union-attr]
        release = next(m.name.split("/")[2] for m in tar.getmembers() if m.name.startswith("lib/modules/"))
    linux = packages["linux"]
    assert (linux["versionInfo"], linux["checksums"][0]["checksumValue"]) == (release, hashlib.sha256(kernel)
                                                                             .hexdigest())
    debs = {p.name.split("_")[0]: p for p in debs_dir(Cache(cache_dir)).glob(f"linux-image-*_{host_arch()}.deb")}
    debian_version = subprocess.run(["dpkg-deb", "-f", debs[f"linux-image-{release}"], "Version"], check=True,
                                    capture_output=True, text=True).stdout.strip()
    image_deb = packages[f"linux-image-{release}"]  # from the kernel package's SBOM, with its Debian version
    assert image_deb["versionInfo"] == debian_version
    assert (image_deb["SPDXID"], "SPDXRef-Kernel") in contains
    files = {f["SPDXID"]: f["fileName"] for f in doc["files"]}
    assert "./containers/services/httpd/rootfs/bin/busybox" in {files[i] for i in
                                                               packages["docker.io/linuxkit-py/httpd"]["hasFiles"]}


def test_reproducible_and_its_flags(built: Path, cache_dir: Path, tmp_path: Path) -> None:
    again = build(cache_dir, tmp_path / "again")
    assert (again / "webserver.spdx.json").read_bytes() == (built / "webserver.spdx.json").read_bytes()

    epoch = build(cache_dir, tmp_path / "epoch", env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert sbom(epoch)["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    assert sbom(epoch)["documentNamespace"] != sbom(built)["documentNamespace"]

    now = build(cache_dir, tmp_path / "now", "--sbom-current-time=true")  # LinuxKit's (cobra's) spelling
    created = time.mktime(time.strptime(sbom(now)["creationInfo"]["created"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(created - time.time()) < 600

    none = build(cache_dir, tmp_path / "none", "--no-sbom")
    assert sorted(p.name for p in none.iterdir()) == ["webserver.tar"]

    inside = build(cache_dir, tmp_path / "inside", "--sbom-output", "sbom.spdx.json")
    with tarfile.open(inside / "webserver.tar") as tar:
        in_image = tar.extractfile("sbom.spdx.json").read()  # type: ignore[union-attr]
    assert in_image == (inside / "webserver.spdx.json").read_bytes()
    assert in_image == (built / "webserver.spdx.json").read_bytes()  # it does not list itself


def test_sbom_output_naming_an_existing_file_is_one_line(cache_dir: Path, tmp_path: Path) -> None:
    result = run_cli("build", "--cache", cache_dir, "--dir", tmp_path, "-f", "tar", "--sbom-output", "/etc/inittab",
                     SPEC)
    assert result.returncode == 1
    assert result.stderr.decode() == "linuxkit-py: --sbom-output '/etc/inittab': the image already has " \
                                     "/etc/inittab\n"
    assert list(tmp_path.iterdir()) == []
