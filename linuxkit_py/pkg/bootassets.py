"""Boot assets: the firmware and boot loader files a format puts on its medium, from Debian's packages.

A format names what it needs (its row's `assets`); the build asks here for the files of the target
architecture and hands their paths to the writer (FormatOptions.assets). For the host's own architecture
an installed file is used as it is (the host's systemd-boot-efi, grub-efi-amd64-bin); otherwise, and for
what no host has installed (the Raspberry Pi's GPU firmware is in non-free-firmware), the .deb of the
target architecture is fetched through apt (aptstate.py: a private state for a foreign architecture) and
the files are copied out once into `<cache>/linuxkit-py/assets/<deb>/`, named by the .deb, so a given
package version always gives the same bytes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from linuxkit_py.arch import Arch, host_arch
from linuxkit_py.archive.entry import Kind
from linuxkit_py.archive.regionfile import open_data
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.pkg import apt
from linuxkit_py.pkg.aptstate import apt_state_for
from linuxkit_py.pkg.debs import deb_entries, download_debs, resolution_dir

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class Asset:
    """A file or directory of a Debian package; `{efi}`, `{grub}` and `{arch}` are filled from arch.py."""

    package: str
    path: str  # inside the package, no leading /; a trailing / names a directory

    def for_arch(self, arch: Arch) -> Asset:
        fill = {"efi": arch.efi_suffix, "grub": arch.grub_target, "arch": arch.name}
        return Asset(self.package.format(**fill), self.path.format(**fill))


ASSETS: dict[str, Asset] = {
    "efi-stub": Asset("systemd-boot-efi", "usr/lib/systemd/boot/efi/linux{efi}.efi.stub"),
    "systemd-boot": Asset("systemd-boot-efi", "usr/lib/systemd/boot/efi/systemd-boot{efi}.efi"),
    "grub-efi": Asset("grub-efi-{arch}-bin", "usr/lib/grub/{grub}/"),
    "raspi-firmware": Asset("raspi-firmware", "usr/lib/raspi-firmware/"),
    "u-boot-rpi": Asset("u-boot-rpi", "usr/lib/u-boot/"),
}


def _installed(asset: Asset) -> Path | None:
    path = Path("/") / asset.path
    if asset.path.endswith("/"):
        return path if path.is_dir() and any(path.iterdir()) else None
    return path if path.is_file() else None


def _extract(cache: Cache, deb_path: Path, asset: Asset, target: Path) -> None:
    """Copy the asset's file(s) out of the .deb into `target` (a file, or a directory), atomically."""
    entries = [e for e in deb_entries(cache, deb_path) if e.path == asset.path.rstrip("/")
               or (asset.path.endswith("/") and e.path.startswith(asset.path))]
    files = [e for e in entries if e.kind is Kind.FILE]
    if not files:
        raise UserError(f"{deb_path.name} has no /{asset.path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".asset-", dir=target.parent))
    try:
        for entry in files:
            rel = entry.path.removeprefix(asset.path) if asset.path.endswith("/") else target.name
            out = work / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with open_data(entry.data) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            os.chmod(out, 0o644)
        os.replace(work if asset.path.endswith("/") else work / target.name, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fetch_assets(cache: Cache, arch: Arch, names: list[str]) -> dict[str, Path]:
    """The path of each named asset for `arch`: installed on the host (host arch only) or from its .deb."""
    found: dict[str, Path] = {}
    wanted: dict[str, Asset] = {}
    for name in dict.fromkeys(names):
        asset = ASSETS[name].for_arch(arch)
        installed = _installed(asset) if arch.name == host_arch() else None
        if installed is not None:
            found[name] = installed
        else:
            wanted[name] = asset
    if not wanted:
        return found
    state = apt_state_for(arch.name, cache.derived_dir)
    packages = sorted({a.package for a in wanted.values()})
    resolution = apt.resolve(packages, state, libraries=False, memo_dir=resolution_dir(cache))
    debs = {deb.name: deb for deb in resolution.packages}
    paths = download_debs(cache, list(debs.values()), state)
    for name, asset in wanted.items():
        deb = debs[asset.package]
        target = cache.derived_dir / "assets" / deb.file_name.removesuffix(".deb") / asset.path.rstrip("/")
        if not target.exists():
            log.info("taking /%s out of %s", asset.path, deb.file_name)
            _extract(cache, paths[deb], asset, target)
        found[name] = target
    return found
