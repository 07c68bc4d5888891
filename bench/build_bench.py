"""Cold and warm `linuxkit-py build` runs of the benchmark workload, under `/usr/bin/time -v`.

    .venv/bin/python -m bench.build_bench [--warm N] [--json FILE]

1. Prepares the images (bench/workload.py) and pushes them to a Debian `docker-registry`
   started on 127.0.0.1 (storage under bench/.work/registry).
2. For each spec (the full workload, and a small one: kernel + init + one onboot): a cold
   build (empty cache: pull, decompress, index) then N warm builds with the same cache.
   With `--noop N`, N rebuilds into the same output directory follow (nothing changed: the
   outputs are up to date); with `--edit N`, N rounds of three one-line edits, each built once
   (a `files:` entry's content, one service's command, the kernel cmdline) and then undone.
   With `--cache-from N`, one warm build with `--cache-to` pushes the build cache to the bench's
   registry, then N builds each start from an empty cache with `--cache-from` (a second builder).
   Runs go one after another, never in parallel.
3. Checks every build of a spec wrote the same bytes, then compares the initrd with the
   same cpio gzipped the way LinuxKit does (klauspost/pgzip, default level; Python's gzip at
   level 6 when Go or pgzip's sources are missing).

Prints a markdown table; `--json` also writes every number.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.workload import LAYOUT, ROOT, TAGS, WORK, prepare
from tests.imagetools import skopeo_push
from tests.registry.servers import RegistryProcess

PYTHON = ROOT / ".venv" / "bin" / "python"
TIME = "/usr/bin/time"
CHUNK = 1 << 20
REPO = "bench"
TAG = "1"
PGZIP_SOURCE = ROOT / "bench" / "pgzip_ref.go"
PGZIP_BINARY = WORK / "pgzip-ref"
GOPATH = "/usr/share/gocode"  # Debian's golang-*-dev packages put their sources here
QUIET_TIMEOUT = 300  # seconds to wait for an idle machine before each run


def full_spec(host: str) -> str:
    """The issue's workload: kernel (all modules), init + runc, 2 onboot and 3 services."""
    image = {tag: f"{host}/{REPO}/{tag}:{TAG}" for tag in TAGS}
    return f"""\
kernel:
  image: {image["kernel"]}
  cmdline: "console=ttyS0 console=tty0"
init:
  - {image["init"]}
  - {image["runc"]}
onboot:
  - name: sysctl
    image: {image["minbase"]}
    command: ["/bin/sh", "-c", "echo onboot"]
  - name: compile
    image: {image["python"]}
    command: ["/bin/true"]
services:
  - name: getty
    image: {image["minbase"]}
    command: ["/bin/sleep", "infinity"]
  - name: web
    image: {image["python"]}
    binds:
      - /var/run:/var/run
  - name: sshd
    image: {image["minbase"]}
    capabilities:
      - all
files:
  - path: etc/motd
    source: motd.txt
"""


def small_spec(host: str) -> str:
    image = {tag: f"{host}/{REPO}/{tag}:{TAG}" for tag in TAGS}
    return f"""\
kernel:
  image: {image["kernel"]}
  cmdline: "console=ttyS0"
init:
  - {image["init"]}
onboot:
  - name: hello
    image: {image["runc"]}
"""


@dataclass
class Run:
    spec: str
    kind: str  # cold or warm
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    initrd_bytes: int
    initrd_sha256: str
    other_cpu_s: float  # CPU time other processes on the machine used during the run (noise)
    command: str
    steal_s: float = 0.0  # CPU time the hypervisor gave to other machines while this one wanted it (noise)


def _time_field(report: str, label: str) -> str:
    match = re.search(rf"^\s*{re.escape(label)}.*?: (.+)$", report, re.M)
    if match is None:
        raise RuntimeError(f"no {label!r} in /usr/bin/time output:\n{report}")
    return match.group(1).strip()


