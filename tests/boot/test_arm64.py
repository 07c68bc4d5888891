"""arm64 images built on this amd64 host (no emulation to build) and booted under qemu-system-aarch64 (TCG).

specs/minimal.yml is built once for arm64 in every format that exists there, twice (the second build must
give the same bytes), and each bootable output is booted on qemu's `virt` machine: the kernel outputs
directly, the EFI outputs through AAVMF (Debian's arm64 UEFI firmware). specs/webserver.yml answers HTTP
from the host through a published port.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from linuxkit_py.run.image import detect_image
from linuxkit_py.run.qemu import BootResult, QemuOptions, boot_image
from tests.boot.test_qemu_runner import free_port
from tests.boot.test_specs import SPECS, Guest, http_get, line_numbers
from tests.debstore import stored_debs
from tests.imagetools import file_sha256
from tests.integration.conftest import run_cli

# Every format with an arm64 image; the BIOS ones are refused (tests/integration/test_arm64_packages.py).
ARM64_FORMATS = ("kernel+initrd", "tar-kernel-initrd", "tar", "docker", "kernel+squashfs", "kernel+erofs",
                 "uki", "raw-efi", "qcow2-efi", "iso-efi", "iso-efi-initrd")
BANNER = "kernel 6.1.0-"  # linuxkit-py's rc.init line: "linuxkit-py: HOST, kernel 6.1.0-NN-arm64, up N.NNs"
GETTY = "service getty: started"


@dataclass(frozen=True)
class Arm64Build:
    out: Path
    again: Path  # the same build into another directory

    def prefix(self, name: str = "minimal") -> Path:
        return self.out / name


@pytest.fixture(scope="module")
def arm64_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for this module, seeded with the stored .debs (arm64 ones are stored for the next run)."""
    with stored_debs(tmp_path_factory.mktemp("arm64") / "cache") as cache:
        yield cache


def _build(cache: Path, out: Path, spec: Path, name: str, *formats: str) -> None:
    args = [arg for fmt in formats for arg in ("-f", fmt)]
    result = run_cli("build", "--arch", "arm64", "--cache", cache, "--dir", out, "--name", name, *args, spec,
                     stdin=b"")
    assert result.returncode == 0, result.stderr.decode()


