"""Several spec files merge like LinuxKit's AppendConfig; names are checked across the merged result."""

from __future__ import annotations

from pathlib import Path

import pytest

from linuxkit_py.errors import SpecError
from linuxkit_py.spec import load_specs
from linuxkit_py.spec.model import Position

SPECS = Path(__file__).parent / "specs"


@pytest.fixture
def specs_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(SPECS)
    return SPECS


def test_later_kernel_fields_override_and_lists_append(specs_dir: Path) -> None:
    spec = load_specs(["merge-base.yml", "merge-extra.yml"])
    # image: "" does not override; cmdline does; tar: "" does (it turns the tarball off)
    assert spec.kernel == {
        "image": "linuxkit/kernel:6.12.59",
        "cmdline": "console=tty0 console=ttyS0",
        "tar": "",
    }
    assert spec.init == [
        "linuxkit/init:b5506cc74a6812dc40982cacfd2f4328f8a4b12a",
        "linuxkit/runc:9442aa234715e751a16144f1d4ae3fd1a00fd492",
    ]
    assert [s["name"] for s in spec.onboot] == ["sysctl"]
    assert [s["name"] for s in spec.services] == ["getty", "sshd"]
    assert spec.files == [{"path": "etc/motd", "contents": "hello\n", "mode": "0644"}]
    assert spec.volumes == [{"name": "data"}]
    assert spec.sources == ["merge-base.yml", "merge-extra.yml"]


def test_positions_point_into_the_file_each_value_came_from(specs_dir: Path) -> None:
    spec = load_specs(["merge-base.yml", "merge-extra.yml"])
    assert spec.positions["kernel/image"] == Position("merge-base.yml", 2, 10)
    assert spec.positions["kernel/cmdline"] == Position("merge-extra.yml", 3, 12)
    assert spec.positions["init/1"] == Position("merge-extra.yml", 6, 5)
    assert spec.positions["services/1/uid"] == Position("merge-extra.yml", 10, 10)
    assert spec.positions["services/0/name"] == Position("merge-base.yml", 11, 11)
    # errors found later name the entry as the user wrote it in its own file
    assert str(spec.error("services/1/uid", "bad")) == "merge-extra.yml:10:10: services[0].uid: bad"
    assert str(spec.error("services/0/uid", "bad")) == "merge-base.yml:11:5: services[0].uid: bad"


def test_duplicate_service_across_files(specs_dir: Path, tmp_path: Path) -> None:
    extra = tmp_path / "dup.yml"
    extra.write_text("services:\n  - name: other\n    image: alpine\n  - name: getty\n    image: alpine\n")
    with pytest.raises(SpecError) as exc:
        load_specs(["merge-base.yml", str(extra)])
    assert str(exc.value) == (
        f'{extra}:4:11: services[1].name: duplicate service name "getty" (first at merge-base.yml:11:11)'
    )


def test_onboot_names_may_repeat_like_in_linuxkit(specs_dir: Path, tmp_path: Path) -> None:
    extra = tmp_path / "again.yml"
    extra.write_text("onboot:\n  - name: sysctl\n    image: alpine\n")
    spec = load_specs(["merge-base.yml", str(extra)])
    assert [s["name"] for s in spec.onboot] == ["sysctl", "sysctl"]


def test_names_from_another_file_are_known_but_order_matters_for_errors(
    specs_dir: Path, tmp_path: Path
) -> None:
    # the volume and the uid name come from merge-base.yml: fine when both files are given ...
    load_specs(["merge-base.yml", "merge-extra.yml"])
    # ... an error when the file that declares them is missing
    with pytest.raises(SpecError) as exc:
        load_specs(["merge-extra.yml"])
    assert str(exc.value) == (
        'merge-extra.yml:10:10: services[0].uid: "sysctl" is not a number, root or a container in the spec '
        "(hint: a uid/gid is a number, root, or the name of a container)"
    )


def test_each_file_is_validated_on_its_own(specs_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("kernel:\n  cmdline: 5\n")
    with pytest.raises(SpecError) as exc:
        load_specs(["merge-base.yml", str(bad)])
    assert (
        str(exc.value)
        == f'{bad}:2:12: kernel.cmdline: expected a string, got the number 5 (hint: quote it: "5")'
    )
