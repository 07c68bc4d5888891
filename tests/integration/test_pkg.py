"""`linuxkit-py pkg build` / `pkg show-tag` with real Debian packages, and `@pkg:` in specs.

The .debs are downloaded with apt-get into each test cache's linuxkit-py/debs/. To keep repeated
runs quick, downloaded .debs (and apt's cached answers) are also kept in tests/.cache/pkg-debs/ and
linked into new test caches; without that directory everything is simply downloaded again.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxkit_py.arch import host_arch
from linuxkit_py.archive.entry import Entry, Kind, read_data
from linuxkit_py.cache.image import Image, load_cached_image
from linuxkit_py.cache.layers import layer_entries
from linuxkit_py.cache.layout import Cache
from linuxkit_py.pkg.build import build_package
from linuxkit_py.pkg.debs import debs_dir, unpacked_dir
from tests.debstore import DEB_STORE, link_files
from tests.integration.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def seeded_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Fresh cache directories get the stored .debs; what the session downloads is stored afterwards."""
    caches: list[Path] = []
    yield caches
    for cache in caches:
        if debs_dir(Cache(cache)).is_dir():
            link_files(debs_dir(Cache(cache)), DEB_STORE)


@pytest.fixture
def new_cache(tmp_path: Path, seeded_caches: list[Path]) -> Iterator[Path]:
    cache = tmp_path / "cache"
    if DEB_STORE.is_dir():
        link_files(DEB_STORE, debs_dir(Cache(cache)))
    seeded_caches.append(cache)
    yield cache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory, seeded_caches: list[Path]) -> Path:
    """One cache for the module's builds (what a user's ~/.cache/linuxkit-py is)."""
    cache = tmp_path_factory.mktemp("pkg") / "cache"
    if DEB_STORE.is_dir():
        link_files(DEB_STORE, debs_dir(Cache(cache)))
    seeded_caches.append(cache)
    return cache


def write_package(directory: Path, build_yml: str, files: dict[str, tuple[bytes, int]] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "build.yml").write_text(build_yml)
    for name, (data, mode) in (files or {}).items():
        (directory / name).write_bytes(data)
        os.chmod(directory / name, mode)
    return directory


BUSYBOX_YML = """\
image: linuxkit-py/test-busybox
packages: [busybox-static]
libraries: none
files:
  - source: rc.init
    path: /etc/rc.init
  - path: /etc/hostname
    contents: "box\\n"
    mode: "0600"
directories: [/proc, {path: /var/empty, mode: "0700"}]
symlinks:
  /bin/sh: busybox
  /sbin/init: /bin/busybox
config:
  pid: host
  capabilities: [CAP_SYS_ADMIN]
entrypoint: ["/bin/sh"]
cmd: ["-c", "echo hi"]
env: ["PATH=/bin"]
workdir: /
"""
RC_INIT = b"#!/bin/sh\necho rc.init\n"

RUNC_YML = """\
image: linuxkit-py/test-runc
packages: [runc]
exclude: [usr/share/bash-completion]
config:
  pid: host
"""


@pytest.fixture(scope="module")
def busybox_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_package(tmp_path_factory.mktemp("busybox"), BUSYBOX_YML, {"rc.init": (RC_INIT, 0o755)})


@pytest.fixture(scope="module")
def runc_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_package(tmp_path_factory.mktemp("runc"), RUNC_YML)


def pkg(*args: str | Path, cache: Path) -> subprocess.CompletedProcess[bytes]:
    return run_cli("pkg", *args, "--cache", cache)


