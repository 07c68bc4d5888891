"""A rebuild with nothing changed rewrites nothing; any change to what decides the bytes rebuilds.

Real builds through the command line from a copy of the test image cache (no registry).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from linuxkit_py.cache.layout import Cache
from tests.bootimages import LayoutImage, load_layout_into_cache
from tests.imagetools import file_sha256
from tests.integration.conftest import BUSYBOX_REF, INIT_REF, KERNEL_REF, fill_cache, run_cli

SPEC = f"""\
kernel:
  image: {KERNEL_REF}
  cmdline: "console=ttyS0"
init:
  - {INIT_REF}
onboot:
  - name: hello
    image: {BUSYBOX_REF}
    command: ["/bin/echo", "hello"]
files:
  - path: etc/notes.txt
    source: notes.txt
"""
OUTPUTS = ("system-kernel", "system-initrd.img", "system-cmdline", "system.spdx.json")


@pytest.fixture
def cache(tmp_path: Path, warm_cache: Path) -> Path:
    """A private copy of the test cache: tests here change what its refs name."""
    copy = tmp_path / "cache"
    shutil.copytree(warm_cache, copy, symlinks=True)
    return copy


def write_spec(tmp_path: Path, text: str = SPEC) -> Path:
    spec = tmp_path / "system.yml"
    spec.write_text(text)
    if not (tmp_path / "notes.txt").exists():
        (tmp_path / "notes.txt").write_text("notes from the host\n")
    return spec


def build(tmp_path: Path, cache: Path, *args: str, env: dict[str, str] | None = None, out: str = "out") -> str:
    spec = tmp_path / "system.yml" if (tmp_path / "system.yml").exists() else write_spec(tmp_path)
    result = run_cli("build", "--cache", cache, "--dir", tmp_path / out, *args, spec, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return result.stderr.decode()


def identities(out: Path) -> dict[str, tuple[int, int]]:
    return {name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) for name in OUTPUTS}


def digests(out: Path) -> dict[str, str]:
    return {name: file_sha256(out / name) for name in OUTPUTS}


def test_noop_rebuild_rewrites_nothing_and_says_so(tmp_path: Path, cache: Path) -> None:
    build(tmp_path, cache)
    out = tmp_path / "out"
    before, content = identities(out), digests(out)
    stderr = build(tmp_path, cache)
    assert identities(out) == before
    assert digests(out) == content
    for name in OUTPUTS:
        assert f"{out / name}: up to date" in stderr
    assert "wrote" not in stderr
    # a missing SBOM is written again, and only it
    (out / "system.spdx.json").unlink()
    stderr = build(tmp_path, cache)
    assert "system.spdx.json" in stderr and f"{out / 'system-initrd.img'}: up to date" in stderr
    assert digests(out) == content
    # the outputs a skipped build leaves are those of a build from scratch
    shutil.rmtree(out)
    build(tmp_path, cache)
    assert digests(out) == content


def _edit_spec(tmp_path: Path, containers: Path) -> None:
    write_spec(tmp_path, SPEC.replace('cmdline: "console=ttyS0"', 'cmdline: "console=ttyS0 quiet"'))


def _edit_source_keeping_size_and_mtime(tmp_path: Path, containers: Path) -> None:
    notes = tmp_path / "notes.txt"
    st = notes.stat()
    notes.write_text("NOTES FROM THE HOST\n")  # same size
    os.utime(notes, ns=(st.st_atime_ns, st.st_mtime_ns))


def _retag_image(tmp_path: Path, containers: Path) -> None:
    load_layout_into_cache(containers, "tools", Cache(tmp_path / "cache"), BUSYBOX_REF)  # another digest


CHANGES = {
    "spec": (_edit_spec, (), {}),
    "source file content": (_edit_source_keeping_size_and_mtime, (), {}),
    "image digest": (_retag_image, (), {}),
    "SOURCE_DATE_EPOCH": (None, (), {"SOURCE_DATE_EPOCH": "1700000000"}),
    "option": (None, ("--decompress-kernel",), {}),
    "formats": (None, ("-f", "kernel+initrd,tar"), {}),
}
# The files each change rewrites; the others hold the same bytes and are left in place. An option,
# SOURCE_DATE_EPOCH or the format list may reach any byte: everything is written again.
REWRITTEN = {
    "spec": {"system-cmdline", "system.spdx.json"},  # the kernel cmdline
    "source file content": {"system-initrd.img", "system.spdx.json"},
    "image digest": {"system-initrd.img", "system.spdx.json"},
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_any_change_rebuilds_as_from_scratch(tmp_path: Path, cache: Path, container_layout: Path,
                                             kernel_image: LayoutImage, init_image: LayoutImage,
                                             change: str) -> None:
    edit, args, env = CHANGES[change]
    build(tmp_path, cache)
    out = tmp_path / "out"
    before = identities(out)
    if edit is not None:
        edit(tmp_path, container_layout)
    stderr = build(tmp_path, cache, *args, env=env)
    after = identities(out)
    rewritten = REWRITTEN.get(change, set(OUTPUTS))
    for name in OUTPUTS:
        if name in rewritten:
            assert f"wrote {out / name}" in stderr and after[name] != before[name], name
        else:
            assert f"{out / name}: up to date" in stderr and after[name] == before[name], name
    # byte for byte what a build into an empty directory from a fresh cache writes
    fresh_cache = tmp_path / "fresh-cache"
    shutil.copytree(cache, fresh_cache, symlinks=True)
    shutil.rmtree(fresh_cache / "linuxkit-py" / "outputs")
    shutil.rmtree(fresh_cache / "linuxkit-py" / "deflate")  # every gzip block deflated anew
    build(tmp_path, fresh_cache, *args, env=env, out="fresh")
    assert digests(out) == digests(tmp_path / "fresh")
    # and the same change again is a no-op
    changed = identities(out)
    assert "system-initrd.img: up to date" in build(tmp_path, cache, *args, env=env)
    assert identities(out) == changed


@pytest.mark.parametrize("damage", ["truncate", "edit in place", "replace"])
def test_damaged_output_is_rewritten(tmp_path: Path, cache: Path, damage: str) -> None:
    build(tmp_path, cache)
    out = tmp_path / "out"
    content = digests(out)
    initrd = out / "system-initrd.img"
    if damage == "truncate":
        os.truncate(initrd, initrd.stat().st_size // 2)
    elif damage == "edit in place":
        st = initrd.stat()
        with open(initrd, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
        os.utime(initrd, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with its old size and mtime
    else:
        other = tmp_path / "other"
        other.write_bytes(b"x" * initrd.stat().st_size)
        os.replace(other, initrd)
    stderr = build(tmp_path, cache)
    assert f"wrote {initrd}" in stderr
    assert digests(out) == content


def test_pull_still_asks_the_registry(tmp_path: Path, cache: Path) -> None:
    build(tmp_path, cache)
    spec = tmp_path / "system.yml"
    result = run_cli("build", "--pull", "--cache", cache, "--dir", tmp_path / "out", spec,
                     env={"LINUXKIT_MIRROR": ""})
    assert result.returncode != 0  # the test refs name no reachable registry: --pull tried it
    assert b"up to date" not in result.stderr


def test_fresh_cache_rebuilds(tmp_path: Path, kernel_image: LayoutImage, init_image: LayoutImage,
                              container_layout: Path, cache: Path) -> None:
    build(tmp_path, cache)
    other = tmp_path / "other-cache"
    fill_cache(other, kernel_image, init_image, container_layout)
    out = tmp_path / "out"
    content = digests(out)
    assert "up to date" not in build(tmp_path, other)
    assert digests(out) == content
    assert "up to date" not in build(tmp_path, cache)  # the first cache's record names files since replaced
