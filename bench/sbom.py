"""What the SBOM costs: a warm kernel+initrd build with `--no-sbom`, with the SBOM and the file hashes of the
layers already kept (the usual rebuild), and with them forgotten (the first build after a pull), plus the
document's size and counts. The time is the whole command, best of N.

    .venv/bin/python -m bench.sbom [--spec FILE] [--cache DIR] [--runs N]

Default spec: specs/webserver.yml in a new cache (one build fills it first). For the large workload of
docs/benchmarks.md, pass `--spec bench/.work/specs/full.yml --cache bench/.work/cache` after bench.build_bench.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import workdir

ROOT = Path(__file__).resolve().parents[1]


def build(cache: Path, out: Path, spec: Path, *extra: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "linuxkit_py", "build", "--cache", str(cache), "--dir", str(out),
                    "--name", "bench", *extra, str(spec)], check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = workdir.parser()
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "webserver.yml")
    args = parser.parse_args()
    with workdir.workdir(args) as (work, cache):
        build(cache, work / "warmup", args.spec)
        hashes = cache / "linuxkit-py" / "sbom"

        def forgotten() -> float:
            shutil.rmtree(hashes, ignore_errors=True)
            return build(cache, work / "cold", args.spec)

        plain = min(build(cache, work / "plain", args.spec, "--no-sbom") for _ in range(args.runs))
        kept = min(build(cache, work / "sbom", args.spec) for _ in range(args.runs))
        cold = min(forgotten() for _ in range(args.runs))
        doc = json.loads((work / "sbom" / "bench.spdx.json").read_bytes())
        size = (work / "sbom" / "bench.spdx.json").stat().st_size
        print(f"spec {args.spec.name}: {len(doc['files'])} files, {len(doc['packages'])} packages, "
              f"{len(doc['relationships'])} relationships, {size / 1e6:.2f} MB")
        print("| build | time | SBOM costs |")
        print("|---|---:|---:|")
        print(f"| `--no-sbom` | {plain:.2f} s | — |")
        print(f"| SBOM, file hashes kept from the last build | {kept:.2f} s | {kept - plain:+.2f} s |")
        print(f"| SBOM, every file hashed | {cold:.2f} s | {cold - plain:+.2f} s |")


if __name__ == "__main__":
    main()
