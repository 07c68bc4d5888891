"""Bad input at the command line: one clear line on stderr, exit status 1, nothing written."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.conftest import run_cli
from tests.integration.test_build import SPEC, build, write_spec


def error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_invalid_yaml_names_file_line_and_column(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "kernel:\n  image: x\n  cmdline: [unclosed\n")
    line = error_line(run_cli("build", "--dir", tmp_path / "out", spec))
    assert line.startswith(f"linuxkit-py: {spec}:")
    assert not (tmp_path / "out").exists()


def test_unknown_key_is_located(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "init:\n  - busybox\nunknownField: abc\n")
    line = error_line(run_cli("build", spec))
    assert line.startswith(f"linuxkit-py: {spec}:3:1: ")
    assert "unknownField" in line


def test_unknown_capability_is_located(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "services:\n  - name: a\n    image: busybox\n    capabilities:\n      - CAP_FOO\n")
    line = error_line(run_cli("build", spec))
    assert line.startswith(f"linuxkit-py: {spec}:5:9: services[0].capabilities[0]")
    assert "CAP_FOO" in line


def test_missing_image_names_reference_and_registry(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "init:\n  - 127.0.0.1:1/nothing/here:1\n")
    line = error_line(run_cli("build", "--cache", tmp_path / "cache", "--dir", tmp_path / "out", spec))
    assert "127.0.0.1:1/nothing/here:1" in line and "connection refused" in line
    assert not (tmp_path / "out").exists()


def test_unwritable_output_leaves_nothing(tmp_path: Path, warm_cache: Path) -> None:
    (tmp_path / "out").write_text("a file where the output directory should be")
    line = error_line(build(tmp_path, warm_cache, "-f", "tar"))
    assert "out" in line
    assert (tmp_path / "out").read_text().startswith("a file")


def test_failure_mid_build_leaves_no_output(tmp_path: Path, warm_cache: Path) -> None:
    spec = write_spec(tmp_path, SPEC.replace("source: notes.txt", "source: missing.txt"))
    line = error_line(build(tmp_path, warm_cache, "-f", "tar", "-f", "kernel+initrd", spec=spec))
    assert "missing.txt" in line
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []


def test_interrupted_format_writes_leave_earlier_outputs_only_complete(tmp_path: Path, warm_cache: Path) -> None:
    # a format whose file cannot be renamed into place: a directory holds the final name
    (tmp_path / "out" / "system-initrd.img").mkdir(parents=True)
    line = error_line(build(tmp_path, warm_cache, "-f", "kernel+initrd"))
    assert "system-initrd.img" in line
    leftovers = [p.name for p in (tmp_path / "out").iterdir()]
    assert leftovers == ["system-initrd.img"], leftovers


def test_two_formats_with_the_same_output_name_are_refused(tmp_path: Path, warm_cache: Path) -> None:
    line = error_line(build(tmp_path, warm_cache, "-f", "vhd", "-f", "dynamic-vhd"))
    assert line == ("linuxkit-py: formats vhd and dynamic-vhd both write NAME.vhd "
                    "(hint: build them one at a time or into different --dir)")
    assert not (tmp_path / "out").exists()


def test_layer_limits_are_build_options(tmp_path: Path, warm_cache: Path) -> None:
    # the warm cache indexed every layer under the default limit: a lower one still applies
    line = error_line(build(tmp_path, warm_cache, "-f", "tar", "--max-layer-entries", "3"))
    assert line.startswith("linuxkit-py: layer sha256:") and "more than 3 entries" in line
    assert not (tmp_path / "out").exists()
    line = error_line(build(tmp_path, warm_cache, "-f", "tar", "--max-layer-entries", "many"))
    assert line == ("linuxkit-py: LINUXKIT_PY_MAX_LAYER_ENTRIES='many' is not a positive number "
                    "(e.g. 1000000, 512M or 16G)")



def test_run_with_an_arch_the_output_is_not_for_is_one_line_before_qemu(tmp_path: Path, warm_cache: Path) -> None:
    """An amd64 kernel+initrd run with --arch arm64: refused, naming the kernel, instead of hanging in qemu."""
    assert build(tmp_path, warm_cache, "-f", "kernel+initrd").returncode == 0
    out = tmp_path / "out"
    # no qemu on PATH: had the run got as far as qemu, the error would be that one is missing
    line = error_line(run_cli("run", "--arch", "arm64", "--timeout", "60", out / "system", stdin=b"",
                              env={"PATH": str(tmp_path)}))
    assert line == (f"linuxkit-py: --arch arm64, but {out / 'system-kernel'}'s bytes show an amd64 output "
                    "(hint: drop --arch: run reads the architecture from the output)")
