"""Uncompressed layer tars in the cache, and their persisted entry indexes.

`<cache>/linuxkit-py/layers/<hex>.tar` is the layer blob `sha256:<hex>` decompressed;
`<hex>.json` lists its members (offsets into that tar; cache/layerindex.py), so a warm build neither
decompresses nor re-parses a layer. Both are written atomically under a per-layer lock.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from linuxkit_py.archive.entry import (
    ContentReader,
    Entry,
    FileRegion,
    Kind,
    forget_made_on_read,
    make_on_read,
    open_content,
    read_before_made,
)
from linuxkit_py.archive.tarindex import (
    DEFAULT_MAX_ENTRIES,
    MAX_ENTRIES_ENV,
    env_limit,
    read_growing_tar_entries,
    read_tar_entries,
    read_tar_head_entries,
    read_tar_region,
)
from linuxkit_py.cache.filehashes import hash_layer_files, sbom_hashes_path
from linuxkit_py.cache.image import Image
from linuxkit_py.cache.layerblob import (
    CORRUPT_LAYER_ERRORS,
    decompressed_chunks,
    forget_blobs_later,
    layer_compression,
    open_layer_blob,
)
from linuxkit_py.cache.layerindex import PACKED_TARS, load_entry_index, save_entry_index
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.fsutil import replace_synced

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# Layers unpacked at once: gunzip, zstd, sha256 and file writes release the GIL, so a cold
# cache unpacks about twice as fast on 2 cores; more threads than cores only add contention.
UNPACK_WORKERS = max(1, min(4, os.cpu_count() or 1))

# A layer's uncompressed size is capped so that a decompression bomb (a small gzip or zstd
# blob inflating to terabytes) stops with an error instead of filling the cache's disk.
MAX_LAYER_SIZE_ENV = "LINUXKIT_PY_MAX_LAYER_SIZE"
DEFAULT_MAX_LAYER_SIZE = 16 << 30  # the largest real layers (CUDA, ML stacks) are a few GiB

def layers_dir(cache: Cache) -> Path:
    return cache.derived_dir / "layers"


def _hex(layer: dict[str, Any]) -> str:
    digest = layer["digest"]
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise UserError(f"unsupported layer digest {digest!r}")
    return digest.split(":", 1)[1]


@contextlib.contextmanager
def _layer_lock(directory: Path, hexdigest: str) -> Iterator[None]:
    """Exclusive per-layer lock, so that concurrent builds unpack and index a layer once."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        f = open(directory / f"{hexdigest}.lock", "a+b")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UserError(f"cannot write to the cache directory {directory}: {exc.strerror}") from exc
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _decompress(cache: Cache, layer: dict[str, Any], target: Path, diff_id: str | None,
                indexed: list[list[Entry]] | None = None) -> None:
    """Decompress the layer blob into `target`, checking its diff_id. With `indexed`, the tar is also
    indexed while it is written (its entries are appended to `indexed`): read_growing_tar_entries parses
    the temporary file on a second thread as the inflated bytes reach it. Parsing holds the GIL, inflating,
    hashing and writing do not, so a cold layer costs about the longer of the two instead of their sum."""
    digest = layer["digest"]
    blob = open_layer_blob(cache, digest)
    sha = hashlib.sha256()
    limit = env_limit(MAX_LAYER_SIZE_ENV, DEFAULT_MAX_LAYER_SIZE)

    def hashed(chunks: Iterator[bytes]) -> Iterator[bytes]:
        total = 0
        for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise UserError(f"layer {digest}: uncompressed size exceeds the limit of {limit} bytes "
                                f"(set by {MAX_LAYER_SIZE_ENV}); refusing it")
            sha.update(chunk)
            yield chunk

    def check_diff_id() -> None:
        got = "sha256:" + sha.hexdigest()
        if diff_id is not None and got != diff_id:
            raise ValueError(f"its uncompressed content has digest {got}, the image config says {diff_id}")

    with blob:
        try:
            compression = layer_compression(layer.get("mediaType"), blob.read(4))
            blob.seek(0)
            chunks = hashed(decompressed_chunks(blob, compression))
            if indexed is None:
                replace_synced(target, chunks, check_diff_id)
            else:
                indexed.append(_write_indexing(target, chunks, check_diff_id, f"layer {digest}"))
        except CORRUPT_LAYER_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise UserError(f"cannot unpack layer {digest} into {target.parent}: {exc.strerror}") from exc
            raise UserError(f"layer {digest} is corrupt: {exc}",
                            hint="remove it from the cache and pull again") from exc


