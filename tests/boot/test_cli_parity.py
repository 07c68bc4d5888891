"""`linuxkit run qemu [options] PATH`, LinuxKit's documented form with the options after `qemu` (issue 10), boots
specs/webserver.yml and its web server answers on the published port."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.pkg.debs import debs_dir
from tests.boot.test_qemu_runner import free_port
from tests.boot.test_specs import SPECS, http_get
from tests.debstore import DEB_STORE, link_files
from tests.integration.conftest import run_cli


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """specs/webserver.yml's kernel+initrd, built with `--cache DIR` before the verb, as LinuxKit's tests do."""
    root = tmp_path_factory.mktemp("cli-parity")
    debs = debs_dir(Cache(root / "cache"))
    if DEB_STORE.is_dir():
        link_files(DEB_STORE, debs)
    result = run_cli("--cache", root / "cache", "build", "--dir", root / "out", SPECS / "webserver.yml", stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    yield root / "out" / "webserver"
    if debs.is_dir():
        link_files(debs, DEB_STORE)


@pytest.mark.boot
def test_run_qemu_with_options_after_qemu_serves_http(webserver: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "linuxkit_py", "run", "qemu", "--publish", f"{port}:80", "-mem", "512",
         "--accel", "tcg", "--timeout", "180", str(webserver)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        status, body = http_get(port, "/", time.monotonic() + 120)
    finally:
        proc.send_signal(signal.SIGTERM)
        console, stderr = proc.communicate(timeout=30)
    assert status == 200, console.decode(errors="replace")[-3000:]
    assert b"<h1>Hello from a linuxkit-py image</h1>" in body
    assert proc.returncode == 143, stderr.decode()
