"""`@pkg:` naming a LinuxKit package directory (in a real git repository) is pulled from a real registry under
the tag `linuxkit pkg show-tag` computes, like any image."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.integration.conftest import run_cli
from tests.registry.conftest import PushedImages
from tests.registry.servers import RegistryProcess
from tests.unit.test_linuxkit_pkg import git

pytestmark = pytest.mark.registry


def test_at_pkg_of_a_linuxkit_package_pulls_its_show_tag(tmp_path: Path, registry: RegistryProcess,
                                                         images: PushedImages, docker_config: Path) -> None:
    repo = tmp_path / "repo"
    package = repo / "pkg" / "basic"
    package.mkdir(parents=True)
    (package / "build.yml").write_text(f"image: basic\norg: {registry.host}/lk\nnetwork: true\n")
    (package / "Dockerfile").write_text("FROM scratch\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "basic")
    tag = git(repo, "rev-parse", "HEAD:pkg/basic")
    shown = run_cli("pkg", "show-tag", package)
    assert shown.stdout.decode() == f"{registry.host}/lk/basic:{tag}\n"
    # what `linuxkit pkg build --push` would have published
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{registry.host}/test/basic:1", f"docker://{registry.host}/lk/basic:{tag}"],
                   check=True, capture_output=True)
    spec = repo / "spec.yml"
    spec.write_text('init:\n  - "@pkg:pkg/basic"\n')
    built = run_cli("build", "--cache", tmp_path / "cache", "-f", "tar", "-o", "-", spec,
                    env={"DOCKER_CONFIG": str(docker_config)})
    assert built.returncode == 0, built.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(built.stdout)) as tar:
        basic = tar.extractfile("etc/basic")
        assert basic is not None and basic.read() == b"one"
    listed = run_cli("cache", "ls", "--cache", tmp_path / "cache").stdout.decode()
    assert f"{registry.host}/lk/basic:{tag}\t{images.digests['test/basic:1']}\n" == listed
