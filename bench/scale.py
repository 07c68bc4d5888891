"""The 10x scale benchmark (issue 15: "a workload 10x larger (~4 GB unpacked, ~250k entries): peak RSS
<= 150 MiB, time linear in size").

    .venv/bin/python -m bench.scale [--copies N] [--warm N] [--json FILE]

1. Prepares the full workload (bench/workload.py) and, in a second OCI layout under
   bench/.work/scale-layout, N-1 distinct copies of its container content: per copy `minbase-cI`
   (the 3 debootstrap layers), `python-cI` (the ~15k-file Python image) and `modules-cI` (the
   kernel's 1,349 module files as an image: the part of the full workload's cpio that comes from
   the kernel). Every regular file of copy I gets a trailer naming the copy, so no two copies share
   a layer digest or a file's bytes (the initrd's identical-file hard links do not fold them), and
   the layers are recompressed at gzip level 6. Copies are made once and reused.
2. Pushes everything to the bench's docker-registry on 127.0.0.1 (storage bench/.work/registry).
3. Two specs: `full` (bench/build_bench.py's 1x spec) and `scaleN`: the same spec plus, per copy,
   three services `mI` (minbase-cI), `pI` (python-cI), `kI` (modules-cI). With the default
   N = 10 that is about ten times the full workload's cpio entries and bytes (the kernel stays one).
4. For each spec, one after another: a cold build (empty cache) and `--warm` warm builds, each
   under /usr/bin/time -v; checks every build of a spec wrote the same initrd (sha256); counts the
   initrd's cpio entries and uncompressed bytes.

Prints a markdown table (wall, user, sys, others' CPU, peak RSS, entries, bytes, and the 10x/1x
ratios); `--json` also writes every number. Needs ~11 GB free disk at N = 10 (copies 1.2 GB, registry 1.4 GB,
the cache 6.6 GB, the outputs 1.3 GB; `--clean` removes the scale cache and outputs afterwards).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from isal import igzip
from zlib_ng import zlib_ng

from bench.build_bench import REPO, TAG, Run, full_spec, machine, push_images, timed_build
from bench.workload import LAYOUT, WORK, LayoutWriter, log, prepare
from tests.imagetools import skopeo_push
from tests.registry.servers import RegistryProcess

SCALE_LAYOUT = WORK / "scale-layout"
GZIP_LEVEL = 6  # as Docker and Go write layers (bench/workload.py)
CHUNK = 1 << 20
COPIED = ("minbase", "python", "modules")
SERVICE_PREFIX = {"minbase": "m", "python": "p", "modules": "k"}
CONFIGS: dict[str, dict[str, Any]] = {
    "minbase": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
    "python": {"Cmd": ["/bin/true"]},
    "modules": {"Cmd": ["/bin/true"]},
}


# -- the copies --------------------------------------------------------------------------------


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


def _layers(tag: str) -> list[Path]:
    """The layer blobs of the full workload's image `tag`."""
    digest = LayoutWriter(LAYOUT).tags()[tag]
    manifest = json.loads(_blob(LAYOUT, digest).read_bytes())
    return [_blob(LAYOUT, layer["digest"]) for layer in manifest["layers"]]


