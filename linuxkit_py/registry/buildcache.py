"""A build cache in any OCI registry: `build --cache-to REF` and `--cache-from REF` (BuildKit's names).

What a warm build reuses from its local cache goes to REF's repository as ordinary OCI artifacts, so
that builders sharing REF start warm without any service of ours (docs/packages.md, "Sharing a build cache"):

* `TAG-pkg-<sha256 of the package reference>`: a built `@pkg:` image, pushed as the image it is;
* `TAG-layer-<layer digest hex>`: the member index of the unpacked layer, its files' SBOM hashes and the
  indexes of tars inside it (a kernel image's kernel.tar);
* `TAG-deflate-<build key>` and `TAG-deflate-<sha256 of name, formats and arch>` (the latest build of
  that output): the deflated blocks of the outputs, as one tar named by the blocks' keys.

Each non-image artifact is an image manifest with artifactType `application/vnd.linuxkit-py.cache.v1`,
a small config of its own media type and one tar layer; the same items give the same bytes, so a blob
the registry has is not sent again (HEAD first). Everything fetched is verified (size and sha256)
before it is read, and nothing from it replaces what the local cache has. A registry fault is one
warning line: the build goes on as without the option and writes the same bytes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linuxkit_py.archive.blockcache import KEY_RE, DeflateBlockCache, pack_members
from linuxkit_py.cache.filehashes import sbom_hashes_path
from linuxkit_py.cache.image import Image, load_cached_image
from linuxkit_py.cache.layers import layers_dir
from linuxkit_py.cache.layout import Cache, canonical_json, file_sha256_digest
from linuxkit_py.errors import UserError
from linuxkit_py.registry.client import DIGEST_RE, RegistryClient, RegistryOptions, Remote, resolve_remote
from linuxkit_py.registry.pull import PlannedImage, PullHooks
from linuxkit_py.registry.push import _Document, _push_blob, _put_manifest, push_image, registry_destination
from linuxkit_py.registry.reference import Reference, parse_reference
from linuxkit_py.registry.transport import RegistryFault

log = logging.getLogger("linuxkit_py")

ARTIFACT_TYPE = "application/vnd.linuxkit-py.cache.v1"
CONFIG_MEDIA_TYPE = "application/vnd.linuxkit-py.cache.config.v1+json"
ITEMS_MEDIA_TYPE = "application/vnd.linuxkit-py.cache.items.v1.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DEFAULT_TAG = "cache"
MAX_TAG = 128  # the distribution spec's tag length
MAX_KEY_TAG = len("-deflate-") + 64
MAX_ITEMS_BYTES = 4 << 30  # a cache blob larger than this is refused, not downloaded
MAX_ITEM_BYTES = 256 << 20  # one item is read into memory: a layer index of a million entries fits
REGION_FILE_RE = re.compile(r"^\.([0-9]{1,19})-([0-9]{1,19})\.json$")  # after the hex digest (region_entries)
REGION_ITEM_RE = re.compile(r"^region-([0-9]{1,19})-([0-9]{1,19})\.json$")
INDEX_ITEM = "index.json"
SBOM_ITEM = "sbom.json"
# Cache requests give up sooner than pulls: a slow cache only delays a build that can go without it.
CACHE_RETRIES = 1
CACHE_TIMEOUT = 10.0  # seconds, for connecting and for each read: a hung cache registry delays a build this long


@dataclass(frozen=True)
class CacheRef:
    """`--cache-to`/`--cache-from`: a repository and the tag every artifact's tag starts with."""

    text: str  # as given, for messages
    repository: Reference  # registry and repository (its tag is ignored)
    tag: str

    def ref(self, kind: str, key: str) -> str:
        return f"{self.repository.registry}/{self.repository.repository}:{self.tag}-{kind}-{key}"


