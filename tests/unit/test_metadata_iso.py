"""The config ISO (`metadata create`, `run --data/--data-file`) and the qemu options that attach it and reach
a local metadata server (no qemu is started here; tests/boot/test_metadata_boot.py boots)."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pycdlib
import pytest

from linuxkit_py.cli import main
from linuxkit_py.errors import UserError
from linuxkit_py.run.metadata import write_metadata_iso
from linuxkit_py.run.qemu import QemuOptions, qemu_command

KERNEL, INITRD = Path("/out/k-kernel"), Path("/out/k-initrd.img")


def iso_contents(path: Path) -> tuple[str, bytes, bytes]:
    """(volume identifier, the Rock Ridge file `config`, the ISO 9660 file CONFIG.;1)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        volume = iso.pvd.volume_identifier.decode().strip()
        by_rr, by_iso = io.BytesIO(), io.BytesIO()
        iso.get_file_from_iso_fp(by_rr, rr_path="/config")
        iso.get_file_from_iso_fp(by_iso, iso_path="/CONFIG.;1")
        return volume, by_rr.getvalue(), by_iso.getvalue()
    finally:
        iso.close()


def test_the_config_iso_holds_the_data_as_config_on_a_volume_named_config(tmp_path: Path) -> None:
    data = b'{"ssh": {"entries": {"authorized_keys": {"content": "ssh-ed25519 AAAA"}}}}'
    iso = write_metadata_iso(tmp_path / "meta.iso", data)
    assert iso_contents(iso) == ("config", data, data)
    assert iso.stat().st_mode & 0o777 == 0o644


def test_the_same_data_gives_the_same_bytes(tmp_path: Path) -> None:
    first = write_metadata_iso(tmp_path / "a.iso", b"hello").read_bytes()
    second = write_metadata_iso(tmp_path / "b.iso", b"hello").read_bytes()
    other = write_metadata_iso(tmp_path / "c.iso", b"hellO").read_bytes()
    assert first == second != other


def test_metadata_create_is_linuxkits_verb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["metadata", "create", str(tmp_path / "m.iso"), "user data"]) == 0
    assert iso_contents(tmp_path / "m.iso")[1] == b"user data"
    assert (tmp_path / "m.iso").read_bytes() == write_metadata_iso(tmp_path / "n.iso", b"user data").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.iso", "n.iso"]  # no temp file left


@pytest.fixture
def kernel_output(tmp_path: Path) -> Path:
    for name in ("os-kernel", "os-initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path / "os"


@pytest.mark.parametrize(("args", "error"), [
    (["--data", "x", "--data-file", "f"], "cannot specify both --data and --data-file"),
    (["-data-file", "/nonexistent/user-data"],
     "cannot read user data from path /nonexistent/user-data: No such file or directory"),
    (["--guestfwd", "169.254.169.254:80"], "invalid --guestfwd '169.254.169.254:80' "
                                           "(hint: use IP:PORT=HOSTPORT, e.g. 169.254.169.254:80=8080)"),
])
def test_data_and_guestfwd_errors_are_one_line(kernel_output: Path, capsys: pytest.CaptureFixture[str],
                                               args: list[str], error: str) -> None:
    assert main(["run", str(kernel_output), *args, "--timeout", "1"]) == 1
    assert capsys.readouterr().err == f"linuxkit-py: {error}\n"


def test_cdroms_are_ide_on_a_pc_and_virtio_scsi_on_arm64() -> None:
    pc = qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", cdroms=[Path("/s/data.iso")]), serial="stdio")
    assert pc[pc.index("-device", pc.index("-initrd")) - 2:][:4] == [
        "-drive", "if=none,id=data0,file=/s/data.iso,format=raw,media=cdrom,readonly=on",
        "-device", "ide-cd,bus=ide.0,unit=1,drive=data0"]
    arm = qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", arch="arm64", cdroms=[Path("/s/a,b.iso")]),
                       serial="stdio")
    start = arm.index("virtio-scsi-pci,id=scsi-data")
    assert arm[start + 1:start + 5] == [
        "-drive", "if=none,id=data0,file=/s/a,,b.iso,format=raw,media=cdrom,readonly=on",
        "-device", "scsi-cd,bus=scsi-data.0,drive=data0"]


def test_guestfwd_relays_each_connection_to_a_local_port() -> None:
    options = QemuOptions(accel="tcg", publish=["2222:22"], guestfwd={"169.254.169.254:80": 8080},
                          net="169.254.0.0/16", isolated=True)
    argv = qemu_command(KERNEL, INITRD, "", options, serial="stdio")
    assert argv[argv.index("-netdev") + 1] == (
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,"
        f"guestfwd=tcp:169.254.169.254:80-cmd:{sys.executable} -m linuxkit_py.run.relay 127.0.0.1 8080,"
        "net=169.254.0.0/16,restrict=on")


@pytest.mark.parametrize("guest", ["metadata.google.internal:80", "169.254.169.254", "169.254.169.254:x"])
def test_guestfwd_takes_an_ip_and_a_port(guest: str) -> None:
    with pytest.raises(UserError, match="invalid guest forward"):
        qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", guestfwd={guest: 8080}), serial="stdio")


def test_a_pc_takes_two_data_cdroms() -> None:
    argv = qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", cdroms=[Path("/a.iso"), Path("/b.iso")]),
                        serial="stdio")
    assert [a for a in argv if a.startswith("ide-cd")] == ["ide-cd,bus=ide.0,unit=1,drive=data0",
                                                          "ide-cd,bus=ide.1,unit=1,drive=data1"]
    with pytest.raises(UserError, match="3 CD-ROMs: a PC has room for 2 besides a boot CD"):
        qemu_command(KERNEL, INITRD, "", QemuOptions(accel="tcg", cdroms=[Path("/a.iso")] * 3), serial="stdio")


def test_the_relay_carries_one_connection_both_ways() -> None:
    """What qemu runs per guest connection of a --guestfwd: stdin to the local port, its answer to stdout."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            request = b""
            while not request.endswith(b"\r\n\r\n"):
                request += conn.recv(1024)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + request.split(b" ")[1])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    relay = [sys.executable, "-m", "linuxkit_py.run.relay", "127.0.0.1", str(port)]
    done = subprocess.run(relay, input=b"GET /latest/meta-data/hostname HTTP/1.0\r\n\r\n", capture_output=True,
                          timeout=30)
    server.close()
    assert (done.returncode, done.stdout) == (0, b"HTTP/1.0 200 OK\r\n\r\n/latest/meta-data/hostname")
    refused = subprocess.run([*relay[:-1], str(port)], input=b"", capture_output=True, timeout=30)
    assert refused.returncode == 1
    assert refused.stderr.decode().startswith(f"linuxkit-py relay: cannot connect to 127.0.0.1:{port}: ")
