"""A kernel+initrd built by `linuxkit-py build` boots in qemu and shows the assembled filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from linuxkit_py.run.qemu import QemuOptions, boot
from tests.bootimages import INIT_END, INIT_MARKER
from tests.integration.test_build import build


@pytest.mark.boot
def test_built_initrd_boots_and_holds_the_bundles(tmp_path: Path, warm_cache: Path) -> None:
    result = build(tmp_path, warm_cache, "-f", "kernel+initrd")
    assert result.returncode == 0, result.stderr.decode()
    out = tmp_path / "out"
    cmdline = (out / "system-cmdline").read_text()
    booted = boot(out / "system-kernel", out / "system-initrd.img", cmdline, QemuOptions(mem=512),
                  timeout=90, log=tmp_path / "console.log", until=lambda text: INIT_END in text)
    text = booted.output
    assert INIT_MARKER in text, text[-3000:]
    # /etc/marker comes from the spec's `files`, the listing from the init image's find /containers
    assert "marker from files" in text
    for path in ("/containers/onboot/000-first/config.json", "/containers/onboot/000-first/lower/bin/busybox",
                 "/containers/onboot/001-second/runtime.json", "/containers/services/tools/rootfs",
                 "/containers/volumes/data/lower/etc/motd"):
        assert f"\n{path}\n" in text, f"{path} missing from the booted image"
    assert INIT_END in text
