"""`linuxkit-py run`: argument errors and how a non-interactive run's end becomes the exit status
(no qemu is started here; tests/boot/test_run_cli.py boots)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from linuxkit_py.cli import main
from linuxkit_py.errors import UserError
from linuxkit_py.run.cli import _exit_status
from linuxkit_py.run.qemu import BootResult


def run_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    status = main(["run", *map(str, args)])
    return status, capsys.readouterr().err


@pytest.fixture
def kernel_output(tmp_path: Path) -> Path:
    for name in ("os-kernel", "os-initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path / "os"


def test_nothing_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "nothing"
    assert run_main(capsys, "qemu", p) == (1, (
        f"linuxkit-py: nothing to run at {p}: looked for {p}-kernel with {p}-initrd.img, -squashfs.img or "
        f"-erofs.img, and for {p} itself as a file ending in .iso, .img, .raw, .qcow2, .vhd, .vhdx, .vmdk or .efi\n"))


def test_only_the_qemu_backend(kernel_output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(capsys, "hyperkit", kernel_output) == (
        1, "linuxkit-py: unknown run backend 'hyperkit' (hint: linuxkit-py runs images in qemu only)\n")


def test_missing_qemu_names_the_debian_package(kernel_output: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert run_main(capsys, kernel_output, "--timeout", "5") == (
        1, "linuxkit-py: qemu-system-x86_64 not found (hint: apt-get install qemu-system-x86)\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--publish", "8080"], "invalid port mapping '8080' (hint: use HOST:GUEST or HOST:GUEST/udp, e.g. 8080:80)"),
        (["--networking", "none", "--publish", "8080:80"],
         "--publish needs user networking (hint: drop --networking none)"),
        (["--disk", "data.img,cache=none"], "invalid disk option 'cache=none' in --disk 'data.img,cache=none' "
                                            "(hint: use [file=]PATH[,size=1G][,format=raw|qcow2])"),
        (["--mem", "8"], "invalid VM size: 8 MiB of memory, 1 CPUs (hint: use at least 16 MiB and 1 CPU)"),
        (["--uefi", "--fw", "/no/such/OVMF.fd"], "firmware /no/such/OVMF.fd not found"),
    ],
)
def test_bad_options_are_one_line(kernel_output: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                  message: str) -> None:
    assert run_main(capsys, kernel_output, "--accel", "tcg", "--timeout", "5", *args) == (
        1, f"linuxkit-py: {message}\n")


def test_a_missing_disk_without_a_size(kernel_output: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_main(capsys, kernel_output, "--accel", "tcg", "--timeout", "5", "--disk", tmp_path / "d.img")
    assert (status, err) == (1, f"linuxkit-py: disk {tmp_path}/d.img not found (hint: add ,size=1G to create it)\n")


def test_append_needs_a_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    iso = tmp_path / "os.iso"
    iso.write_bytes(b"x")
    assert run_main(capsys, iso, "--timeout", "5", "--append", "quiet") == (
        1, f"linuxkit-py: --append needs a kernel boot; the boot loader of {iso} sets its own command line\n")


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_timeout_must_be_positive(kernel_output: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", str(kernel_output), "--timeout", value])
    assert exc.value.code == 2
    assert f"argument --timeout: invalid number of seconds: {value!r}" in capsys.readouterr().err


def result(exit_code: int | None = 0, timed_out: bool = False, matched: bool = False, stderr: str = "") -> BootResult:
    return BootResult(output="", exit_code=exit_code, timed_out=timed_out, matched=matched, seconds=1.0,
                      stderr=stderr, command=[])


def args(timeout: float | None = None, until: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(timeout=timeout, until=until)


def test_exit_status_of_a_guest_that_powered_off() -> None:
    assert _exit_status(result(0), args(timeout=60)) == 0


def test_exit_status_when_until_matched() -> None:
    assert _exit_status(result(None, matched=True), args(timeout=60, until="ready")) == 0


def test_exit_status_on_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_status(result(None, timed_out=True), args(timeout=2.5)) == 124
    assert _exit_status(result(None, timed_out=True), args(timeout=30, until="ready")) == 124
    assert capsys.readouterr().err == (
        "linuxkit-py: the guest was still running after 2.5 s; stopped qemu\n"
        "linuxkit-py: 'ready' did not appear on the console after 30 s; stopped qemu\n")


def test_qemu_failing_is_its_last_message() -> None:
    stderr = "qemu-system-x86_64: warning: something\nqemu-system-x86_64: -drive x: Could not open 'x'\n\n"
    with pytest.raises(UserError) as err:
        _exit_status(result(1, stderr=stderr), args(timeout=60))
    assert str(err.value) == "qemu exited with status 1: qemu-system-x86_64: -drive x: Could not open 'x'"


def test_guest_stopping_before_until_matched() -> None:
    with pytest.raises(UserError) as err:
        _exit_status(result(0), args(until="ready"))
    assert str(err.value) == "the guest stopped before 'ready' appeared on the console"