def built_name(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip()


def image_of(cache: Path, name: str) -> Image:
    image = load_cached_image(Cache(cache), f"docker.io/{name}", "amd64")
    assert image is not None, name
    return image


def files_of(cache: Path, image: Image) -> dict[str, Entry]:
    [layer] = image.layers
    return {e.path: e for e in layer_entries(Cache(cache), layer)}


def deb_members(cache: Path, package: str) -> dict[str, bytes | None]:
    """What dpkg-deb says the cached .deb holds: path -> contents of a regular file (None otherwise)."""
    [deb] = debs_dir(Cache(cache)).glob(f"{package}_*_{host_arch()}.deb")  # the store has arm64 ones too
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {m.name.removeprefix("./").rstrip("/"): tf.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
                for m in tf.getmembers() if m.name not in ("./", ".")}


DOCS = re.compile(r"^usr/share/(doc|man|info|locale|lintian)(/|$)")


def test_busybox_package_with_files_and_symlinks(cache_dir: Path, busybox_pkg: Path) -> None:
    name = built_name(pkg("build", busybox_pkg, cache=cache_dir))
    assert re.fullmatch(r"linuxkit-py/test-busybox:[0-9a-f]{40}", name)
    image = image_of(cache_dir, name)
    files = files_of(cache_dir, image)
    deb = deb_members(cache_dir, "busybox-static")
    assert any(DOCS.match(p) for p in deb)
    ours = {"etc", "etc/rc.init", "etc/hostname", "proc", "var", "var/empty", "bin/sh", "sbin", "sbin/init"}
    assert set(files) == {p for p in deb if not DOCS.match(p)} | ours
    assert read_data(files["bin/busybox"].data) == deb["bin/busybox"]
    assert (files["etc/rc.init"].mode, read_data(files["etc/rc.init"].data)) == (0o755, RC_INIT)
    assert (files["etc/hostname"].mode, read_data(files["etc/hostname"].data)) == (0o600, b"box\n")
    assert (files["var/empty"].kind, files["var/empty"].mode) == (Kind.DIR, 0o700)
    assert (files["bin/sh"].kind, files["bin/sh"].linkname) == (Kind.SYMLINK, "busybox")
    assert files["sbin/init"].linkname == "/bin/busybox"
    assert image.runtime_config == {
        "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "echo hi"], "Env": ["PATH=/bin"], "WorkingDir": "/",
        "Labels": {"org.mobyproject.config": '{"pid":"host","capabilities":["CAP_SYS_ADMIN"]}',
                   "org.linuxkit-py.debs": f"busybox-static={busybox_version(cache_dir)}"},
    }
    # skopeo takes the host's platform out of the index (beside it: the SBOM attestation), umoci unpacks it,
    # and the busybox in it runs
    bundle, single = cache_dir.parent / "bundle", cache_dir.parent / "single"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{cache_dir}:docker.io/{name}", f"oci:{single}:image"],
                   check=True, capture_output=True)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{single}:image", bundle],
                   check=True, capture_output=True)
    out = subprocess.run([bundle / "rootfs" / "bin" / "busybox", "echo", "from the image"], capture_output=True)
    assert out.stdout == b"from the image\n"


def busybox_version(cache: Path) -> str:
    [deb] = debs_dir(Cache(cache)).glob(f"busybox-static_*_{host_arch()}.deb")
    return deb.name.split("_")[1].replace("%3a", ":")


def test_two_builds_give_the_same_tag_and_digest(cache_dir: Path, busybox_pkg: Path, new_cache: Path) -> None:
    name = built_name(pkg("build", busybox_pkg, cache=cache_dir))
    first = image_of(cache_dir, name).digest
    index = Cache(cache_dir).get_ref(f"docker.io/{name}")["digest"]  # type: ignore[index]
    again = pkg("build", busybox_pkg, cache=cache_dir)
    assert built_name(again) == name
    assert b"already in the cache" in again.stderr
    forced = pkg("build", "--force", busybox_pkg, cache=cache_dir)
    assert built_name(forced) == name
    assert f"built docker.io/{name} {index}".encode() in forced.stderr  # the image and its SBOM, alike
    # another cache, unpacking everything afresh
    assert built_name(pkg("build", busybox_pkg, cache=new_cache)) == name
    assert image_of(new_cache, name).digest == first


