"""Build options parsed from the command line."""

from __future__ import annotations

import pytest

from linuxkit_py.build import default_name, parse_size, source_date_epoch
from linuxkit_py.errors import UserError


@pytest.mark.parametrize(("text", "size"), [("1G", 1 << 30), ("512M", 512 << 20), ("2GiB", 2 << 30),
                                            ("300k", 300 << 10), ("4096", 4096)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "1.5G", "-1G", "0", "ten"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UserError, match="--size"):
        parse_size(text)


def test_default_name() -> None:
    assert default_name(["dir/linuxkit.yml", "b.yml"]) == "linuxkit"
    assert default_name(["x.yaml"]) == "x"
    assert default_name(["-"]) == "moby"


def test_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch() == 1492533000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch() == 1700000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(UserError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch()


def test_formats_may_share_the_kernel_and_cmdline_files() -> None:
    from linuxkit_py.build import BuildOptions, _formats

    names = [f.name for f in _formats(BuildOptions(paths=["x.yml"], formats=["kernel+initrd,kernel+squashfs"]))]
    assert names == ["kernel+initrd", "kernel+squashfs"]
    with pytest.raises(UserError, match="formats vhd and dynamic-vhd both write NAME.vhd"):
        _formats(BuildOptions(paths=["x.yml"], formats=["vhd", "dynamic-vhd"]))
