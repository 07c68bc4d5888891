"""`linuxkit run qemu [options] PATH`, LinuxKit's documented form with the options after `qemu` (issue 10), boots
specs/webserver.yml and its web server answers on the published port; so it does with --detached, whose pid
stops it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from linuxkit_py.pkg.debs import debs_dir
from tests.boot.test_qemu_runner import free_port, qemu_still_running
from tests.boot.test_specs import SPECS, http_get, run_and_get
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
    status, body, console, stderr, returncode = run_and_get(
        ["qemu", "--publish", f"{port}:80", "-mem", "512", "--accel", "tcg", "--timeout", "180", str(webserver)], port)
    assert status == 200, console[-3000:]
    assert b"<h1>Hello from a linuxkit-py image</h1>" in body
    assert returncode == 143, stderr


def _gone(pid: int) -> bool:
    """The process ended (a zombie whose parent is gone counts: it runs nothing any more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@pytest.mark.boot
def test_detached_run_goes_on_in_the_background_until_its_pid_is_killed(webserver: Path) -> None:
    port = free_port()
    result = run_cli("run", "qemu", "--detached", "--publish", f"{port}:80", "-mem", "512", "--accel", "tcg",
                     webserver, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    pid = int(result.stdout)
    try:
        status, _ = http_get(port, "/", time.monotonic() + 120)
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    state = webserver.with_name("webserver-state")
    assert status == 200
    assert _gone(pid) and not qemu_still_running(webserver.with_name("webserver-initrd.img"))
    assert (state / "run.pid").read_text() == f"{pid}\n"
    assert "service httpd: started" in (state / "console.log").read_text(errors="replace")
