"""The `docker` output: LinuxKit's rootfs tar with its Dockerfile, written as a file, to -o FILE and to stdout."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.cache.layout import Cache
from linuxkit_py.formats import Rootfs, get_format
from tests.bootimages import LayoutImage
from tests.imagetools import file_sha256

EPOCH = 1_700_000_000
# What LinuxKit's `docker` output ends with (moby/build/build.go), byte for byte.
LINUXKIT_DOCKERFILE = '\nFROM scratch\n\nCOPY . ./\n\nENTRYPOINT ["/bin/rc.init"]\n'
END_OF_ARCHIVE = 1024


def _rootfs(tmp_path: Path) -> Rootfs:
    layer = tmp_path / "layer.tar"
    kernel = os.urandom(50_000)
    layer.write_bytes(b"\0" * 512 + kernel)
    cmdline = b"console=ttyS0"
    return Rootfs([
        Entry("boot", Kind.DIR, 0o755),
        Entry("boot/kernel", Kind.FILE, 0o644, size=len(kernel), data=FileRegion(str(layer), 512, len(kernel))),
        Entry("boot/cmdline", Kind.FILE, 0o644, size=len(cmdline), data=cmdline),
        Entry("bin", Kind.DIR, 0o755),
        Entry("bin/rc.init", Kind.FILE, 0o755, size=10, data=b"#!/bin/sh\n"),
        Entry("etc", Kind.DIR, 0o755),
        Entry("etc/motd", Kind.FILE, 0o644, uid=1, gid=2, size=6, data=b"hello\n"),
    ], EPOCH)


def _write(fmt: str, rootfs: Rootfs) -> bytes:
    out = io.BytesIO()
    get_format(fmt).write(rootfs, [out])
    return out.getvalue()


def test_format_row() -> None:
    fmt = get_format("docker")
    assert (fmt.suffixes, fmt.streamable, fmt.tools) == ((".docker",), True, ())


def test_docker_is_the_tar_output_with_linuxkits_dockerfile_last(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    docker, plain = _write("docker", rootfs), _write("tar", rootfs)

    # every byte of the tar output, then one more member before the end-of-archive blocks
    assert docker[: len(plain) - END_OF_ARCHIVE] == plain[:-END_OF_ARCHIVE]
    assert docker.endswith(bytes(END_OF_ARCHIVE))
    with tarfile.open(fileobj=io.BytesIO(docker)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["boot", "boot/kernel", "boot/cmdline", "bin", "bin/rc.init", "etc",
                                             "etc/motd", "Dockerfile"]
        dockerfile = members[-1]
        assert (dockerfile.mode, dockerfile.uid, dockerfile.gid, dockerfile.mtime) == (0o644, 0, 0, EPOCH)
        data = tar.extractfile(dockerfile)
        assert data is not None and data.read().decode() == LINUXKIT_DOCKERFILE
    assert _write("docker", rootfs) == docker


SPEC = """\
kernel:
  image: localhost:5000/test/kernel:1
  cmdline: console=ttyS0
init:
  - localhost:5000/test/init:1
"""


def _cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "linuxkit_py", *map(str, args)], capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=120)




def test_build_writes_name_docker_and_streams_with_o(tmp_path: Path, kernel_image: LayoutImage,
                                                     init_image: LayoutImage) -> None:
    def fill(cache_dir: Path) -> Path:
        cache = Cache(cache_dir)
        kernel_image.load_into(cache, "localhost:5000/test/kernel:1")
        init_image.load_into(cache, "localhost:5000/test/init:1")
        return cache_dir

    cache = fill(tmp_path / "cache")
    spec = tmp_path / "app.yml"
    spec.write_text(SPEC)
    out = tmp_path / "out"

    built = _cli("build", "--cache", cache, "--dir", out, "-f", "docker", spec)
    to_file = _cli("build", "--cache", cache, "-o", tmp_path / "app.tar", "-f", "docker", spec)
    to_stdout = _cli("build", "--cache", cache, "-o", "-", "-f", "docker", spec)

    for result in (built, to_file, to_stdout):
        assert result.returncode == 0, result.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == ["app.docker", "app.spdx.json"]
    docker = (out / "app.docker").read_bytes()
    assert (tmp_path / "app.tar").read_bytes() == docker == to_stdout.stdout
    with tarfile.open(fileobj=io.BytesIO(docker)) as tar:
        names = tar.getnames()
    assert names[-1] == "Dockerfile" and "boot/kernel" in names and "init" in names
    assert names.count("Dockerfile") == 1

    # reproducible: again from the same cache, and from an empty cache filled anew
    first = file_sha256(out / "app.docker")
    assert _cli("build", "--cache", cache, "--dir", out, "-f", "docker", spec).returncode == 0
    assert file_sha256(out / "app.docker") == first
    shutil.rmtree(out)
    cold = fill(tmp_path / "cold-cache")
    assert _cli("build", "--cache", cold, "--dir", out, "-f", "docker", spec).returncode == 0
    assert file_sha256(out / "app.docker") == first
