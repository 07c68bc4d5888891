"""The gzip bytes of every output are the same on any x86-64 CPU.

zlib-ng picks SSE2, SSE4.2, PCLMUL, AVX2 or AVX-512 code at run time. Our outputs are reproducible
across machines only if each of those paths deflates to the same bytes, so the real gzip writer runs
here natively and under qemu-x86_64 emulating CPUs that lack the newer instruction sets (qemu64: the
x86-64 baseline; Nehalem: SSE4.2 without PCLMUL; Haswell: AVX2, PCLMUL), on real files. The emulated
CPUs do reach other code: ISA-L's level 3 gives three different outputs on these three (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CPUS = ("qemu64", "Nehalem", "Haswell")
# Deflates ~3 MB of real files (this Python's standard library and its extension modules: text and code) with
# the writer the initrd uses, at its default level and 1 MiB blocks with 32 KiB dictionaries.
PROGRAM = """
import hashlib, io, pathlib, sys
from linuxkit_py.archive.compress import ParallelGzipWriter
lib = pathlib.Path(sys.argv[1])
data = b"".join(p.read_bytes() for p in sorted(lib.glob("*.py")))[:2_000_000]
data += b"".join(p.read_bytes() for p in sorted((lib / "lib-dynload").glob("*.so")))[:1_000_000]
out = io.BytesIO()
writer = ParallelGzipWriter(out, threads=1)
writer.write(data)
writer.close()
print(len(data), hashlib.sha256(out.getvalue()).hexdigest())
"""


def _deflate(*prefix: str) -> str:
    result = subprocess.run([*prefix, sys.executable, "-c", PROGRAM, os.path.dirname(os.__file__)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def native() -> str:
    return _deflate()


@pytest.mark.parametrize("cpu", CPUS)
def test_an_older_cpu_deflates_to_the_same_bytes(native: str, cpu: str) -> None:
    size, _ = native.split()
    assert int(size) > 2_500_000
    assert _deflate("qemu-x86_64", "-cpu", cpu) == native
