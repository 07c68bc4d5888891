"""What Secure Boot signing costs: the warm build of the signed formats of specs/webserver.yml with and without
`--sign-key/--sign-cert` (the whole command), and qemu start -> `service httpd: started` of the signed raw-efi
under OVMF with Secure Boot enforced vs the unsigned one under plain OVMF (TCG).

    .venv/bin/python -m bench.signing [--cache DIR] [--runs N]

A new key set (`keys create`) signs; one build fills the cache first. Prints a markdown table (best of N).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench import workdir

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "webserver.yml"
FORMATS = ("raw-efi", "uki", "iso-efi")
STARTED = "service httpd: started"


def cli(*args: str | Path) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "linuxkit_py", *map(str, args)], check=True, capture_output=True)
    return time.monotonic() - started


def build(cache: Path, out: Path, fmt: str, *extra: str | Path) -> float:
    return cli("build", "--cache", cache, "--dir", out, "--name", "web", "--no-sbom", "-f", fmt, *extra, SPEC)


def boot(image: Path, *extra: str | Path) -> float:
    return cli("run", "--accel", "tcg", "--timeout", "180", "--until", STARTED, *extra, image)


def main() -> None:
    parser = workdir.parser()
    args = parser.parse_args()
    with workdir.workdir(args) as (work, cache):
        cli("keys", "create", work / "keys")
        sign = ("--sign-key", work / "keys" / "db.key", "--sign-cert", work / "keys" / "db.crt")
        build(cache, work / "warmup", ",".join(FORMATS))
        print("| format | build unsigned | build signed | signing costs |")
        print("|---|---:|---:|---:|")
        for fmt in FORMATS:
            plain = min(build(cache, work / "plain", fmt) for _ in range(args.runs))
            signed = min(build(cache, work / "signed", fmt, *sign) for _ in range(args.runs))
            print(f"| `{fmt}` | {plain:.2f} s | {signed:.2f} s | {signed - plain:+.2f} s |")
        unsigned_boot = min(boot(work / "plain" / "web-efi.img") for _ in range(args.runs))
        signed_boot = min(boot(work / "signed" / "web-efi.img", "--secure-boot", "--fw-vars",
                               work / "keys" / "OVMF_VARS_4M.fd") for _ in range(args.runs))
        print(f"\nqemu start -> `{STARTED}`, raw-efi: unsigned under OVMF {unsigned_boot:.1f} s; "
              f"signed under OVMF with Secure Boot enforced (q35, SMM) {signed_boot:.1f} s")


if __name__ == "__main__":
    main()
