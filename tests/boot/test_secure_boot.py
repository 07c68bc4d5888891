"""Secure Boot, end to end: `keys create` makes a PK/KEK/db set and an OVMF variable store with it enrolled;
`build --sign-key db.key --sign-cert db.crt` signs raw-efi, uki and iso-efi; OVMF with Secure Boot enforced
(the secboot build, q35 with SMM) boots them into the services and the kernel says Secure Boot is on; the
same firmware refuses an unsigned image and one signed with another key, before any kernel runs.

The signatures are checked by real firmware (Debian's OVMF) and by sbverify (sbsigntool). Every image is
built once per module; each boot uses a copy.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from linuxkit_py.formats import get_format
from tests.boot.test_specs import SPECS
from tests.boot.test_specs import cache_dir as cache_dir  # the module-scoped, deb-seeded cache
from tests.imagetools import file_sha256
from tests.integration.conftest import run_cli

NAME = "minimal"
SPEC = SPECS / "minimal.yml"
MIB = 1 << 20
SIGNED_FORMATS = ("raw-efi", "uki", "iso-efi")
SECURE_BOOT_ON = "secureboot: Secure boot enabled"
STARTED = "service getty: started"
REFUSED = "Access Denied"  # OVMF's BdsDxe: "failed to load Boot0001 ...: Access Denied"


@dataclass(frozen=True)
class Keys:
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "db.key"

    @property
    def cert(self) -> Path:
        return self.directory / "db.crt"

    def vars(self, arch: str = "amd64") -> Path:
        return self.directory / ("AAVMF_VARS.fd" if arch == "arm64" else "OVMF_VARS_4M.fd")


@dataclass(frozen=True)
class Built:
    root: Path
    keys: Keys
    other_keys: Keys

    def output(self, variant: str, fmt: str) -> Path:
        (suffix,) = get_format(fmt).suffixes
        return self.root / variant / f"{NAME}{suffix}"


def _keys(directory: Path) -> Keys:
    result = run_cli("keys", "create", directory, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    return Keys(directory)


def _build(cache: Path, out: Path, *args: str | Path) -> None:
    result = run_cli("build", "--cache", cache, "--dir", out, "--name", NAME, "--no-sbom", *args, SPEC, stdin=b"")
    assert result.returncode == 0, result.stderr.decode()


@pytest.fixture(scope="module")
def built(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("secure-boot")
    keys, other = _keys(root / "keys"), _keys(root / "other-keys")
    formats = ",".join(SIGNED_FORMATS)
    _build(cache_dir, root / "signed", "-f", formats, "--sign-key", keys.key, "--sign-cert", keys.cert)
    _build(cache_dir, root / "again", "-f", formats, "--sign-key", keys.key, "--sign-cert", keys.cert)
    _build(cache_dir, root / "other", "-f", "raw-efi", "--sign-key", other.key, "--sign-cert", other.cert)
    _build(cache_dir, root / "unsigned", "-f", "raw-efi")
    sign = ("--sign-key", keys.key, "--sign-cert", keys.cert)
    _build(cache_dir, root / "arm64-signed", "--arch", "arm64", "-f", "raw-efi", *sign)
    _build(cache_dir, root / "arm64-unsigned", "--arch", "arm64", "-f", "raw-efi")
    return Built(root, keys, other)


Boot = Callable[..., str]


@pytest.fixture
def boot(built: Built, tmp_path: Path) -> Boot:
    """Boot a copy of an image under OVMF with Secure Boot enforced and `built.keys` enrolled, until a line."""
    def run(image: Path, until: str, timeout: int = 120, arch: str = "amd64") -> str:
        copy = tmp_path / image.name
        shutil.copyfile(image, copy)
        result = run_cli("run", "--accel", "tcg", "--secure-boot", "--fw-vars", built.keys.vars(arch),
                         "--timeout", str(timeout), "--until", until, copy, stdin=b"")
        console = result.stdout.decode(errors="replace").replace("\r\n", "\n")
        assert result.returncode == 0, (result.stderr.decode(), console[-3000:])
        return console
    return run


def _esp_loader(disk: Path, out: Path) -> Path:
    subprocess.run(["mcopy", "-n", "-i", f"{disk}@@{MIB}", "::/EFI/BOOT/BOOTX64.EFI", str(out)], check=True,
                   env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
    return out


@pytest.mark.boot
@pytest.mark.parametrize("fmt", SIGNED_FORMATS)
def test_signed_image_boots_with_secure_boot_enforced(built: Built, boot: Boot, fmt: str) -> None:
    console = boot(built.output("signed", fmt), STARTED)
    assert "EFI stub: UEFI Secure Boot is enabled." in console
    assert SECURE_BOOT_ON in console
    assert REFUSED not in console


@pytest.mark.boot
@pytest.mark.parametrize("variant", ["unsigned", "other"])
def test_firmware_refuses_an_image_not_signed_by_the_enrolled_db(built: Built, boot: Boot, variant: str) -> None:
    """Unsigned, or signed with another (valid, but not enrolled) key: the firmware loads nothing."""
    console = boot(built.output(variant, "raw-efi"), REFUSED, timeout=60)
    assert REFUSED in console
    assert "Linux version" not in console and "EFI stub" not in console


@pytest.mark.boot
def test_arm64_signed_disk_boots_and_unsigned_is_refused_by_aavmf(built: Built, boot: Boot) -> None:
    """The same on arm64 (qemu virt, Debian's AAVMF with the keys of `keys create` in DIR/AAVMF_VARS.fd)."""
    console = boot(built.output("arm64-signed", "raw-efi"), STARTED, arch="arm64")
    assert SECURE_BOOT_ON in console and "EFI stub: UEFI Secure Boot is enabled." in console
    refused = boot(built.output("arm64-unsigned", "raw-efi"), REFUSED, timeout=60, arch="arm64")
    assert "EFI stub" not in refused


def test_signed_outputs_are_reproducible(built: Built) -> None:
    for fmt in SIGNED_FORMATS:
        assert file_sha256(built.output("signed", fmt)) == file_sha256(built.output("again", fmt)), fmt


def test_sbverify_accepts_the_signature_with_the_db_certificate_only(built: Built, tmp_path: Path) -> None:
    uki = built.output("signed", "uki")
    loader = _esp_loader(built.output("signed", "raw-efi"), tmp_path / "BOOTX64.EFI")
    assert loader.read_bytes() == uki.read_bytes()  # the disk boots the very UKI the uki format writes
    for binary in (uki, loader):
        ok = subprocess.run(["sbverify", "--cert", str(built.keys.cert), str(binary)], capture_output=True, text=True)
        assert ok.returncode == 0 and "Signature verification OK" in ok.stdout, ok.stdout + ok.stderr
        other = subprocess.run(["sbverify", "--cert", str(built.other_keys.cert), str(binary)], capture_output=True,
                               text=True)
        assert other.returncode != 0, other.stdout
    unsigned = _esp_loader(built.output("unsigned", "raw-efi"), tmp_path / "unsigned.efi")
    listing = subprocess.run(["sbverify", "--list", str(unsigned)], capture_output=True, text=True)
    assert "No signature table present" in listing.stdout + listing.stderr
