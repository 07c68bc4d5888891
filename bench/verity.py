"""What --verity costs: the warm build of specs/webserver.yml as raw-efi --root squashfs with and without
`--verity` (the whole command; with it, pkg/dmsetup is added to the spec's init images, as --verity needs), the
hash tree alone (media/verity.py on the root image), and under TCG the time from qemu start to stage one's
`stage1: root:` line and to `service httpd: started`, with and without.

    .venv/bin/python -m bench.verity [--cache DIR] [--runs N]

One build fills the cache first. Prints markdown (best of N); boots run one at a time (two qemus on 2 cores
stretch each other's timings).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import workdir
from linuxkit_py.media.verity import append_verity_tree
from linuxkit_py.run.image import detect_image
from linuxkit_py.run.qemu import QemuOptions, boot_image

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "webserver.yml"
STAGE1_ROOT = "stage1: root: "
STARTED = "service httpd: started"


def dmsetup_spec(work: Path) -> Path:
    """A second spec file for the --verity builds: pkg/dmsetup in init (the init lists of the two files append)."""
    path = work / "dmsetup.yml"
    path.write_text(f'init:\n  - "@pkg:{ROOT / "pkg" / "dmsetup"}"\n')
    return path


def build(cache: Path, out: Path, *specs: Path, verity: bool = False) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "linuxkit_py", "build", "--cache", str(cache), "--dir", str(out),
                    "--name", "web", "--no-sbom", "-f", "raw-efi", "--root", "squashfs",
                    *(["--verity"] if verity else []), *map(str, (SPEC, *specs))],
                   check=True, capture_output=True)
    return time.monotonic() - started


def boot(image: Path) -> tuple[float, float]:
    """(seconds from qemu start to stage one's root line, to the httpd service's start)."""
    started = time.monotonic()
    seen: dict[str, float] = {}

    def until(output: str) -> bool:
        for mark in (STAGE1_ROOT, STARTED):
            if mark not in seen and mark in output:
                seen[mark] = time.monotonic() - started
        return STARTED in seen

    result = boot_image(detect_image(image), QemuOptions(accel="tcg"), timeout=240, until=until)
    if not result.matched:
        raise SystemExit(f"{image} did not reach {STARTED!r}:\n{result.output[-3000:]}")
    return seen[STAGE1_ROOT], seen[STARTED]


def tree_only(image: Path, work: Path) -> tuple[float, int, int]:
    """(seconds, data bytes, tree bytes) of append_verity_tree on a copy of `image`."""
    copy = Path(shutil.copyfile(image, work / "tree-only.img"))
    started = time.monotonic()
    tree = append_verity_tree(copy)
    return time.monotonic() - started, tree.hash_offset, tree.hash_blocks * 4096


def main() -> None:
    parser = workdir.parser()
    args = parser.parse_args()
    with workdir.workdir(args) as (work, cache):
        dmsetup = dmsetup_spec(work)
        build(cache, work / "warmup", dmsetup, verity=True)
        plain = min(build(cache, work / "plain") for _ in range(args.runs))
        verity = min(build(cache, work / "verity", dmsetup, verity=True) for _ in range(args.runs))
        subprocess.run(["mcopy", "-i", f"{work / 'plain' / 'web-efi.img'}@@1M", "::rootfs.squashfs",
                        str(work / "rootfs.squashfs")], check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
        seconds, data, tree = min(tree_only(work / "rootfs.squashfs", work) for _ in range(args.runs))
        print("| build of webserver.yml, raw-efi --root squashfs (warm cache) | seconds |")
        print("|---|---:|")
        print(f"| without --verity | {plain:.2f} s |")
        print(f"| with --verity | {verity:.2f} s ({verity - plain:+.2f} s) |")
        print(f"| the hash tree alone: {data / 2**20:.1f} MiB squashfs, {tree / 1024:.0f} KiB tree "
              f"({100 * tree / data:.2f} %) | {seconds:.3f} s |")
        boots = {name: [boot(work / name / "web-efi.img") for _ in range(args.runs)] for name in ("plain", "verity")}
        print("\n| qemu start (TCG, OVMF) to | without --verity | with --verity | cost |")
        print("|---|---:|---:|---:|")
        for i, mark in enumerate((STAGE1_ROOT.strip(), STARTED)):
            without = min(b[i] for b in boots["plain"])
            with_verity = min(b[i] for b in boots["verity"])
            print(f"| `{mark}` | {without:.1f} s | {with_verity:.1f} s | {with_verity - without:+.1f} s |")


if __name__ == "__main__":
    main()