def _wall_seconds(text: str) -> float:
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _cpu_fields() -> list[int]:
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent not idle since boot (all cores, steal excluded), from /proc/stat."""
    fields = _cpu_fields()
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:7]) - idle) / os.sysconf("SC_CLK_TCK")


def steal_seconds() -> float:
    """CPU time this virtual machine's cores waited for the host since boot (/proc/stat's steal): on a shared
    host, the time another guest ran instead (it slows a build down without showing as any process's CPU)."""
    return _cpu_fields()[7] / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_busy_cores: float, timeout: float) -> None:
    """Wait (up to `timeout` s) until the machine has been nearly idle for 2 s, and the host has not taken its
    cores for other guests: on a shared 2-core machine either would otherwise be counted as ours."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = busy_cpu_seconds() + steal_seconds()
        time.sleep(2)
        if (busy_cpu_seconds() + steal_seconds() - busy) / 2 <= max_busy_cores:
            return
    print(f"the machine stayed busy for {timeout:.0f} s: measuring anyway", file=sys.stderr)


# --edit: (kind, text in the spec or in motd.txt, its replacement); each edit is built, then undone.
EDITS = (
    ("edit-file", "motd.txt", "welcome\n", "welcome, edited\n"),
    ("edit-command", "spec", '["/bin/sleep", "infinity"]', '["/bin/sleep", "3600"]'),
    ("edit-cmdline", "spec", '"console=ttyS0 console=tty0"', '"console=ttyS0 console=tty0 quiet"'),
)


# Builds run as after `pip install`: with our modules' bytecode compiled (compile_bytecode, in main) and
# read from __pycache__, even where the caller's environment sets PYTHONDONTWRITEBYTECODE.
BUILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def compile_bytecode() -> None:
    subprocess.run([str(PYTHON), "-m", "compileall", "-q", str(ROOT / "linuxkit_py")], check=True, env=BUILD_ENV)


def timed_build(name: str, spec: Path, cache: Path, out: Path, kind: str, quiet: float | None = None,
                keep: bool = False, options: tuple[str, ...] = ()) -> Run:
    """One build under /usr/bin/time; `keep`: into the existing output directory (no-op and edit builds)."""
    if out.exists() and not keep:
        shutil.rmtree(out)
    if quiet is not None:
        wait_for_quiet(quiet, QUIET_TIMEOUT)
    report = WORK / "time.txt"
    build = [str(PYTHON), "-m", "linuxkit_py", "build", "--cache", str(cache), "--dir", str(out), *options,
             str(spec)]
    cmd = [TIME, "-v", "-o", str(report), *build]
    busy, steal = busy_cpu_seconds(), steal_seconds()
    subprocess.run(cmd, check=True, cwd=ROOT, stderr=subprocess.DEVNULL, env=BUILD_ENV)
    busy, steal = busy_cpu_seconds() - busy, steal_seconds() - steal
    text = report.read_text()
    initrd = out / f"{spec.stem}-initrd.img"
    user, system = float(_time_field(text, "User time")), float(_time_field(text, "System time"))
    run = Run(spec=name, kind=kind, wall_s=_wall_seconds(_time_field(text, "Elapsed (wall clock) time")),
              user_s=user, sys_s=system, max_rss_kib=int(_time_field(text, "Maximum resident set size")),
              initrd_bytes=initrd.stat().st_size, initrd_sha256=_sha256(initrd),
              other_cpu_s=round(max(0.0, busy - user - system), 2),
              command=" ".join(["/usr/bin/time", "-v", *build]).replace(str(ROOT) + "/", ""), steal_s=round(steal, 2))
    print(f"{name:6} {kind:12} {run.wall_s:6.2f} s  {run.max_rss_kib / 1024:6.1f} MiB  "
          f"initrd {run.initrd_bytes / 1e6:.1f} MB  (others used {run.other_cpu_s:.1f} s CPU meanwhile, "
          f"the host took {run.steal_s:.1f} s)", file=sys.stderr, flush=True)
    return run


def edit_runs(spec: Path, cache: Path, out: Path, rounds: int, quiet: float | None) -> list[Run]:
    """Each of EDITS built into the last build's outputs, then undone (the undo is built unmeasured and
    must give back the warm build's initrd, byte for byte)."""
    runs: list[Run] = []
    initrd = out / f"{spec.stem}-initrd.img"
    base = _sha256(initrd)
    for _ in range(rounds):
        for kind, where, old, new in EDITS:
            target = spec if where == "spec" else spec.parent / where
            original = target.read_text()
            assert old in original, (kind, old)
            target.write_text(original.replace(old, new))
            runs.append(timed_build("full", spec, cache, out, kind, quiet, keep=True))
            target.write_text(original)
            subprocess.run([str(PYTHON), "-m", "linuxkit_py", "build", "--cache", str(cache), "--dir", str(out),
                            str(spec)], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
            if _sha256(initrd) != base:
                raise SystemExit(f"{kind}: undoing the edit did not give back the same initrd")
    return runs


def cache_from_runs(name: str, spec: Path, cache: Path, out: Path, rounds: int, quiet: float | None,
                    ref: str) -> list[Run]:
    """A warm build that pushes its build cache to `ref` (--cache-to), then `rounds` builds that each start
    from an empty cache with --cache-from `ref`, as a second CI builder would."""
    runs = [timed_build(name, spec, cache, out, "cache-to", quiet, options=("--cache-to", ref))]
    fresh = WORK / f"cache-{name}-fresh"
    for _ in range(rounds):
        if fresh.exists():
            shutil.rmtree(fresh)
        runs.append(timed_build(name, spec, fresh, out, "cache-from", quiet, options=("--cache-from", ref)))
    return runs


def _pgzip_binary() -> Path | None:
    if PGZIP_BINARY.exists() and PGZIP_BINARY.stat().st_mtime >= PGZIP_SOURCE.stat().st_mtime:
        return PGZIP_BINARY
    if shutil.which("go") is None or not Path(GOPATH, "src/github.com/klauspost/pgzip").is_dir():
        return None
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOFLAGS": ""}
    subprocess.run(["go", "build", "-o", str(PGZIP_BINARY), str(PGZIP_SOURCE)], check=True, env=env)
    return PGZIP_BINARY


def reference_sizes(initrd: Path) -> dict[str, int]:
    """Sizes of the initrd's cpio compressed like LinuxKit (pgzip) and with Python's gzip -6."""
    sizes: dict[str, int] = {}
    level6 = zlib.compressobj(6, zlib.DEFLATED, 31)
    gz6 = 0
    pgzip = _pgzip_binary()
    proc = None
    if pgzip is not None:
        proc = subprocess.Popen([str(pgzip)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        counter = subprocess.Popen(["wc", "-c"], stdin=proc.stdout, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.close()
    cpio = 0
    with gzip.open(initrd, "rb") as f:
        while chunk := f.read(CHUNK):
            cpio += len(chunk)
            gz6 += len(level6.compress(chunk))
            if proc is not None:
                assert proc.stdin is not None
                proc.stdin.write(chunk)
    gz6 += len(level6.flush())
    sizes["cpio"] = cpio
    sizes["python_gzip6"] = gz6
    if proc is not None:
        assert proc.stdin is not None
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError("pgzip-ref failed")
        sizes["pgzip_default"] = int(counter.communicate()[0])
    return sizes


def push_images(host: str) -> None:
    for tag in TAGS:
        skopeo_push(LAYOUT, tag, f"{host}/{REPO}/{tag}:{TAG}")


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem = next(line.split(":", 1)[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": mem, "python": sys.version.split()[0],
            "kernel": os.uname().release}


def table(runs: list[Run], refs: dict[str, int]) -> str:
    """The fastest run of each (spec, kind): noise from other processes only ever adds time."""
    lines = ["| spec | build | runs | best wall (s) | median wall (s) | user (s) | sys (s) | "
             "others' CPU (s) | steal (s) | max peak RSS (MiB) | initrd (bytes) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.spec, r.kind), []).append(r)
    for (spec, kind), group in groups.items():
        best = min(group, key=lambda r: r.wall_s)
        median = statistics.median(r.wall_s for r in group)
        rss = max(r.max_rss_kib for r in group)
        lines.append(f"| {spec} | {kind} | {len(group)} | {best.wall_s:.2f} | {median:.2f} | {best.user_s:.2f} | "
                     f"{best.sys_s:.2f} | {best.other_cpu_s:.1f} | {best.steal_s:.1f} | {rss / 1024:.0f} | "
                     f"{best.initrd_bytes:,} |")
    lines.append("")
    lines.append("| full workload: the same cpio compressed by | bytes |")
    lines.append("|---|---:|")
    lines.append(f"| (uncompressed cpio) | {refs['cpio']:,} |")
    if "pgzip_default" in refs:
        lines.append(f"| klauspost/pgzip, default level (LinuxKit's writer) | {refs['pgzip_default']:,} |")
    lines.append(f"| Python gzip, level 6 | {refs['python_gzip6']:,} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=int, default=2, help="warm builds after each cold one (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="cold+warm rounds per spec (default 1)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--only", choices=("full", "small"), help="run one spec only")
    parser.add_argument("--noop", type=int, default=0, metavar="N", help="no-op rebuilds after the warm ones")
    parser.add_argument("--edit", type=int, default=0, metavar="N", help="rounds of the three one-line edits")
    parser.add_argument("--cache-from", type=int, default=0, metavar="N",
                        help="push the build cache with --cache-to, then N builds from an empty cache with "
                             "--cache-from")
    parser.add_argument("--quiet", type=float, default=0.1, metavar="CORES",
                        help="before each run, wait until other processes use at most this many cores "
                             "(default 0.1; negative: do not wait)")
    args = parser.parse_args()
    prepare()
    compile_bytecode()
    registry = RegistryProcess(WORK / "registry-run", WORK / "registry").start()
    try:
        push_images(registry.host)
        specs_dir = WORK / "specs"
        specs_dir.mkdir(exist_ok=True)
        specs = {"full": full_spec(registry.host), "small": small_spec(registry.host)}
        runs: list[Run] = []
        for name, text in specs.items():
            if args.only and name != args.only:
                continue
            spec = specs_dir / f"{name}.yml"
            spec.write_text(text)
            (specs_dir / "motd.txt").write_text("welcome\n")
            cache = WORK / f"cache-{name}"
            out = WORK / f"out-{name}"
            for _ in range(args.repeat):
                if cache.exists():
                    shutil.rmtree(cache)
                quiet = args.quiet if args.quiet >= 0 else None
                runs.append(timed_build(name, spec, cache, out, "cold", quiet))
                runs.extend(timed_build(name, spec, cache, out, "warm", quiet) for _ in range(args.warm))
                runs.extend(timed_build(name, spec, cache, out, "noop", quiet, keep=True) for _ in range(args.noop))
                if name == "full":
                    runs.extend(edit_runs(spec, cache, out, args.edit, quiet))
                if args.cache_from:
                    runs.extend(cache_from_runs(name, spec, cache, out, args.cache_from, quiet,
                                                f"{registry.host}/{REPO}/cache-{name}"))
            digests = {r.initrd_sha256 for r in runs if r.spec == name and not r.kind.startswith("edit")}
            if len(digests) != 1:
                raise SystemExit(f"{name}: builds wrote different initrds: {sorted(digests)}")
    finally:
        registry.stop()
    refs = reference_sizes(WORK / "out-full" / "full-initrd.img") if not args.only or args.only == "full" else {}
    if refs:
        print(table(runs, refs))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "runs": [asdict(r) for r in runs],
                                         "reference": refs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
