"""build.yml: defaults, typed values, and every mistake reported as `build.yml:line:col: key: message`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linuxkit_py.errors import SpecError, UserError
from linuxkit_py.pkg.definition import load_definition


def write_package(root: Path, text: str, files: dict[str, tuple[bytes, int]] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "build.yml").write_text(text)
    for name, (data, mode) in (files or {}).items():
        (root / name).write_bytes(data)
        os.chmod(root / name, mode)
    return root


def error_of(tmp_path: Path, text: str) -> str:
    directory = write_package(tmp_path / "pkg", text)
    with pytest.raises(SpecError) as exc:
        load_definition(directory)
    return str(exc.value)


def test_every_key_is_typed_and_defaults_apply(tmp_path: Path) -> None:
    directory = write_package(tmp_path / "pkg", """\
image: linuxkit-py/runc
packages: [runc, busybox-static]
include: ["usr/sbin/**"]
exclude: [usr/share/bash-completion]
keep: ["usr/share/zoneinfo/**"]
files:
  - source: rc.init
    path: /etc/rc.init
  - source: motd
    path: etc/motd
  - path: /etc/hostname
    contents: "box\\n"
  - path: /etc/secret
    contents: ""
    mode: 0600
directories:
  - /proc
  - {path: /var/empty, mode: "0700"}
symlinks:
  /sbin/init: /bin/busybox
config:
  pid: host
  capabilities: [CAP_SYS_ADMIN]
entrypoint: ["/usr/sbin/runc"]
cmd: []
env: ["PATH=/bin"]
workdir: /
""", files={"rc.init": (b"#!/bin/sh\n", 0o755), "motd": (b"hi\n", 0o640)})
    d = load_definition(directory)
    assert (d.image, d.arches, d.packages, d.libraries) == (
        "linuxkit-py/runc", ("amd64",), ("runc", "busybox-static"), True)
    assert (d.include, d.exclude, d.keep) == (
        ("usr/sbin/**",), ("usr/share/bash-completion",), ("usr/share/zoneinfo/**",))
    assert [(f.path, f.mode, f.source_name, f.contents) for f in d.files] == [
        ("etc/rc.init", 0o755, "rc.init", None),  # executable source: 0755
        ("etc/motd", 0o644, "motd", None),  # otherwise 0644
        ("etc/hostname", 0o644, "", b"box\n"),
        ("etc/secret", 0o600, "", b""),
    ]
    assert d.files[0].source == directory / "rc.init"
    assert d.directories == (("proc", 0o755), ("var/empty", 0o700))
    assert d.symlinks == (("sbin/init", "/bin/busybox"),)
    assert d.config == {"pid": "host", "capabilities": ["CAP_SYS_ADMIN"]}
    assert (d.entrypoint, d.cmd, d.env, d.workdir, d.kernel) == (("/usr/sbin/runc",), (), ("PATH=/bin",), "/", None)
    assert d.text == (directory / "build.yml").read_bytes()


def test_minimal_definition(tmp_path: Path) -> None:
    d = load_definition(write_package(tmp_path / "pkg", "image: localhost:5000/me/tools\nlibraries: none\n"))
    assert (d.image, d.packages, d.libraries, d.files, d.config, d.entrypoint, d.cmd) == (
        "localhost:5000/me/tools", (), False, (), None, None, None)


def test_kernel_key(tmp_path: Path) -> None:
    d = load_definition(write_package(tmp_path / "pkg", """\
image: linuxkit-py/kernel
kernel:
  package: linux-image-cloud-amd64
  modules: ["kernel/fs/overlayfs/**"]
"""))
    assert d.kernel is not None
    assert (d.kernel.package, d.kernel.modules) == ("linux-image-cloud-amd64", ("kernel/fs/overlayfs/**",))


@pytest.mark.parametrize(("text", "expected"), [
    ("image: x\npackagez: [runc]\n", '2:1: packagez: unknown key (hint: did you mean "packages"?)'),
    ("packages: [runc]\n", '1:1: missing required key "image"'),
    ("image: x\npackages: [runc, Runc]\n", '2:18: packages[1]: "Runc" is not a Debian package name'),
    ("image: x\npackages: [runc, runc]\n", '2:18: packages[1]: "runc" is listed twice (first as packages[0])'),
    ("image: x\npackages: runc\n", '2:11: packages: expected a list, got the string "runc"'),
    ("image: linuxkit-py/runc:v1\n", '1:8: image: "linuxkit-py/runc:v1" has a tag or digest: give the '
                                     'repository name only, the tag is computed'),
    ("image: Bad/Name\n", "1:8: image: invalid image reference 'Bad/Name': bad repository name 'Name'"),
    ("image: x\nlibraries: some\n", '2:12: libraries: "some" is not one of: auto, none'),
    ("image: x\narches: [i386]\n", '2:10: arches[0]: "i386" is not one of: amd64, arm64'),
    ("image: x\ninclude: [/usr/bin]\n", '2:11: include[0]: "/usr/bin": a glob is a path without a leading / '
                                        '(hint: write "usr/bin")'),
    ("image: x\nfiles:\n  - path: /a\n", "3:5: files[0]: give exactly one of source (a file of the package "
                                         "directory) or contents"),
    ("image: x\nfiles:\n  - path: /a\n    contents: b\n    mode: 644\n",
     '5:11: files[0].mode: 644 is not an octal mode: a number without a leading 0 is ambiguous '
     '(hint: write the mode as an octal string, e.g. "0644")'),
    ("image: x\nfiles:\n  - path: /\n    contents: b\n", '3:11: files[0].path: "/" names the root directory'),
    ("image: x\nfiles:\n  - path: /a\n    contents: b\n    owner: root\n",
     "5:5: files[0].owner: unknown key (hint: known keys: path, source, contents, mode)"),
    ("image: x\nconfig:\n  capabilities: [CAP_FOO]\n",
     '3:18: config.capabilities[0]: unknown capability "CAP_FOO"'),
    ("image: x\nconfig:\n  name: foo\n", "3:9: config.name: cannot be set in a label"),
    ("image: x\nconfig:\n  binds: [3]\n", '3:11: config.binds[0]: expected a string, got the number 3 '
                                          '(hint: quote it: "3")'),
    ("image: x\nkernel:\n  modules: []\n", '3:3: kernel: missing required key "package"'),
    ("image: x\nsymlinks:\n  /a: \"\"\n", "3:7: symlinks./a: a symlink needs a target"),
    ("- image: x\n", "1:1: build.yml must be a mapping (image:, packages:, ...), got a list"),
    ("image: x\n  bad: [\n", "2:6: invalid YAML: mapping values are not allowed here"),
])
def test_mistakes_are_located(tmp_path: Path, text: str, expected: str) -> None:
    got = error_of(tmp_path, text)
    assert got == f"{tmp_path / 'pkg' / 'build.yml'}:{expected}"


def test_missing_source_file_is_located(tmp_path: Path) -> None:
    got = error_of(tmp_path, "image: x\nfiles:\n  - path: /etc/a\n    source: nope\n")
    assert got == f"{tmp_path / 'pkg' / 'build.yml'}:4:13: files[0].source: cannot read " \
                  f"{tmp_path / 'pkg' / 'nope'}: No such file or directory"


def test_missing_directory_and_build_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^.*/nowhere: no such package directory$"):
        load_definition(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^cannot read .*/empty/build.yml: No such file or directory$"):
        load_definition(tmp_path / "empty")
