"""`linuxkit-py build`: spec files -> resolved spec -> images in the cache -> rootfs -> output files."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from linuxkit_py.arch import get_arch, normalize_arch
from linuxkit_py.archive.entry import forget_shared_fields
from linuxkit_py.cache.filehashes import KnownFileHashes
from linuxkit_py.cache.image import Image
from linuxkit_py.cache.layerblob import fetch_blobs_later
from linuxkit_py.cache.layerindex import forget_decoded_indexes
from linuxkit_py.cache.layers import (
    forget_deferred_layers,
    layers_dir,
    prefetch_deferred_layer,
    unpack_images,
)
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.formats import KEPT, AbLayout, Format, FormatOptions, Rootfs, all_formats, get_format
from linuxkit_py.formats.ab import AB_FORMATS
from linuxkit_py.formats.ab import image_entries as ab_image_entries
from linuxkit_py.fsutil import atomic_output, atomic_outputs
from linuxkit_py.pkg.bootassets import fetch_assets
from linuxkit_py.pkg.build import PackageRefs
from linuxkit_py.registry.buildcache import CacheFromPull, CacheRef, Fetching, RegistryBuildCache, latest_deflate_key
from linuxkit_py.registry.pull import RegistryOptions, pull_images
from linuxkit_py.rootfs.assemble import Assembly, assemble, file_sources, metadata_writer
from linuxkit_py.rootfs.kernelfile import DERIVED_SUBDIR as KERNEL_SUBDIR
from linuxkit_py.rootfs.kernelfile import decompressed_kernel
from linuxkit_py.rootfs.reuse import needed_refs, reusable_sections
from linuxkit_py.rootfs.sbom import SBOM_SUFFIX, SbomInput, build_sbom, sbom_entries
from linuxkit_py.sbom.spdx import dumps, write_document
from linuxkit_py.sign import load_signer
from linuxkit_py.spec.load import load_specs, spec_to_yaml
from linuxkit_py.spec.model import Spec
from linuxkit_py.spec.resolve import resolve_spec
from linuxkit_py.tools import require
from linuxkit_py.uptodate import OutputRecords, build_key, context_key

log = logging.getLogger("linuxkit_py")

# Files several formats write with the same bytes (kernel+initrd, kernel+squashfs, kernel+erofs).
SAME_IN_EVERY_FORMAT = frozenset({"-kernel", "-cmdline"})
# Formats that read a file's bytes only to deflate a block the block cache lacks (and the kernel's).
READS_WHAT_MISSES = frozenset({"kernel+initrd", "tar-kernel-initrd"})
SBOM_RECORD = "sbom"  # the name NAME.spdx.json is recorded under beside the formats' (uptodate.py)

# LinuxKit's fixed modification time for generated entries (2017-04-18T16:30:00Z).
DEFAULT_EPOCH = 1492533000


@dataclass
class BuildOptions:
    paths: list[str]
    formats: list[str] = field(default_factory=lambda: ["kernel+initrd"])
    name: str | None = None
    directory: Path = Path("outputs")
    output: str | None = None  # -o FILE or "-": one streamable format
    arch: str | None = None
    pull: bool = False
    cache_dir: Path | None = None
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    dry_run: bool = False
    size: int | None = None  # --size, bytes
    root: str = "ram"  # --root
    input_tar: Path | None = None  # --input-tar: reuse the unchanged sections of this earlier tar output
    decompress_kernel: bool = False  # --decompress-kernel
    sign_key: Path | None = None  # --sign-key/--sign-cert: Secure Boot signing of every EFI binary
    sign_cert: Path | None = None
    verity: bool = False  # --verity: dm-verity over the root image
    ab: bool = False  # --ab: A/B disk layout for raw-efi/qcow2-efi, update bundles (docs/updates.md)
    image_version: str | None = None  # --image-version; default: the build's epoch
    slot_size: int | None = None  # --slot-size, bytes
    sbom: bool = True  # NAME.spdx.json beside the outputs (--no-sbom: none)
    sbom_output: str | None = None  # --sbom-output PATH: the SBOM also in the image at PATH, as LinuxKit puts it
    sbom_current_time: bool = False  # --sbom-current-time: the SBOM's creation time is now, not the epoch
    data_size: int | None = None  # --data-size, bytes: the --ab disk's data partition
    cache_from: CacheRef | None = None  # --cache-from: take what the local cache lacks from this registry cache
    cache_to: CacheRef | None = None  # --cache-to: push what this build used there (registry/buildcache.py)


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible-builds.org), else LinuxKit's fixed time."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return DEFAULT_EPOCH
    try:
        epoch = int(value)
    except ValueError:
        raise UserError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds") from None
    if epoch < 0:
        raise UserError(f"SOURCE_DATE_EPOCH={value!r} is negative")
    return epoch


def parse_size(text: str) -> int:
    """`1G`, `512M`, `300K`, `1024` (bytes) -> bytes, like LinuxKit's --size."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (value[:-1], value[-1]) if value and value[-1] in units else (value, "")
    try:
        size = int(number) * units[unit]
    except ValueError:
        raise UserError(f"--size {text!r}: not a size", hint="e.g. 1G, 512M, 2048K") from None
    if size <= 0:
        raise UserError(f"--size {text!r}: must be positive")
    return size