def test_show_tag_equals_the_built_tag_and_downloads_nothing(cache_dir: Path, runc_pkg: Path,
                                                             tmp_path: Path) -> None:
    name = built_name(pkg("build", runc_pkg, cache=cache_dir))
    empty = tmp_path / "empty-cache"
    shown = pkg("show-tag", runc_pkg, cache=empty)
    assert built_name(shown) == name
    assert not list(empty.rglob("*.deb"))
    assert not (empty / "index.json").exists()


def test_the_tag_changes_with_inputs(tmp_path: Path, cache_dir: Path) -> None:
    base = write_package(tmp_path / "a", "image: linuxkit-py/t\nlibraries: none\nfiles:\n  - source: f\n"
                         "    path: /f\n", {"f": (b"one", 0o644)})
    tags = [built_name(pkg("show-tag", base, cache=cache_dir))]
    (base / "f").write_bytes(b"two")
    tags.append(built_name(pkg("show-tag", base, cache=cache_dir)))
    os.chmod(base / "f", 0o755)
    tags.append(built_name(pkg("show-tag", base, cache=cache_dir)))
    (base / "build.yml").write_text((base / "build.yml").read_text() + "# a comment\n")
    tags.append(built_name(pkg("show-tag", base, cache=cache_dir)))
    (base / "build.yml").write_text((base / "build.yml").read_text() + "packages: [busybox-static]\n")
    tags.append(built_name(pkg("show-tag", base, cache=cache_dir)))
    assert len(set(tags)) == len(tags), tags


def extract(files: dict[str, Entry], root: Path) -> None:
    for entry in files.values():
        path = root / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind is Kind.DIR:
            path.mkdir(exist_ok=True)
        elif entry.kind is Kind.SYMLINK:
            path.symlink_to(entry.linkname)
        elif entry.kind is Kind.FILE:
            path.write_bytes(read_data(entry.data))
            os.chmod(path, entry.mode)


