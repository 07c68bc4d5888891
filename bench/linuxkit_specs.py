"""Every spec YAML of a LinuxKit checkout through `linuxkit-py build --dry-run`: how many parse and validate.

    .venv/bin/python -m bench.linuxkit_specs [CHECKOUT]     # default: the mirror at /work/.mirror/linuxkit+linuxkit

CHECKOUT is a LinuxKit work tree or a bare git directory (cloned, sharing its objects, into a temporary
directory, so `@pkg:` directories get their real git tree hashes). The specs are examples/*.yml,
test/cases/**/*.yml, linuxkit.yml and linuxkit-template.yml: every YAML mapping there with a spec section
(kernel, init, onboot, onshutdown, services, files, volumes), not package build.yml files. Nothing is
pulled or built. Prints one line per refused spec and a summary; the result is recorded in
docs/compatibility.md. Needs no network, but the checkout is not in CI: this is a local check.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import yaml

from linuxkit_py.cli import main

DEFAULT_CHECKOUT = Path("/work/.mirror/linuxkit+linuxkit/repo")
CHECKED_OUT = ("examples", "test", "pkg", "tools", "linuxkit.yml", "linuxkit-template.yml")
SECTIONS = frozenset({"kernel", "init", "onboot", "onshutdown", "services", "files", "volumes"})


@contextlib.contextmanager
def work_tree(checkout: Path) -> Iterator[Path]:
    """`checkout` itself when it is a work tree, else a shared clone of the bare repository."""
    if (checkout / "examples").is_dir():
        yield checkout
        return
    with tempfile.TemporaryDirectory(prefix="linuxkit-specs-") as tmp:
        # only what specs and their @pkg: directories need (a mirror may lack some big vendored blobs)
        subprocess.run(["git", "clone", "--quiet", "--shared", "--no-checkout", str(checkout), tmp], check=True)
        subprocess.run(["git", "-C", tmp, "checkout", "--quiet", "HEAD", "--", *CHECKED_OUT], check=True)
        yield Path(tmp)


def spec_files(root: Path) -> list[Path]:
    candidates = [*root.glob("examples/*.yml"), *root.glob("test/cases/**/*.yml"),
                  root / "linuxkit.yml", root / "linuxkit-template.yml"]
    specs = []
    for path in sorted(set(candidates)):
        if not path.is_file() or path.name == "build.yml":
            continue
        try:
            doc = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            specs.append(path)  # not YAML at all: let the tool say so
            continue
        if isinstance(doc, dict) and SECTIONS & set(doc):
            specs.append(path)
    return specs


def dry_run(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["-q", "build", "--dry-run", str(path)])
    return status, err.getvalue().strip()


def _images(text: str) -> list[str]:
    doc = yaml.safe_load(text) or {}
    return [*doc.get("init", []), *(e["image"] for s in ("onboot", "onshutdown", "services") for e in doc.get(s) or [])]


def pinned_tags(root: Path) -> tuple[int, int]:
    """How many `@pkg:` images of linuxkit-template.yml resolve to the tag linuxkit.yml pins (LinuxKit's release
    process writes linuxkit.yml from the template with `pkg show-tag`): (equal, of)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        main(["-q", "build", "--dry-run", str(root / "linuxkit-template.yml")])
    template = (root / "linuxkit-template.yml").read_text()
    ours, pinned = _images(out.getvalue()), _images((root / "linuxkit.yml").read_text())
    packaged = [i for i, ref in enumerate(_images(template)) if ref.startswith("@pkg:")]
    equal = sum(1 for i in packaged if i < len(pinned) and ours[i] == "docker.io/" + pinned[i])
    return equal, len(packaged)


def run(checkout: Path) -> int:
    with work_tree(checkout) as root:
        specs = spec_files(root)
        refused: list[tuple[Path, str]] = []
        for path in specs:
            status, error = dry_run(path)
            if status != 0:
                refused.append((path.relative_to(root), error.replace(f"{root}/", "")))
        equal, packaged = pinned_tags(root)
    for path, error in refused:
        print(f"refused {path}: {error}")
    kinds = Counter(error.split(": ", 2)[-1].split(" (hint")[0] for _, error in refused)
    print(f"\n{len(specs) - len(refused)} of {len(specs)} LinuxKit spec files pass `build --dry-run`; "
          f"{len(refused)} refused")
    for kind, count in kinds.most_common():
        print(f"  {count:3d}  {kind}")
    print(f"linuxkit-template.yml: {equal} of {packaged} @pkg: images resolve to the tag linuxkit.yml pins")
    return 0


def main_cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", nargs="?", type=Path, default=DEFAULT_CHECKOUT)
    args = parser.parse_args(argv)
    if not args.checkout.exists():
        print(f"no LinuxKit checkout at {args.checkout}", file=sys.stderr)
        return 1
    return run(args.checkout)


if __name__ == "__main__":
    raise SystemExit(main_cli())