def parse_cache_ref(text: str, option: str) -> CacheRef:
    """`REGISTRY/REPO[:TAG]` or BuildKit's `type=registry,ref=REGISTRY/REPO[:TAG]`; a UserError otherwise."""
    value = text.strip()
    if "=" in value.split("/", 1)[0] or value.startswith(("type=", "ref=")):
        fields = dict(part.partition("=")[::2] for part in value.split(",") if part)
        unknown = sorted(set(fields) - {"type", "ref", "mode"})
        if fields.get("type", "registry") != "registry" or unknown:
            raise UserError(f"{option} {text!r}: only type=registry,ref=REGISTRY/REPOSITORY[:TAG] is supported",
                            hint=f"e.g. {option} type=registry,ref=registry.example.com/ci/cache")
        value = fields.get("ref", "")
    if "/" not in value or "@" in value or not value.split("/", 1)[1]:
        raise UserError(f"{option} {text!r}: give REGISTRY/REPOSITORY[:TAG]",
                        hint=f"e.g. {option} registry.example.com/ci/cache; the cache's tags start with TAG")
    try:
        host = value.split("/", 1)[0]
        ref = parse_reference(registry_destination(host, value.split("/", 1)[1]))
    except UserError as exc:
        raise UserError(f"{option} {text!r}: {exc.message}", exc.hint) from None
    tag = ref.tag if ref.tag and ":" in value.rsplit("/", 1)[-1] else DEFAULT_TAG
    if len(tag) + MAX_KEY_TAG > MAX_TAG:
        raise UserError(f"{option} {text!r}: the tag {tag!r} is too long to prefix the cache's tags",
                        hint=f"at most {MAX_TAG - MAX_KEY_TAG} characters")
    return CacheRef(text, ref, tag)


def package_key(ref: str) -> str:
    return hashlib.sha256(ref.encode()).hexdigest()


def latest_deflate_key(name: str, formats: Iterable[str], arch: str) -> str:
    """The tag key of the latest deflated blocks of an output: its name, formats and architecture."""
    return hashlib.sha256(json.dumps([name, sorted(formats), arch]).encode()).hexdigest()


# -- the artifacts ------------------------------------------------------------------------------

def _items_tar(names: Iterable[str], read: Callable[[str], bytes | None], out: Any) -> list[str]:
    """The items `read(name)` gives (None: left out) as a tar with fixed metadata, sorted by name, read one at
    a time: the same items give the same bytes. The names written, sorted."""
    written: list[str] = []
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            data = read(name)
            if data is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
            written.append(name)
    return written


def _missing(fault: BaseException) -> bool:
    """A 404: the cache was never given this item (a miss, not a fault)."""
    return "(HTTP 404)" in str(fault.cause if isinstance(fault, RegistryFault) else fault)


def _manifest(kind: str, config: bytes, blob_digest: str, blob_size: int, count: int) -> _Document:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)},
        "layers": [{"mediaType": ITEMS_MEDIA_TYPE, "digest": blob_digest, "size": blob_size}],
        "annotations": {"vnd.linuxkit-py.cache.kind": kind, "vnd.linuxkit-py.cache.items": str(count)},
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return _Document("sha256:" + hashlib.sha256(data).hexdigest(), OCI_MANIFEST, data)


def _read_items(path: Path) -> Iterator[tuple[str, bytes]]:
    """The regular files of a verified items tar; ValueError for anything else in it."""
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile() or "/" in member.name or member.name.startswith("."):
                raise ValueError(f"unexpected member {member.name!r} in a cache blob")
            if member.size > MAX_ITEM_BYTES:
                raise ValueError(f"member {member.name!r} of a cache blob is larger than {MAX_ITEM_BYTES} bytes")
            f = tar.extractfile(member)
            if f is None:
                raise ValueError(f"unreadable member {member.name!r} in a cache blob")
            yield member.name, f.read()


