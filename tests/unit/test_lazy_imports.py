"""A build that needs no registry, no signing, no ELF check and no ISO does not load the libraries for them.

Importing requests, cryptography, pyelftools and pycdlib costs about 0.25 s together (tqdm another 15 ms), half
of a no-op rebuild (docs/benchmarks.md, "Rebuilds"); the modules that use them import them where they are used.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("requests", "cryptography", "elftools", "pycdlib", "tqdm")


def test_the_build_command_loads_no_heavy_library_before_it_needs_one() -> None:
    probe = (
        "import sys, linuxkit_py.cli, linuxkit_py.build, linuxkit_py.formats as f; f.all_formats(); "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert loaded.split() == []
