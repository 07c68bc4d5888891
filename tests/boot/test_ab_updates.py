"""A/B updates end to end, on one disk image that persists across reboots (qemu TCG, OVMF with Secure Boot
enforced and our keys enrolled): a device built with `build --ab --data-size` runs version 1 from slot A; its
update agent (pkg/update) polls a real docker-registry on the host (`update agent oci+http://...`, the bundles
pushed there with `linuxkit-py update push`), refuses a bundle signed by another key, installs version 2 into
slot B, reboots into it and marks it good after the health check; a version 3 whose service exits at once fails
its health check on each of its three tries, after which systemd-boot starts version 2 again by itself, and the
agent does not install 3 again. Every boot adds its version to a file on the data partition, which neither the
updates nor the rollback touch. A power cut while a bundle is written leaves the running version bootable.

The guest reaches the host's registry at 10.0.2.2 (qemu user networking). Each image is built once per module.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from linuxkit_py.formats.ab import ENTRY_DIR
from tests.boot.test_specs import REPO, package
from tests.boot.test_specs import cache_dir as cache_dir  # the module-scoped, deb-seeded cache
from tests.imagetools import file_sha256
from tests.integration.conftest import run_cli
from tests.registry.servers import RegistryProcess

NAME = "device"
REPOSITORY = "fleet/device:latest"  # where the agent looks for updates (`update push` puts them there)
MIB = 1 << 20
HEALTH_SECONDS = 5
POLL_SECONDS = 3
DATA_SIZE_MIB = 32
DATA_SCRIPT = ("sed -n 's/^version=//p' /etc/linuxkit-py/image >>/data/versions && sync && "
               "echo \"versions on the data partition: $(tr '\\n' ' ' </data/versions)\"")
HEALTH_HOOK = ("#!/bin/sh\ngrep -q ' /var/lib/data ' /proc/1/mounts || { echo 'no data partition'; exit 1; }\n"
               "echo 'health.d: the data partition is mounted' >/dev/console\n")
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


V1_ARGS = ("--ab", "--data-size", f"{DATA_SIZE_MIB}M", "--image-version", "1", "-f", "raw-efi")


@dataclass
class Built:
    keys: Path
    disk: Path  # version 1, --ab raw-efi
    bundles: dict[str, Path] = field(default_factory=dict)  # "2", "3-broken", "2-other-key", "2-again"


def _spec(path: Path, registry: str, broken: bool = False, verity: bool = False) -> Path:
    services: list[dict[str, object]] = [
        {"name": "getty", "image": package("getty"), "env": ["INSECURE=true"]},
        {"name": "update", "image": package("update"),
         "command": ["/usr/bin/update", "agent", f"oci+http://{registry}/{REPOSITORY}"],
         "env": [f"UPDATE_HEALTH_SECONDS={HEALTH_SECONDS}", f"UPDATE_POLL_SECONDS={POLL_SECONDS}"]},
    ]
    if broken:  # a service that exits at once: the health check fails
        services.insert(0, {"name": "broken", "image": package("getty"), "command": ["/bin/sh", "-c", "exit 1"]})
    spec = {
        "kernel": {"image": f"@pkg:{REPO / 'kernels' / 'default'}", "cmdline": "console=ttyS0"},
        "init": [package("init"), package("runc"), *([package("dmsetup")] if verity else [])],  # --verity: dmsetup
        "onboot": [{"name": "dhcpcd", "image": package("dhcpcd"),
                    "command": ["/sbin/udhcpc", "-i", "eth0", "-q", "-n", "-t", "5", "-T", "1"]},
                   # every boot adds its version to a file on the data partition and prints the file
                   {"name": "data", "image": package("busybox"),
                    "binds": ["/var/lib/data:/data", "/etc/linuxkit-py:/etc/linuxkit-py:ro"],
                    "command": ["/bin/sh", "-c", DATA_SCRIPT]}],
        "services": services,
        # the image's own health check: run by the agent in its container, where the host's mounts are pid 1's
        "files": [{"path": "etc/linuxkit-py/health.d/10-data", "mode": "0755", "contents": HEALTH_HOOK}],
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _build(cache: Path, out: Path, spec: Path, keys: Path, *args: str) -> None:
    result = run_cli("build", "--cache", cache, "--dir", out, "--name", NAME, "--no-sbom", "--sign-key",
                     keys / "db.key", "--sign-cert", keys / "db.crt", *args, spec, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A docker-registry on 127.0.0.1 (10.0.2.2 for the guest): the device's update agent polls it."""
    reg = RegistryProcess(tmp_path_factory.mktemp("registry"), tmp_path_factory.mktemp("registry-storage")).start()
    yield reg
    reg.stop()


def _publish(registry: RegistryProcess, bundle: Path) -> None:
    """`update push` the bundle as the tag the agent polls."""
    result = run_cli("update", "push", bundle, f"{registry.host}/{REPOSITORY}", stdin=b"")
    assert result.returncode == 0, result.stderr.decode()