class _LayerSink(io.RawIOBase):
    """Where the copied tar goes: sha256 of the tar (diff_id), gzip level 6, sha256 of the blob."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.diff = hashlib.sha256()
        self.digest = hashlib.sha256()
        self.size = 0
        # gzip wrapper, mtime 0: deterministic bytes for a given zlib-ng version.
        self.deflate = zlib_ng.compressobj(GZIP_LEVEL, zlib_ng.DEFLATED, 31)

    def writable(self) -> bool:
        return True

    def _emit(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.digest.update(data)
            self.size += len(data)

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.diff.update(data)
        self._emit(self.deflate.compress(data))
        return len(data)

    def finish(self) -> None:
        self._emit(self.deflate.flush())


def _rewrite(src: tarfile.TarFile, dst: tarfile.TarFile, trailer: bytes, prefix: str = "") -> None:
    """Copy every member of `src` to `dst` (under `prefix`), each regular file with `trailer` appended."""
    for member in src:
        if prefix:
            member.name = prefix + member.name
            if member.islnk():
                member.linkname = prefix + member.linkname
        if member.isreg():
            f = src.extractfile(member)
            assert f is not None
            data = f.read() + trailer
            member.size = len(data)
            # A PAX "size" record (files >= 8 GiB only) would otherwise override the new size.
            member.pax_headers.pop("size", None)
            dst.addfile(member, io.BytesIO(data))
        else:
            dst.addfile(member)


def _copy_layer(kind: str, source: Path, copy: int, blobs: Path) -> tuple[str, int, str]:
    """One layer of copy `copy` of image `kind` into `blobs`; returns (digest, size, diff_id)."""
    trailer = f"\n# linuxkit-py bench/scale.py copy {copy}\n".encode()
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".layer-")
    with os.fdopen(fd, "wb") as raw:
        sink = _LayerSink(raw)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as dst, \
                igzip.open(source, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as src:
            if kind == "modules":
                # The kernel image's layer holds /kernel and /kernel.tar; the copy is kernel.tar's tree.
                for member in src:
                    if member.name == "kernel.tar":
                        inner = src.extractfile(member)
                        assert inner is not None
                        with tarfile.open(fileobj=inner, mode="r|") as modules:
                            _rewrite(modules, dst, trailer)
                        break
                else:
                    raise SystemExit(f"{source}: no kernel.tar")
            else:
                _rewrite(src, dst, trailer)
        sink.finish()
    digest = "sha256:" + sink.digest.hexdigest()
    os.replace(tmp, _blob(SCALE_LAYOUT, digest))
    return digest, sink.size, "sha256:" + sink.diff.hexdigest()


def _copy_image(kind: str, copy: int) -> tuple[str, list[tuple[str, int, str]]]:
    sources = _layers("kernel" if kind == "modules" else kind)
    blobs = SCALE_LAYOUT / "blobs" / "sha256"
    return f"{kind}-c{copy}", [_copy_layer(kind, source, copy, blobs) for source in sources]


def _add_image(layout: LayoutWriter, tag: str, layers: list[tuple[str, int, str]], config: dict[str, Any]) -> None:
    """LayoutWriter.add_image for layer blobs already written."""
    layout.add_layers(tag, [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
                             "size": size} for digest, size, _ in layers], [d for _, _, d in layers], config)


def prepare_copies(copies: int, jobs: int) -> list[str]:
    """Copies 1..copies-1 of each COPIED image in SCALE_LAYOUT (made once); returns their tags."""
    layout = LayoutWriter(SCALE_LAYOUT)
    have = layout.tags()
    wanted = [(kind, copy) for copy in range(1, copies) for kind in COPIED]
    missing = [(kind, copy) for kind, copy in wanted if f"{kind}-c{copy}" not in have]
    if missing:
        log(f"making {len(missing)} image copies in {SCALE_LAYOUT} ({jobs} processes)")
        with ProcessPoolExecutor(jobs) as pool:
            for tag, layers in pool.map(_copy_image, *zip(*missing, strict=True)):
                _add_image(layout, tag, layers, CONFIGS[tag.rsplit("-", 1)[0]])
                log(f"made {tag}")
    return [f"{kind}-c{copy}" for kind, copy in wanted]


# -- specs, builds, the table --------------------------------------------------------------------


def scale_spec(host: str, copies: int) -> str:
    """The full spec plus three services per extra copy."""
    extra = "".join(f"  - name: {SERVICE_PREFIX[kind]}{copy}\n    image: {host}/{REPO}/{kind}-c{copy}:{TAG}\n"
                    for copy in range(1, copies) for kind in COPIED)
    full = full_spec(host)
    assert full.count("\nfiles:\n") == 1
    return full.replace("\nfiles:\n", "\n" + extra + "files:\n")


def cpio_stats(initrd: Path) -> tuple[int, int]:
    """(entries, uncompressed bytes) of a gzip newc cpio (several archives may follow each other,
    zero-padded); trailers are not counted as entries."""
    entries = total = 0
    with igzip.open(initrd, "rb") as raw:
        f = io.BufferedReader(raw, CHUNK)  # type: ignore[arg-type]

        def read(n: int) -> bytes:
            nonlocal total
            data = f.read(n)
            total += len(data)
            return data

        while True:
            magic = read(4)
            if len(magic) < 4:
                break
            if magic == b"\0\0\0\0":  # padding between archives
                continue
            header = magic + read(106)
            if header[:6] != b"070701":
                raise SystemExit(f"{initrd}: no cpio header at byte {total - len(header)}")
            filesize, namesize = int(header[54:62], 16), int(header[94:102], 16)
            name = read(namesize)
            read((-(110 + namesize)) % 4)
            remaining = filesize + (-filesize) % 4
            while remaining:
                got = len(read(min(remaining, CHUNK)))
                if not got:
                    raise SystemExit(f"{initrd}: truncated")
                remaining -= got
            if name != b"TRAILER!!!\0":
                entries += 1
    return entries, total


def table(runs: list[Run], stats: dict[str, tuple[int, int]], names: tuple[str, str]) -> str:
    lines = ["| spec | build | wall (s) | user (s) | sys (s) | others' CPU (s) | peak RSS (MiB) | cpio entries | "
             "cpio bytes | initrd bytes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    best: dict[tuple[str, str], Run] = {}
    for r in runs:
        lines.append(f"| {r.spec} | {r.kind} | {r.wall_s:.2f} | {r.user_s:.2f} | {r.sys_s:.2f} | "
                     f"{r.other_cpu_s:.1f} | {r.max_rss_kib / 1024:.0f} | {stats[r.spec][0]:,} | "
                     f"{stats[r.spec][1]:,} | {r.initrd_bytes:,} |")
        key = (r.spec, r.kind)
        if key not in best or r.wall_s < best[key].wall_s:
            best[key] = r
    small, big = names
    if small in stats and big in stats:
        lines += ["", f"| {big} / {small} | ratio |", "|---|---:|",
                  f"| cpio entries | {stats[big][0] / stats[small][0]:.2f} |",
                  f"| cpio bytes | {stats[big][1] / stats[small][1]:.2f} |"]
        for kind in ("cold", "warm"):
            a, b = best.get((small, kind)), best.get((big, kind))
            if a and b:
                lines.append(f"| {kind} wall (best) | {b.wall_s / a.wall_s:.2f} |")
                lines.append(f"| {kind} CPU (user+sys) | {(b.user_s + b.sys_s) / (a.user_s + a.sys_s):.2f} |")
                lines.append(f"| {kind} peak RSS | {b.max_rss_kib / a.max_rss_kib:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=10, metavar="N",
                        help="scale factor: the container content N times (default 10)")
    parser.add_argument("--warm", type=int, default=1, help="warm builds after each cold one (default 1)")
    parser.add_argument("--only", choices=("full", "scale"), help="build one spec only")
    parser.add_argument("--jobs", type=int, default=2, help="processes making the copies (default 2)")
    parser.add_argument("--quiet", type=float, default=0.1, metavar="CORES",
                        help="before each run, wait until other processes use at most this many cores "
                             "(default 0.1; negative: do not wait)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--clean", action="store_true", help="remove the scale spec's cache and outputs at the end")
    args = parser.parse_args()
    if args.copies < 1:
        parser.error("--copies must be at least 1")
    prepare()
    tags = prepare_copies(args.copies, args.jobs)
    big = f"scale{args.copies}"
    registry = RegistryProcess(WORK / "registry-run", WORK / "registry").start()
    runs: list[Run] = []
    stats: dict[str, tuple[int, int]] = {}
    quiet = args.quiet if args.quiet >= 0 else None
    try:
        push_images(registry.host)
        log(f"pushing {len(tags)} copies to {registry.host}")
        for tag in tags:
            skopeo_push(SCALE_LAYOUT, tag, f"{registry.host}/{REPO}/{tag}:{TAG}")
        specs_dir = WORK / "specs"
        specs_dir.mkdir(exist_ok=True)
        (specs_dir / "motd.txt").write_text("welcome\n")
        specs = {"full": full_spec(registry.host), big: scale_spec(registry.host, args.copies)}
        for name, text in specs.items():
            if args.only and (name == "full") != (args.only == "full"):
                continue
            spec = specs_dir / f"{name}.yml"
            spec.write_text(text)
            cache, out = WORK / f"cache-{name}", WORK / f"out-{name}"
            if cache.exists():
                shutil.rmtree(cache)
            runs.append(timed_build(name, spec, cache, out, "cold", quiet))
            runs.extend(timed_build(name, spec, cache, out, "warm", quiet) for _ in range(args.warm))
            digests = {r.initrd_sha256 for r in runs if r.spec == name}
            if len(digests) != 1:
                raise SystemExit(f"{name}: builds wrote different initrds: {sorted(digests)}")
            stats[name] = cpio_stats(out / f"{name}-initrd.img")
            log(f"{name}: {stats[name][0]:,} cpio entries, {stats[name][1]:,} bytes")
            if args.clean and name != "full":
                shutil.rmtree(cache)
                shutil.rmtree(out)
    finally:
        registry.stop()
    print(table(runs, stats, ("full", big)))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "copies": args.copies, "runs": [asdict(r) for r in runs],
                                         "cpio": {k: {"entries": e, "bytes": b} for k, (e, b) in stats.items()}},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
