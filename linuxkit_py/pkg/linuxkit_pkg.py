"""LinuxKit package directories: a build.yml with LinuxKit's keys (`image:`, `org:`, `network:`, ...) next to
a Dockerfile, as in LinuxKit's own repository.

We cannot run a Dockerfile (no Docker), so such a package is never built here: it is named, exactly as
LinuxKit's `pkg show-tag` names it, and pulled like any image. The name is `ORG/IMAGE:TAG` with TAG from
the tag template (`{{.Hash}}` by default) and the hash from git: the tree hash of the directory at
`--hash-commit` (the commit's root tree when the package is the repository's top), `-dirty-` plus 7 hex
digits of a sha256 over the bytes of its files when the work tree differs from HEAD, nothing (so `latest`)
outside a git work tree. docs/packages.md states the rule telling LinuxKit's build.yml from ours.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linuxkit_py.errors import SpecError, UserError
from linuxkit_py.pkg.definition import check_config, read_build_file
from linuxkit_py.spec.load import Document
from linuxkit_py.spec.validate import validate_document
from linuxkit_py.tools import run

# The keys of LinuxKit's pkglib build.yml, of ours, and those both have (pkglib.go pkgInfo; docs/packages.md).
LINUXKIT_KEYS = ("org", "tag", "dockerfile", "extra-sources", "gitrepo", "network", "disable-cache",
                 "buildArgs", "depends")
OWN_KEYS = ("packages", "libraries", "include", "exclude", "keep", "files", "directories", "symlinks",
            "entrypoint", "cmd", "env", "workdir", "kernel")
SHARED_KEYS = ("image", "arches", "config")
DEFAULT_ORG = "linuxkit"
DEFAULT_DOCKERFILE = "Dockerfile"
HASH_TEMPLATE = "{{.Hash}}"
ORG_ENV = "LINUXKIT_PKG_ORG"
DIRTY_DIGITS = 7
# git ls-tree's line for one object: "040000 tree <40 hex>\t<path>\n" (what pkglib accepts, and only that).
_LS_TREE_RE = re.compile(r"[0-7]{6} [^ ]+ ([0-9a-f]{40})\t.+\n")
# The template actions we run: `{{.Hash}}`, with spaces and trim markers as Go's text/template allows them.
_ACTION_RE = re.compile(r"\{\{(- )?\s*(.*?)\s*( -)?\}\}", re.DOTALL)

_STRINGS = {"type": "array", "items": {"type": "string"}}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "LinuxKit package build.yml (pkglib's pkgInfo; decoded strictly, as yaml.v3 KnownFields)",
    "$defs": {},
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string"},
        "org": {"type": "string"},
        "tag": {"type": "string"},
        "dockerfile": {"type": "string"},
        "arches": _STRINGS,
        "extra-sources": _STRINGS,
        "gitrepo": {"type": "string"},
        "network": {"type": "boolean"},
        "disable-cache": {"type": "boolean"},
        "config": {"type": "object"},
        "buildArgs": _STRINGS,
        "depends": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "docker-images": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "target-dir": {"type": "string"},
                        "target": {"type": "string"},
                        "from-file": {"type": "string"},
                        "list": _STRINGS,
                    },
                },
            },
        },
    },
}


@dataclass(frozen=True)
class LinuxKitPackage:
    """A LinuxKit package directory: what its build.yml says that names the image."""

    directory: Path  # absolute, symlinks kept (as pkglib's filepath.Abs)
    file: Path
    image: str
    org: str
    tag: str  # the build.yml's tag template ("" when it has none)
    extra_sources: tuple[str, ...]


@dataclass(frozen=True)
class TagOptions:
    """`pkg show-tag`'s flags (LinuxKit's `pkg` flags). The defaults are what a spec's `@pkg:` uses."""

    org: str | None = None  # --org, or $LINUXKIT_PKG_ORG (the caller decides): overrides build.yml
    hash: str = ""  # --hash: used verbatim (no git, no -dirty suffix)
    tag: str = HASH_TEMPLATE  # --tag; "" falls back to build.yml's tag, then to {{.Hash}}
    hash_commit: str = "HEAD"
    hash_path: str | None = None  # --hash-path: hash this directory (a prefix of the package's) instead
    force_dirty: bool = False
    dev: bool = False  # --dev: org $USER, hash "dev"


def _first_key(doc: Document, keys: Sequence[str]) -> str | None:
    present = [k for k in doc.data if k in keys]
    if not present:
        return None
    return min(present, key=lambda k: (doc.position(k, at_key=True).line, doc.position(k, at_key=True).column))


