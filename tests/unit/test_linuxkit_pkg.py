"""LinuxKit package directories (build.yml with LinuxKit's keys next to a Dockerfile): `pkg show-tag`, `@pkg:`
in a spec, `pkg build`'s refusal, and the rule telling them from our build.yml. Every git repository is real."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from linuxkit_py.errors import SpecError, UserError
from linuxkit_py.pkg.build import package_name
from linuxkit_py.pkg.definition import load_definition
from linuxkit_py.pkg.linuxkit_pkg import TagOptions, expand_reference, render_tag

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
RUNC_YML = "image: runc\nnetwork: true\narches:\n  - amd64\n  - arm64\nconfig:\n  pid: host\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def lk_package(directory: Path, build_yml: str = RUNC_YML) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "build.yml").write_text(build_yml)
    (directory / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    return directory


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with a committed LinuxKit package pkg/runc and a .gitignore."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    lk_package(root / "pkg" / "runc")
    (root / ".gitignore").write_text("*.o\n")
    git(root, "add", ".")
    git(root, "commit", "-qm", "runc")
    return root


def cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "linuxkit_py", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **GIT_ENV, **(env or {})}, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_show_tag_is_the_git_tree_hash_of_the_directory(repo: Path) -> None:
    tree = git(repo, "rev-parse", "HEAD:pkg/runc")
    assert len(tree) == 40
    status, out, err = cli("pkg", "show-tag", repo / "pkg" / "runc", repo / "pkg" / "runc/")
    assert (status, err) == (0, "")
    assert out == f"linuxkit/runc:{tree}\nlinuxkit/runc:{tree}\n"
    status, out, _ = cli("pkg", "show-tag", "--canonical", "pkg/runc", cwd=repo)
    assert out == f"docker.io/linuxkit/runc:{tree}\n"


def test_a_modified_package_is_dirty_with_a_hash_of_its_file_bytes(repo: Path) -> None:
    package = repo / "pkg" / "runc"
    tree = git(repo, "rev-parse", "HEAD:pkg/runc")
    (package / "junk.o").write_text("ignored\n")  # ignored files change nothing
    assert package_name(package) == f"linuxkit/runc:{tree}"
    (package / "Dockerfile").write_text("FROM scratch\n")
    (package / "extra").write_text("untracked\n")
    # tracked files in index order, then untracked ones; bytes only (no names)
    data = b"".join((package / name).read_bytes() for name in ("Dockerfile", "build.yml", "extra"))
    assert package_name(package) == f"linuxkit/runc:{tree}-dirty-{hashlib.sha256(data).hexdigest()[:7]}"
    git(repo, "checkout", "--", "pkg/runc/Dockerfile")
    data = b"".join((package / name).read_bytes() for name in ("Dockerfile", "build.yml", "extra"))
    assert package_name(package) == f"linuxkit/runc:{tree}-dirty-{hashlib.sha256(data).hexdigest()[:7]}"
    (package / "extra").unlink()
    assert package_name(package) == f"linuxkit/runc:{tree}"
    # --hash-commit other than HEAD never is dirty
    (package / "extra").write_text("untracked\n")
    assert package_name(package, options=TagOptions(hash_commit="HEAD~0")) == f"linuxkit/runc:{tree}"


def test_outside_git_the_tag_is_latest_and_an_uncommitted_package_is_an_error(tmp_path: Path, repo: Path) -> None:
    assert package_name(lk_package(tmp_path / "loose")) == "linuxkit/runc:latest"
    assert package_name(lk_package(tmp_path / "loose"), options=TagOptions(tag="v1-{{.Hash}}")) == "linuxkit/runc:v1-"
    new = lk_package(repo / "pkg" / "new", "image: new\norg: me\n")
    status, out, err = cli("pkg", "show-tag", repo / "pkg" / "runc", new)
    assert (status, out) == (1, "")  # nothing printed when one package fails
    assert err == (f"linuxkit-py: package {new} is not in git "
                   "(hint: commit the package directory (git add, git commit))\n")


def test_a_package_at_the_repository_top_uses_the_commit_tree(tmp_path: Path) -> None:
    top = lk_package(tmp_path / "top", "image: top\n")
    git(top, "init", "-q")
    git(top, "add", ".")
    git(top, "commit", "-qm", "top")
    assert package_name(top) == f"linuxkit/top:{git(top, 'show', '--format=%T', '-s', 'HEAD')}"


def test_show_tag_flags_org_hash_tag_dev(repo: Path) -> None:
    package = repo / "pkg" / "runc"
    tree = git(repo, "rev-parse", "HEAD:pkg/runc")
    assert cli("pkg", "show-tag", "--org", "acme", package)[1] == f"acme/runc:{tree}\n"
    assert cli("pkg", "show-tag", package, env={"LINUXKIT_PKG_ORG": "envorg"})[1] == f"envorg/runc:{tree}\n"
    assert cli("pkg", "show-tag", "--hash", "v9", package)[1] == "linuxkit/runc:v9\n"
    assert cli("pkg", "show-tag", "--tag", "1.0-{{ .Hash }}", package)[1] == f"linuxkit/runc:1.0-{tree}\n"
    assert cli("pkg", "show-tag", "--dev", package, env={"USER": "ann"})[1] == "ann/runc:dev\n"
    assert cli("pkg", "show-tag", "--force-dirty", package)[1].startswith(f"linuxkit/runc:{tree}-dirty-")
    status, _, err = cli("pkg", "show-tag", "--hash-path", repo / "other", package)
    assert (status, err) == (1, "linuxkit-py: Hash path is not a prefix of the package path\n")


def test_build_yml_tag_template_is_used_by_show_tag_not_by_at_pkg(repo: Path) -> None:
    package = repo / "pkg" / "runc"
    (package / "build.yml").write_text(RUNC_YML + "tag: release-{{.Hash}}\norg: acme\n")
    git(repo, "commit", "-qam", "tagged")
    tree = git(repo, "rev-parse", "HEAD:pkg/runc")
    assert cli("pkg", "show-tag", package)[1] == f"acme/runc:release-{tree}\n"
    spec = repo / "spec.yml"
    spec.write_text('kernel:\n  image: linuxkit/kernel:6.6\ninit:\n  - "@pkg:pkg/runc"\n')
    status, out, err = cli("build", "--dry-run", spec)
    assert (status, err) == (0, "")
    assert f"- docker.io/acme/runc:{tree}\n" in out  # the build.yml tag template is not used by @pkg:


def test_at_pkg_names_the_image_to_pull(repo: Path) -> None:
    tree = git(repo, "rev-parse", "HEAD:pkg/runc")
    spec = repo / "spec.yml"
    spec.write_text('kernel:\n  image: linuxkit/kernel:6.6\nonboot:\n  - name: runc\n    image: "@pkg:pkg/runc"\n')
    status, out, err = cli("build", "--dry-run", spec)
    assert (status, err) == (0, "")
    assert f"image: docker.io/linuxkit/runc:{tree}\n" in out


def test_pkg_build_of_a_linuxkit_package_says_what_to_do(repo: Path) -> None:
    package = repo / "pkg" / "runc"
    tree = git(repo, "rev-parse", "HEAD:pkg/runc")
    status, out, err = cli("pkg", "build", "--cache", repo / "cache", package)
    assert (status, out) == (1, "")
    assert err == (f"linuxkit-py: {package} is a LinuxKit package (build.yml with a Dockerfile): linuxkit-py does "
                   f"not run Dockerfiles (a spec's @pkg: pulls it as linuxkit/runc:{tree}) (hint: build and push "
                   f"it with `linuxkit pkg build --push {package}`, or write a linuxkit-py build.yml "
                   "(docs/packages.md))\n")


def test_the_keys_tell_the_two_formats_apart(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "build.yml").write_text("image: linuxkit-py/x\narches: [amd64]\n")
    assert load_definition(ours).image == "linuxkit-py/x"  # shared keys only, no Dockerfile: ours
    (ours / "Dockerfile").write_text("FROM scratch\n")
    assert package_name(ours) == "linuxkit/linuxkit-py/x:latest"  # with a Dockerfile: LinuxKit's (org/image)
    (ours / "build.yml").write_text("image: x\npackages: [busybox-static]\nnetwork: true\n")
    with pytest.raises(SpecError) as exc:
        package_name(ours)
    assert str(exc.value) == (f"{ours}/build.yml:3:1: network: a LinuxKit key, but packages (line 2) is not: a "
                              "build.yml is either a LinuxKit package (image, org, network, ... and a Dockerfile) "
                              "or ours (image, packages, files, ...)")


@pytest.mark.parametrize(("text", "error"), [
    ("org: acme\n", "build.yml:1:1: Image field is required (hint: LinuxKit never takes the image name from "
                    "the directory)"),
    ("image: x\nnetwork: yes\n", "build.yml:2:10: network: expected true or false, got the string \"yes\" "
                                 "(hint: yes/no/on/off are strings in YAML 1.2 (as in LinuxKit): write true or false)"),
    ("image: x\norg: o\nbuilder-config: y\n", "build.yml:3:1: builder-config: unknown key"),
    ("image: x\norg: o\nconfig:\n  pid: nope\n", "build.yml:4:8: config.pid: \"nope\" is not host, root, new"),
])
def test_linuxkit_build_yml_mistakes_are_located(tmp_path: Path, text: str, error: str) -> None:
    package = lk_package(tmp_path / "p", text)
    with pytest.raises(UserError) as exc:
        package_name(package)
    assert str(exc.value).startswith(f"{package}/{error}")


def test_extra_sources_join_the_hash(repo: Path) -> None:
    (repo / "shared").mkdir()
    (repo / "shared" / "lib.c").write_text("int x;\n")
    (repo / "pkg" / "runc" / "build.yml").write_text(RUNC_YML + "extra-sources:\n  - ../../shared:/shared\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "extra")
    tree, shared = git(repo, "rev-parse", "HEAD:pkg/runc"), git(repo, "rev-parse", "HEAD:shared")
    expected = hashlib.sha1((tree + shared).encode()).hexdigest()
    assert package_name(repo / "pkg" / "runc") == f"linuxkit/runc:{expected}"
    (repo / "pkg" / "runc" / "build.yml").write_text(RUNC_YML + "extra-sources:\n  - a:b:c\n")
    with pytest.raises(UserError, match="^bad source format in a:b:c$"):
        package_name(repo / "pkg" / "runc")


def test_reference_expansion_and_templates() -> None:
    assert expand_reference("linuxkit/runc:1") == "docker.io/linuxkit/runc:1"
    assert expand_reference("alpine") == "docker.io/library/alpine"
    assert expand_reference("localhost/x:1") == "localhost/x:1"
    assert expand_reference("ghcr.io/x:1") == "ghcr.io/x:1"
    assert expand_reference("a/b/c:1") == "a/b/c:1"
    assert render_tag("{{.Hash}}", "abc") == "abc"
    assert render_tag("v1 {{- .Hash -}} x", "abc") == "v1abcx"
    with pytest.raises(UserError, match="invalid tag template"):
        render_tag("{{.Other}}", "abc")


def test_an_unquoted_octal_mode_in_config_is_read_as_written(tmp_path: Path) -> None:
    # LinuxKit's pkg/getty/build.yml has `mode: 0666` under config.devices (yaml.v3 gives its Go string "0666")
    package = lk_package(tmp_path / "getty", "image: getty\nconfig:\n  devices:\n    - path: /dev/console\n"
                                             "      type: c\n      major: 5\n      minor: 1\n      mode: 0666\n")
    assert package_name(package) == "linuxkit/getty:latest"
