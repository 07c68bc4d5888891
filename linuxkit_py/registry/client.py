"""Distribution-spec client: where a repository lives (mirrors, http or https), requests, manifests, blobs.

Mirrors follow LinuxKit's `--mirror` / `LINUXKIT_MIRROR`: `REGISTRY=URL` sends that registry's
pulls to URL, a bare `URL` is the mirror of every registry not named otherwise, and the URL's
path becomes a prefix of the repository (`docker.io=http://m:5000/hub` pulls `redis` from
`http://m:5000/v2/hub/library/redis/...`). A mirror replaces its registry (no fallback), as in
LinuxKit. Registries on loopback addresses and those named in `insecure` are spoken to over plain
http; everything else over https.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from linuxkit_py.cache.layout import BlobMismatch, Cache
from linuxkit_py.cache.platform import INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES
from linuxkit_py.errors import UserError
from linuxkit_py.registry.auth import Authenticator, CredentialStore
from linuxkit_py.registry.reference import DEFAULT_REGISTRY, Reference
from linuxkit_py.registry.transport import (
    RETRY_STATUSES,
    Body,
    RegistryFault,
    StreamInterrupted,
    TransientFault,
    Transport,
    http_fault,
    is_loopback,
)

if TYPE_CHECKING:
    import requests

MANIFEST_ACCEPT = ", ".join(INDEX_MEDIA_TYPES + MANIFEST_MEDIA_TYPES)
OCI_INDEX = INDEX_MEDIA_TYPES[0]
OCI_MANIFEST = MANIFEST_MEDIA_TYPES[0]
MAX_MANIFEST_BYTES = 4 << 20  # the distribution spec's suggested manifest size limit
ANY_REGISTRY = "*"
BLOB_CHUNK = 1 << 20  # the most one read of a blob's body gives (Transport.iter_arrived)
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass
class RegistryOptions:
    """How to reach registries; the CLI fills it from --mirror, --cert-file, LINUXKIT_MIRROR, ..."""

    mirrors: dict[str, str] = field(default_factory=dict)  # registry host (or "*") -> base URL
    insecure: frozenset[str] = frozenset()  # registry hosts spoken to over plain http
    ca_files: tuple[str, ...] = ()  # PEM CA certificates trusted besides the system's
    docker_config_dir: Path | None = None  # default: $DOCKER_CONFIG or ~/.docker
    timeout: float = 30.0  # seconds, for connecting and for each read
    retries: int = 4  # further tries after a connection error, 429 or 5xx
    progress: bool | None = None  # None: a progress bar only on a TTY
    backoff: float = 0.5  # seconds before the first retry, doubled for each next one
    workers: int = 4  # parallel blob downloads


def parse_mirrors(values: list[str], env: str | None) -> dict[str, str]:
    """`--mirror` values (after LINUXKIT_MIRROR's comma/space separated list) -> {registry: URL}.

    A later entry for the same registry wins, so flags override the environment.
    """
    items = [v for v in re.split(r"[,\s]+", env or "") if v] + list(values)
    mirrors: dict[str, str] = {}
    for item in items:
        if not item:
            continue
        key, sep, url = item.partition("=")
        if not sep:
            key, url = ANY_REGISTRY, item
        key = key.strip().rstrip("/").lower()
        url = url.strip()
        if not url.startswith(("http://", "https://")):
            raise UserError(f"mirror {url!r} must start with http:// or https://",
                            hint="--mirror REGISTRY=URL, e.g. docker.io=http://mirror.local:5000")
        netloc = urlsplit(url).netloc
        if "@" in netloc:  # never echo the URL: it holds a password
            raise UserError(f"mirror for {key or 'every registry'}: credentials in the URL are not supported",
                            hint="put them in ~/.docker/config.json under the mirror's host")
        if not key or not netloc:
            raise UserError(f"bad mirror {item!r}", hint="--mirror REGISTRY=URL or --mirror URL")
        if key in _DOCKER_HUB_KEYS:
            key = DEFAULT_REGISTRY
        mirrors[key] = url.rstrip("/")
    return mirrors


@dataclass(frozen=True)
class Remote:
    """Where one repository is fetched from."""

    scheme: str
    host: str  # host[:port]
    repository: str

    def url(self, kind: str, reference: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{self.repository}/{kind}/{reference}"

    @property
    def peer(self) -> str:
        return f"registry {self.host}"


def resolve_remote(ref: Reference, options: RegistryOptions) -> Remote:
    """The mirror, scheme and host that serve `ref`'s repository."""
    mirror = options.mirrors.get(ref.registry) or options.mirrors.get(ANY_REGISTRY)
    if mirror:
        split = urlsplit(mirror)
        prefix = split.path.strip("/")
        repository = f"{prefix}/{ref.repository}" if prefix else ref.repository
        return Remote(split.scheme, split.netloc, repository)
    host = ref.api_registry
    plain = is_loopback(host) or ref.registry in options.insecure or host in options.insecure
    return Remote("http" if plain else "https", host, ref.repository)


@dataclass(frozen=True)
class Document:
    """A manifest or index exactly as the registry sent it."""

    data: bytes
    digest: str
    media_type: str

    @property
    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}

    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.data)
        return doc