def is_linuxkit_package(doc: Document, directory: Path) -> bool:
    """True when build.yml is LinuxKit's: it has a key only LinuxKit's has, or only keys both formats have
    and a Dockerfile next to it. A file with keys only LinuxKit's and keys only ours is a SpecError."""
    theirs, ours = _first_key(doc, LINUXKIT_KEYS), _first_key(doc, OWN_KEYS)
    if theirs and ours:
        first, second = sorted((theirs, ours), key=lambda k: doc.position(k, at_key=True).line)
        line = doc.position(first, at_key=True).line
        kind = "a LinuxKit key" if second == theirs else "a linuxkit-py key"
        raise doc.error(second, f"{kind}, but {first} (line {line}) is not: a build.yml is either a LinuxKit "
                        "package (image, org, network, ... and a Dockerfile) or ours (image, packages, files, ...)",
                        at_key=True)
    if theirs:
        return True
    if ours:
        return False
    return (directory / DEFAULT_DOCKERFILE).is_file()


def load_linuxkit_package(directory: str | Path, doc: Document) -> LinuxKitPackage:
    """Check a LinuxKit build.yml as strictly as pkglib decodes it; mistakes are `build.yml:line:col:` errors."""
    validate_document(doc, SCHEMA)
    data = doc.data
    if not data.get("image"):
        pos = doc.position("image")
        raise SpecError(pos.file, pos.line, pos.column, "Image field is required",
                        hint="LinuxKit never takes the image name from the directory")
    check_config(doc, data["image"])
    return LinuxKitPackage(
        directory=Path(os.path.abspath(directory)),
        file=Path(doc.file),
        image=data["image"],
        org=data.get("org", DEFAULT_ORG),
        tag=data.get("tag", ""),
        extra_sources=tuple(data.get("extra-sources") or ()),
    )


def find_linuxkit_package(directory: str | Path) -> LinuxKitPackage | None:
    """DIR's LinuxKit package, or None when its build.yml is ours."""
    _, doc = read_build_file(directory)
    if is_linuxkit_package(doc, Path(directory)):
        return load_linuxkit_package(directory, doc)
    return None


# -- git, as pkglib runs it ------------------------------------------------------------------------

def _git(directory: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run(["git", "-C", directory, *args], check=False, capture=True, stdin=subprocess.DEVNULL)


def _git_output(directory: Path, *args: str) -> str:
    proc = _git(directory, *args)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"{directory}: git {args[0]} failed with exit status {proc.returncode}"
                        + (f": {detail[-1]}" if detail else ""))
    return proc.stdout.decode(errors="surrogateescape")


def in_git_work_tree(directory: Path) -> bool:
    """`git rev-parse --is-inside-work-tree`: a failure means no; `true` yes; other output is an error."""
    proc = _git(directory, "rev-parse", "--is-inside-work-tree")
    if proc.returncode != 0:
        return False
    answer = proc.stdout.decode(errors="replace").strip()
    if answer != "true":
        raise UserError(f"unexpected output from git rev-parse --is-inside-work-tree: {answer}")
    return True


def tree_hash(directory: Path, path: Path, commit: str) -> str:
    """The git object id of `path` at `commit` (40 hex digits): the commit's tree for the repository top."""
    top = _git_output(directory, "rev-parse", "--prefix", str(path), "--show-toplevel").strip()
    if top == str(path):
        return _git_output(directory, "show", "--format=%T", "-s", commit).strip()
    out = _git_output(directory, "ls-tree", "--full-tree", commit, "--", str(path))
    if out == "":
        raise UserError(f"package {path} is not in git", hint="commit the package directory (git add, git commit)")
    match = _LS_TREE_RE.fullmatch(out)
    if match is None:
        raise UserError(f"unable to parse ls-tree output: {out!r}")
    return match.group(1)


def is_dirty(directory: Path, path: Path, commit: str) -> bool:
    """Tracked changes against HEAD, or an untracked (not ignored) file under `path`; never for another commit."""
    if commit != "HEAD":
        return False
    if _git(directory, "diff", "--no-ext-diff", "--exit-code", "--quiet", commit, "--", str(path)).returncode != 0:
        return True
    untracked = _git(directory, "ls-files", "--exclude-standard", "--others", "--error-unmatch", "--", str(path))
    if untracked.returncode == 0:
        return True
    if untracked.returncode == 1:
        return False
    raise UserError(f"{directory}: git ls-files failed with exit status {untracked.returncode}")


