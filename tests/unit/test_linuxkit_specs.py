"""LinuxKit-style specs (tests/unit/linuxkit_specs/, written by us from LinuxKit's schema) through `build --dry-run`:
each is accepted exactly when LinuxKit's `--dry-run` accepts it, apart from the documented divergences, and a
refusal is the one line a user sees. bench/linuxkit_specs.py runs the same check over a LinuxKit checkout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from linuxkit_py.cli import main

SPECS = Path(__file__).with_name("linuxkit_specs")
# file -> (LinuxKit's verdict, our verdict, our error line without the "linuxkit-py: FILE:" prefix)
VERDICTS: dict[str, tuple[str, str, str]] = {
    "accept-minimal.yml": ("accept", "accept", ""),
    "accept-services.yml": ("accept", "accept", ""),
    "accept-files-volumes.yml": ("accept", "accept", ""),
    "accept-hugepages.yml": ("accept", "accept", ""),
    "accept-at-pkg.yml": ("accept", "accept", ""),
    "reject-unknown-section.yml": ("reject", "reject", '5:1: service: unknown key (hint: did you mean "services"?)'),
    "reject-missing-image.yml": ("reject", "reject", '4:5: onboot[0]: missing required key "image"'),
    "reject-bool-as-string.yml": ("reject", "reject",
                                  '6:15: services[0].readonly: expected true or false, got the string "true"'),
    "reject-unknown-image-key.yml": ("reject", "reject",
                                     '6:5: onboot[0].privileged: unknown key (hint: did you mean "noNewPrivileges"?)'),
    # documented in docs/spec.md (decisions on LinuxKit quirks)
    "diverge-unquoted-mode.yml": ("reject", "accept", ""),
    "diverge-pagesize-string.yml": ("reject", "accept", ""),
}


def test_every_spec_has_a_verdict() -> None:
    assert sorted(p.name for p in SPECS.glob("*.yml")) == sorted(VERDICTS)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_dry_run_verdict(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    linuxkit, ours, error = VERDICTS[name]
    assert linuxkit == ours or name.startswith("diverge-")
    path = SPECS / name
    status = main(["build", "--dry-run", str(path)])
    out, err = capsys.readouterr()
    if ours == "accept":
        assert (status, err) == (0, "")
        assert out.startswith("kernel:\n  image: docker.io/linuxkit/kernel:6.6.71\n")
    else:
        assert (status, out, err) == (1, "", f"linuxkit-py: {path}:{error}\n")


def test_at_pkg_of_a_linuxkit_package_is_its_show_tag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--dry-run", str(SPECS / "accept-at-pkg.yml")]) == 0
    out = capsys.readouterr().out
    # the git tree hash of tests/unit/linuxkit_specs/pkg/init in this repository (latest in a copy without git)
    assert re.search(r"\ninit:\n  - docker\.io/linuxkit/init:([0-9a-f]{40}(-dirty-[0-9a-f]{7})?|latest)\n", out), out
