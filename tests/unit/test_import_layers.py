"""Imports go one way: a module imports only from its own package or from a layer below it (docs/architecture.md).

The check reads every module of linuxkit_py/ with ast (imports inside functions and under TYPE_CHECKING count;
a relative import counts as the package it names, `from ..cache import x` as cache), so a new import that runs
back up the pipeline, or between pkg and formats, fails here with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import linuxkit_py

PACKAGE = Path(linuxkit_py.__file__).parent

# Top to bottom. Packages in one layer are peers: they never import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("build",),
    ("pkg", "formats", "run", "serve", "completion"),
    ("rootfs",),
    ("uptodate",),  # build keys and output records: below rootfs, which it gets its inputs from via build
    ("spec",),
    ("bundle", "registry"),
    ("cache",),
    ("kernel", "media", "sign", "sbom"),
    ("archive",),
    ("arch", "boards", "fsutil", "tools", "cliparse"),
    ("errors", "__init__"),
)
RANK = {name: depth for depth, layer in enumerate(LAYERS) for name in layer}


def _part(path: Path, root: Path) -> str:
    """The top-level package or module a file belongs to: linuxkit_py/cache/layers.py -> cache."""
    first = path.relative_to(root).parts[0]
    return first.removesuffix(".py")


def _absolute_module(node: ast.ImportFrom, package: tuple[str, ...]) -> list[str]:
    """The dotted name an ImportFrom reads, as a list: `from ..cache import x` in linuxkit_py/run/image.py
    -> ["linuxkit_py", "cache"]. Empty for a relative import that climbs out of the package (Python refuses it)."""
    if node.level == 0:
        return node.module.split(".") if node.module else []
    if node.level > len(package):
        return []
    base = list(package[:len(package) - node.level + 1])
    return base + (node.module.split(".") if node.module else [])


def _imported_parts(tree: ast.AST, package: tuple[str, ...] = ("linuxkit_py",)) -> list[tuple[int, str]]:
    """(line, top-level package) of every import of linuxkit_py in `tree`, a module of `package`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = _absolute_module(node, package)
            if not names or names[0] != "linuxkit_py":
                continue
            if len(names) > 1:
                found.append((node.lineno, names[1]))
            else:  # from linuxkit_py import x (or from .. import x): x is a package/module, or a name of __init__
                found.extend((node.lineno, a.name if a.name in RANK else "__init__") for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "linuxkit_py":
                    found.append((node.lineno, names[1] if len(names) > 1 else "__init__"))
    return found


def _violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        me = _part(path, root)
        assert me in RANK, f"{path}: package {me!r} has no layer in LAYERS (add it where it belongs)"
        package = ("linuxkit_py", *path.parent.relative_to(root).parts)  # what `from .` names in this file
        for line, target in _imported_parts(ast.parse(path.read_text(encoding="utf-8")), package):
            if target == me:
                continue
            assert target in RANK, f"{path}:{line}: imports unknown package {target!r}"
            if RANK[target] <= RANK[me]:
                how = "a peer" if RANK[target] == RANK[me] else "a layer above"
                out.append(f"{path.relative_to(root.parent)}:{line}: {me} imports {target}, {how}")
    return out


def test_every_import_goes_down_the_layers() -> None:
    assert _violations() == []


@pytest.mark.parametrize(("source", "target", "how"), [
    ("cache", "rootfs", "a layer above"), ("pkg", "formats", "a peer"), ("archive", "kernel", "a layer above"),
])
def test_the_check_reports_an_upward_or_sideways_import(tmp_path: Path, source: str, target: str, how: str) -> None:
    root = tmp_path / "linuxkit_py"
    (root / source).mkdir(parents=True)
    (root / source / "bad.py").write_text(f"import os\n\n\ndef f():\n    from linuxkit_py.{target}.x import y\n")
    assert _violations(root) == [f"linuxkit_py/{source}/bad.py:5: {source} imports {target}, {how}"]


@pytest.mark.parametrize(("source", "statement", "target", "how"), [
    ("cache", "from ..rootfs.flatten import y", "rootfs", "a layer above"),
    ("pkg", "from ..formats import x", "formats", "a peer"),
    ("archive", "from .. import kernel", "kernel", "a layer above"),
    ("archive", "from ... import anything", None, None),  # climbs out of linuxkit_py: not one of ours
    ("cache", "from . import layout", None, None),  # its own package
    ("cache", "from ..archive.tar import y", None, None),  # a layer below
])
def test_the_check_resolves_relative_imports(
    tmp_path: Path, source: str, statement: str, target: str | None, how: str | None,
) -> None:
    root = tmp_path / "linuxkit_py"
    (root / source).mkdir(parents=True)
    (root / source / "bad.py").write_text(f"import os\n\n\ndef f():\n    {statement}\n")
    expected = [f"linuxkit_py/{source}/bad.py:5: {source} imports {target}, {how}"] if target else []
    assert _violations(root) == expected


def test_a_relative_import_in_a_top_level_module_counts(tmp_path: Path) -> None:
    root = tmp_path / "linuxkit_py"
    root.mkdir()
    (root / "tools.py").write_text("from .cache.layout import y\n")
    assert _violations(root) == ["linuxkit_py/tools.py:1: tools imports cache, a layer above"]