@pytest.fixture(scope="module")
def built(cache_dir: Path, registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("ab")
    for name in ("keys", "other-keys"):
        assert run_cli("keys", "create", root / name, stdin=b"").returncode == 0
    keys = root / "keys"
    guest_registry = f"10.0.2.2:{registry.port}"
    spec = _spec(root / "device.yml", guest_registry)
    _build(cache_dir, root / "v1", spec, keys, *V1_ARGS)
    built = Built(keys, root / "v1" / f"{NAME}-efi.img")
    for label, version, spec_path, signer in (
            ("2", "2", spec, keys),
            ("2-again", "2", spec, keys),
            ("3-broken", "3", _spec(root / "broken.yml", guest_registry, broken=True), keys),
            ("2-other-key", "2", spec, root / "other-keys")):
        _build(cache_dir, root / label, spec_path, signer, "--image-version", version, "-f", "update")
        built.bundles[label] = root / label / f"{NAME}.update"
    return built


class Device:
    """`linuxkit-py run` of a disk with reboots allowed; its console, as it comes."""

    def __init__(self, disk: Path, keys: Path, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "linuxkit_py", "run", "--accel", "tcg", "--reboot", "--secure-boot",
             "--fw-vars", str(keys / "OVMF_VARS_4M.fd"), "--timeout", "600", "--console-log", str(log), str(disk)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def console(self) -> str:
        return self.log.read_bytes().decode(errors="replace").replace("\r\n", "\n") if self.log.exists() else ""

    def wait_for(self, text: str, after: int = 0, timeout: float = 120) -> int:
        """The position of `text` in the console at or after `after`, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.console().find(text, after)
            if found >= 0:
                return found
            assert self.proc.poll() is None, f"qemu ended before {text!r}:\n{self.console()[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} within {timeout:g} s:\n{self.console()[after:][-4000:]}")

    def power_cut(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def device(tmp_path: Path) -> Iterator[list[Device]]:
    started: list[Device] = []
    yield started
    for dev in started:
        if dev.proc.poll() is None:
            dev.power_cut()


def _esp_entries(disk: Path) -> list[str]:
    out = subprocess.run(["mdir", "-b", "-i", f"{disk}@@{MIB}", f"::/{ENTRY_DIR}"], capture_output=True, text=True,
                         env=MTOOLS_ENV, check=True).stdout
    return sorted(line.rsplit("/", 1)[-1] for line in out.split() if line.endswith(".efi"))


@pytest.mark.boot
def test_update_then_a_broken_version_rolls_back_by_itself(built: Built, registry: RegistryProcess, tmp_path: Path,
                                                           device: list[Device]) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(built.disk.read_bytes())
    _publish(registry, built.bundles["2-other-key"])
    dev = Device(disk, built.keys, tmp_path / "console.log")
    device.append(dev)
    at = dev.wait_for("update: running version 1 from slot a")
    assert "secureboot: Secure boot enabled" in dev.console()
    assert "linuxkit-py: data partition /dev/vda4 on /var/lib/data" in dev.console()
    assert "versions on the data partition: 1 \n" in dev.console()

    at = dev.wait_for("update: refused: ", at)
    assert "the signature does not verify with /etc/linuxkit-py/update.crt" in dev.console()[at:at + 300]

    _publish(registry, built.bundles["2"])
    at = dev.wait_for("update: version 2 is in slot b; it boots next, with 3 tries", at)
    at = dev.wait_for("stage1: root: /dev/vda3", at)  # slot B
    hook = dev.wait_for("health.d: the data partition is mounted", at)  # the image's own check passed
    at = dev.wait_for("update: version 2 (slot b) marked good", hook)
    assert "versions on the data partition: 1 2 \n" in dev.console()  # the update left the data alone

    _publish(registry, built.bundles["3-broken"])
    at = dev.wait_for("update: version 3 is in slot a", at)
    first_try = dev.wait_for("update: running version 3 from slot a", at)
    back = dev.wait_for("update: running version 2 from slot b", first_try, timeout=300)
    console = dev.console()
    assert "versions on the data partition: 1 2 3 3 3 2 \n" in console[first_try:]  # and the rollback too
    assert console.count("update: running version 3 from slot a", first_try, back) == 3  # its three tries
    assert console.count("failed its health check (service broken: exited", first_try, back) == 3
    time.sleep(3 * POLL_SECONDS)  # version 3 is still offered: the agent leaves it alone
    assert "update: version 3 is available" not in dev.console()[back:]
    dev.power_cut()
    assert _esp_entries(disk) == ["linuxkit-a+0-3.efi", "linuxkit-b.efi"]


@pytest.mark.boot
def test_a_power_cut_while_writing_leaves_the_running_version(built: Built, registry: RegistryProcess, tmp_path: Path,
                                                              device: list[Device]) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(built.disk.read_bytes())
    _publish(registry, built.bundles["2"])
    first = Device(disk, built.keys, tmp_path / "first.log")
    device.append(first)
    first.wait_for("update: writing version 2 to slot b")
    first.power_cut()
    assert _esp_entries(disk) == ["linuxkit-a.efi"]  # slot B has no entry: it cannot boot half-written
    _publish(registry, built.bundles["2-other-key"])  # offered, refused: the boot goes on with version 1
    second = Device(disk, built.keys, tmp_path / "second.log")
    device.append(second)
    second.wait_for("update: running version 1 from slot a")
    assert "stage1: root: /dev/vda2" in second.console()


def test_ab_disk_layout_and_reproducible_outputs(built: Built, cache_dir: Path, tmp_path: Path) -> None:
    import json

    table = json.loads(subprocess.run(["sfdisk", "-J", str(built.disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    names = [part.get("name") for part in table["partitions"]]
    assert names == ["EFI System", "linuxkit-a", "linuxkit-b", "linuxkit-data"]
    root_x86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
    linux_data = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    assert [part["type"] for part in table["partitions"][1:]] == [root_x86_64, root_x86_64, linux_data]
    data = table["partitions"][3]
    assert data["size"] * 512 == DATA_SIZE_MIB * MIB
    assert data["start"] == table["partitions"][2]["start"] + table["partitions"][2]["size"]  # after the slots
    with open(built.disk, "rb") as disk, open(tmp_path / "data.img", "wb") as out:
        disk.seek(data["start"] * 512)
        out.write(disk.read(DATA_SIZE_MIB * MIB))
    fs = subprocess.run(["blkid", "-p", "-o", "export", str(tmp_path / "data.img")], capture_output=True, text=True,
                        check=True).stdout
    assert "TYPE=ext4" in fs and "LABEL=linuxkit-data" in fs
    assert _esp_entries(built.disk) == ["linuxkit-a.efi"]
    assert file_sha256(built.bundles["2"]) == file_sha256(built.bundles["2-again"])
    spec = tmp_path / "device.yml"
    spec.write_text((built.disk.parents[1] / "device.yml").read_text())
    _build(cache_dir, tmp_path / "again", spec, built.keys, *V1_ARGS)
    assert file_sha256(tmp_path / "again" / f"{NAME}-efi.img") == file_sha256(built.disk)


def test_a_data_partition_that_does_not_fit_is_one_line(built: Built, cache_dir: Path, tmp_path: Path) -> None:
    spec = tmp_path / "device.yml"
    spec.write_text((built.disk.parents[1] / "device.yml").read_text())
    size = built.disk.stat().st_size // MIB
    result = run_cli("build", "--cache", cache_dir, "--dir", tmp_path / "out", "--name", NAME, "--no-sbom",
                     "--size", f"{size}M", "--data-size", f"{2 * DATA_SIZE_MIB}M", *V1_ARGS[:1], *V1_ARGS[3:],
                     spec, stdin=b"")
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert f"the disk needs at least {size + DATA_SIZE_MIB} MiB" in lines[0]
    assert f"data {2 * DATA_SIZE_MIB}); --size is {size} MiB" in lines[0]
    assert not list((tmp_path / "out").glob("*.img"))
    result = run_cli("build", "--cache", cache_dir, "--dir", tmp_path / "out", "--data-size", "32M", "-f", "raw-efi",
                     spec, stdin=b"")
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        "linuxkit-py: --data-size is a partition of an --ab disk (hint: add --ab (with -f raw-efi or qcow2-efi))"]


VERITY_CHANGED = "stage1: error: the root image fails dm-verity verification: it was changed after the build"


@pytest.mark.boot
def test_a_verity_ab_disk_boots_its_slot_and_a_changed_slot_stops_the_boot(
        built: Built, cache_dir: Path, registry: RegistryProcess, tmp_path: Path, device: list[Device]) -> None:
    """`--ab --verity`: each slot is a verity image; stage one knows its slot by the top block of the hash tree
    (its sha256 in the signed UKI), so one changed byte anywhere else in the slot is dm-verity's to find."""
    spec = _spec(tmp_path / "device.yml", f"10.0.2.2:{registry.port}", verity=True)
    _build(cache_dir, tmp_path / "out", spec, built.keys, "--ab", "--verity", "--image-version", "1", "-f", "raw-efi")
    disk = tmp_path / "out" / f"{NAME}-efi.img"
    dev = Device(disk, built.keys, tmp_path / "verified.log")
    device.append(dev)
    at = dev.wait_for("update: running version 1 from slot a")
    console = dev.console()
    assert re.search(r"stage1: dm-verity: /dev/vda2 verified \(root hash [0-9a-f]{16}\)", console), console[-3000:]
    assert "secureboot: Secure boot enabled" in console[:at]
    dev.power_cut()

    import json
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    slot_a = table["partitions"][1]["start"] * 512
    with open(disk, "r+b") as f:  # one byte inside the squashfs of slot A (not its first 4 KiB)
        f.seek(slot_a + 1 * MIB)
        byte = f.read(1)
        f.seek(slot_a + 1 * MIB)
        f.write(bytes([byte[0] ^ 0xFF]))
    changed = Device(disk, built.keys, tmp_path / "changed.log")
    device.append(changed)
    changed.proc.wait(timeout=180)  # stage one powers the machine off
    console = changed.console()
    assert VERITY_CHANGED in console, console[-3000:]
    assert "update: running version" not in console