def content_hash(directory: Path) -> str:
    """sha256 (hex) over the bytes of the tracked, then the untracked files of `directory`, in git's order;
    names, modes, directories, symlinks and files that are gone do not count."""
    listed = _git_output(directory, "ls-files") + "\n" + _git_output(directory, "ls-files", "--exclude-standard",
                                                                     "--others")
    digest = hashlib.sha256()
    for line in listed.strip().splitlines():
        name = os.path.join(directory, line)
        try:
            if stat.S_ISDIR(os.lstat(name).st_mode) or stat.S_ISLNK(os.lstat(name).st_mode):
                continue
            with open(name, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError:
            continue
    return digest.hexdigest()


# -- the tag ---------------------------------------------------------------------------------------

def render_tag(template: str, package_hash: str) -> str:
    """Go text/template with the data {Hash: ...}; only `{{.Hash}}` actions are supported."""
    out: list[str] = []
    pos = 0
    for match in _ACTION_RE.finditer(template):
        text = template[pos:match.start()]
        if match.group(1):
            text = text.rstrip()
        out.append(text)
        if match.group(2) != ".Hash":
            raise UserError(f"invalid tag template: {template!r}: only {HASH_TEMPLATE} is supported")
        out.append(package_hash)
        pos = match.end()
        if match.group(3):
            pos += len(template[pos:]) - len(template[pos:].lstrip())
    rest = template[pos:]
    if "{{" in rest:
        raise UserError(f"invalid tag template: {template!r}: unclosed action")
    out.append(rest)
    return "".join(out)


def _source_hashes(package: LinuxKitPackage, commit: str) -> str:
    hashes = ""
    for source in package.extra_sources:
        parts = source.split(":")
        if len(parts) != 2:
            raise UserError(f"bad source format in {source}")
        src = Path(os.path.normpath(parts[0]))
        if not src.is_absolute():
            src = package.directory / src
        if not in_git_work_tree(src):
            raise UserError(f"source {src} not in a git repository")
        hashes += tree_hash(src, src, commit)
    return hashes


def package_hash(package: LinuxKitPackage, options: TagOptions) -> str:
    """The hash the tag template gets: --hash, `dev`, the git tree hash (+ `-dirty-xxxxxxx`), or ""."""
    directory = package.directory
    hash_path = directory
    if options.hash_path:
        hash_path = Path(os.path.abspath(options.hash_path))
        if not str(directory).startswith(str(hash_path)):
            raise UserError("Hash path is not a prefix of the package path")
    value = options.hash or ("dev" if options.dev else "")
    sources = _source_hashes(package, options.hash_commit)
    if not in_git_work_tree(directory):
        return value
    dirty = options.force_dirty or is_dirty(directory, hash_path, options.hash_commit)
    if value:
        return value
    value = tree_hash(directory, hash_path, options.hash_commit)
    if sources:
        value = hashlib.sha1((value + sources).encode()).hexdigest()
    if dirty:
        value += "-dirty-" + content_hash(directory)[:DIRTY_DIGITS]
    return value


def package_tag(package: LinuxKitPackage, options: TagOptions | None = None) -> str:
    """`ORG/IMAGE:TAG` as `linuxkit pkg show-tag` prints it (`latest` when the tag comes out empty).

    The default options are those of a spec's `@pkg:` (build.yml's own tag template is not used)."""
    options = options or TagOptions()
    org = package.org
    if options.dev:
        org = os.environ.get("USER", "")
    if options.org is not None:
        org = options.org
    template = options.tag or package.tag or HASH_TEMPLATE
    tag = render_tag(template, package_hash(package, options)) or "latest"
    return f"{org}/{package.image}:{tag}"


def expand_reference(name: str) -> str:
    """LinuxKit's ReferenceExpand: `docker.io/library/` before one-part names, `docker.io/` before two-part
    names whose first part is not a registry; no `:latest` is added (`pkg show-tag --canonical`)."""
    parts = name.split("/")
    if len(parts) == 1:
        return "docker.io/library/" + name
    if len(parts) == 2 and not ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        return "docker.io/" + name
    return name


def cannot_build(package: LinuxKitPackage) -> UserError:
    """`pkg build` on a LinuxKit package: what to do instead, on one line."""
    try:
        name: str | None = package_tag(package)
    except UserError:
        name = None
    pulled = f" (a spec's @pkg: pulls it as {name})" if name else ""
    return UserError(f"{package.directory} is a LinuxKit package (build.yml with a Dockerfile): linuxkit-py "
                     f"does not run Dockerfiles{pulled}",
                     hint=f"build and push it with `linuxkit pkg build --push {package.directory}`, or write a "
                          "linuxkit-py build.yml (docs/packages.md)")
