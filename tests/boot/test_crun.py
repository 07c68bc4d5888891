"""pkg/crun, the example specs' runtime: specs/webserver.yml's containers run on crun (Debian's, with the `runc` script
that gives it runc's command line) and its web server answers on the published port (docs/runtime.md, "crun").
pkg/runc, the same runtime on runc, is booted by tests/boot/test_runtime_boot.py."""

from __future__ import annotations

import gzip
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.pkg.debs import debs_dir
from tests.boot.test_qemu_runner import free_port
from tests.boot.test_specs import SPECS, run_and_get
from tests.debstore import DEB_STORE, link_files
from tests.integration.conftest import run_cli

REPO = SPECS.parent


@pytest.fixture(scope="module")
def webserver_on_crun(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("crun")
    text = (SPECS / "webserver.yml").read_text()
    assert '"@pkg:../pkg/crun"' in text
    spec = root / "webserver.yml"
    spec.write_text(text.replace('"@pkg:../', f'"@pkg:{REPO}/'))
    debs = debs_dir(Cache(root / "cache"))
    if DEB_STORE.is_dir():
        link_files(DEB_STORE, debs)
    result = run_cli("--cache", root / "cache", "build", "--dir", root / "out", spec, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    yield root / "out" / "webserver"
    if debs.is_dir():
        link_files(debs, DEB_STORE)


def test_the_image_carries_crun_and_no_runc_binary(webserver_on_crun: Path) -> None:
    cpio = gzip.decompress(webserver_on_crun.with_name("webserver-initrd.img").read_bytes())
    names = set(subprocess.run(["cpio", "-t", "--quiet"], input=cpio, capture_output=True, check=True)
                .stdout.decode().split())
    assert {"usr/bin/crun", "usr/sbin/runc"} <= names
    script = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "usr/sbin/runc"], input=cpio,
                             capture_output=True, check=True).stdout
    assert script.startswith(b"#!/bin/sh\n") and b"exec /usr/bin/crun" in script  # the script, not runc


@pytest.mark.boot
def test_webserver_on_crun_serves_http(webserver_on_crun: Path) -> None:
    port = free_port()
    status, body, text, _, _ = run_and_get(
        ["--publish", f"{port}:80", "--accel", "tcg", "--timeout", "180", str(webserver_on_crun)], port)
    assert status == 200, text[-3000:]
    assert b"<h1>Hello from a linuxkit-py image</h1>" in body
    assert "onboot dhcpcd: done in " in text and "service httpd: started" in text
    assert "unknown version specified" not in text