class _Growing:
    """How much of a file being written is there (the writer's side and the reader's)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.written = 0
        self.done = False
        self.failed = False  # the reader gave up: the writer stops

    def wrote(self, n: int) -> None:
        with self._cond:
            self.written += n
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.done = True
            self._cond.notify_all()

    def available(self, needed: int) -> int:
        with self._cond:
            while self.written < needed and not self.done:
                self._cond.wait()
            return self.written


def _write_indexing(target: Path, chunks: Iterator[bytes], check: Callable[[], None], label: str) -> list[Entry]:
    """replace_synced of `chunks`, indexing the tar on a second thread meanwhile; the index, once both are done."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    growing = _Growing()
    parsed: list[list[Entry]] = []
    failure: list[BaseException] = []

    def parse() -> None:
        try:
            reader = os.open(tmp, os.O_RDONLY)
            try:
                parsed.append(read_growing_tar_entries(reader, str(target), label, growing.available))
            finally:
                os.close(reader)
        except BaseException as exc:  # noqa: BLE001 - raised on the writer's thread below
            failure.append(exc)
            growing.failed = True

    parser = threading.Thread(target=parse, name=f"index {target.name[:12]}", daemon=True)
    parser.start()
    try:
        try:
            for chunk in chunks:
                if growing.failed:
                    break  # the tar is refused: its error is raised below
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                growing.wrote(len(chunk))
        finally:
            growing.finish()
            parser.join()
        if failure:
            raise failure[0]
        os.fsync(fd)
        check()
        os.fchmod(fd, 0o644)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return parsed[0]


def unpacked_layer(cache: Cache, layer: dict[str, Any], diff_id: str | None = None) -> Path:
    """The uncompressed tar of the cached layer `layer` (a manifest descriptor), decompressing it once.

    `diff_id` (from the image config's rootfs.diff_ids) is checked when the tar is made.
    """
    hexdigest = _hex(layer)
    directory = layers_dir(cache)
    target = directory / f"{hexdigest}.tar"
    if target.is_file():
        return target
    with _layer_lock(directory, hexdigest):
        if not target.is_file():  # another build may have finished it while we waited
            _decompress(cache, layer, target, diff_id)
    return target


def layer_tar_path(cache: Cache, layer: dict[str, Any]) -> Path:
    return layers_dir(cache) / f"{_hex(layer)}.tar"


# -- layers left packed until read ------------------------------------------------------------------
#
# A build whose outputs read only some files (kernel+initrd: the kernel and the bytes of deflate blocks the
# block cache lacks) need not decompress a layer whose index it already has, from `--cache-from`: the
# layer is left packed (its blob is in the cache) and decompressed, its diff_id checked, the first time
# something opens its tar (archive/entry.py, make_on_read). Its tar must then have the size its index
# says, or the build stops with an error naming the layer (and the index is removed: the next build
# makes its own). The file a build is known to read (the kernel, in the head of its image's tar, before a
# 90 MB kernel.tar) is read without that when it lies in the first half of the tar: the blob (its digest
# checked when pulled) is decompressed up to the file's end only, into memory, and every tar header up to
# the file is parsed: a regular file of that size must be where the index says. The layer's diff_id is
# then checked by the build that first makes the whole tar.

_DEFERRED_LOCK = threading.Lock()
HEAD_MAX = 64 << 20  # the most of a packed layer's tar decompressed into memory for a file in its head
_PACKED: dict[str, _Packed] = {}  # tar path -> the layer left packed


