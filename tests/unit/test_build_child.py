"""The SBOM is written by a forked child while the formats are written (build._in_child): its failure is the
build's one-line error, its output is whole, and no child outlives the build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linuxkit_py.build import _in_child
from linuxkit_py.errors import UserError


def _reaped(pid: int) -> bool:
    """Whether the child `pid` is gone and waited for (other children of the test process may run)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_the_childs_output_is_whole_and_it_is_waited_for(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with open(target, "wb") as f:
        def work() -> None:
            f.write(b"x" * 100_000)  # more than a buffer: the child flushes before it exits
            f.flush()
        with _in_child(work) as child:
            child.wait()
    assert target.read_bytes() == b"x" * 100_000
    assert _reaped(child.pid)


def test_the_childs_error_is_raised_in_the_parent_as_one_line() -> None:
    def work() -> None:
        raise UserError("NAME.spdx.json: cannot write: No space left on device")
    with pytest.raises(UserError, match=r"^NAME.spdx.json: cannot write: No space left on device$"), \
            _in_child(work) as child:
        child.wait()
    assert _reaped(child.pid)


def test_an_error_of_the_parent_still_waits_for_the_child() -> None:
    with pytest.raises(RuntimeError, match="a format failed"), _in_child(lambda: None) as child:
        raise RuntimeError("a format failed")
    assert _reaped(child.pid)