def default_name(paths: list[str]) -> str:
    """The output base name: the first spec's file name without extension (`moby` for stdin)."""
    first = paths[0]
    if first == "-":
        return "moby"
    base = os.path.basename(first)
    for ext in (".yml", ".yaml"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def _formats(opts: BuildOptions) -> list[Format]:
    names: list[str] = []
    for value in opts.formats:
        names.extend(n for n in value.split(",") if n)
    names = list(dict.fromkeys(names)) or (["tar"] if opts.output else ["kernel+initrd"])
    formats = [get_format(n) for n in names]
    if opts.output is not None and (len(formats) != 1 or not formats[0].streamable):
        raise UserError("-o writes one streamable format (tar or docker)", hint="use --dir for the others")
    owners: dict[str, str] = {}
    for fmt in formats:
        for suffix in fmt.suffixes:
            if suffix in SAME_IN_EVERY_FORMAT:
                continue
            other = owners.setdefault(suffix, fmt.name)
            if other != fmt.name:
                raise UserError(f"formats {other} and {fmt.name} both write NAME{suffix}",
                                hint="build them one at a time or into different --dir")
        for tool in fmt.tools:
            require(tool)
    return formats


def ab_version(opts: BuildOptions, epoch: int) -> str:
    """--image-version, else the build's epoch (so that later builds of CI are newer)."""
    return opts.image_version or str(epoch)


def _ab_layout(opts: BuildOptions, epoch: int) -> AbLayout | None:
    if not opts.ab and "update" not in opts.formats and not any("update" in f.split(",") for f in opts.formats):
        return None
    return AbLayout(version=ab_version(opts, epoch), slot_size=opts.slot_size, data_size=opts.data_size)


def _check_ab(opts: BuildOptions, formats: list[Format]) -> None:
    """--ab is a layout of the EFI disks; the other formats have no slots."""
    if not opts.ab:
        if opts.data_size:
            raise UserError("--data-size is a partition of an --ab disk",
                            hint="add --ab (with -f raw-efi or qcow2-efi)")
        return
    others = [fmt.name for fmt in formats if fmt.name not in AB_FORMATS]
    if others:
        raise UserError(f"--ab: {', '.join(others)} {'has' if len(others) == 1 else 'have'} no A/B layout",
                        hint=f"--ab is for {', '.join(AB_FORMATS)}")
    if opts.root not in ("squashfs", "erofs"):
        raise UserError(f"--ab keeps the root filesystem in a slot: use --root squashfs or erofs, not {opts.root}")


def _check_signing(formats: list[Format]) -> None:
    """--sign-key with formats that write no EFI binary: an error when none does, else a note per format."""
    unsigned = [fmt.name for fmt in formats if not fmt.signs]
    if formats and len(unsigned) == len(formats):
        signed = ", ".join(sorted(fmt.name for fmt in all_formats().values() if fmt.signs))
        raise UserError(f"--sign-key: {', '.join(unsigned)} {'has' if len(unsigned) == 1 else 'have'} no EFI "
                        "binary to sign", hint=f"Secure Boot formats: {signed}")
    for name in unsigned:
        log.warning("--sign-key: %s has no EFI binary; it is written unsigned", name)


def _check_verity(formats: list[Format], opts: BuildOptions) -> None:
    """--verity protects a root image: a one-line error for a format that writes none."""
    from linuxkit_py.formats.bootfiles import ROOT_MEDIA_FORMATS
    from linuxkit_py.formats.rootimage import ROOT_IMAGE_FORMATS

    if not opts.verity:
        return
    for fmt in formats:
        if fmt.name in ROOT_IMAGE_FORMATS or (fmt.name in ROOT_MEDIA_FORMATS and opts.root != "ram"):
            continue
        if fmt.name in ROOT_MEDIA_FORMATS:
            raise UserError(f"--verity: {fmt.name} with --root {opts.root} has no root image to protect",
                            hint="add --root squashfs (or --root erofs)")
        raise UserError(f"--verity: {fmt.name} has no root image to protect",
                        hint="use a disk or ISO format with --root squashfs (e.g. raw-efi), or kernel+squashfs")


def build(opts: BuildOptions) -> list[Path]:
    """Run a build; returns the files written (nothing for --dry-run or -o -)."""
    fetches: list[Fetching] = []  # what --cache-from started
    try:
        return _build(opts, fetches)
    except BaseException:
        for fetching in fetches:
            fetching.join()  # a fetch left running would leave its scratch directory behind
        raise
    finally:
        forget_deferred_layers()  # layers this build left packed are made by the next one that reads them


def _build(opts: BuildOptions, fetches: list[Fetching]) -> list[Path]:
    cache = Cache(opts.cache_dir or default_cache())
    arch = normalize_arch(opts.arch)
    formats = [] if opts.dry_run else _formats(opts)
    for fmt in formats:  # before anything is built or pulled
        fmt.check_arch(arch)
    _check_verity(formats, opts)
    signer = load_signer(opts.sign_key, opts.sign_cert)  # a bad key or certificate stops the build here
    if signer is not None:
        _check_signing(formats)
    _check_ab(opts, formats)
    packages = PackageRefs(cache, arch)
    spec = resolve_spec(load_specs(opts.paths), packages.reference)
    if opts.dry_run:
        sys.stdout.write(spec_to_yaml(spec))
        return []
    shared = RegistryBuildCache(cache, opts.cache_from, opts.cache_to, opts.registry) \
        if opts.cache_from or opts.cache_to else None
    epoch = source_date_epoch()
    metadata = metadata_writer(spec)
    reused = reusable_sections(opts.input_tar, spec, metadata) if opts.input_tar else {}
    if shared is not None:
        shared.fetch_packages(packages.directories, arch)
    images = packages.images(cache, arch)  # `@pkg:` images: built when missing, never pulled
    refs = [ref for ref in needed_refs(spec, reused) if ref not in images]
    assets = fetch_assets(cache, get_arch(arch), [name for fmt in formats for name in fmt.assets])
    name = opts.name or default_name(opts.paths)

    def deflate_tags_of(digests: dict[str, str]) -> list[str]:
        return [_build_key(opts, spec, digests, arch, epoch, formats, assets, SHARED_NOT_IN_KEY),
                latest_deflate_key(name, [fmt.name for fmt in formats], arch)] if shared is not None else []

    # Outputs that read only the kernel and the bytes of the deflate blocks the cache lacks leave a layer they
    # have the index of (from --cache-from) packed until something reads it (cache/layers.py, defer_layer).
    defer = bool(formats) and all(fmt.name in READS_WHAT_MISSES for fmt in formats)
    hooks = CacheFromPull(cache, shared, images,
                          lambda digests: deflate_tags_of(_digests(images) | digests), fetches) \
        if shared is not None and opts.cache_from is not None and defer else None
    images |= pull_images(cache, refs, arch, opts.registry, opts.pull, hooks)
    if hooks is not None:
        fetch_blobs_later(hooks.later)
    records = None if opts.output is not None or opts.input_tar else _output_records(
        opts, cache, spec, images, arch, epoch, formats, assets)
    layer_digests = [layer["digest"] for image in images.values() for layer in image.layers]
    deflate_tags = deflate_tags_of(_digests(images))
    # an SBOM dated now in the image: new bytes; --cache-to pushes the blocks of the outputs, known once written
    todo = [fmt for fmt in formats if records is None or not records.up_to_date(fmt.name, _targets(opts, name, fmt))
            or (opts.sbom_output and opts.sbom_current_time) or opts.cache_to is not None]
    for target in (t for fmt in formats if fmt not in todo for t in _targets(opts, name, fmt)):
        log.warning("%s: up to date", target)
    sbom_target = opts.directory / f"{name}{SBOM_SUFFIX}"
    # the SBOM is an output like a format's (dated now with --sbom-current-time: then always written again)
    sbom_todo = opts.sbom and opts.output is None and (
        records is None or opts.sbom_current_time or not records.up_to_date(SBOM_RECORD, [sbom_target]))
    if opts.sbom and opts.output is None and not sbom_todo:
        log.warning("%s: up to date", sbom_target)
    if not todo and not sbom_todo:
        for started in fetches:
            started()  # nothing outlives the build
        if shared is not None:
            shared.push(packages.directories, layer_digests, [], None)
        return []
    if shared is not None and not fetches:
        fetches.append(shared.fetch(layer_digests, deflate_tags if todo else []))
    fetched = fetches[0] if fetches else None
    if fetched is not None and defer:
        fetched.indexes()
    # every image's layers decompressed and indexed in parallel; their files hashed for the SBOM meanwhile,
    # unless a shared cache brings those hashes
    unpack_images(cache, images.values(), hash_files=opts.sbom and shared is None, defer=defer)
    forget_shared_fields()  # of the entries of the layers indexed just now, which are gone (5 MiB at 10x)
    # the kernel's layer left packed is read for NAME-kernel whatever else hits: its kernel (only the head of the tar,
    # when the kernel is in it) read meanwhile, on a thread joined before the SBOM's writer is forked (fork() copies
    # only the thread that calls it)
    kernel = images.get(spec.kernel.get("image") or "") if fetched is not None and defer else None
    binary = str(spec.kernel.get("binary") or "kernel").strip("/")
    prefetch = [t for layer in (kernel.layers if kernel else [])
                if (t := prefetch_deferred_layer(cache, layer, binary)) is not None]
    entries = assemble(Assembly(spec, images, cache, metadata, reused))
    forget_decoded_indexes()  # placed: the layers' own entries are not needed again
    if opts.decompress_kernel:
        entries = decompressed_kernel(entries, cache.derived_dir)
    if opts.ab or any(fmt.name == "update" for fmt in formats):
        entries = [*entries, *ab_image_entries(ab_version(opts, epoch), arch, signer, epoch)]
    sbom = SbomInput(name, int(time.time()) if opts.sbom_current_time else epoch, spec, images, entries, cache,
                     arch, _sbom_version(opts, epoch)) if opts.sbom else None
    in_image = dumps(build_sbom(sbom)) if sbom is not None and opts.sbom_output else None
    if in_image is not None and opts.sbom_output:
        entries = [*entries, *sbom_entries(opts.sbom_output, in_image, entries)]
    if fetched is not None:
        fetched()  # the deflated blocks, fetched while the layers were unpacked
    for thread in prefetch:
        thread.join()  # before the SBOM's writer is forked (build._write_outputs: one thread only)
    rootfs = Rootfs(entries, epoch, compression_cache=cache.derived_dir / "deflate",
                    compression_keys=set() if opts.cache_to else None,
                    content_addressed=(layers_dir(cache), cache.derived_dir / KERNEL_SUBDIR),
                    known_sha256=KnownFileHashes(cache).sha256s,
                    options=FormatOptions(size=opts.size, root=opts.root, arch=arch, assets=assets, signer=signer,
                                          verity=opts.verity, ab=_ab_layout(opts, epoch)))
    if opts.output is not None:
        streamed = _write_stream(formats[0], rootfs, opts.output)
        if shared is not None:
            shared.push(packages.directories, layer_digests, deflate_tags, rootfs.compression_keys)
        return streamed
    written = _write_outputs(opts, name, formats, todo, rootfs, records,
                             sbom if sbom_todo else None, sbom_target, in_image)
    if shared is not None:
        shared.push(packages.directories, layer_digests, deflate_tags, rootfs.compression_keys)
    return written


def _write_outputs(opts: BuildOptions, name: str, formats: list[Format], todo: list[Format], rootfs: Rootfs,
                   records: OutputRecords | None, sbom: SbomInput | None, sbom_target: Path,
                   in_image: bytes | None) -> list[Path]:
    """Each format's files that are not up to date, and NAME.spdx.json when `sbom` is given.

    The SBOM is pure Python work on its own: it is written by a child process while the formats are
    written (a second core does it), into a temporary file renamed into place only when every format
    succeeded, as when it was written after them."""
    written: list[Path] = []
    with contextlib.ExitStack() as stack:
        sbom_file = stack.enter_context(atomic_output(sbom_target)) if sbom is not None else None
        child = None
        if sbom is not None and sbom_file is not None:
            if in_image is not None:
                sbom_file.write(in_image)
            elif threading.active_count() == 1:  # fork() copies only this thread: no lock can be held by another
                child = stack.enter_context(_in_child(lambda: _write_sbom(sbom, sbom_file)))
        _write_formats(opts, name, formats, todo, rootfs, records, written)
        if sbom is not None and sbom_file is not None and in_image is None:
            if child is not None:
                child.wait()
            else:
                _write_sbom(sbom, sbom_file)
    if sbom is not None:
        written.append(sbom_target)
        if records is not None:
            records.record(SBOM_RECORD, [sbom_target])
    return written


def _write_sbom(sbom: SbomInput, f: BinaryIO) -> None:
    write_document(build_sbom(sbom), f)
    f.flush()  # in a child, before os._exit: what is still buffered would be lost


class _Child:
    def __init__(self, pid: int, errors: int) -> None:
        self.pid, self.errors, self.done = pid, errors, False

    def wait(self) -> None:
        """Wait for the child; its error, if it had one, is raised here as a one-line UserError."""
        if self.done:
            return
        with os.fdopen(self.errors, "rb") as f:
            message = f.read().decode("utf-8", "replace")
        _, status = os.waitpid(self.pid, 0)
        self.done = True
        if status != 0:
            raise UserError(message or f"the SBOM writer stopped with status {status}")


@contextlib.contextmanager
def _in_child(work: Callable[[], None]) -> Iterator[_Child]:
    """Run `work` in a forked child; the caller waits for it (`wait()`), or on an error of its own leaves the
    block and the child is waited for here, so that no process outlives the build."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: do the work, report a failure through the pipe, never return
        status = 0
        try:
            os.close(read_end)
            work()
            sys.stdout.flush()
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
            os.write(write_end, (str(exc) or type(exc).__name__).encode("utf-8", "replace")[:4096])
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    child = _Child(pid, read_end)
    try:
        yield child
    finally:
        if not child.done:
            with contextlib.suppress(UserError):
                child.wait()


def _write_formats(opts: BuildOptions, name: str, formats: list[Format], todo: list[Format], rootfs: Rootfs,
                   records: OutputRecords | None, written: list[Path]) -> None:
    digests: dict[str, list[str | None]] = {}  # format -> what each of its files is made of (Format.input_digests)
    for fmt in todo:
        targets = _targets(opts, name, fmt)
        kept = [False] * len(targets)
        if records is not None and fmt.input_digests is not None:
            digests[fmt.name] = fmt.input_digests(rootfs)
            if opts.cache_to is None:  # its blocks are pushed: written again
                kept = records.kept(fmt.name, targets, digests[fmt.name])
        for target in (t for t, k in zip(targets, kept, strict=True) if k):
            log.warning("%s: up to date", target)
        rewrite = [t for t, k in zip(targets, kept, strict=True) if not k]
        log.info("writing %s: %s", fmt.name, ", ".join(str(t) for t in rewrite))
        with atomic_outputs(rewrite) as files:
            opened = iter(files)
            fmt.write(rootfs, [KEPT if k else next(opened) for k in kept])
        written.extend(rewrite)
    if records is not None:  # every format's: a file two formats share may have been rewritten
        for fmt in formats:
            if fmt.name not in digests and fmt.input_digests is not None:
                digests[fmt.name] = fmt.input_digests(rootfs)
            records.record(fmt.name, _targets(opts, name, fmt), digests.get(fmt.name))


def _sbom_version(opts: BuildOptions, epoch: int) -> str | None:
    """The image's version in its SBOM: that of an A/B image or update bundle."""
    return ab_version(opts, epoch) if opts.ab or "update" in ",".join(opts.formats).split(",") else None


def _targets(opts: BuildOptions, name: str, fmt: Format) -> list[Path]:
    return [opts.directory / f"{name}{suffix}" for suffix in fmt.suffixes]


def _output_records(opts: BuildOptions, cache: Cache, spec: Spec, images: dict[str, Image], arch: str, epoch: int,
                    formats: list[Format], assets: dict[str, Path]) -> OutputRecords:
    """The records of earlier outputs, keyed by every input of this build (linuxkit_py/uptodate.py).
    Every option counts except those that cannot change a byte: a new option is in the key by default."""
    options, files = _key_inputs(opts, arch, epoch, formats, assets, NOT_IN_KEY)
    return OutputRecords(cache.derived_dir / "outputs",
                         build_key(spec, _digests(images), options, files, file_sources(spec)),
                         context_key(options, files))


# Options that cannot change an output byte: how images are found (their digests count) and cached.
NOT_IN_KEY = ("registry", "pull", "cache_dir", "dry_run", "cache_from", "cache_to")
# The key of the deflated blocks shared with other builders: where the outputs go is not in it either.
SHARED_NOT_IN_KEY = (*NOT_IN_KEY, "paths", "directory", "output")


def _key_inputs(opts: BuildOptions, arch: str, epoch: int, formats: list[Format], assets: dict[str, Path],
                leave_out: tuple[str, ...]) -> tuple[dict[str, object], dict[str, Path | None]]:
    """The options and files a build key is made of (with the spec and the images)."""
    options = {k: v for k, v in asdict(opts).items() if k not in leave_out}
    options |= {"arch name": arch, "epoch": epoch, "format names": [fmt.name for fmt in formats]}
    files = {f"asset {n}": p for n, p in assets.items()} | {"sign-key": opts.sign_key, "sign-cert": opts.sign_cert}
    files |= {f"tool {t}": Path(require(t)) for fmt in formats for t in fmt.tools}
    return options, files


def _digests(images: dict[str, Image]) -> dict[str, str]:
    return {ref: image.digest for ref, image in images.items()}


def _build_key(opts: BuildOptions, spec: Spec, images: dict[str, str], arch: str, epoch: int,
               formats: list[Format], assets: dict[str, Path], leave_out: tuple[str, ...]) -> str:
    return build_key(spec, images, *_key_inputs(opts, arch, epoch, formats, assets, leave_out), file_sources(spec))


def _write_stream(fmt: Format, rootfs: Rootfs, output: str) -> list[Path]:
    if output == "-":
        fmt.write(rootfs, [sys.stdout.buffer])
        sys.stdout.buffer.flush()
        return []
    target = Path(output)
    with atomic_outputs([target]) as files:
        fmt.write(rootfs, files)
    return [target]


def default_cache() -> Path:
    from linuxkit_py.cache.layout import default_cache_dir

    return default_cache_dir()