class _Packed:
    def __init__(self, cache: Cache, layer: dict[str, Any], diff_id: str | None) -> None:
        self.cache, self.layer, self.diff_id = cache, layer, diff_id
        self.tar = layer_tar_path(cache, layer)
        self.index = self.tar.with_suffix(".json")
        self.failed: list[UserError] = []  # raised to every reader, not only the first
        self.file: FileRegion | None = None  # the file read from the head of the tar (read_head)
        self.head: int | None = None  # an anonymous file holding the head, up to the end of `file`; read there

    def _mismatch(self, made: Path, what: str) -> UserError:
        """Fail for an index (from --cache-from) that does not fit the layer's tar, and remove the index."""
        with contextlib.suppress(OSError):
            made.unlink()
        which = "its index" if made == self.index else \
            f"the index of the tar at {made.name[len(self.tar.stem) + 1:-len('.json')]} in it"
        self.failed.append(UserError(f"layer {self.layer['digest']}: {which} (from --cache-from) {what}",
                                     hint="the index was removed: build again"))
        return self.failed[0]

    def make(self) -> None:
        with _DEFERRED_LOCK:  # one decompression at a time: the reader that asked waits for it either way
            if self.failed:
                raise self.failed[0]
            if self.tar.exists():
                return
            log.info("layer %s: decompressing it now (first read)", self.layer["digest"])
            unpacked_layer(self.cache, self.layer, self.diff_id)
            size = self.tar.stat().st_size
            # its own index, and those of tars inside it (region_entries), all made of the tar of that size
            for made in [self.index, *self.tar.parent.glob(f"{self.tar.stem}.*-*.json")]:
                try:
                    expected = json.loads(made.read_bytes()).get("tar_size")
                except (OSError, ValueError, AttributeError):
                    expected = None
                if expected != size:
                    raise self._mismatch(made, f"is of a {expected}-byte tar, the layer's is {size} bytes")

    def read_from_head(self, file: FileRegion) -> bool:
        """Have bytes of `file` (a file's data in the tar, from its index) read from the head of the tar: True
        if it lies in the first half of the tar (and HEAD_MAX), else its reads make the whole tar."""
        try:
            tar_size = int(json.loads(self.index.read_bytes()).get("tar_size"))
        except (OSError, ValueError, TypeError, AttributeError):
            return False
        end = file.offset + file.size
        if file.size <= 0 or end > HEAD_MAX or end > tar_size // 2:
            return False
        self.file = file
        read_before_made(str(self.tar), self.read_head)
        return True

    def read_head(self, offset: int, size: int) -> int | None:
        file = self.file
        if file is None or not file.offset <= offset <= offset + size <= file.offset + file.size:
            return None  # not the file: the whole tar is made for it
        with _DEFERRED_LOCK:
            if self.failed:
                raise self.failed[0]
            if self.tar.exists():
                return None
            if self.head is None:
                self._read_head(file)
            return self.head

    def _read_head(self, file: FileRegion) -> None:
        digest, end = self.layer["digest"], file.offset + file.size
        log.info("layer %s: decompressing its first %d bytes now (first read)", digest, end)
        fd = os.memfd_create("layer-head", os.MFD_CLOEXEC)
        try:
            have = _decompress_head(self.cache, self.layer, end, fd)
            try:  # the headers up to the file's, as the index of the whole tar would have them
                entries = read_tar_head_entries(fd, str(self.tar), f"layer {digest}", have, file.offset)
                why = ""
            except UserError as exc:
                entries, why = [], f" ({exc})"
            if not entries or entries[-1].kind is not Kind.FILE or entries[-1].data != file:
                raise self._mismatch(self.index, f"places a {file.size}-byte file at byte {file.offset} of its tar, "
                                                 f"which has none there{why}")
        except BaseException:
            os.close(fd)
            raise
        self.head = fd

    def close(self) -> None:
        if self.head is not None:
            os.close(self.head)
            self.head = None