@pytest.fixture(scope="module")
def arm64_build(arm64_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Arm64Build:
    out, again = tmp_path_factory.mktemp("arm64-out"), tmp_path_factory.mktemp("arm64-again")
    started = time.monotonic()
    _build(arm64_cache, out, SPECS / "minimal.yml", "minimal", *ARM64_FORMATS)
    print(f"\narm64 minimal.yml, {len(ARM64_FORMATS)} formats: {time.monotonic() - started:.1f} s")
    _build(arm64_cache, again, SPECS / "minimal.yml", "minimal", *ARM64_FORMATS)
    return Arm64Build(out, again)




def _boot(path: Path, until: str = GETTY, timeout: float = 150, **options: object) -> BootResult:
    result = boot_image(detect_image(path), QemuOptions(arch="arm64", accel="tcg", **options),  # type: ignore[arg-type]
                        timeout=timeout, until=lambda output: until in output)
    assert result.matched, f"{until!r} never appeared:\n{result.output[-3000:]}\n{result.stderr}"
    assert result.command[0] == "qemu-system-aarch64"
    return result


def test_every_arm64_output_is_reproducible_and_is_arm64(arm64_build: Arm64Build) -> None:
    files = sorted(p.name for p in arm64_build.out.iterdir())
    assert files == sorted(p.name for p in arm64_build.again.iterdir())
    assert {"minimal-kernel", "minimal-initrd.img", "minimal.efi", "minimal-efi.img", "minimal-efi.qcow2",
            "minimal-efi.iso", "minimal-efi-initrd.iso", "minimal-squashfs.img", "minimal-erofs.img",
            "minimal.tar", "minimal-initrd.tar", "minimal.docker"} <= set(files)
    different = [name for name in files if file_sha256(arm64_build.out / name) != file_sha256(arm64_build.again / name)]
    assert different == []
    # /kernel on arm64 is the plain Image (arm64 boot protocol: "ARM\x64" magic at offset 56), as booti
    # and the EFI stub take it; the UKI is an arm64 PE (machine 0xaa64)
    kernel = (arm64_build.out / "minimal-kernel").read_bytes()[:64]
    assert kernel[56:60] == b"ARM\x64"
    uki = (arm64_build.out / "minimal.efi").read_bytes()[:4096]
    pe = int.from_bytes(uki[0x3C:0x40], "little")
    assert uki[pe:pe + 4] == b"PE\0\0" and uki[pe + 4:pe + 6] == (0xAA64).to_bytes(2, "little")


@pytest.mark.parametrize(("path", "arch", "file"), [("minimal", "x86_64", "minimal-kernel"),
                                                   ("minimal-efi.qcow2", "amd64", "minimal-efi.qcow2")])
def test_run_with_an_arch_the_output_is_not_for_is_one_line_before_qemu(arm64_build: Arm64Build, tmp_path: Path,
                                                                        path: str, arch: str, file: str) -> None:
    """The arm64 kernel (its Image header) and disk (its BOOTAA64.EFI) run with --arch amd64/x86_64: refused."""
    result = run_cli("run", "qemu", "--arch", arch, "--timeout", "60", arm64_build.out / path, stdin=b"",
                     env={"PATH": str(tmp_path)})  # no qemu to start: the refusal comes first
    assert (result.returncode, result.stderr.decode()) == (1, (
        f"linuxkit-py: --arch {arch}, but {arm64_build.out / file}'s bytes show an arm64 output "
        "(hint: drop --arch: run reads the architecture from the output)\n"))


@pytest.mark.boot
def test_arm64_kernel_initrd_boots_to_getty_and_powers_off_cleanly(arm64_build: Arm64Build) -> None:
    prefix = arm64_build.prefix()
    result = boot_image(detect_image(prefix), QemuOptions(arch="arm64", accel="tcg"), timeout=150,
                        powerdown_on=lambda output: GETTY in output)
    console = result.output
    assert result.exit_code == 0, console[-3000:]
    line_numbers(console, "linuxkit-py: ", "dhcpcd: eth0: 10.0.2.15/24", "onboot dhcpcd: done", GETTY)
    assert f"{BANNER}" in console and "-arm64, up " in console
    assert "Booting Linux on physical CPU" in console  # arm64's first kernel line
    assert console.rstrip().endswith("reboot: Power down")  # the power button (gpio-keys) ran rc.shutdown


@pytest.mark.boot
@pytest.mark.parametrize("root", ["squashfs", "erofs"])
def test_arm64_root_on_a_read_only_image_boots(arm64_build: Arm64Build, root: str) -> None:
    result = _boot(arm64_build.out / f"minimal-{root}.img")
    assert "-arm64, up " in result.output
    assert f"minimal-{root}.img,format=raw,readonly=on" in " ".join(result.command)


@pytest.mark.boot
@pytest.mark.parametrize("name", ["minimal-efi.img", "minimal.efi", "minimal-efi.iso"])
def test_arm64_efi_outputs_boot_under_aavmf(arm64_build: Arm64Build, name: str) -> None:
    result = _boot(arm64_build.out / name)
    assert "AAVMF_CODE.fd" in " ".join(result.command)
    assert "EFI stub: Booting Linux Kernel..." in result.output  # started by the firmware, not by qemu
    assert "-arm64, up " in result.output


@pytest.mark.boot
def test_run_boots_an_arm64_disk_on_the_arm64_machine_without_being_told(arm64_build: Arm64Build) -> None:
    """`linuxkit-py run PATH` on this amd64 host reads the qcow2's EFI loader name (BOOTAA64.EFI)."""
    result = subprocess.run([sys.executable, "-m", "linuxkit_py", "run", "qemu", "--until", GETTY, "--timeout", "150",
                             str(arm64_build.out / "minimal-efi.qcow2")],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=200)
    console = result.stdout.decode(errors="replace")
    assert result.returncode == 0, console[-3000:] + result.stderr.decode()
    assert "EFI stub: Booting Linux Kernel..." in console and "-arm64, up " in console


@pytest.mark.boot
def test_arm64_webserver_answers_http_through_a_published_port(arm64_cache: Path, tmp_path: Path) -> None:
    spec = SPECS / "webserver.yml"
    [page] = [f["contents"] for f in yaml.safe_load(spec.read_text())["files"] if f["path"] == "etc/www/index.html"]
    _build(arm64_cache, tmp_path, spec, "webserver", "kernel+initrd")
    port = free_port()

    # as a user runs it, LinuxKit's spelling of the architecture included
    with Guest(tmp_path / "webserver", "--arch", "aarch64", "--publish", f"{port}:80", "--timeout", "180") as guest:
        status, body = http_get(port, "/", time.monotonic() + 120)
        exit_status = guest.stop()

    assert (status, body.decode()) == (200, page), guest.console[-3000:]
    assert "service httpd: started" in guest.console
    assert "-arm64, up " in guest.console
    assert exit_status == 143  # SIGTERM, as documented in docs/run.md
