"""Atomic file output: temp file in the target directory, renamed into place only on success."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from linuxkit_py.errors import UserError


def _make_temp(target: Path) -> tuple[int, str]:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}") from exc


@contextlib.contextmanager
def atomic_output(target: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file; on success it is fsynced and renamed to `target`, on error removed."""
    with atomic_outputs([target], mode) as files:
        yield files[0]


@contextlib.contextmanager
def atomic_outputs(targets: list[Path], mode: int = 0o644) -> Iterator[list[BinaryIO]]:
    """Like atomic_output for several files that appear together or not at all."""
    temps: list[tuple[str, BinaryIO]] = []
    try:
        for target in targets:
            fd, name = _make_temp(target)
            os.fchmod(fd, mode)
            os.close(fd)
            temps.append((name, open(name, "wb")))  # noqa: SIM115 - closed below
        yield [f for _, f in temps]
        for _, f in temps:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        _rename_all([name for name, _ in temps], targets)
    except BaseException:
        for name, f in temps:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        raise


def _rename_all(temps: list[str], targets: list[Path]) -> None:
    """Rename every temp file to its target; if one fails, remove those already renamed."""
    done: list[Path] = []
    for name, target in zip(temps, targets, strict=True):
        try:
            os.replace(name, target)
        except OSError as exc:
            for path in done:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise UserError(f"cannot write {target}: {exc.strerror}") from exc
        done.append(target)


def replace_synced(target: Path, chunks: Iterable[bytes], check: Callable[[], None] | None = None) -> None:
    """Write `chunks` to a temp file beside `target`, fsync it and rename it into place (mode 0644); `check()` may
    veto before the rename (by raising). OSError propagates; the temp file never stays."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check()
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def replace_unsynced(target: Path, *parts: bytes) -> None:
    """Write `parts` to a temp file beside `target` (which must exist as a directory's child) and rename it into
    place, without fsync: for derived files of a cache, where a file lost in a crash is only a miss. OSError
    propagates; the temp file never stays."""
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