def _decompress_head(cache: Cache, layer: dict[str, Any], end: int, fd: int) -> int:
    """Write the first `end` bytes of the layer's tar (all, if it is shorter) to `fd`; how many it wrote."""
    have = 0
    try:
        with open_layer_blob(cache, layer["digest"]) as blob:
            compression = layer_compression(layer.get("mediaType"), blob.read(4))
            blob.seek(0)
            chunks = decompressed_chunks(blob, compression)
            for chunk in chunks:
                with memoryview(chunk) as view:
                    while view:
                        view = view[os.write(fd, view):]
                have += len(chunk)
                if have >= end:
                    break
            chunks.close()
    except CORRUPT_LAYER_ERRORS as exc:
        raise UserError(f"layer {layer['digest']} is corrupt: {exc}",
                        hint="remove it from the cache and pull again") from exc
    return have


def defer_layer(cache: Cache, layer: dict[str, Any], diff_id: str | None) -> bool:
    """Leave `layer` packed until its tar is read, when its index is here and its tar is not; True if so."""
    tar = layer_tar_path(cache, layer)
    if tar.exists() or not tar.with_suffix(".json").is_file():
        return False
    packed = _PACKED[str(tar)] = _Packed(cache, layer, diff_id)
    PACKED_TARS.add(str(tar))
    make_on_read(str(tar), packed.make)
    return True


def prefetch_deferred_layer(cache: Cache, layer: dict[str, Any], name: str | None = None) -> threading.Thread | None:
    """Start reading a layer left packed that the build is known to read (the kernel's), on a thread of its own,
    while the build goes on: its file `name` if given (from the head of the tar, when the file lies there), else
    the whole tar. None if it is not left packed. A failure is raised to whoever reads it, not here."""
    path = str(layer_tar_path(cache, layer))
    packed = _PACKED.get(path)
    if packed is None:
        return None
    files = [entry.data for entry in (layer_entries(cache, layer) if name is not None else [])
             if entry.path == name and isinstance(entry.data, FileRegion)]
    file = files[-1] if files and packed.read_from_head(files[-1]) else None

    def prefetch() -> None:
        with contextlib.suppress(Exception):
            if file is not None:
                with ContentReader() as reader:
                    for _ in reader.chunks(file):
                        pass
            else:
                os.close(open_content(path))

    thread = threading.Thread(target=prefetch, name=f"prefetch {layer['digest'][7:19]}", daemon=True)
    thread.start()
    return thread


def forget_deferred_layers() -> None:
    PACKED_TARS.clear()
    forget_blobs_later()
    forget_made_on_read()
    while _PACKED:
        _PACKED.popitem()[1].close()


def layer_entries(cache: Cache, layer: dict[str, Any], diff_id: str | None = None) -> list[Entry]:
    """The members of a cached layer as Entries (in tar order) with FileRegion data into its unpacked tar."""
    hexdigest = _hex(layer)
    directory = layers_dir(cache)
    tar_path = directory / f"{hexdigest}.tar"
    index_path = directory / f"{hexdigest}.json"
    entries = load_entry_index(index_path, tar_path)
    if entries is not None:
        _check_entry_limit(entries, layer)  # indexed by an earlier build, maybe under a higher limit
        return entries
    with _layer_lock(directory, hexdigest):
        entries = load_entry_index(index_path, tar_path)  # another build may have indexed it while we waited
        if entries is not None:
            return entries
        if tar_path.is_file():
            entries = read_tar_entries(tar_path, f"layer {layer['digest']}")
        else:  # cold: unpacked and indexed together
            indexed: list[list[Entry]] = []
            _decompress(cache, layer, tar_path, diff_id, indexed)
            entries = indexed[0]
        try:
            save_entry_index(index_path, tar_path, entries)
        except OSError as exc:
            raise UserError(f"cannot write {index_path}: {exc.strerror}") from exc
    return entries


