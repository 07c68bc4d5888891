"""UEFI firmware files for qemu: OVMF's code (read-only pflash) with a per-run writable copy of its
variable store, or a single OVMF image for -bios when there is no split pair."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from linuxkit_py.arch import Arch
from linuxkit_py.errors import UserError
from linuxkit_py.tools import install_hint

OVMF_PACKAGE = "ovmf"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_BIOS = Path("/usr/share/ovmf/OVMF.fd")  # code and variables in one image
# Secure Boot: per architecture, firmware that enforces it, Debian's variable store with its snakeoil PK/KEK/db
# enrolled and Secure Boot on (used when `run --secure-boot` gets no --fw-vars), and the machine it needs.
# OVMF's secboot build needs SMM (q35, smm=on, secure pflash); AAVMF enforces it on qemu's virt as it is.
@dataclass(frozen=True)
class SecureBoot:
    code: Path
    snakeoil_vars: Path
    machine: tuple[str, ...] = ()  # replaces the architecture's -machine/-cpu arguments when not empty


SECURE_BOOT = {
    "amd64": SecureBoot(Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
                        Path("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"),
                        ("-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on")),
    "arm64": SecureBoot(Path("/usr/share/AAVMF/AAVMF_CODE.fd"), Path("/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd")),
}


@dataclass(frozen=True)
class Firmware:
    code: Path  # pflash unit 0 (read-only), or the -bios image when vars_template is None
    vars_template: Path | None = None  # copied for every run, the copy is pflash unit 1


def _vars_beside(code: Path) -> Path | None:
    """OVMF_VARS*.fd next to an OVMF_CODE*.fd (Debian's naming), if there is one."""
    if "CODE" not in code.name:
        return None
    candidate = code.with_name(code.name.replace("CODE", "VARS", 1))
    return candidate if candidate.is_file() else None


def find_firmware(fw: Path | None = None, arch: Arch | None = None) -> Firmware:
    """`fw` (with its VARS file when it is a CODE file), else Debian's firmware for `arch`: on amd64
    OVMF_CODE_4M/OVMF_VARS_4M, else OVMF.fd; on arm64 AAVMF_CODE/AAVMF_VARS (qemu-efi-aarch64)."""
    if fw is not None:
        if not fw.is_file():
            raise UserError(f"firmware {fw} not found")
        return Firmware(fw, _vars_beside(fw))
    if arch is not None and arch.name != "amd64":
        code, vars_ = Path(arch.uefi_code), Path(arch.uefi_vars)
        if arch.uefi_code and code.is_file() and vars_.is_file():
            return Firmware(code, vars_)
        raise UserError(f"no UEFI firmware for {arch.name}: {code} not found",
                        hint=install_hint(arch.uefi_package) if arch.uefi_package else None)
    if OVMF_CODE.is_file() and OVMF_VARS.is_file():
        return Firmware(OVMF_CODE, OVMF_VARS)
    if OVMF_BIOS.is_file():
        return Firmware(OVMF_BIOS)
    raise UserError(f"no UEFI firmware: looked for {OVMF_CODE} with {OVMF_VARS}, and {OVMF_BIOS}",
                    hint=install_hint(OVMF_PACKAGE))


def secure_boot_firmware(arch: Arch, code: Path | None, vars_file: Path | None) -> Firmware:
    """Firmware enforcing Secure Boot for `arch` (or `code`) with `vars_file` (a variable store with your keys
    enrolled, e.g. from `linuxkit-py keys create`), else Debian's snakeoil store."""
    table = SECURE_BOOT.get(arch.name)
    if table is None:
        raise UserError(f"run --secure-boot: no Secure Boot firmware is set up for {arch.name}")
    code = code or table.code
    template = vars_file or table.snakeoil_vars
    for path, what, given in ((code, "firmware", code is not table.code), (template, "variable store", vars_file)):
        if not path.is_file():
            raise UserError(f"run --secure-boot: the {what} {path} not found",
                            hint=None if given else install_hint(arch.uefi_package or OVMF_PACKAGE))
    return Firmware(code, template)


def copy_vars(firmware: Firmware, directory: Path) -> Path | None:
    """A writable copy of the variable store in `directory` (variables a guest sets last one run)."""
    if firmware.vars_template is None:
        return None
    copy = directory / firmware.vars_template.name
    shutil.copyfile(firmware.vars_template, copy)
    return copy