@dataclass
class Taken:
    """What --cache-from brought into the local cache, for the build's log line."""

    packages: int = 0
    layers: int = 0
    blocks: int = 0

    def __str__(self) -> str:
        return f"{self.packages} packages, {self.layers} layer indexes, {self.blocks} deflate blocks"


class Fetching:
    """What RegistryBuildCache.fetch started: `indexes()` waits for the layer indexes, calling it for all."""

    def __init__(self, threads: list[threading.Thread], done: Callable[[], None]) -> None:
        self._threads = threads
        self._done = done

    def indexes(self) -> None:
        if self._threads:
            self._threads[0].join()

    def __call__(self) -> None:
        self.join()
        self._done()

    def join(self) -> None:
        """Wait for everything (what came is kept; no line is logged)."""
        for thread in self._threads:
            thread.join()


@dataclass
class RegistryBuildCache:
    """One build's --cache-from and --cache-to; faults on the cache end its use, never the build."""

    cache: Cache
    source: CacheRef | None
    destination: CacheRef | None
    options: RegistryOptions
    taken: Taken = field(default_factory=Taken)
    _failed: set[str] = field(default_factory=set)  # the options whose registry failed once
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.options = dataclasses.replace(self.options, retries=min(self.options.retries, CACHE_RETRIES),
                                           timeout=min(self.options.timeout, CACHE_TIMEOUT), mirrors={},
                                           progress=False)

    def _remote(self, ref: CacheRef) -> Remote:
        return resolve_remote(ref.repository, self.options)

    def _fault(self, option: str, ref: CacheRef, exc: BaseException) -> None:
        cause = exc.cause if isinstance(exc, RegistryFault) else str(exc)
        repository = f"{ref.repository.registry}/{ref.repository.repository}:"
        if cause.startswith(repository):  # a pull's message names the artifact's tag first: the option says it
            cause = cause.split(": ", 1)[-1]
        with self._lock:
            if option in self._failed:
                return
            self._failed.add(option)
        outcome = "building without it" if option == "--cache-from" else "the cache was not pushed"
        log.warning("%s %s: %s; %s", option, ref.text, cause, outcome)

    @contextlib.contextmanager
    def _guard(self, option: str, ref: CacheRef) -> Iterator[None]:
        try:
            yield
        except (RegistryFault, UserError, OSError, ValueError, KeyError, TypeError, tarfile.TarError) as exc:
            self._fault(option, ref, exc)

    def _scratch(self) -> Path:
        """Where fetched blobs wait to be read and pushed ones are packed: beside the derived data, not in the
        OCI layout (a killed build leaves nothing there that `cache verify` reports)."""
        directory = self.cache.derived_dir / "tmp"
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def _usable(self, option: str) -> bool:
        return option not in self._failed

    # -- --cache-from ------------------------------------------------------------------------

    def _fetch_items(self, client: RegistryClient, tag: str, staging: Cache,
                     have: Callable[[list[str]], bool] | None = None) -> tuple[bool, Path | None]:
        """Whether the repository has the artifact `tag`, and its verified items tar (None when it has no such tag,
        or when `have` says the local cache holds every item the artifact's config lists: then nothing is fetched
        but that config)."""
        assert self.source is not None
        remote = self._remote(self.source)
        try:
            document = client.fetch_manifest(remote, tag)
        except RegistryFault as fault:
            if _missing(fault):
                return False, None
            raise
        doc = document.json()
        config, layers = doc.get("config"), doc.get("layers")
        if doc.get("artifactType") != ARTIFACT_TYPE or not isinstance(config, dict) \
                or config.get("mediaType") != CONFIG_MEDIA_TYPE or not isinstance(layers, list) \
                or len(layers) != 1 or layers[0].get("mediaType") != ITEMS_MEDIA_TYPE:
            raise ValueError(f"{tag} is not a linuxkit-py cache artifact")
        if have is not None:
            names = json.loads(staging.read_blob(self._fetch_blob(client, remote, config, tag, staging)))
            if not isinstance(names, dict) or not isinstance(names.get("items"), list):
                raise ValueError(f"{tag}: its config lists no items")
            if have([str(name) for name in names["items"]]):
                return True, None
        return True, staging.blob_path(self._fetch_blob(client, remote, layers[0], tag, staging))

    @staticmethod
    def _fetch_blob(client: RegistryClient, remote: Remote, descriptor: dict[str, Any], tag: str,
                    staging: Cache) -> str:
        """The blob of `descriptor` into `staging`, verified (size and sha256); its digest."""
        digest, size = descriptor.get("digest"), descriptor.get("size")
        if not isinstance(digest, str) or not DIGEST_RE.match(digest) or not isinstance(size, int) \
                or not 0 <= size <= MAX_ITEMS_BYTES:
            raise ValueError(f"{tag} has a bad blob descriptor")
        client.fetch_blob(remote, digest, size, staging, lambda n: None, threading.Event())
        return digest

    def _from(self, jobs: list[Callable[[RegistryClient, Cache], None]]) -> None:
        """Run the fetch `jobs` in parallel, each with a client and a staging cache the blobs are verified into."""
        source = self.source
        if source is None or not jobs or not self._usable("--cache-from"):
            return
        with self._guard("--cache-from", source), RegistryClient(self.options) as client, \
                tempfile.TemporaryDirectory(prefix="cache-from-", dir=self._scratch()) as tmp, \
                concurrent.futures.ThreadPoolExecutor(max(1, self.options.workers)) as pool:
            staging = Cache(Path(tmp), durable=False)  # read once, then removed: nothing to fsync
            staging.ensure()

            def run(job: Callable[[RegistryClient, Cache], None]) -> None:
                if self._usable("--cache-from"):
                    with self._guard("--cache-from", source):
                        job(client, staging)

            for future in [pool.submit(run, job) for job in jobs]:
                future.result()

    def fetch_packages(self, refs: Iterable[str], arch: str) -> None:
        """Bring each built package image the local cache lacks (named `ref` there) from the cache."""
        from linuxkit_py.registry.pull import pull_images

        source = self.source
        missing = [ref for ref in refs if load_cached_image(self.cache, ref, arch) is None]
        if source is None or not missing or not self._usable("--cache-from"):
            return
        with self._guard("--cache-from", source):
            for ref in missing:
                remote_ref = source.ref("pkg", package_key(ref))
                try:
                    pull_images(self.cache, [remote_ref], arch, self.options, pull=True)
                except UserError as exc:
                    if _missing(exc):
                        continue  # never pushed: built here
                    raise
                descriptor = self.cache.get_ref(remote_ref)
                if descriptor is not None:
                    self.cache.set_ref(ref, descriptor)
                    self.cache.remove_ref(remote_ref)
                    self.taken.packages += 1

    def fetch(self, layer_digests: Iterable[str], deflate_keys: list[str]) -> Fetching:
        """Start fetching the layer indexes and deflated blocks the local cache lacks, while the layers are
        unpacked; call the result before compressing: it waits for them and logs one line of what came
        (`indexes()` waits for the layer indexes only).

        A layer unpacked before its index arrives is indexed here as without the option (both are written
        atomically; one made here replaces a fetched one, never the other way), so the race costs time, never
        bytes."""
        source = self.source
        if source is None:
            return Fetching([], lambda: None)
        indexes = threading.Thread(target=self._from, name="cache-from-indexes", daemon=True,
                                   args=(self._layer_jobs(layer_digests),))
        blocks = threading.Thread(target=self._from, name="cache-from-blocks", daemon=True,
                                  args=(self._deflate_jobs(deflate_keys),))
        indexes.start()
        blocks.start()

        def done() -> None:
            if self._usable("--cache-from"):
                log.warning("--cache-from %s: took %s", source.text, self.taken)
        return Fetching([indexes, blocks], done)

    def _layer_jobs(self, layer_digests: Iterable[str]) -> list[Callable[[RegistryClient, Cache], None]]:
        """The member index and SBOM hashes of every layer not indexed locally yet."""
        directory = layers_dir(self.cache)
        wanted = sorted({d.split(":", 1)[1] for d in layer_digests if d.startswith("sha256:")})
        wanted = [h for h in wanted if not (directory / f"{h}.json").exists()
                  or not sbom_hashes_path(self.cache, str(directory / f"{h}.tar")).exists()]

        def job(hexdigest: str) -> Callable[[RegistryClient, Cache], None]:
            def fetch(client: RegistryClient, staging: Cache) -> None:
                assert self.source is not None
                _, blob = self._fetch_items(client, f"{self.source.tag}-layer-{hexdigest}", staging)
                if blob is None:
                    return
                items = dict(_read_items(blob))
                if not _is_index(items[INDEX_ITEM]):
                    raise ValueError(f"layer {hexdigest}: the cached index is not one")
                directory.mkdir(parents=True, exist_ok=True)
                if SBOM_ITEM in items and isinstance(json.loads(items[SBOM_ITEM]), dict):
                    hashes = sbom_hashes_path(self.cache, str(directory / f"{hexdigest}.tar"))
                    hashes.parent.mkdir(parents=True, exist_ok=True)
                    _write_new(hashes, items[SBOM_ITEM])
                for name, data in items.items():
                    if (match := REGION_ITEM_RE.match(name)) is not None and _is_index(data):
                        _write_new(directory / f"{hexdigest}.{match[1]}-{match[2]}.json", data)
                if _write_new(directory / f"{hexdigest}.json", items[INDEX_ITEM]):
                    with self._lock:
                        self.taken.layers += 1
            return fetch

        return [job(h) for h in wanted]

    def _deflate_jobs(self, keys: list[str]) -> list[Callable[[RegistryClient, Cache], None]]:
        """The deflated blocks of the first of `keys` (tag keys, best first) the cache has."""
        blocks = DeflateBlockCache(self.cache.derived_dir / "deflate")

        def have_blocks(names: list[str]) -> bool:
            return all(KEY_RE.match(name) and blocks.has(name) for name in names)

        def fetch(client: RegistryClient, staging: Cache) -> None:
            assert self.source is not None
            for key in keys:
                found, blob = self._fetch_items(client, f"{self.source.tag}-deflate-{key}", staging, have_blocks)
                if not found:
                    continue
                if blob is None:
                    return  # every block is here already (a warm builder): the 100 MB blob is not fetched
                # kept as the one verified file it came in (not a file per block: 783 files to make at 0.5 ms
                # each), once every block in it is checked whole and undamaged under its own key
                had = {key for key, _, _ in pack_members(str(blob)) if blocks.has(key)}
                new = [key for key in blocks.adopt_pack(blob, blob.name) if key not in had]
                with self._lock:
                    self.taken.blocks += len(new)
                return

        return [fetch] if keys else []

    # -- --cache-to --------------------------------------------------------------------------

    def push(self, packages: Iterable[str], layer_digests: Iterable[str], deflate_tags: list[str],
             block_keys: set[str] | None) -> None:
        """Push what this build used; a fault is one warning line."""
        destination = self.destination
        if destination is None:
            return
        with self._guard("--cache-to", destination), RegistryClient(self.options) as client:
            remote = self._remote(destination)
            for ref in packages:
                push_image(self.cache, ref, destination.ref("pkg", package_key(ref)), self.options)
            directory = layers_dir(self.cache)
            for digest in sorted(set(layer_digests)):
                hexdigest = digest.split(":", 1)[1]
                index = directory / f"{hexdigest}.json"
                if not index.is_file():
                    continue
                hashes = sbom_hashes_path(self.cache, str(directory / f"{hexdigest}.tar"))
                files = {INDEX_ITEM: index, SBOM_ITEM: hashes}
                # the indexes of tars inside the layer (a kernel image's kernel.tar): with them a build that
                # leaves the layer packed need not decompress it to place the kernel's modules
                for region in directory.glob(f"{hexdigest}.*-*.json"):
                    if (match := REGION_FILE_RE.match(region.name[len(hexdigest):])) is not None:
                        files[f"region-{match[1]}-{match[2]}.json"] = region
                self._push_artifact(client, remote, "layer", files, functools.partial(_read_item, files),
                                    [f"{destination.tag}-layer-{hexdigest}"])
            if block_keys and deflate_tags:
                blocks = DeflateBlockCache(self.cache.derived_dir / "deflate")
                self._push_artifact(client, remote, "deflate", block_keys, blocks.read_file,
                                    [f"{destination.tag}-deflate-{key}" for key in deflate_tags])

    def _push_artifact(self, client: RegistryClient, remote: Remote, kind: str, names: Iterable[str],
                       read: Callable[[str], bytes | None], tags: list[str]) -> None:
        with tempfile.TemporaryDirectory(prefix="cache-to-", dir=self._scratch()) as tmp:
            blob = Path(tmp) / "items.tar"
            with open(blob, "wb") as f:
                written = _items_tar(names, read, f)
            digest, size = file_sha256_digest(blob), blob.stat().st_size
            # the config lists the items, so that a builder that has them all fetches nothing more
            config = canonical_json({"kind": kind, "version": 1, "items": written})
            config_path = Path(tmp) / "config"
            config_path.write_bytes(config)
            document = _manifest(kind, config, digest, size, len(written))
            _push_blob(client, remote, config_path, json.loads(document.data)["config"]["digest"], len(config),
                       lambda n: None)
            _push_blob(client, remote, blob, digest, size, lambda n: None)
            for tag in tags:
                _put_manifest(client, remote, document, tag)


