"""No-op rebuilds: outputs whose recorded build key still matches are left as they are.

A build key is the sha256 of everything that decides an output's bytes: the resolved spec,
every image's manifest digest, the content of every local file the spec's `files:` read, the
options, SOURCE_DATE_EPOCH, the boot assets and external tools a format uses (their content),
and this tool's own code and libraries. After a format is written, its key and the identity
of each output file (size, inode, mtime and ctime in nanoseconds) are recorded in the cache,
under the sha256 of the output's absolute path. The next build with the same key finds the
files exactly as written (a rewrite, truncation or replacement changes at least the ctime)
and rewrites nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import linuxkit_py
from linuxkit_py.errors import UserError
from linuxkit_py.fsutil import atomic_output
from linuxkit_py.spec.model import Spec

log = logging.getLogger("linuxkit_py")

RECORD_VERSION = 1
CHUNK = 1 << 20
# Libraries whose version can change output bytes (ISO writer, ELF reading, zstd, signing, EFI variables).
LIBRARIES = ("pycdlib", "pyelftools", "zstandard", "zlib-ng", "cryptography", "virt-firmware", "PyYAML")


def _hash_file(sha: Any, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)


def content_digest(path: Path | None) -> str | None:
    """sha256 of a file, or of a directory tree (names, modes, link targets, contents); None if absent."""
    if path is None:
        return None
    sha = hashlib.sha256()
    try:
        if not path.is_dir():
            _hash_file(sha, path)
            return sha.hexdigest()
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                item = Path(root, name)
                st = item.lstat()
                sha.update(f"{item.relative_to(path)}\0{st.st_mode:o}\0".encode())
                if item.is_symlink():
                    sha.update(os.readlink(item).encode())
                else:
                    _hash_file(sha, item)
            sha.update(f"{Path(root).relative_to(path)}\0{[*dirs]}\0".encode())
    except OSError:
        return None  # unreadable: the build itself reports it (or skips an optional file)
    return sha.hexdigest()


@functools.cache
def _code_digest() -> str:
    """This tool's code and data files, Python, zlib and the libraries that write bytes."""
    sha = hashlib.sha256(f"{sys.version}\0{zlib.ZLIB_RUNTIME_VERSION}\0".encode())
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            sha.update(f"{name}={metadata.version(name)}\0".encode())
    package = Path(linuxkit_py.__file__).parent
    for root, dirs, names in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if not name.endswith((".pyc", ".pyo")):
                sha.update(f"{Path(root, name).relative_to(package)}\0{content_digest(Path(root, name))}\0".encode())
    return sha.hexdigest()


def code_digest() -> str:
    """The digest of this tool's code and of what else decides the bytes it writes (_code_digest)."""
    return _code_digest()


def _digest(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def build_key(spec: Spec, images: Mapping[str, str], options: Mapping[str, Any],
              files: Mapping[str, Path | None], sources: Sequence[Path]) -> str:
    """The sha256 of a build's inputs (`images`: each image's manifest digest by its ref). `options` must hold
    every option that reaches the output bytes; `files` names the other local inputs (signing key, boot assets,
    tools) whose content counts, and `sources` the host files the spec's `files:` read
    (rootfs.assemble.file_sources, given by the build)."""
    return _digest({
        "version": RECORD_VERSION,
        "code": _code_digest(),
        "spec": spec.to_dict(),
        "images": dict(sorted(images.items())),
        "sources": [content_digest(path) for path in sources],
        "options": dict(options),
        "files": {name: content_digest(path) for name, path in sorted(files.items())},
    })


def context_key(options: Mapping[str, Any], files: Mapping[str, Path | None]) -> str:
    """The sha256 of a build's inputs other than the spec and its images: with a format's digest of what one
    output file is made of (Format.input_digests), it decides that file's bytes."""
    return _digest({
        "version": RECORD_VERSION,
        "code": _code_digest(),
        "options": dict(options),
        "files": {name: content_digest(path) for name, path in sorted(files.items())},
    })


def _identity(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


class OutputRecords:
    """What was last written to each output file, kept under `directory` (in the cache).

    Besides the build key, a record may hold per file the key of its content (`context` with the format's
    digest of what the file is made of): a rebuild whose key differs keeps each file whose content key and
    identity are as recorded (a kernel cmdline edit rewrites only NAME-cmdline)."""

    def __init__(self, directory: Path, key: str, context: str = "") -> None:
        self.directory = directory
        self.key = key
        self.context = context

    def _content_key(self, fmt: str, index: int, digest: str | None) -> str | None:
        if digest is None or not self.context:
            return None
        return hashlib.sha256(f"{self.context}\0{fmt}\0{index}\0{digest}".encode()).hexdigest()

    def _read(self, fmt: str, targets: Iterable[Path]) -> dict[str, Any] | None:
        try:
            record = json.loads(self._record_path(fmt, targets).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None

    def kept(self, fmt: str, targets: list[Path], digests: list[str | None]) -> list[bool]:
        """Per target: True when it holds the bytes these digests make (recorded so, untouched since)."""
        record = self._read(fmt, targets)
        contents = record.get("contents") if record is not None else None
        if record is None or not isinstance(contents, dict):
            return [False] * len(targets)
        result = []
        for index, (target, digest) in enumerate(zip(targets, digests, strict=True)):
            name = str(target.absolute())
            content = self._content_key(fmt, index, digest)
            now = _identity(target)
            result.append(content is not None and contents.get(name) == content and now is not None
                          and record["files"].get(name) == now)
        return result

    def _record_path(self, fmt: str, targets: Iterable[Path]) -> Path:
        where = "\0".join([fmt, *(str(t.absolute()) for t in targets)])
        return self.directory / f"{hashlib.sha256(where.encode()).hexdigest()}.json"

    def up_to_date(self, fmt: str, targets: list[Path]) -> bool:
        """True when every target is the file this key wrote, untouched since."""
        record = self._read(fmt, targets)
        if record is None or record.get("key") != self.key:
            return False
        files = record["files"]
        for target in targets:
            now = _identity(target)
            if now is None or files.get(str(target.absolute())) != now:
                return False
        return True

    def record(self, fmt: str, targets: list[Path], digests: list[str | None] | None = None) -> None:
        """Remember that `targets` now hold what this key builds (and, per file, what `digests` make); a cache
        that cannot be written is skipped."""
        files = {str(t.absolute()): _identity(t) for t in targets}
        doc: dict[str, Any] = {"key": self.key, "files": files}
        if digests is not None:
            doc["contents"] = {str(t.absolute()): self._content_key(fmt, i, d)
                               for i, (t, d) in enumerate(zip(targets, digests, strict=True))}
        with contextlib.suppress(OSError, UserError), atomic_output(self._record_path(fmt, targets)) as f:
            f.write(json.dumps(doc, sort_keys=True).encode())
