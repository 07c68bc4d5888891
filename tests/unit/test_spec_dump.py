"""The merged spec as YAML (--dry-run, metadata: yaml) and JSON (metadata: json); YAML round-trips."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linuxkit_py.spec import Spec, load_specs, spec_to_json, spec_to_yaml

SPECS = Path(__file__).parent / "specs"

TRICKY = """\
files:
  - path: etc/motd
    mode: 0640
    contents: |
      line one
        indented
    uid: 0
services:
  - env: [A=yes]
    name: s
    image: alpine
    command: ["0o17", "1e5", "09", "yes", "-1", "true", "", " x", "~", "a: b", "#c", "1:20"]
    sysctl: {"<<": "1", "0o7": "x"}
    gid: "7"
kernel:
  cmdline: console=ttyS0
"""

TRICKY_YAML = """\
kernel:
  cmdline: console=ttyS0
services:
  - env:
      - A=yes
    name: s
    image: alpine
    command:
      - '0o17'
      - '1e5'
      - '09'
      - 'yes'
      - '-1'
      - 'true'
      - ''
      - ' x'
      - '~'
      - 'a: b'
      - '#c'
      - '1:20'
    sysctl:
      '<<': '1'
      '0o7': x
    gid: 7
files:
  - path: etc/motd
    mode: '0640'
    contents: |
      line one
        indented
    uid: 0
"""


def _reload(text: str) -> Spec:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dumped.yml"
        path.write_text(text)
        return load_specs([str(path)])


def test_yaml_keeps_section_order_and_the_users_key_order(tmp_path: Path) -> None:
    path = tmp_path / "tricky.yml"
    path.write_text(TRICKY)
    assert spec_to_yaml(load_specs([str(path)])) == TRICKY_YAML


@pytest.mark.parametrize("name", ["minimal.yml", "linuxkit.yml", "sshd.yml"])
def test_dumped_yaml_loads_to_the_same_spec(name: str) -> None:
    spec = load_specs([str(SPECS / name)])
    assert _reload(spec_to_yaml(spec)).to_dict() == spec.to_dict()


def test_merged_spec_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(SPECS)
    spec = load_specs(["merge-base.yml", "merge-extra.yml"])
    again = _reload(spec_to_yaml(spec))
    assert again.to_dict() == spec.to_dict()
    assert again.kernel["tar"] == ""


def test_empty_spec_dumps_as_an_empty_mapping(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_text("")
    spec = load_specs([str(path)])
    assert spec_to_yaml(spec) == "{}\n"
    assert spec_to_json(spec) == "{}\n"
    assert _reload("{}\n").to_dict() == {}


def test_json_metadata(tmp_path: Path) -> None:
    path = tmp_path / "tricky.yml"
    path.write_text(TRICKY)
    text = spec_to_json(load_specs([str(path)]))
    assert text.endswith("}\n")
    doc = json.loads(text)
    assert list(doc) == ["kernel", "services", "files"]
    assert doc["files"][0] == {
        "path": "etc/motd",
        "mode": "0640",
        "contents": "line one\n  indented\n",
        "uid": 0,
    }
    assert doc["services"][0]["gid"] == 7
    assert text.startswith('{\n    "kernel": {\n        "cmdline": "console=ttyS0"\n    },\n')


@settings(max_examples=150, deadline=None)
@given(
    command=st.lists(st.text(max_size=12), max_size=4),
    contents=st.text(max_size=40),
    sysctl=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3),
)
def test_any_strings_round_trip(command: list[str], contents: str, sysctl: dict[str, str]) -> None:
    spec = Spec(
        services=[{"name": "s", "image": "alpine", "command": command, "sysctl": sysctl}],
        files=[{"path": "etc/x", "contents": contents}],
    )
    assert _reload(spec_to_yaml(spec)).to_dict() == spec.to_dict()