def _is_index(data: bytes) -> bool:
    """Whether `data` reads as a member index (cache/layers.py checks its rows when it loads it)."""
    try:
        index = json.loads(data)
    except ValueError:
        return False
    return isinstance(index, dict) and isinstance(index.get("entries"), list)


def _read_item(files: dict[str, Path], name: str) -> bytes | None:
    try:
        return files[name].read_bytes()
    except OSError:
        return None


def _write_new(target: Path, data: bytes) -> bool:
    """Write `target` atomically unless it exists (what the local cache has is never replaced); True if written."""
    if target.exists():
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.link(tmp, target)  # fails when another writer (this build's own unpacking) was first
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True


class CacheFromPull(PullHooks):
    """A kernel+initrd build with --cache-from, while its images are pulled: the shared cache is fetched as soon as
    the manifests are known, and the blob of a layer whose index it brings is left until something reads the layer
    (the kernel's too, whose kernel NAME-kernel reads whatever else the cache holds: downloaded while the root
    filesystem is assembled, build.py's prefetch)."""

    def __init__(self, cache: Cache, shared: RegistryBuildCache, images: dict[str, Image],
                 tags: Callable[[dict[str, str]], list[str]], fetches: list[Fetching]) -> None:
        super().__init__(planned=self._planned)
        self._cache, self._shared, self._images = cache, shared, images
        self._tags, self._fetches = tags, fetches  # the build key's tags, given the images; where the fetch goes

    def _planned(self, planned: dict[str, PlannedImage]) -> Callable[[str], bool]:
        every = [layer["digest"] for image in self._images.values() for layer in image.layers]
        fetching = self._shared.fetch([*every, *(layer["digest"] for p in planned.values() for layer in p.layers)],
                                      self._tags({ref: p.digest for ref, p in planned.items()}))
        self._fetches.append(fetching)
        directory = layers_dir(self._cache)

        def left_out(digest: str) -> bool:
            if not digest.startswith("sha256:"):
                return False
            fetching.indexes()
            return (directory / f"{digest.removeprefix('sha256:')}.json").is_file()
        return left_out