def test_runc_gets_exactly_its_library_closure(cache_dir: Path, runc_pkg: Path, tmp_path: Path) -> None:
    name = built_name(pkg("build", runc_pkg, cache=cache_dir))
    image = image_of(cache_dir, name)
    files = files_of(cache_dir, image)
    libraries = {p: (e.kind, e.linkname) for p, e in files.items() if p.startswith(("lib", "usr/lib"))
                 and e.kind is not Kind.DIR}
    [seccomp] = [p for p in libraries if re.fullmatch(r"usr/lib/x86_64-linux-gnu/libseccomp\.so\.2\.\d+\.\d+", p)]
    assert libraries == {
        "lib64/ld-linux-x86-64.so.2": (Kind.SYMLINK, "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": (Kind.FILE, ""),
        "lib/x86_64-linux-gnu/libc.so.6": (Kind.FILE, ""),
        "usr/lib/x86_64-linux-gnu/libseccomp.so.2": (Kind.SYMLINK, seccomp.rsplit("/", 1)[1]),
        seccomp: (Kind.FILE, ""),
    }
    assert {p for p in files if not p.startswith(("lib", "usr/lib"))} == {
        "usr", "usr/bin", "usr/bin/runc", "usr/sbin", "usr/sbin/runc"}
    assert not any("gconv" in p or "locale" in p or "libm.so" in p for p in files)
    labels = image.labels
    assert labels["org.mobyproject.config"] == '{"pid":"host"}'
    assert [d.split("=")[0] for d in labels["org.linuxkit-py.debs"].split()] == ["libc6", "libseccomp2", "runc"]
    # the image's own loader, confined to the image's directories, runs the image's runc
    root = tmp_path / "root"
    extract(files, root)
    loader = root / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    search = f"{root}/lib/x86_64-linux-gnu:{root}/usr/lib/x86_64-linux-gnu"
    listed = subprocess.run([loader, "--inhibit-cache", "--library-path", search, "--list", root / "usr/sbin/runc"],
                            check=True, capture_output=True).stdout.decode()
    resolved = re.findall(r"=> (\S+)", listed)
    assert resolved and all(p.startswith(str(root)) for p in resolved), listed
    version = subprocess.run([loader, "--inhibit-cache", "--library-path", search, root / "usr/sbin/runc",
                              "--version"], check=True, capture_output=True).stdout
    assert version.startswith(b"runc version")


def error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    progress = ("downloading ", "apt-get update", "apt-get failed")  # apt-get update needs root
    lines = [line for line in result.stderr.decode().splitlines() if not line.startswith(progress)]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_missing_library_fails_naming_the_binary_and_the_library(cache_dir: Path, tmp_path: Path) -> None:
    directory = write_package(tmp_path / "runc", "image: linuxkit-py/bad\npackages: [runc, libc6]\n"
                                                 "libraries: none\n")
    result = pkg("build", directory, cache=cache_dir)
    assert error_line(result) == (
        f"linuxkit-py: {directory}/build.yml: /usr/sbin/runc needs libseccomp.so.2, which is not in the image "
        "(hint: add the Debian package that has it to packages, or use libraries: auto)")
    assert load_cached_image(Cache(cache_dir), f"docker.io/{built_name(pkg('show-tag', directory, cache=cache_dir))}",
                             "amd64") is None


def fake_elf_header(machine: int) -> bytes:
    """An ELF64 header alone (System V gABI): no program headers, no sections."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)


def test_an_elf_file_of_another_architecture_fails(cache_dir: Path, tmp_path: Path) -> None:
    em_aarch64 = 183
    build_yml = BUSYBOX_YML.replace("files:\n", "files:\n  - source: tool\n    path: /usr/bin/tool\n")
    directory = write_package(tmp_path / "mixed", build_yml,
                              {"rc.init": (RC_INIT, 0o755), "tool": (fake_elf_header(em_aarch64), 0o755)})
    assert error_line(pkg("build", directory, cache=cache_dir)) == (
        f"linuxkit-py: {directory}/build.yml: /usr/bin/tool is an ELF file for aarch64, but the image is for amd64")


def test_bad_build_yml_is_located(cache_dir: Path, tmp_path: Path) -> None:
    directory = write_package(tmp_path / "bad", "image: linuxkit-py/x\npackages:\n  - runc\nlibraries: auto\n"
                                                "entrypont: [/bin/sh]\n")
    for verb in ("build", "show-tag"):
        assert error_line(pkg(verb, directory, cache=cache_dir)) == (
            f'linuxkit-py: {directory}/build.yml:5:1: entrypont: unknown key (hint: did you mean "entrypoint"?)')
    directory = write_package(tmp_path / "unknown", "image: linuxkit-py/x\npackages:\n  - runc\n"
                                                    "  - no-such-package-here\n")
    line = error_line(pkg("show-tag", directory, cache=cache_dir))
    assert line == (f"linuxkit-py: {directory}/build.yml:4:5: packages[1]: apt knows no Debian package "
                    '"no-such-package-here" for amd64')


def test_a_warm_build_downloads_and_decompresses_nothing(cache_dir: Path, runc_pkg: Path) -> None:
    cache = Cache(cache_dir)
    first = build_package(cache, runc_pkg)  # cold or warm, whatever the earlier tests left
    state = {p: p.stat().st_mtime_ns for p in [*debs_dir(cache).glob("*.deb"), *unpacked_dir(cache).iterdir()]}
    started = time.monotonic()
    again = build_package(cache, runc_pkg, force=True)
    seconds = time.monotonic() - started
    assert (again.built, again.digest, again.plan.tag) == (True, first.digest, first.plan.tag)
    assert {p: p.stat().st_mtime_ns for p in state} == state
    assert set(debs_dir(cache).glob("*.deb")) | set(unpacked_dir(cache).iterdir()) == set(state)
    assert seconds < 2.0, seconds


SPEC = """\
init:
  - "@pkg:../packages/busybox"
onboot:
  - name: hello
    image: "@pkg:../packages/busybox"
    command: ["/bin/busybox", "echo", "hello"]
services:
  - name: runc
    image: "@pkg:/ABS/runc"
    command: ["/usr/sbin/runc", "--version"]
"""


def test_spec_with_pkg_references_builds_packages_on_demand(tmp_path: Path, new_cache: Path, busybox_pkg: Path,
                                                            runc_pkg: Path) -> None:
    packages = tmp_path / "packages"
    shutil.copytree(busybox_pkg, packages / "busybox")
    specs = tmp_path / "specs"
    specs.mkdir()
    spec = specs / "system.yml"
    spec.write_text(SPEC.replace("/ABS/runc", str(runc_pkg)))
    busybox_name = built_name(pkg("show-tag", packages / "busybox", cache=new_cache))
    runc_name = built_name(pkg("show-tag", runc_pkg, cache=new_cache))
    dry = run_cli("build", "--dry-run", "--cache", new_cache, spec)
    assert dry.returncode == 0, dry.stderr.decode()
    assert dry.stdout.decode().count(f"docker.io/{busybox_name}\n") == 2
    assert f"image: docker.io/{runc_name}\n" in dry.stdout.decode()
    assert load_cached_image(Cache(new_cache), f"docker.io/{busybox_name}", "amd64") is None  # dry: nothing built

    out = tmp_path / "out"
    first = run_cli("build", "-f", "tar", "--dir", out, "--cache", new_cache, spec)
    assert first.returncode == 0, first.stderr.decode()
    assert first.stderr.decode().count("building package") == 2
    assert image_of(new_cache, busybox_name).ref == f"docker.io/{busybox_name}"
    assert image_of(new_cache, runc_name).ref == f"docker.io/{runc_name}"
    second = run_cli("build", "-f", "tar", "--dir", out / "again", "--cache", new_cache, spec)
    assert second.returncode == 0, second.stderr.decode()
    assert "building package" not in second.stderr.decode()
    assert "downloading" not in second.stderr.decode()
    assert (out / "system.tar").read_bytes() == (out / "again" / "system.tar").read_bytes()
    with tarfile.open(out / "system.tar") as tf:
        names = set(tf.getnames())
    assert {"bin/busybox", "etc/rc.init", "containers/onboot/000-hello/lower/bin/busybox",
            "containers/services/runc/lower/usr/sbin/runc"} <= names


KERNEL_YML = """\
image: linuxkit-py/test-kernel
kernel:
  package: linux-image-cloud-amd64
  modules: ["kernel/fs/overlayfs/**"]
"""


def test_kernel_package_from_the_metapackage(cache_dir: Path, tmp_path: Path) -> None:
    directory = write_package(tmp_path / "kernel", KERNEL_YML)
    name = built_name(pkg("build", directory, cache=cache_dir))
    image = image_of(cache_dir, name)
    files = files_of(cache_dir, image)
    assert set(files) == {"kernel", "kernel.tar"}
    version = image.labels["org.linuxkit-py.kernel.version"]
    # the metapackage was resolved to the versioned linux-image package the metapackage depends on
    [deb] = debs_dir(Cache(cache_dir)).glob(f"linux-image-{version}_*.deb")
    assert image.labels["org.linuxkit-py.debs"].startswith(f"linux-image-{version}=")
    data_tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data_tar)) as tf:
        member = tf.extractfile(f"./boot/vmlinuz-{version}")
        assert member is not None
        assert read_data(files["kernel"].data) == member.read()
    with tarfile.open(fileobj=io.BytesIO(read_data(files["kernel.tar"].data))) as kernel_tar:
        names = kernel_tar.getnames()
    assert f"lib/modules/{version}/kernel/fs/overlayfs/overlay.ko" in names
    assert f"lib/modules/{version}/modules.dep" in names
