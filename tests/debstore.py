"""The .debs and apt answers kept between test runs (tests/.cache/pkg-debs, git-ignored): test caches are
seeded from it so only a first run downloads anything, and what a run downloads is stored back."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

DEB_STORE = Path(__file__).resolve().parent / ".cache" / "pkg-debs"
STORED = ("*.deb", "resolved/*.json")


def link_files(source: Path, target: Path) -> None:
    """Hard-link (or copy) the stored .debs and apt answers of `source` into `target`."""
    for pattern in STORED:
        for path in source.glob(pattern):
            dest = target / path.relative_to(source)
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, dest)


@contextlib.contextmanager
def stored_debs(cache: Path) -> Iterator[Path]:
    """A cache directory seeded with the stored .debs; what the block downloads is stored back after it."""
    from linuxkit_py.cache.layout import Cache
    from linuxkit_py.pkg.debs import debs_dir

    debs = debs_dir(Cache(cache))
    if DEB_STORE.is_dir():
        link_files(DEB_STORE, debs)
    yield cache
    if debs.is_dir():
        link_files(debs, DEB_STORE)
