"""arm64 images on this host: warm build time and size per format, and qemu start -> `service getty: started`
under TCG on qemu's `virt` machine (AAVMF for the EFI formats), for specs/minimal.yml.

    .venv/bin/python -m bench.arm64_formats [--cache DIR] [--json FILE]

One cold build of every format fills the cache (packages for arm64 through the private apt state); then each
format is built alone from the warm cache (the whole command, `python -m linuxkit_py build`) and each bootable
output is booted once. Runs go one after another. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from linuxkit_py.run.image import detect_image
from linuxkit_py.run.qemu import QemuOptions, boot_image

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "minimal.yml"
GETTY = "service getty: started"
# format -> the output to boot (None: not bootable by itself)
FORMATS = {
    "kernel+initrd": "minimal", "kernel+squashfs": "minimal-squashfs.img", "kernel+erofs": "minimal-erofs.img",
    "uki": "minimal.efi", "raw-efi": "minimal-efi.img", "qcow2-efi": "minimal-efi.qcow2",
    "iso-efi": "minimal-efi.iso", "iso-efi-initrd": "minimal-efi-initrd.iso", "tar": None, "docker": None,
}
OUTPUTS = {"kernel+initrd": ["minimal-kernel", "minimal-initrd.img"],
           "kernel+squashfs": ["minimal-squashfs.img", "minimal-squashfs-initrd.img"],
           "kernel+erofs": ["minimal-erofs.img", "minimal-erofs-initrd.img"], "tar": ["minimal.tar"],
           "docker": ["minimal.docker"]}


def build(cache: Path, out: Path, *formats: str) -> float:
    args = [arg for fmt in formats for arg in ("-f", fmt)]
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "linuxkit_py", "build", "--arch", "arm64", "--cache", str(cache),
                    "--dir", str(out), "--name", "minimal", *args, str(SPEC)], check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path, help="cache directory (default: a new temporary one)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "cache"
        cold = build(cache, Path(tmp) / "cold", *FORMATS)
        rows = []
        for fmt, boot_path in FORMATS.items():
            out = Path(tmp) / fmt.replace("+", "-")
            seconds = build(cache, out, fmt)
            names = OUTPUTS.get(fmt) or ([boot_path] if boot_path else [])
            size = sum((out / name).stat().st_size for name in names)
            to_getty = None
            if boot_path:
                result = boot_image(detect_image(out / boot_path), QemuOptions(arch="arm64", accel="tcg"),
                                    timeout=180, until=lambda output: GETTY in output)
                to_getty = round(result.seconds, 1) if result.matched else None
            rows.append({"format": fmt, "bytes": size, "build_s": round(seconds, 2), "getty_s": to_getty})
    print(f"cold build of all {len(FORMATS)} formats (packages built from .debs): {cold:.1f} s\n")
    print("| format (arm64) | size | build (warm) | qemu start → getty (TCG) |\n|---|---:|---:|---:|")
    for row in rows:
        getty = f"{row['getty_s']} s" if row["getty_s"] is not None else ""
        print(f"| `{row['format']}` | {row['bytes'] / 1e6:.1f} MB | {row['build_s']} s | {getty} |")
    if args.json:
        args.json.write_text(json.dumps({"cold_s": round(cold, 1), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
