"""linuxkit_py.tools: finding external tools, the Debian package hint, running and stopping them."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from linuxkit_py.errors import UserError
from linuxkit_py.tools import require, require_file, run, start, stop


def test_require_returns_the_full_path() -> None:
    assert require("cpio") == "/usr/bin/cpio"


def test_missing_known_tool_names_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as err:
        require("qemu-system-x86_64")
    assert str(err.value) == "qemu-system-x86_64 not found (hint: apt-get install qemu-system-x86)"


def test_missing_unknown_tool_has_no_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as err:
        require("no-such-tool")
    assert str(err.value) == "no-such-tool not found"


def test_sbin_tools_are_found_without_sbin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert Path(require("sgdisk")).name == "sgdisk"


def test_require_file_names_the_package() -> None:
    with pytest.raises(UserError) as err:
        require_file("/nonexistent/OVMF.fd", "ovmf")
    assert str(err.value) == "/nonexistent/OVMF.fd not found (hint: apt-get install ovmf)"


def test_run_logs_the_command_and_captures_output(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="linuxkit_py.tools"):
        proc = run(["sh", "-c", "echo 'hello world'"], capture=True)
    assert proc.stdout == b"hello world\n"
    assert caplog.messages == ["run: /usr/bin/sh -c 'echo '\"'\"'hello world'\"'\"''"]


def test_run_failure_is_a_user_error_with_the_last_stderr_line() -> None:
    with pytest.raises(UserError) as err:
        run(["sh", "-c", "echo first >&2; echo 'disk full' >&2; exit 3"], capture=True)
    assert str(err.value) == "sh failed with exit status 3: disk full"


def test_run_without_check_returns_the_status() -> None:
    assert run(["sh", "-c", "exit 4"], check=False).returncode == 4


def test_run_timeout_is_a_user_error() -> None:
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        run(["sleep", "30"], timeout=0.2)
    assert str(err.value) == "sleep did not finish within 0.2 s: /usr/bin/sleep 30"
    assert time.monotonic() - started < 5


def test_run_missing_tool_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as err:
        run(["mksquashfs", "-version"])
    assert str(err.value) == "mksquashfs not found (hint: apt-get install squashfs-tools)"


def test_stop_terminates_politely() -> None:
    proc = start(["sleep", "30"])
    assert stop(proc) == -15


def test_stop_kills_a_process_that_ignores_sigterm() -> None:
    ignore_term = "trap '' TERM; echo ready; while :; do sleep 0.1; done"
    proc = start(["sh", "-c", ignore_term], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert stop(proc, grace=0.5) == -9
    assert time.monotonic() - started < 3
    proc.stdout.close()


def test_stop_returns_the_status_of_a_process_that_already_exited() -> None:
    proc = start(["sh", "-c", "exit 7"])
    proc.wait()
    assert stop(proc) == 7