def region_entries(cache: Cache, region: FileRegion, label: str) -> list[Entry]:
    """The members of a tar stored inside an unpacked layer (a kernel image's kernel.tar), parsed once: the
    index is kept beside the layer's own (`<hex>.<offset>-<size>.json`), as immutable as the layer."""
    tar = Path(region.path)
    if tar.parent != layers_dir(cache) or tar.suffix != ".tar":
        return read_tar_region(region, label)
    index_path = tar.with_name(f"{tar.stem}.{region.offset}-{region.size}.json")
    entries = load_entry_index(index_path, tar)
    if entries is None:
        entries = read_tar_region(region, label)
        with contextlib.suppress(OSError):
            save_entry_index(index_path, tar, entries)
    return entries


def _check_entry_limit(entries: list[Entry], layer: dict[str, Any]) -> None:
    limit = env_limit(MAX_ENTRIES_ENV, DEFAULT_MAX_ENTRIES)
    if len(entries) > limit:
        raise UserError(f"layer {layer['digest']}: more than {limit} entries (set by {MAX_ENTRIES_ENV}); "
                        "refusing it")


def image_layers(image: Image) -> list[tuple[dict[str, Any], str | None]]:
    """(layer descriptor, diff_id or None) for each layer of `image`, bottom first."""
    layers = image.layers
    diff_ids: list[str | None] = list((image.config.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(layers):
        diff_ids = [None] * len(layers)
    return list(zip(layers, diff_ids, strict=True))


def unpack_layers(cache: Cache, layers: Iterable[tuple[dict[str, Any], str | None]],
                  workers: int | None = None, hash_files: bool = False, load: bool = True,
                  defer: bool = False) -> dict[str, list[Entry]]:
    """layer_entries() of every (layer, diff_id), several layers at a time; keyed by layer digest.

    Cold layers are decompressed, checked and indexed in parallel (largest first, so the
    longest job starts first); warm ones only load their index, and not even that without `load`
    (then their entries are []). With `hash_files`, each layer's files are also hashed for the SBOM
    (hash_layer_files) once it is indexed. With `defer`, a layer with an index but no tar is left packed
    until read (defer_layer; its entries are []).
    """
    unique: dict[str, tuple[dict[str, Any], str | None]] = {}
    for layer, diff_id in layers:
        unique.setdefault(layer["digest"], (layer, diff_id))
    jobs = sorted(unique.values(), key=lambda job: -int(job[0].get("size") or 0))
    workers = UNPACK_WORKERS if workers is None else workers

    def job(layer: dict[str, Any], diff_id: str | None) -> list[Entry]:
        tar = layer_tar_path(cache, layer)
        hashed = not hash_files or sbom_hashes_path(cache, str(tar)).exists()
        if not load and hashed and tar.is_file() and tar.with_suffix(".json").is_file():
            return []  # unpacked and indexed already: whoever needs its entries loads them
        if defer and hashed and defer_layer(cache, layer, diff_id):
            return []  # indexed, left packed until read
        entries = layer_entries(cache, layer, diff_id)
        if hash_files:
            hash_layer_files(cache, tar, entries)
        return entries if load else []  # not kept for the caller: at 10x all layers' entries are 60 MiB

    if workers <= 1 or len(jobs) <= 1:
        return {layer["digest"]: job(layer, diff_id) for layer, diff_id in jobs}
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix="unpack") as pool:
        futures = {layer["digest"]: pool.submit(job, layer, diff_id) for layer, diff_id in jobs}
        try:
            return {digest: future.result() for digest, future in futures.items()}
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise


def unpack_images(cache: Cache, images: Iterable[Image], workers: int | None = None, hash_files: bool = False,
                  defer: bool = False) -> None:
    """Unpack and index the layers of all `images` in parallel, before they are flattened one by one (a layer
    unpacked and indexed already is left as it is: its index is loaded when an image needs it). With
    `defer`, a layer whose index is here but not its tar is left packed until something reads it."""
    unpack_layers(cache, [pair for image in images for pair in image_layers(image)], workers, hash_files,
                  load=False, defer=defer)
