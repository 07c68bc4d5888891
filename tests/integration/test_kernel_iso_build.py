"""`linuxkit-py build -f kernel+iso` as a user runs it: LinuxKit's three files, the root filesystem readable in the
ISO, the same bytes from two builds."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from tests.integration.conftest import run_cli
from tests.integration.test_build import write_spec


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kernel_iso_build(tmp_path: Path, warm_cache: Path) -> None:
    spec = write_spec(tmp_path)
    for out in ("one", "two"):
        built = run_cli("build", "--cache", warm_cache, "-f", "kernel+iso", "--dir", tmp_path / out, spec)
        assert built.returncode == 0, built.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["system-cmdline", "system-kernel", "system.iso",
                                                                      "system.spdx.json"]
    for name in ("system-cmdline", "system-kernel", "system.iso", "system.spdx.json"):
        assert _sha(tmp_path / "one" / name) == _sha(tmp_path / "two" / name)
    initrd = run_cli("build", "--cache", warm_cache, "--dir", tmp_path / "initrd", spec)
    assert initrd.returncode == 0, initrd.stderr.decode()
    for name in ("system-cmdline", "system-kernel"):  # the same bytes as kernel+initrd's
        assert _sha(tmp_path / "one" / name) == _sha(tmp_path / "initrd" / name)
    assert (tmp_path / "one" / "system-cmdline").read_bytes() == b"console=ttyS0 quiet"
    extracted = tmp_path / "extracted"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(tmp_path / "one" / "system.iso"),
                    "-extract", "/etc/marker", str(extracted / "marker"),
                    "-extract", "/containers/onboot/000-first/config.json", str(extracted / "config.json")],
                   check=True, capture_output=True)
    assert (extracted / "marker").read_bytes() == b"marker from files"
    assert b'"/bin/echo"' in (extracted / "config.json").read_bytes()
