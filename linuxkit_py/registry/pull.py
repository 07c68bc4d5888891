"""Pull images into the cache: root manifest, one platform's manifest, config and layers.

A cached image is used without any network access unless `pull` is set. A pull stores every
blob verified (size and sha256) and names the image in index.json only once all of its blobs
are in place, so the cache never shows a half image. A failed pull deletes nothing: a verified
blob may already be used by another build sharing the cache, and an unreferenced one is
harmless (`cache verify` does not count it as a problem). Blobs are downloaded in parallel,
each one once even when several images, or several builds, share it (a per-blob lock).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from linuxkit_py.arch import normalize_arch, uname_arch
from linuxkit_py.cache.attestation import MAX_STATEMENT, attestation_descriptor, spdx_layers
from linuxkit_py.cache.image import Image, load_cached_image
from linuxkit_py.cache.layout import Cache
from linuxkit_py.cache.platform import INDEX_MEDIA_TYPES, select_platform
from linuxkit_py.errors import RegistryError, UserError
from linuxkit_py.registry.client import (
    DIGEST_RE,
    Document,
    RegistryClient,
    RegistryOptions,
    Remote,
    parse_mirrors,
    resolve_remote,
)
from linuxkit_py.registry.reference import normalize_reference, parse_reference
from linuxkit_py.registry.transport import RegistryFault

__all__ = ["RegistryOptions", "parse_mirrors", "pull_image", "pull_images"]

log = logging.getLogger(__name__)


@dataclass
class _Plan:
    """What one image needs, known once its manifests are fetched."""

    given: str  # the reference as the user wrote it (for messages)
    name: str  # the normalised reference (the cache's ref name)
    remote: Remote
    root: Document  # what the tag or digest names: an index or a manifest
    manifest: Document  # the manifest for the requested platform
    blobs: list[dict[str, Any]]  # config and layer descriptors
    attestation: Document | None = None  # the manifest's SBOM attestation manifest, when the index lists one
    attestation_blobs: list[dict[str, Any]] = field(default_factory=list)  # its SPDX statements (optional)

    @property
    def digests(self) -> set[str]:
        return {self.root.digest, self.manifest.digest, *(b["digest"] for b in self.blobs)}


@dataclass(frozen=True)
class PlannedImage:
    """An image as its manifest tells it, before its blobs are downloaded."""

    digest: str  # the platform manifest's
    config: str  # the config blob's digest
    layers: list[dict[str, Any]]  # the layer descriptors


@dataclass
class PullHooks:
    """What a build learns from a pull while it runs (build.py: --cache-from starts meanwhile)."""

    # Once the manifests are known, before any blob is downloaded: every image by its ref as given (what a build's
    # key is made of). It may answer which layer blobs can be left for later (called from the download threads;
    # it may wait): those are not downloaded, and `later` gets, for each, the function that downloads it.
    planned: Callable[[dict[str, PlannedImage]], Callable[[str], bool] | None] | None = None
    later: dict[str, Callable[[], None]] = field(default_factory=dict)


def pull_image(cache: Cache, ref: str, arch: str, options: RegistryOptions, pull: bool = False) -> Image:
    """The image `ref` for linux/`arch`, from the cache or else pulled into it."""
    return pull_images(cache, [ref], arch, options, pull)[ref]


def pull_images(cache: Cache, refs: list[str], arch: str, options: RegistryOptions, pull: bool = False,
                hooks: PullHooks | None = None) -> dict[str, Image]:
    """Like pull_image for several refs at once (identical refs and shared blobs fetched once).

    `hooks` are told what the pull does while it runs (PullHooks). An image with a blob left for later
    (cache/layers.py fetch_blobs_later) is returned but not named in the cache (index.json names whole images only:
    the next build pulls what it lacks)."""
    arch = normalize_arch(arch)
    names = {given: normalize_reference(given) for given in refs}
    given_for: dict[str, str] = {}
    for given, name in names.items():
        given_for.setdefault(name, given)
    images: dict[str, Image] = {}
    missing: list[tuple[str, str]] = []
    for name, given in given_for.items():
        cached = None if pull else _cached(cache, name, arch)
        if cached is not None:
            images[name] = cached
        else:
            missing.append((given, name))
    if missing:
        hooks = hooks or PullHooks()

        def on_plans(plans: list[_Plan]) -> Callable[[str], bool] | None:
            if hooks.planned is None:
                return None
            known = {name: PlannedImage(image.digest, image.manifest["config"]["digest"], image.layers)
                     for name, image in images.items()}
            known |= {plan.name: PlannedImage(plan.manifest.digest, plan.blobs[0]["digest"], plan.blobs[1:])
                      for plan in plans}
            return hooks.planned({given: known[names[given]] for given in refs})
        images.update(_pull(cache, missing, arch, options, on_plans, hooks))
    return {given: images[names[given]] for given in refs}


def _cached(cache: Cache, name: str, arch: str) -> Image | None:
    try:
        return load_cached_image(cache, name, arch)
    except UserError:
        return None  # e.g. a cached index without this arch: the registry may have a newer one


def _user_error(given: str, exc: BaseException) -> BaseException:
    if isinstance(exc, RegistryFault):
        return RegistryError(f"{given}: {exc.cause}", exc.hint)
    return exc


def _pull(cache: Cache, wanted: list[tuple[str, str]], arch: str, options: RegistryOptions,
          on_plans: Callable[[list[_Plan]], Callable[[str], bool] | None], hooks: PullHooks) -> dict[str, Image]:
    cache.ensure()
    cancelled = threading.Event()
    futures: list[concurrent.futures.Future[Any]] = []
    with RegistryClient(options) as client, \
            concurrent.futures.ThreadPoolExecutor(max(1, options.workers)) as pool:
        try:
            plan_futures = [pool.submit(_plan, client, options, given, name, arch) for given, name in wanted]
            futures.extend(plan_futures)
            plans = []
            for (given, _), future in zip(wanted, plan_futures, strict=True):
                try:
                    plans.append(future.result())
                except BaseException as exc:
                    raise _user_error(given, exc) from None
            left_out = _download(cache, client, pool, plans, options, cancelled, futures, on_plans(plans))
            for plan in plans:
                for blob in plan.blobs[1:]:
                    if blob["digest"] in left_out:
                        hooks.later[blob["digest"]] = _fetch_later(cache, options, plan, blob["digest"], blob["size"])
            return {plan.name: _commit(cache, plan, arch, named=not left_out & plan.digests) for plan in plans}
        except BaseException:
            cancelled.set()
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)
            raise


def _plan(client: RegistryClient, options: RegistryOptions, given: str, name: str, arch: str) -> _Plan:
    """Fetch the root document and the platform manifest (small, kept in memory)."""
    ref = parse_reference(name)
    remote = resolve_remote(ref, options)
    root = client.fetch_manifest(remote, ref.reference)
    if ref.digest and root.digest != ref.digest:
        raise RegistryFault(f"{remote.peer}: manifest {ref.digest} does not match its digest "
                            f"(got {root.digest})")
    manifest = root
    if root.media_type in INDEX_MEDIA_TYPES:
        desc = select_platform(root.json(), arch, given)
        digest = desc.get("digest")
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise RegistryFault(f"{remote.peer}: index entry for linux/{arch} has a bad digest")
        manifest = client.fetch_manifest(remote, digest)
        if manifest.digest != digest or len(manifest.data) != desc.get("size", len(manifest.data)):
            raise RegistryFault(f"{remote.peer}: manifest {digest} does not match its digest "
                                f"(got {manifest.digest}, {len(manifest.data)} bytes)")
        if manifest.media_type in INDEX_MEDIA_TYPES:
            raise RegistryFault(f"{remote.peer}: nested index for linux/{arch} is not supported")
    doc = manifest.json()
    try:
        blobs = [doc["config"], *doc.get("layers", [])]
        for blob in blobs:
            if not DIGEST_RE.match(blob["digest"]) or not isinstance(blob["size"], int) or blob["size"] < 0:
                raise ValueError
    except (KeyError, TypeError, ValueError):
        raise RegistryFault(f"{remote.peer}: manifest {manifest.digest} has a bad config or layer entry") \
            from None
    plan = _Plan(given, name, remote, root, manifest, blobs)
    if root is not manifest:
        _plan_attestation(client, plan)
    return plan


def _plan_attestation(client: RegistryClient, plan: _Plan) -> None:
    """Note the SBOM attestation of the chosen manifest, if the index has one (BuildKit's attestation storage).

    It only feeds the SBOM: a missing or broken attestation is a debug line, never a failed pull."""
    desc = attestation_descriptor(plan.root.json(), plan.manifest.digest)
    digest = desc.get("digest") if desc else None
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        return
    try:
        document = client.fetch_manifest(plan.remote, digest)
        layers = spdx_layers(document.json()) if document.digest == digest else []
    except (RegistryFault, UserError, ValueError) as exc:
        log.debug("%s: no SBOM attestation: %s", plan.given, exc)
        return
    plan.attestation = document
    config = document.json().get("config")  # stored too, so that the cached attestation manifest is whole
    configs = [config] if isinstance(config, dict) and isinstance(config.get("digest"), str) \
        and isinstance(config.get("size"), int) else []
    plan.attestation_blobs = [layer for layer in [*configs, *layers]
                              if DIGEST_RE.match(layer["digest"]) and 0 <= layer["size"] <= MAX_STATEMENT]


def _download(cache: Cache, client: RegistryClient, pool: concurrent.futures.ThreadPoolExecutor,
              plans: list[_Plan], options: RegistryOptions, cancelled: threading.Event,
              futures: list[concurrent.futures.Future[Any]], left_out: Callable[[str], bool] | None) -> set[str]:
    """Fetch every blob the plans need and the cache lacks, each once, in parallel, except the layer blobs
    `left_out` says can wait; those are returned."""
    needed: dict[str, tuple[_Plan, int]] = {}
    optional: set[str] = set()  # SBOM statements: a failure leaves the image without its SBOM
    for plan in plans:
        for blob in [*plan.blobs, *plan.attestation_blobs]:
            if blob["digest"] not in needed and not cache.has_blob(blob["digest"]):
                needed[blob["digest"]] = (plan, blob["size"])
                if blob in plan.attestation_blobs:
                    optional.add(blob["digest"])
    optional -= {blob["digest"] for plan in plans for blob in plan.blobs}
    layers = {blob["digest"] for plan in plans for blob in plan.blobs[1:]}
    waiting: set[str] = set()
    if not needed:
        return waiting
    total = sum(size for _, size in needed.values())
    images = len(plans)
    with progress_bar(options, total, f"pulling {images} image{'s' if images != 1 else ''}") as update:

        def fetch(digest: str, plan: _Plan, size: int) -> None:
            if left_out is not None and digest in layers and left_out(digest):
                waiting.add(digest)
                return
            client.fetch_blob(plan.remote, digest, size, cache, update, cancelled)

        owner = {}
        for digest, (plan, size) in needed.items():
            future = pool.submit(fetch, digest, plan, size)
            owner[future] = (plan, digest)
            futures.append(future)
        for future in concurrent.futures.as_completed(owner):
            exc = future.exception()
            plan, digest = owner[future]
            if exc is not None and digest in optional and not isinstance(exc, KeyboardInterrupt):
                log.debug("%s: SBOM attestation %s not fetched: %s", plan.given, digest, exc)
            elif exc is not None:
                raise _user_error(plan.given, exc) from None
    return waiting


def _fetch_later(cache: Cache, options: RegistryOptions, plan: _Plan, digest: str, size: int) -> Callable[[], None]:
    """What downloads the blob `digest` of `plan` when it is needed after all (a client of its own)."""
    def fetch() -> None:
        with RegistryClient(options) as client:
            try:
                client.fetch_blob(plan.remote, digest, size, cache, lambda n: None, threading.Event())
            except BaseException as exc:
                raise _user_error(plan.given, exc) from None
    return fetch


@contextlib.contextmanager
def progress_bar(options: RegistryOptions, total: int, description: str) -> Iterator[Any]:
    """A byte-count progress bar (on a TTY unless options say) and a thread-safe update(n) for it."""
    from tqdm import tqdm  # 15 ms of imports that only a pull needs

    # No monitor thread (it only tunes how often the bar redraws, and lives on for seconds after the pull):
    # the build forks its SBOM writer only when no other thread runs (build._write_outputs).
    tqdm.monitor_interval = 0
    disable = None if options.progress is None else not options.progress
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=disable,
              desc=description, leave=False) as bar:
        lock = threading.Lock()

        def update(n: int) -> None:
            with lock:
                bar.update(n)

        yield update


def _commit(cache: Cache, plan: _Plan, arch: str, named: bool = True) -> Image:
    """Check the platform, store the manifests and name the image in index.json (last; only when `named`)."""
    config = cache.read_json(plan.blobs[0]["digest"])
    if not isinstance(config, dict):
        raise RegistryError(f"{plan.given}: {plan.remote.peer}: image config is not a JSON object")
    image_arch = config.get("architecture")
    if image_arch and image_arch not in (arch, uname_arch(arch)):
        raise RegistryError(f"{plan.given}: image is for {config.get('os', 'linux')}/{image_arch}, "
                            f"not linux/{arch}", hint="choose another --arch")
    documents = [plan.manifest, plan.root]
    if plan.attestation is not None:
        documents.insert(0, plan.attestation)
    for document in documents:
        if not cache.has_blob(document.digest):
            try:
                cache.write_blob([document.data], document.digest, len(document.data))
            except OSError as exc:
                raise UserError(f"cannot write to cache {cache.root}: {exc.strerror or exc}") from exc
    if named:
        cache.set_ref(plan.name, plan.root.descriptor)
    return Image(ref=plan.name, digest=plan.manifest.digest, manifest=plan.manifest.json(), config=config,
                 root=plan.root.descriptor)
