"""A package definition: `DIR/build.yml` loaded, validated (schema.json, then the checks below) and typed.

Mistakes are reported as `DIR/build.yml:line:col: key: message`, like spec errors. docs/packages.md
documents every key.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linuxkit_py.archive.tree import normalize_path
from linuxkit_py.errors import SpecError, UserError
from linuxkit_py.registry.reference import parse_reference
from linuxkit_py.spec.fields import quoted
from linuxkit_py.spec.load import Document, parse_document
from linuxkit_py.spec.model import child, display_path, pointer
from linuxkit_py.spec.validate import validate_document, validate_label

BUILD_FILE = "build.yml"
SCHEMA_FILE = Path(__file__).with_name("schema.json")
DEFAULT_ARCHES = ("amd64",)
LABEL_CONFIG = "org.mobyproject.config"
# Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters, starting alphanumeric.
_DEBIAN_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_DISPLAY_PART_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@functools.cache
def load_schema() -> dict[str, Any]:
    """The JSON Schema of build.yml (schema.json next to this module)."""
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return schema


@dataclass(frozen=True)
class FileSpec:
    """One `files` item: `path` in the image (no leading /) from `source` (a file of DIR) or `contents`."""

    path: str
    mode: int
    source: Path | None = None
    source_name: str = ""  # as written in build.yml (what the tag hashes)
    contents: bytes | None = None


@dataclass(frozen=True)
class KernelSpec:
    package: str
    modules: tuple[str, ...]
    dtbs: tuple[str, ...] = ()  # globs under usr/lib/linux-image-<version>/ (device trees, into boot/dtb/)


@dataclass(frozen=True)
class Definition:
    directory: Path
    file: Path  # DIR/build.yml
    text: bytes  # its bytes, as the tag hashes them
    document: Document
    image: str
    arches: tuple[str, ...]
    packages: tuple[str, ...]
    libraries: bool  # libraries: auto
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    keep: tuple[str, ...]
    files: tuple[FileSpec, ...]
    directories: tuple[tuple[str, int], ...]
    symlinks: tuple[tuple[str, str], ...]
    config: dict[str, Any] | None
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    env: tuple[str, ...] | None
    workdir: str | None
    kernel: KernelSpec | None

    def error(self, path: str, message: str, hint: str | None = None) -> SpecError:
        """A SpecError at the build.yml value `path` (a pointer such as "packages/1")."""
        return self.document.error(path, message, hint)


def _fail(doc: Document, path: str, message: str, hint: str | None = None) -> SpecError:
    return doc.error(path, message, hint)


def _image_name(doc: Document, value: str) -> str:
    if "@" in value or ":" in value.rsplit("/", 1)[-1]:
        raise _fail(doc, "image", f"{quoted(value)} has a tag or digest: give the repository name only, "
                    "the tag is computed")
    try:
        parse_reference(value)
    except UserError as exc:
        raise _fail(doc, "image", exc.message) from None
    return value


def _image_path(doc: Document, where: str, value: str) -> str:
    path = normalize_path(value)
    if not path:
        raise _fail(doc, where, f"{quoted(value)} names the root directory")
    return path


def _globs(doc: Document, key: str) -> tuple[str, ...]:
    globs = doc.data.get(key) or []
    for i, glob in enumerate(globs):
        if not glob or glob.startswith("/"):
            raise _fail(doc, child(key, i), f"{quoted(glob)}: a glob is a path without a leading /",
                        hint=f"write {quoted(glob.lstrip('/'))}" if glob else None)
    return tuple(globs)


def _package_name(doc: Document, where: str, name: str) -> str:
    if not _DEBIAN_NAME_RE.fullmatch(name):
        raise _fail(doc, where, f"{quoted(name)} is not a Debian package name")
    return name


def _packages(doc: Document) -> tuple[str, ...]:
    names = doc.data.get("packages") or []
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        _package_name(doc, child("packages", i), name)
        if name in seen:
            raise _fail(doc, child("packages", i), f"{quoted(name)} is listed twice (first as packages[{seen[name]}])")
        seen[name] = i
    return tuple(names)


def _file_spec(doc: Document, directory: Path, i: int, item: dict[str, Any]) -> FileSpec:
    where = child("files", i)
    path = _image_path(doc, child(where, "path"), item["path"])
    has_source, has_contents = "source" in item, "contents" in item
    if has_source == has_contents:
        raise _fail(doc, where, "give exactly one of source (a file of the package directory) or contents")
    mode = int(item["mode"], 8) if "mode" in item else None
    if has_contents:
        return FileSpec(path, 0o644 if mode is None else mode, contents=item["contents"].encode())
    name = item["source"]
    source = directory / name
    try:
        st = source.stat()
    except OSError as exc:
        raise _fail(doc, child(where, "source"), f"cannot read {source}: {exc.strerror}") from None
    if not source.is_file():
        raise _fail(doc, child(where, "source"), f"{source} is not a regular file")
    if mode is None:
        mode = 0o755 if st.st_mode & 0o111 else 0o644
    return FileSpec(path, mode, source=source, source_name=name)


def _directories(doc: Document) -> tuple[tuple[str, int], ...]:
    out = []
    for i, item in enumerate(doc.data.get("directories") or []):
        where = child("directories", i)
        if isinstance(item, str):
            out.append((_image_path(doc, where, item), 0o755))
        else:
            mode = int(item["mode"], 8) if "mode" in item else 0o755
            out.append((_image_path(doc, child(where, "path"), item["path"]), mode))
    return tuple(out)


def _symlinks(doc: Document) -> tuple[tuple[str, str], ...]:
    out = []
    for name, target in (doc.data.get("symlinks") or {}).items():
        where = child("symlinks", name)
        if not target:
            raise _fail(doc, where, "a symlink needs a target")
        out.append((_image_path(doc, where, name), target))
    return tuple(out)


def _label_problem(detail: str) -> tuple[tuple[str | int, ...], str]:
    """`capabilities[0]: unknown ...` (validate_label's wording) -> (("capabilities", 0), "unknown ...")."""
    shown, sep, message = detail.partition(": ")
    parts: list[str | int] = [m.group(1) or int(m.group(2)) for m in _DISPLAY_PART_RE.finditer(shown)]
    if sep and display_path(pointer(*parts)) == shown:
        return tuple(parts), message
    return (), detail


def _modes_as_written(doc: Document, value: Any, path: str) -> Any:
    """`value` with each unquoted `mode:` number (`mode: 0666`, read as 438) replaced by its source text, so
    the label check sees the octal spelling, as for a spec's modes (LinuxKit reads these as strings)."""
    if isinstance(value, dict):
        return {k: (doc.texts.get(child(path, k), v) if k == "mode" and isinstance(v, int)
                    and not isinstance(v, bool) else _modes_as_written(doc, v, child(path, k)))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_modes_as_written(doc, v, child(path, i)) for i, v in enumerate(value)]
    return value


def check_config(doc: Document, image: str) -> dict[str, Any] | None:
    """build.yml's `config:` (the org.mobyproject.config label), its problems located in build.yml."""
    config = doc.data.get("config")
    if config is None:
        return None
    config = _modes_as_written(doc, config, "config")
    try:
        validate_label(config, image)
    except UserError as exc:
        parts, message = _label_problem(exc.message.removeprefix(f"image {image}: invalid {LABEL_CONFIG} label: "))
        raise doc.error(pointer("config", *parts), message, exc.hint) from None
    return dict(config)


def _strings(doc: Document, key: str) -> tuple[str, ...] | None:
    value = doc.data.get(key)
    return None if value is None else tuple(value)


def read_build_file(directory: str | Path) -> tuple[bytes, Document]:
    """DIR/build.yml's bytes and its YAML with positions (of either format: ours or LinuxKit's)."""
    directory = Path(directory)
    file = directory / BUILD_FILE
    try:
        raw = file.read_bytes()
    except OSError as exc:
        if not directory.is_dir():
            raise UserError(f"{directory}: no such package directory") from None
        raise UserError(f"cannot read {file}: {exc.strerror}") from None
    name = str(file)
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(name, line, 1, "invalid YAML: the file is not UTF-8 text") from None
    try:
        doc = parse_document(text, name)
    except SpecError as exc:
        if exc.detail.startswith("a spec must be a mapping"):
            got = exc.detail.rsplit(", got ", 1)[-1]
            raise SpecError(exc.file, exc.line, exc.column,
                            f"build.yml must be a mapping (image:, packages:, ...), got {got}") from None
        raise
    return raw, doc


def load_definition(directory: str | Path) -> Definition:
    """Read and check DIR/build.yml; a mistake is a SpecError at its line and column."""
    directory = Path(directory)
    file = directory / BUILD_FILE
    raw, doc = read_build_file(directory)
    validate_document(doc, load_schema())
    data = doc.data
    image = _image_name(doc, data["image"])
    kernel = data.get("kernel")
    return Definition(
        directory=directory,
        file=file,
        text=raw,
        document=doc,
        image=image,
        arches=tuple(dict.fromkeys(data.get("arches") or DEFAULT_ARCHES)),
        packages=_packages(doc),
        libraries=data.get("libraries", "auto") == "auto",
        include=_globs(doc, "include"),
        exclude=_globs(doc, "exclude"),
        keep=_globs(doc, "keep"),
        files=tuple(_file_spec(doc, directory, i, item) for i, item in enumerate(data.get("files") or [])),
        directories=_directories(doc),
        symlinks=_symlinks(doc),
        config=check_config(doc, image),
        entrypoint=_strings(doc, "entrypoint"),
        cmd=_strings(doc, "cmd"),
        env=_strings(doc, "env"),
        workdir=data.get("workdir"),
        kernel=KernelSpec(_package_name(doc, "kernel/package", kernel["package"]),
                          tuple(kernel.get("modules") or []), tuple(kernel.get("dtbs") or [])) if kernel else None,
    )
