"""Push an image from the cache to a registry (distribution spec).

Blobs first (configs and layers: a HEAD skips those the repository has, the others go up in one
monolithic PUT each, streamed from the cache file), then manifests by digest for the platforms of
an index, then the root manifest or index under the tag. Manifests go up with their bytes exactly
as cached, so the pushed digest is the cached one. Mirrors serve pulls only: a push always talks
to the destination's registry.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin

from linuxkit_py.cache.layout import Cache
from linuxkit_py.cache.platform import INDEX_MEDIA_TYPES
from linuxkit_py.errors import RegistryError, UserError
from linuxkit_py.registry.auth import with_query
from linuxkit_py.registry.client import (
    DIGEST_RE,
    RegistryClient,
    RegistryOptions,
    Remote,
    document_media_type,
    resolve_remote,
)
from linuxkit_py.registry.pull import progress_bar
from linuxkit_py.registry.reference import DEFAULT_REGISTRY, normalize_reference, parse_reference
from linuxkit_py.registry.transport import RegistryFault, TransientFault

log = logging.getLogger(__name__)

MAX_INDEX_DEPTH = 4  # an index of indexes is legal; deeper nesting is a broken document
_DOCKER_HUB_ALIASES = (DEFAULT_REGISTRY, "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class _Document:
    """A manifest or index of the image, with its bytes as cached."""

    digest: str
    media_type: str
    data: bytes


@dataclass
class _PushPlan:
    documents: list[_Document] = field(default_factory=list)  # platform manifests before their index
    blobs: dict[str, int] = field(default_factory=dict)  # config and layer digests -> size, each once

    @property
    def root(self) -> _Document:
        return self.documents[-1]


def registry_destination(registry: str, name: str) -> str:
    """`REGISTRY[/PREFIX]` and `linuxkit-py/init:<tag>` -> `REGISTRY[/PREFIX]/linuxkit-py/init:<tag>`."""
    registry = registry.strip().rstrip("/")
    host = registry.split("/", 1)[0]
    ref = parse_reference(f"{registry}/{name}")
    if ref.registry == DEFAULT_REGISTRY and host.lower() not in _DOCKER_HUB_ALIASES:
        raise UserError(f"push destination {registry!r} does not start with a registry host",
                        hint="a host name with a dot or a port, e.g. registry.example.com or 127.0.0.1:5000")
    return str(ref)


def push_image(cache: Cache, ref_in_cache: str, destination: str, options: RegistryOptions) -> str:
    """Push the cached image `ref_in_cache` (all its platforms) as `destination`; the pushed digest."""
    dest = parse_reference(destination)
    descriptor = cache.get_ref(normalize_reference(ref_in_cache))
    if descriptor is None:
        raise UserError(f"{ref_in_cache} is not in the cache {cache.root}", hint="linuxkit-py cache ls")
    plan = _PushPlan()
    _add_document(cache, plan, ref_in_cache, descriptor, 0)
    root = plan.root
    if dest.digest and dest.digest != root.digest:
        raise UserError(f"{destination}: {ref_in_cache} has digest {root.digest}, not the one given")
    remote = resolve_remote(dest, dataclasses.replace(options, mirrors={}))
    with RegistryClient(options) as client:
        try:
            _push_blobs(client, remote, cache, plan.blobs, options, f"pushing {dest.name}")
            for document in plan.documents[:-1]:
                _put_manifest(client, remote, document, document.digest)
            _put_manifest(client, remote, root, dest.tag or root.digest)
        except RegistryFault as fault:
            raise RegistryError(f"{destination}: {fault.cause}", fault.hint) from None
    return root.digest


# -- what to push ---------------------------------------------------------------------------------

def _add_document(cache: Cache, plan: _PushPlan, given: str, descriptor: dict[str, Any], depth: int) -> None:
    """Add a manifest (and its blobs) or an index (and, first, its manifests) to the plan."""
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise UserError(f"{given}: a descriptor in the cache has a bad digest {digest!r}")
    if any(document.digest == digest for document in plan.documents):
        return
    if not cache.has_blob(digest):
        platform = descriptor.get("platform") or {}
        which = f" ({platform.get('os')}/{platform.get('architecture')})" if platform else ""
        raise UserError(f"{given}: manifest {digest}{which} is not in the cache {cache.root}",
                        hint="the cache keeps only the platforms that were pulled or built")
    data = cache.read_blob(digest)
    try:
        doc = json.loads(data)
        media_type = document_media_type(doc, str(descriptor.get("mediaType") or ""), f"cache {cache.root}")
    except ValueError:
        raise UserError(f"{given}: cached manifest {digest} is not valid JSON") from None
    except RegistryFault as fault:
        raise UserError(f"{given}: {fault.cause}") from None
    if media_type in INDEX_MEDIA_TYPES:
        if depth >= MAX_INDEX_DEPTH:
            raise UserError(f"{given}: indexes nested more than {MAX_INDEX_DEPTH} deep")
        for child in doc.get("manifests") or []:
            _add_document(cache, plan, given, child, depth + 1)
    else:
        for blob in [doc.get("config"), *(doc.get("layers") or [])]:
            _add_blob(cache, plan, given, digest, blob)
    plan.documents.append(_Document(digest, media_type, data))


def _add_blob(cache: Cache, plan: _PushPlan, given: str, manifest: str, blob: Any) -> None:
    try:
        digest, size = blob["digest"], blob["size"]
        if not DIGEST_RE.match(digest) or not isinstance(size, int):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{given}: cached manifest {manifest} has a bad config or layer entry") from None
    try:
        cached_size = cache.blob_path(digest).stat().st_size
    except FileNotFoundError:
        raise UserError(f"{given}: blob {digest} is not in the cache {cache.root}") from None
    if cached_size != size:
        raise UserError(f"{given}: cached blob {digest} has {cached_size} bytes, its descriptor says {size}")
    plan.blobs[digest] = size


# -- the registry conversation --------------------------------------------------------------------

def _push_blobs(client: RegistryClient, remote: Remote, cache: Cache, blobs: dict[str, int],
                options: RegistryOptions, description: str) -> None:
    """Upload the blobs the repository lacks, in parallel; the first failure stops those not started."""
    failed = threading.Event()

    def push(digest: str, size: int, progress: Callable[[int], None]) -> None:
        if failed.is_set():
            return
        try:
            _push_blob(client, remote, cache.blob_path(digest), digest, size, progress)
        except BaseException:
            failed.set()
            raise

    with progress_bar(options, sum(blobs.values()), description) as update, \
            concurrent.futures.ThreadPoolExecutor(max(1, options.workers)) as pool:
        futures = [pool.submit(push, digest, size, update) for digest, size in blobs.items()]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            failed.set()
            for future in futures:
                future.cancel()
            raise


def _push_blob(client: RegistryClient, remote: Remote, path: Path, digest: str, size: int,
               progress: Callable[[int], None]) -> None:
    """HEAD, and when the repository lacks the blob, upload it; a failed PUT starts a new upload."""
    response = client.request("HEAD", remote, remote.url("blobs", digest), ok=(200, 404))
    response.close()
    if response.status_code == 200:
        progress(size)
        return
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    body = _BlobBody(path, size, progress)
    attempt = 0
    while True:
        try:
            location = _start_upload(client, remote)
            response = client.request("PUT", remote, with_query(location, {"digest": digest}), headers,
                                      body=body, ok=(201,), retry=False)
            response.close()
            log.info("pushed blob %s (%d bytes)", digest, size)
            return
        except TransientFault as fault:
            body.uncount()
            if attempt >= client.transport.retries:
                raise RegistryFault(fault.cause) from None
            client.transport.sleep(client.transport.delay(attempt))
            attempt += 1


def _start_upload(client: RegistryClient, remote: Remote) -> str:
    """POST a new upload session; the URL to PUT the blob to."""
    url = remote.url("blobs", "uploads/")
    response = client.request("POST", remote, url, ok=(202,))
    location = response.headers.get("Location", "")
    response.close()
    if not location:
        raise RegistryFault(f"{remote.peer}: upload started without a Location to send the blob to")
    return urljoin(url, location)


def _put_manifest(client: RegistryClient, remote: Remote, document: _Document, reference: str) -> None:
    url = remote.url("manifests", reference)
    response = client.request("PUT", remote, url, {"Content-Type": document.media_type}, body=document.data,
                              ok=(200, 201))
    stored = response.headers.get("Docker-Content-Digest")
    response.close()
    if stored and stored != document.digest:
        raise RegistryFault(f"{remote.peer}: manifest {document.digest} was stored as {stored}")
    log.info("pushed manifest %s as %s", document.digest, reference)


class _BlobBody:
    """Opens a cached blob for each try of its upload; the progress bar counts only the latest try."""

    def __init__(self, path: Path, size: int, progress: Callable[[int], None]) -> None:
        self.path = path
        self.size = size
        self._progress = progress
        self._sent = 0

    def __call__(self) -> _BlobReader:
        self.uncount()
        return _BlobReader(open(self.path, "rb"), self.size, self._count)  # noqa: SIM115 - closed by the transport

    def _count(self, n: int) -> None:
        self._sent += n
        self._progress(n)

    def uncount(self) -> None:
        """Take back the bytes of a try that failed."""
        self._progress(-self._sent)
        self._sent = 0


class _BlobReader:
    """A request body read in the HTTP client's block size (bounded memory)."""

    def __init__(self, file: IO[bytes], size: int, count: Callable[[int], None]) -> None:
        self._file = file
        self._size = size
        self._count = count

    def __len__(self) -> int:  # how requests sizes a body; Content-Length is given anyway
        return self._size

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._file.read(size)
        self._count(len(chunk))
        return chunk

    def close(self) -> None:
        self._file.close()
