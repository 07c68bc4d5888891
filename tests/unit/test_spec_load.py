"""Reading spec YAML: positions, yaml.v3 scalar typing, YAML mistakes, stdin, the LinuxKit examples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from linuxkit_py.errors import SpecError, UserError
from linuxkit_py.spec import load_specs
from linuxkit_py.spec.model import Position

SPECS = Path(__file__).parent / "specs"
REPO = Path(__file__).parents[2]


def load_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str | bytes, name: str = "spec.yml"):
    monkeypatch.chdir(tmp_path)
    Path(name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return load_specs([name])


def error_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str | bytes) -> str:
    with pytest.raises(SpecError) as exc:
        load_text(tmp_path, monkeypatch, text)
    return str(exc.value)


@pytest.mark.parametrize("name", ["minimal.yml", "linuxkit.yml", "sshd.yml"])
def test_linuxkit_examples_load(name: str) -> None:
    spec = load_specs([str(SPECS / name)])
    assert spec.kernel["image"] == "linuxkit/kernel:6.12.59"
    assert spec.init[0] == "linuxkit/init:b5506cc74a6812dc40982cacfd2f4328f8a4b12a"
    assert spec.services[0] == {
        "name": "getty",
        "image": "linuxkit/getty:a86d74c8f89be8956330c3b115b0b1f2e09ef6e0",
        "env": ["INSECURE=true"],
    }
    assert spec.sources == [str(SPECS / name)]


def test_sshd_example_keeps_binds_add_and_optional_source() -> None:
    spec = load_specs([str(SPECS / "sshd.yml")])
    assert spec.services[3]["binds.add"] == ["/root/.ssh:/root/.ssh"]
    assert spec.files == [
        {"path": "root/.ssh/authorized_keys", "source": "~/.ssh/id_rsa.pub", "mode": "0600", "optional": True}
    ]


def test_positions_are_one_based_line_and_column_of_each_value() -> None:
    path = str(SPECS / "linuxkit.yml")
    spec = load_specs([path])
    # line 30 is "     - CAP_CHOWN": the value starts in column 8
    assert spec.positions["services/2/capabilities/1"] == Position(path, 30, 8)
    assert spec.positions["services/2/name"] == Position(path, 26, 11)
    assert spec.positions["services/2"] == Position(path, 26, 5)
    assert spec.positions["kernel/cmdline"] == Position(path, 3, 12)
    assert spec.position("services/2/capabilities/1/nothing/below") == Position(path, 30, 8)


def test_plain_scalars_are_typed_like_yaml_v3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_text(
        tmp_path,
        monkeypatch,
        "services:\n"
        "  - name: s\n"
        "    image: alpine\n"
        "    command: [echo, yes, no, on, off, y, '1:20', 2001-12-14]\n"
        "    restart: no\n"
        "    oomScoreAdj: 0x10\n"
        "    readonly: True\n",
    )
    service = spec.services[0]
    assert service["command"] == ["echo", "yes", "no", "on", "off", "y", "1:20", "2001-12-14"]
    assert service["restart"] == "no"
    assert service["oomScoreAdj"] == 16
    assert service["readonly"] is True


def test_unquoted_numbers_where_strings_belong_are_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "services:\n  - name: s\n    image: alpine\n    command: [sleep, 1e5]\n"
    assert error_of(tmp_path, monkeypatch, text) == (
        'spec.yml:4:22: services[0].command[1]: expected a string, got the number 1e5 (hint: quote it: "1e5")'
    )


def test_empty_file_is_an_empty_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("", "# only a comment\n", "---\n"):
        spec = load_text(tmp_path, monkeypatch, text)
        assert spec.to_dict() == {}
        assert spec.sources == ["spec.yml"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "spec.yml:1:1: a spec must be a mapping (kernel:, init:, ...), got a list"),
        ("hello\n", 'spec.yml:1:1: a spec must be a mapping (kernel:, init:, ...), got the scalar "hello"'),
        (
            "kernel:\n  image: a\n  image: b\n",
            "spec.yml:3:3: kernel.image: duplicate key (first defined at line 2)",
        ),
        (
            "services:\n  - name: a\n    image: b\n    env: [A=1]\n    name: c\n",
            "spec.yml:5:5: services[0].name: duplicate key (first defined at line 2)",
        ),
        ("kernel:\n  image: [a\n", "spec.yml:3:1: invalid YAML: expected ',' or ']', but got '<stream end>'"),
        (
            "kernel:\n\timage: x\n",
            "spec.yml:2:1: invalid YAML: found character '\\t' that cannot start any token",
        ),
        ("kernel:\n  image: !foo x\n", "spec.yml:2:10: invalid YAML: unsupported tag !foo"),
        ("kernel:\n  cmdline: !!int abc\n", "spec.yml:2:12: invalid YAML: 'abc' is not a valid !!int"),
        (
            "kernel:\n  ? [a]\n  : b\n",
            "spec.yml:2:5: invalid YAML: a mapping key must be a plain name, not a list or mapping",
        ),
        (
            "kernel: {}\n---\ninit: []\n",
            "spec.yml:2:1: invalid YAML: expected a single document in the stream, but found another "
            "document",
        ),
        (b"kernel:\n  image: \xff\n", "spec.yml:2:10: invalid YAML: the file is not UTF-8 text"),
        ("init: &a [*a]\n", "spec.yml:1:7: invalid YAML: recursive alias"),
    ],
)
def test_yaml_mistakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str | bytes, message: str
) -> None:
    assert error_of(tmp_path, monkeypatch, text) == message


def test_explicit_str_tag_keeps_a_number_a_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_text(
        tmp_path, monkeypatch, "services:\n  - name: s\n    image: a\n    sysctl: {vm.x: !!str 1}\n"
    )
    assert spec.services[0]["sysctl"] == {"vm.x": "1"}


def test_anchors_and_merge_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "services:\n"
        "  - &getty\n"
        "    name: getty\n"
        "    image: linuxkit/getty:v1\n"
        "    env: [INSECURE=true]\n"
        "  - <<: *getty\n"
        "    name: getty2\n"
    )
    spec = load_text(tmp_path, monkeypatch, text)
    assert spec.services[1] == {"name": "getty2", "image": "linuxkit/getty:v1", "env": ["INSECURE=true"]}
    # a merged value keeps the position it was written at
    assert spec.positions["services/1/image"] == Position("spec.yml", 4, 12)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        load_specs([str(tmp_path / "nope.yml")])
    assert str(exc.value) == f"cannot read spec file {tmp_path / 'nope.yml'}: No such file or directory"


def _load_stdin(text: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        "from linuxkit_py.errors import UserError\n"
        "from linuxkit_py.spec import load_specs, spec_to_yaml\n"
        "try:\n"
        "    sys.stdout.write(spec_to_yaml(load_specs(['-'])))\n"
        "except UserError as e:\n"
        "    sys.stdout.write(str(e))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], input=text, capture_output=True, text=True, cwd=REPO, check=True
    )


def test_stdin_is_read_and_named_stdin_in_errors() -> None:
    ok = _load_stdin("kernel:\n  image: linuxkit/kernel:6.12.59\n")
    assert ok.stdout == "kernel:\n  image: linuxkit/kernel:6.12.59\n"
    bad = _load_stdin("kernel:\n  image: linuxkit/kernel:6.12.59\n  binray: kernel\n")
    assert bad.stdout == '<stdin>:3:3: kernel.binray: unknown key (hint: did you mean "binary"?)'
