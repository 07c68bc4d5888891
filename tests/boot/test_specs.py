"""The example specs (specs/*.yml) built from our packages (pkg/, kernels/) and booted under TCG.

Each test builds a spec with `linuxkit-py build` (the packages are built on demand through `@pkg:`)
and boots it, either through the qemu runner (to time the boot) or through `linuxkit-py run`, the
way a user does. The .debs are shared with tests/integration/test_pkg.py through
tests/.cache/pkg-debs/, so only a first run downloads anything.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from linuxkit_py.run.qemu import QemuOptions, boot
from tests.boot.test_qemu_runner import free_port
from tests.debstore import stored_debs
from tests.integration.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "specs"
SIZE_AIM = 20_000_000  # minimal.yml's kernel + initrd: 19.5 MB, dmsetup only in --verity specs (docs/benchmarks.md)
SHELL_PROMPT = re.compile(r"\(getty\) \S+:~# ")
LEASE = "dhcpcd: eth0: 10.0.2.15/24 router 10.0.2.2 dns 10.0.2.3"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for every build of this module, seeded with the stored .debs; what it downloads
    is stored for the next run."""
    with stored_debs(tmp_path_factory.mktemp("specs") / "cache") as cache:
        yield cache


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME: `files: source: ~/...` in the specs must not pick up the tester's own keys."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def build(cache: Path, out: Path, name: str, *specs: Path, home: Path | None = None) -> Path:
    """`linuxkit-py build` of the merged specs; returns the output prefix (PREFIX-kernel, ...)."""
    env = {"HOME": str(home)} if home else None
    result = run_cli("build", "--cache", cache, "--dir", out, "--name", name, *specs, env=env, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    return out / name


def write_spec(path: Path, spec: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def package(name: str) -> str:
    """`@pkg:` of one of our packages, for specs written outside the repository."""
    return f"@pkg:{REPO / 'pkg' / name}"


# A kernel message printed while a program's line is half out on the console: `onboot d[   13.1] usb ...\n`
# then `hcpcd: failed ...`. Taken out, the program's line is whole again.
KERNEL_MESSAGE_MID_LINE = re.compile(r"(?<=[^\n])\[ *\d+\.\d+\] [^\n]*\n")


def line_numbers(output: str, *prefixes: str) -> list[int]:
    """The number of the first console line starting with each of `prefixes`; fails when one is missing.
    Kernel messages that cut into a line are taken out first."""
    console = KERNEL_MESSAGE_MID_LINE.sub("", output).splitlines()
    numbers = []
    for prefix in prefixes:
        found = [i for i, line in enumerate(console) if line.startswith(prefix)]
        assert found, f"no console line starts with {prefix!r}:\n{output[-3000:]}"
        numbers.append(found[0])
    return numbers


class Guest:
    """`linuxkit-py run qemu PREFIX ARGS` in the background; its console is collected as it comes."""

    def __init__(self, prefix: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "linuxkit_py", "run", "qemu", str(prefix), "--accel", "tcg", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self._chunks.append(chunk)

    @property
    def console(self) -> str:
        return b"".join(self._chunks).decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.console:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared on the console:\n{self.console[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> int:
        """Stop the guest the way a user does (SIGTERM to `linuxkit-py run`); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(30)
        self._reader.join(10)
        return status

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def http_get(port: int, path: str, deadline: float) -> tuple[int, bytes]:
    """GET http://127.0.0.1:PORT/PATH; retried with short tries until the guest answers (before it
    has an address, qemu accepts the connection and then nothing comes)."""
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_and_get(run_args: list[str], port: int, path: str = "/") -> tuple[int, bytes, str, str, int]:
    """`linuxkit-py run RUN_ARGS` (with `--publish PORT:80` among them), a GET of PATH once the guest answers,
    then SIGTERM: (status, body, console, stderr, run's exit status)."""
    proc = subprocess.Popen([sys.executable, "-m", "linuxkit_py", "run", *run_args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        status, body = http_get(port, path, time.monotonic() + 120)
    finally:
        proc.send_signal(signal.SIGTERM)
        console, stderr = proc.communicate(timeout=30)
    return status, body, console.decode(errors="replace"), stderr.decode(errors="replace"), proc.returncode


# -- minimal.yml ---------------------------------------------------------------------------------


@pytest.mark.boot
def test_minimal_gets_a_lease_at_boot_then_starts_getty(
    cache_dir: Path, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    prefix = build(cache_dir, tmp_path / "out", "minimal", SPECS / "minimal.yml")
    kernel, initrd = Path(f"{prefix}-kernel"), Path(f"{prefix}-initrd.img")
    seen: dict[str, float] = {}
    markers = ("onboot dhcpcd: done", "service getty: started")

    def until(output: str) -> bool:
        now = time.monotonic()
        for marker in markers:
            if marker not in seen and marker in output:
                seen[marker] = now
        seen["end"] = now  # result.seconds ends right after the last call
        return SHELL_PROMPT.search(output) is not None

    result = boot(kernel, initrd, Path(f"{prefix}-cmdline").read_text(), QemuOptions(accel="tcg"),
                  timeout=90, until=until)

    assert result.matched, result.output[-3000:]
    # the onboot container's output, then the service's start, then what getty itself prints
    dhcp, done, service, getty = line_numbers(
        result.output, LEASE, "onboot dhcpcd: done in ", "service getty: started",
        "getty: starting on ttyS0 (INSECURE: root without a password)")
    assert dhcp < done < service < getty
    assert "login[" in result.output  # busybox login ran for root: the autologin worked
    service_up = result.seconds - (seen["end"] - seen[markers[1]])
    size = kernel.stat().st_size + initrd.stat().st_size
    record_property("service_up_seconds", round(service_up, 2))
    record_property("kernel_plus_initrd_bytes", size)
    print(f"\nminimal.yml: kernel {kernel.stat().st_size} + initrd {initrd.stat().st_size} = {size} bytes; "
          f"getty started {service_up:.2f} s after qemu started")
    assert size <= SIZE_AIM
    assert service_up < 30  # the aim is 10 s (docs/benchmarks.md); this only catches a hang


@pytest.mark.boot
def test_dhcp_gives_up_after_its_tries_so_the_boot_goes_on(cache_dir: Path, tmp_path: Path) -> None:
    """No NIC at all, a link without carrier, a link where no server answers: each one-shot
    udhcpc ends within its tries, and the onboot containers after it run (the last powers off)."""
    tries = "/sbin/udhcpc -i {0} -q -n -t 3 -T 1; echo status=$?"
    no_server = ("ip link add lkv2 type veth && ip link set lkv2 up && "
                 "for l in /sys/class/net/veth*; do ip link set ${l##*/} up; done; ")
    extra = write_spec(tmp_path / "nodhcp.yml", {"onboot": [
        {"name": "nocarrier", "image": package("dhcpcd"),
         "command": ["/bin/sh", "-c", "ip link add lkv0 type veth && " + tries.format("lkv0")]},
        {"name": "noserver", "image": package("dhcpcd"),
         "command": ["/bin/sh", "-c", no_server + tries.format("lkv2")]},
        {"name": "poweroff", "image": package("poweroff"), "command": ["/poweroff.sh", "0"]},
    ]})
    prefix = build(cache_dir, tmp_path / "out", "nodhcp", SPECS / "minimal.yml", extra)

    result = subprocess.run([sys.executable, "-m", "linuxkit_py", "run", "qemu", str(prefix), "--accel", "tcg",
                             "--networking", "none", "--timeout", "120"],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=150)

    console = result.stdout.decode(errors="replace").replace("\r\n", "\n")
    assert result.returncode == 0, console[-3000:]  # powered off by the last onboot container
    assert "dhcpcd: udhcpc: SIOCGIFINDEX: No such device" in console
    assert re.search(r"^onboot dhcpcd: failed with status 1 after \d+\.\d+s$", console, re.MULTILINE)
    for name, interface in (("nocarrier", "lkv0"), ("noserver", "lkv2")):
        assert console.count(f"{name}: udhcpc: broadcasting discover\n") == 3
        line_numbers(console, f"{name}: {interface}: no lease", f"{name}: status=1")
        took = re.search(rf"^onboot {name}: done in ([0-9.]+)s$", console, re.MULTILINE)
        assert took and float(took.group(1)) < 15, console[-3000:]
    # the poweroff container's own output never shows: the runtime prints it after the container ends
    assert console.rstrip().endswith("reboot: Power down")
    assert "service getty: started" not in console  # powered off before the services


@pytest.mark.boot
def test_dhcpcd_as_a_service_configures_eth0_and_resolv_conf(cache_dir: Path, tmp_path: Path) -> None:
    """The image's default command: the udhcpc daemon. Another service shows what it configured."""
    show = ("for i in $(seq 60); do ip -4 addr show dev eth0 | grep -q inet && break; sleep 0.5; done; "
            "{ ip -4 addr show dev eth0; ip route; cat /run/resolvconf/resolv.conf; echo SHOWN; } >/dev/console")
    spec = write_spec(tmp_path / "daemon.yml", {
        "kernel": {"image": f"@pkg:{REPO / 'kernels' / 'cloud-amd64'}", "cmdline": "console=ttyS0"},
        "init": [package("init"), package("runc")],
        "services": [
            {"name": "dhcpcd", "image": package("dhcpcd")},
            {"name": "show", "image": package("busybox"), "restart": "no", "command": ["/bin/sh", "-c", show],
             "binds": ["/dev/console:/dev/console", "/run/resolvconf:/run/resolvconf:ro"],
             "devices": [{"path": "/dev/console", "type": "c", "major": 5, "minor": 1, "mode": "0600"}]},
        ]})
    prefix = build(cache_dir, tmp_path / "out", "daemon", spec)

    result = subprocess.run([sys.executable, "-m", "linuxkit_py", "run", "qemu", str(prefix), "--accel", "tcg",
                             "--until", "SHOWN", "--timeout", "90"],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=120)

    console = result.stdout.decode(errors="replace").replace("\r\n", "\n")
    assert result.returncode == 0, console[-3000:]
    shown = console[console.index("service show: started"):]
    assert "    inet 10.0.2.15/24 scope global eth0\n" in shown
    assert "default via 10.0.2.2 dev eth0 \n" in shown
    assert "nameserver 10.0.2.3\nSHOWN" in shown


# -- webserver.yml -------------------------------------------------------------------------------


@pytest.mark.boot
def test_webserver_serves_the_specs_page_through_a_published_port(cache_dir: Path, tmp_path: Path) -> None:
    spec = SPECS / "webserver.yml"
    [page] = [f["contents"] for f in yaml.safe_load(spec.read_text())["files"] if f["path"] == "etc/www/index.html"]
    prefix = build(cache_dir, tmp_path / "out", "webserver", spec)
    port = free_port()

    with Guest(prefix, "--publish", f"{port}:80", "--timeout", "180") as guest:
        status, body = http_get(port, "/", time.monotonic() + 90)
        missing = http_get(port, "/no-such-page.html", time.monotonic() + 10)
        exit_status = guest.stop()

    assert (status, body.decode()) == (200, page)
    assert missing[0] == 404
    assert "service httpd: started" in guest.console
    assert exit_status == 143, guest.console[-3000:]  # SIGTERM, as documented in docs/run.md


# -- sshd.yml ------------------------------------------------------------------------------------


def ssh(port: int, key: Path, known_hosts: Path, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-p", str(port), "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=5", "root@127.0.0.1", command],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def ssh_until_it_answers(port: int, key: Path, known_hosts: Path, deadline: float) -> str:
    while True:
        try:
            result = ssh(port, key, known_hosts, "echo ok", timeout=20)
        except subprocess.TimeoutExpired:
            result = None
        if result is not None and result.returncode == 0:
            return result.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"ssh never got in: {result.stderr if result else 'timed out'}")
        time.sleep(1)


@pytest.mark.boot
def test_sshd_lets_root_in_with_the_key_from_files(cache_dir: Path, tmp_path: Path, home: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test@host", "-f", str(key)], check=True)
    # merged on top of sshd.yml: the test's key, and a sysctl setting for the sysctl package
    extra = write_spec(tmp_path / "key.yml", {"files": [
        {"path": "root/.ssh/authorized_keys", "contents": key.with_suffix(".pub").read_text(), "mode": "0600"},
        {"path": "etc/sysctl.d/90-test.conf", "contents": "net.core.somaxconn = 4242\n", "mode": "0644"},
    ]})
    prefix = build(cache_dir, tmp_path / "out", "sshd", SPECS / "sshd.yml", extra, home=home)
    port, known_hosts = free_port(), tmp_path / "known_hosts"

    with Guest(prefix, "--publish", f"{port}:22", "--timeout", "240") as guest:
        answer = ssh_until_it_answers(port, key, known_hosts, time.monotonic() + 120)
        session = ssh(port, key, known_hosts, "id -u; cat /proc/sys/net/core/somaxconn; cat /proc/1/comm; "
                                                 "cat /etc/resolv.conf")
        services = ssh(port, key, known_hosts, "nsenter -t 1 -m -- service list")  # as the motd says
        wrong_key = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
        refused = ssh(port, wrong_key, known_hosts, "echo ok")
        exit_status = guest.stop()

    assert answer == "ok\n"
    # root, the spec's sysctl file applied (the image's default is 1024), the host's pid namespace,
    # the name server dhcpcd wrote
    assert session.stdout.split() == ["0", "4242", "init", "nameserver", "10.0.2.3"], session.stderr
    assert [line.split()[:2] for line in services.stdout.splitlines()[1:]] == [["getty", "running"],
                                                                              ["sshd", "running"]]
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr
    # the host key ssh saw is the one whose fingerprint sshd printed on the console
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", str(known_hosts)], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    assert f"sshd: host key {fingerprint} (ED25519)\n" in guest.console  # may follow a prompt
    assert re.search(r"^sysctl: \d+ settings applied from 2 files$", guest.console, re.MULTILINE)
    assert exit_status == 143


# -- persistent.yml ------------------------------------------------------------------------------


def data_partition(disk: Path, directory: Path) -> Path:
    """The disk's only partition, copied to a file (what the host's e2fsprogs can read)."""
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, check=True).stdout)
    [part] = table["partitiontable"]["partitions"]
    assert (table["partitiontable"]["label"], part["type"]) == ("dos", "83")
    out = directory / "partition.img"
    with disk.open("rb") as src, out.open("wb") as dst:
        src.seek(part["start"] * 512)
        dst.write(src.read(part["size"] * 512))
    return out


def blkid(device: Path) -> dict[str, str]:
    result = subprocess.run(["blkid", "-p", "-o", "export", str(device)], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in result.stdout.split())


def read_ext4_file(image: Path, path: str) -> str:
    result = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True, check=True)
    return result.stdout


@pytest.mark.boot
def test_persistent_disk_is_formatted_once_and_keeps_its_files(cache_dir: Path, tmp_path: Path) -> None:
    # merged on top: a clean power-off once the services ran, so that the disk is unmounted cleanly
    extra = write_spec(tmp_path / "poweroff.yml", {"services": [
        {"name": "zz-poweroff", "image": package("poweroff"), "command": ["/poweroff.sh", "6", "--clean"],
         "restart": "no"},
    ]})
    prefix = build(cache_dir, tmp_path / "out", "persistent", SPECS / "persistent.yml", extra)
    disk = tmp_path / "data.img"
    subprocess.run(["truncate", "-s", "64M", str(disk)], check=True)
    boot_log = re.compile(r"^boot (\d+) at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    def boot_with_disk() -> str:
        result = subprocess.run([sys.executable, "-m", "linuxkit_py", "run", "qemu", str(prefix), "--accel", "tcg",
                                 "--disk", f"file={disk},format=raw", "--timeout", "150"],
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=180)
        console = result.stdout.decode(errors="replace").replace("\r\n", "\n")
        assert result.returncode == 0, console[-3000:]  # the guest powered itself off
        return console

    first = boot_with_disk()
    line_numbers(first, "format: partitioning /dev/vda (dos, one Linux partition)",
                   "format: making an ext4 filesystem on /dev/vda1 labelled DATA",
                   "format: /dev/vda1 is ready",
                   "mount: /dev/vda1 (ext4) on /var/lib/data")
    assert "service bootlog: exited with status 0" in first
    partition = data_partition(disk, tmp_path)
    formatted = blkid(partition)
    assert (formatted["TYPE"], formatted["LABEL"]) == ("ext4", "DATA")
    [first_line] = read_ext4_file(partition, "/boots.log").splitlines()
    assert (match := boot_log.match(first_line)) and match.group(1) == "1"

    second = boot_with_disk()
    assert "format: /dev/vda1 already has a filesystem labelled DATA; leaving the disks alone" in second
    assert "partitioning" not in second
    assert "mount: /dev/vda1 (ext4) on /var/lib/data" in second
    partition = data_partition(disk, tmp_path)
    assert blkid(partition)["UUID"] == formatted["UUID"]  # the same filesystem, not a new one
    log = read_ext4_file(partition, "/boots.log").splitlines()
    assert len(log) == 2 and log[0] == first_line
    assert (match := boot_log.match(log[1])) and match.group(1) == "2"


@pytest.mark.boot
def test_quickstart_commands_boot_minimal_and_power_off_cleanly(cache_dir: Path, tmp_path: Path) -> None:
    """The README's quick start: build specs/minimal.yml, run it until getty starts, press the power button."""
    prefix = build(cache_dir, tmp_path / "out", "minimal", SPECS / "minimal.yml")
    result = run_cli("run", "--accel", "tcg", "--timeout", "120", "--poweroff-on", "service getty: started",
                     prefix, stdin=b"")
    console = result.stdout.decode(errors="replace").replace("\r\n", "\n")
    assert result.returncode == 0, (result.stderr.decode(), console[-3000:])
    # in this order (the getty shell's prompt may share a line with what follows it)
    marks = [LEASE, "service getty: started", "service getty: stopped", "The system is going down",
             "reboot: Power down"]
    positions = [console.find(mark) for mark in marks]
    assert -1 not in positions, (dict(zip(marks, positions, strict=True)), console[-3000:])
    assert positions == sorted(positions), dict(zip(marks, positions, strict=True))