def document_media_type(doc: Any, content_type: str, peer: str) -> str:
    """The media type of a fetched manifest; OCI allows it to be missing from the document."""
    if not isinstance(doc, dict):
        raise RegistryFault(f"{peer}: manifest is not a JSON object")
    declared = doc.get("mediaType") or content_type
    if declared in INDEX_MEDIA_TYPES or declared in MANIFEST_MEDIA_TYPES:
        return str(declared)
    if doc.get("schemaVersion") == 1:
        raise RegistryFault(f"{peer}: Docker schema 1 manifests are not supported")
    if "manifests" in doc and "layers" not in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise RegistryFault(f"{peer}: unsupported manifest type {declared or 'unknown'!r}")


class RegistryClient:
    """Manifests and blobs over one HTTP session, with auth state shared by all threads."""

    def __init__(self, options: RegistryOptions) -> None:
        self.options = options
        self.transport = Transport(options.timeout, options.retries, options.backoff, options.ca_files)
        self.auth = Authenticator(self.transport, CredentialStore(options.docker_config_dir))

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def get(self, remote: Remote, kind: str, reference: str, accept: str | None = None) -> requests.Response:
        """A 200 response for /v2/<repo>/<kind>/<reference>, answering auth challenges; else a fault."""
        return self.request("GET", remote, remote.url(kind, reference), {"Accept": accept} if accept else {})

    def request(self, method: str, remote: Remote, url: str, headers: dict[str, str] | None = None,
                body: Body = None, ok: tuple[int, ...] = (200,), retry: bool = True) -> requests.Response:
        """A response with a status in `ok` for `url` of `remote`, answering auth challenges; else a fault.

        With `retry=False` (an upload whose session a failed try may have spoilt), a connection error,
        429 or 5xx raises TransientFault for the caller to start over. Credentials go only to the
        registry's own host (an upload URL may point elsewhere, e.g. to a storage service).
        """
        headers = headers or {}
        own_host = urlsplit(url).netloc.lower() == remote.host.lower()
        for round_ in range(2):
            sent = self.auth.authorization(remote.host, remote.repository) if own_host else None
            request_headers = {**headers, "Authorization": sent} if sent else headers
            response = self.transport.request(method, url, request_headers, remote.peer, remote.host,
                                              body=body, retry=retry)
            if response.status_code in ok:
                return response
            if response.status_code != 401 or not own_host:
                fault = http_fault(remote.peer, response)
                response.close()
                if not retry and response.status_code in RETRY_STATUSES:
                    raise TransientFault(fault.cause)
                raise fault
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            if round_ == 1:
                raise self.auth.refused(remote.host)
            try:
                self.auth.answer(remote.host, remote.repository, challenge, sent)
            except RegistryFault as fault:
                if fault.cause.startswith(f"{remote.peer}:"):
                    raise
                raise RegistryFault(f"{remote.peer}: {fault.cause}", fault.hint) from None
        raise AssertionError("unreachable")

    def fetch_manifest(self, remote: Remote, reference: str) -> Document:
        """The manifest or index for a tag or digest, with its digest computed from the bytes."""
        attempt = 0
        while True:
            response = self.get(remote, "manifests", reference, accept=MANIFEST_ACCEPT)
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            try:
                data = self.transport.read_body(response, remote.peer, MAX_MANIFEST_BYTES)
                break
            except StreamInterrupted as exc:
                attempt = self.transport.retrying(
                    attempt, exc, f"{remote.peer}: download of manifest {reference} interrupted")
        try:
            doc = json.loads(data)
        except ValueError:
            raise RegistryFault(f"{remote.peer}: manifest for {reference} is not valid JSON") from None
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return Document(data, digest, document_media_type(doc, content_type, remote.peer))

    def fetch_blob(self, remote: Remote, digest: str, size: int, cache: Cache,
                   progress: Callable[[int], None], cancelled: threading.Event) -> bool:
        """Stream one blob into the cache, verified; False when another build brought it meanwhile.

        Held under the cache's per-blob lock. A broken download is kept and resumed with a Range
        request (a registry answering 200 instead sends it whole again); the whole file is hashed.
        """
        with cache.blob_lock(digest):
            if cache.has_blob(digest):
                return False
            try:
                self._download_blob(remote, digest, size, cache, progress, cancelled)
            except OSError as exc:  # the network's errors arrive as StreamInterrupted: this is the disk
                raise UserError(f"cannot write to cache {cache.root}: {exc.strerror or exc}") from exc
            finally:
                with contextlib.suppress(OSError):  # keep a partial download only if it has bytes
                    partial = cache.partial_path(digest)
                    if partial.stat().st_size == 0:
                        partial.unlink()
            return True

    def _download_blob(self, remote: Remote, digest: str, size: int, cache: Cache,
                       progress: Callable[[int], None], cancelled: threading.Event) -> None:
        partial = cache.partial_path(digest)
        attempt = 0
        resumed = False  # a resumed file that fails its digest is fetched whole once more
        # Not append mode: a resumed write goes where the registry's range starts.
        with os.fdopen(os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), "r+b") as f:
            have = f.seek(0, os.SEEK_END)
            if have > size:
                f.truncate(0)
                have = 0
            progress(have)
            while True:
                headers = {"Range": f"bytes={have}-"} if 0 < have < size else {}
                streamed = None  # the digest of the whole file, when one body wrote all of it
                if have < size:
                    response = self.request("GET", remote, remote.url("blobs", digest), headers, ok=(200, 206))
                    if response.status_code != 206 or _range_start(response) != have:
                        f.truncate(0)  # a whole body (200), or a range we did not ask for
                        progress(-have)
                        have = 0
                        if response.status_code == 206:
                            response.close()
                            continue
                    resumed = resumed or have > 0
                    f.seek(have)
                    body = _BlobBody(self.transport.iter_arrived(response, BLOB_CHUNK), progress, cancelled)
                    try:
                        for chunk in body:
                            if have + len(chunk) > size:
                                raise RegistryFault(f"{remote.peer}: blob {digest} is larger than the {size} "
                                                    "bytes its descriptor says")
                            f.write(chunk)
                            have += len(chunk)
                    except StreamInterrupted as exc:
                        f.flush()
                        attempt = self.transport.retrying(
                            attempt, exc, f"{remote.peer}: download of blob {digest} interrupted")
                        continue
                    except RegistryFault:
                        partial.unlink(missing_ok=True)  # wrong content: nothing worth resuming
                        raise
                    finally:
                        response.close()
                    if have < size:
                        partial.unlink(missing_ok=True)
                        raise RegistryFault(f"{remote.peer}: blob {digest} has {have} bytes, "
                                            f"its descriptor says {size}")
                    if body.received == have:  # this body wrote the file from its first byte
                        streamed = body.digest
                f.flush()
                try:
                    cache.commit_partial(digest, size, streamed)
                    return
                except BlobMismatch as exc:  # commit_partial removed the file
                    progress(-have)
                    have = 0
                    if not resumed:
                        raise RegistryFault(f"{remote.peer}: blob {digest} does not match its digest "
                                            f"(got {exc})") from None
                    resumed = False
                    # The registry may have served the start and the rest from different files:
                    # try once more from the start (the partial file is gone; reopen it).
                    return self._download_blob(remote, digest, size, cache, progress, cancelled)


def _range_start(response: requests.Response) -> int | None:
    """The first byte of a 206 answer (`Content-Range: bytes START-END/TOTAL`)."""
    value = response.headers.get("Content-Range", "")
    match = re.match(r"^bytes (\d+)-\d+/(\d+|\*)$", value.strip())
    return int(match.group(1)) if match else None


class _BlobBody:
    """Chunks of a blob download, hashed and counted on the way (for messages and progress)."""

    def __init__(self, chunks: Iterator[bytes], progress: Callable[[int], None],
                 cancelled: threading.Event) -> None:
        self._chunks = chunks
        self._progress = progress
        self._cancelled = cancelled
        self._hasher = hashlib.sha256()
        self.received = 0

    @property
    def digest(self) -> str:
        return "sha256:" + self._hasher.hexdigest()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            if self._cancelled.is_set():
                raise Cancelled()
            self._hasher.update(chunk)
            self.received += len(chunk)
            self._progress(len(chunk))
            yield chunk


class Cancelled(Exception):
    """Another download of the same pull failed or the user interrupted: stop this one."""
