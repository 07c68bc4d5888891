"""The command line the small benchmarks share: `--cache DIR` (default: a new temporary cache) and `--runs N`."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path


def parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cache", type=Path, help="cache directory (default: a new temporary one)")
    parser.add_argument("--runs", type=int, default=3)
    return parser


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[tuple[Path, Path]]:
    """A temporary directory for the outputs, and the cache (--cache, else one inside it)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        yield work, args.cache or work / "cache"
