"""The image cache: an OCI image layout directory (readable by skopeo, umoci and LinuxKit).

Layout: `oci-layout`, `index.json` (one descriptor per cached reference, named by the
`org.opencontainers.image.ref.name` annotation) and `blobs/sha256/<hex>`. Every blob is
verified (size and sha256) before it is renamed into place, so a blob that exists is
trusted without re-hashing. Writers of `index.json` hold an exclusive lock on `.lock`.
A download in progress lives in `blobs/sha256/.partial-<hex>` (kept after an interrupted pull
for the next one to resume), written only under an fcntl lock on `.partial-<hex>.lock`, so two
builds sharing the cache download a blob once. `cache_verify.py` checks and repairs a cache.
Derived data (uncompressed layers and their indexes) lives under `linuxkit-py/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from linuxkit_py.errors import UserError

REF_NAME = "org.opencontainers.image.ref.name"
PARTIAL_PREFIX = ".partial-"
TEMP_PREFIX = ".tmp-"
LOCK_SUFFIX = ".lock"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
DERIVED_DIR = "linuxkit-py"


def default_cache_dir() -> Path:
    """`LINUXKIT_CACHE`, else `$XDG_CACHE_HOME/linuxkit-py`, else `~/.cache/linuxkit-py`."""
    env = os.environ.get("LINUXKIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "linuxkit-py"


class BlobMismatch(Exception):
    """A blob's size or digest is not what its descriptor says."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha256_digest(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def canonical_json(doc: Any) -> bytes:
    """Deterministic JSON bytes for documents we create (configs, manifests, indexes)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class Cache:
    def __init__(self, root: Path, durable: bool = True) -> None:
        """`durable=False`: a scratch cache whose blobs are read once and removed with it (`--cache-from`'s
        staging), so a verified download is not forced to disk first."""
        self.root = Path(root)
        self.durable = durable

    # -- layout -------------------------------------------------------------
    def ensure(self) -> None:
        try:
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            layout = self.root / "oci-layout"
            if not layout.exists():
                self._write_atomic(layout, b'{"imageLayoutVersion":"1.0.0"}', replace=False)
            if not (self.root / "index.json").exists():
                # Never replace: another build may have named an image since the check above.
                self._write_atomic(self.root / "index.json", self._index_bytes([]), replace=False)
        except OSError as exc:
            raise UserError(f"cannot use cache directory {self.root}: {exc.strerror}") from exc

    @property
    def derived_dir(self) -> Path:
        return self.root / DERIVED_DIR

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for read-modify-write of index.json (blocks while another build holds it)."""
        self.ensure()
        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- blobs --------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
            raise UserError(f"unsupported or malformed digest {digest!r}")
        return self.root / "blobs" / "sha256" / hexpart

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def partial_path(self, digest: str) -> Path:
        """Where a download of `digest` is written until it is verified (resumable)."""
        target = self.blob_path(digest)
        return target.with_name(PARTIAL_PREFIX + target.name)

    @contextlib.contextmanager
    def blob_lock(self, digest: str) -> Iterator[None]:
        """Exclusive lock for downloading one blob (other builds wait, then find it present).

        The lock file is removed by its holder on the way out; a waiter that then gets the lock
        of the removed file notices (its inode is gone) and locks the current file instead.
        """
        self.ensure()
        lock_path = self.partial_path(digest).with_name(self.partial_path(digest).name + LOCK_SUFFIX)
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
            except BaseException:
                os.close(fd)
                raise
            if current:
                break
            os.close(fd)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)
            os.close(fd)  # releases the lock

    def commit_partial(self, digest: str, size: int, streamed: str | None = None) -> Path:
        """Verify a complete partial download and rename it into place: the whole file is hashed, unless
        `streamed` is the digest of every byte written to it, hashed as the one download that wrote them all
        went by (then only its size is checked again).

        Raises BlobMismatch (the partial file removed) when its size or digest is wrong.
        Call with blob_lock(digest) held.
        """
        partial = self.partial_path(digest)
        with open(partial, "rb") as f:
            if streamed is None:
                h = hashlib.sha256()
                n = 0
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    n += len(chunk)
                got = "sha256:" + h.hexdigest()
            else:
                n, got = os.fstat(f.fileno()).st_size, streamed
            if self.durable:
                os.fsync(f.fileno())
        if n != size or got != digest:
            partial.unlink()
            if n != size:
                raise BlobMismatch(f"blob {digest} has {n} bytes, its descriptor says {size}")
            raise BlobMismatch(got)
        os.chmod(partial, 0o644)
        target = self.blob_path(digest)
        os.replace(partial, target)
        return target

    def write_blob(self, chunks: Iterable[bytes], digest: str, size: int | None = None) -> Path:
        """Stream chunks into the cache; verified, then renamed into place. Raises BlobMismatch."""
        target = self.blob_path(digest)
        self.ensure()
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
        try:
            h = hashlib.sha256()
            n = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    n += len(chunk)
                    if size is not None and n > size:
                        raise BlobMismatch(f"blob {digest} is larger than its descriptor's {size} bytes")
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if size is not None and n != size:
                raise BlobMismatch(f"blob {digest} has {n} bytes, its descriptor says {size}")
            got = "sha256:" + h.hexdigest()
            if got != digest:
                raise BlobMismatch(f"blob content has digest {got}, expected {digest}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            return target
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_blob(self, data: bytes) -> str:
        """Store bytes as a blob and return their digest."""
        digest = sha256_digest(data)
        if not self.has_blob(digest):
            self.write_blob([data], digest, len(data))
        return digest

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise UserError(f"cache {self.root}: blob {digest} is missing") from None

    def read_json(self, digest: str) -> Any:
        try:
            return json.loads(self.read_blob(digest))
        except ValueError as exc:
            raise UserError(f"cache {self.root}: blob {digest} is not valid JSON: {exc}") from exc

    # -- index.json ----------------------------------------------------------
    def _write_atomic(self, path: Path, data: bytes, replace: bool = True) -> None:
        """Write via a temp file; with replace=False an existing file is left as it is."""
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            if replace:
                os.replace(tmp, path)
            else:
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
                os.unlink(tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _read_index(self) -> list[dict[str, Any]]:
        path = self.root / "index.json"
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise UserError(f"cache {self.root}: index.json is corrupt: {exc}",
                            hint="linuxkit-py cache clean") from exc
        manifests = doc.get("manifests", []) if isinstance(doc, dict) else None
        if manifests is None and isinstance(doc, dict):
            manifests = []  # "manifests": null
        if not isinstance(manifests, list) or not all(isinstance(d, dict) for d in manifests):
            raise UserError(f"cache {self.root}: index.json is corrupt: not an OCI image index",
                            hint="linuxkit-py cache clean")
        return list(manifests)

    @staticmethod
    def _index_bytes(manifests: list[dict[str, Any]]) -> bytes:
        doc = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests}
        return json.dumps(doc, indent=2).encode() + b"\n"

    def _write_index(self, manifests: list[dict[str, Any]]) -> None:
        self._write_atomic(self.root / "index.json", self._index_bytes(manifests))

    def refs(self) -> list[tuple[str, dict[str, Any]]]:
        """(ref name, descriptor) for every named entry of index.json, sorted by name."""
        out = []
        for desc in self._read_index():
            name = (desc.get("annotations") or {}).get(REF_NAME)
            if name:
                out.append((name, desc))
        return sorted(out, key=lambda item: item[0])

    def get_ref(self, name: str) -> dict[str, Any] | None:
        for ref_name, desc in self.refs():
            if ref_name == name:
                return desc
        return None

    def set_ref(self, name: str, descriptor: dict[str, Any]) -> None:
        """Point `name` at `descriptor` (replacing what it named before)."""
        desc = dict(descriptor)
        desc["annotations"] = {**(desc.get("annotations") or {}), REF_NAME: name}
        with self.lock():
            manifests = [d for d in self._read_index() if (d.get("annotations") or {}).get(REF_NAME) != name]
            manifests.append(desc)
            manifests.sort(key=lambda d: (d.get("annotations") or {}).get(REF_NAME, ""))
            self._write_index(manifests)

    def remove_ref(self, name: str) -> bool:
        with self.lock():
            manifests = self._read_index()
            kept = [d for d in manifests if (d.get("annotations") or {}).get(REF_NAME) != name]
            if len(kept) == len(manifests):
                return False
            self._write_index(kept)
            return True

    def clean(self) -> None:
        """Remove every cached image and derived file."""
        with self.lock():
            shutil.rmtree(self.root / "blobs", ignore_errors=True)
            shutil.rmtree(self.derived_dir, ignore_errors=True)
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            self._write_index([])
