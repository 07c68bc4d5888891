"""Architecture names: the one place that maps the spellings users and images use (x86_64, aarch64) to ours."""

from __future__ import annotations

import platform as _platform

from linuxkit_py.errors import UserError

ARCH_ALIASES = {
    "amd64": "amd64",
    "x86_64": "amd64",
    "arm64": "arm64",
    "aarch64": "arm64",
    "riscv64": "riscv64",
}

def normalize_arch(arch: str | None) -> str:
    """`x86_64` -> `amd64`, `aarch64` -> `arm64`; None means the host's architecture."""
    if arch is None:
        arch = _platform.machine()
    try:
        return ARCH_ALIASES[arch.lower()]
    except KeyError:
        raise UserError(
            f"unsupported architecture {arch!r}", hint="use amd64/x86_64, arm64/aarch64 or riscv64"
        ) from None


def uname_arch(arch: str) -> str:
    """The kernel's name for an architecture: amd64 -> x86_64."""
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
