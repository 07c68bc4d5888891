"""Command line: `linuxkit-py [global options] build|cache|pkg|run|serve|completion|version`.

User errors -> one line on stderr, exit 1. LinuxKit's global options (--cache, --mirror, --cert-file, -v N, -q)
may come before the verb; LinuxKit's one-dash long options (`-mem 2048`) are read as `--mem 2048`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from linuxkit_py import __version__
from linuxkit_py.cliparse import (
    VERBOSITY_LEVELS,
    go_bool_options,
    is_argument,
    option_strings,
    parsers,
    single_dash_long_options,
    switch_strings,
    verbosity,
)
from linuxkit_py.completion import SHELLS, completion_script
from linuxkit_py.errors import UserError
from linuxkit_py.pkg.cli import add_pkg_parser, add_shared_cache_options, run_pkg_command, shared_cache_refs
from linuxkit_py.run.cli import add_run_parser, run_command
from linuxkit_py.run.metadata import write_metadata_iso
from linuxkit_py.serve import DEFAULT_ADDRESS, serve_directory

if TYPE_CHECKING:
    from collections.abc import Callable

    from linuxkit_py.cache.layout import Cache
    from linuxkit_py.registry.pull import RegistryOptions

log = logging.getLogger("linuxkit_py")

# Verbs whose arguments may come after their options (and between them): verb -> the list they go to.
TRAILING_ARGUMENTS = {"build": "files", "run": "target", "pkg": "dirs"}


def _add_cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", type=Path, default=None,
                   help="image cache directory, an OCI layout (default: $LINUXKIT_CACHE or ~/.cache/linuxkit-py)")


def _add_registry_options(p: argparse.ArgumentParser, mirror: bool = True) -> None:
    if mirror:  # mirrors serve pulls only
        p.add_argument("--mirror", action="append", default=[], metavar="[REGISTRY=]URL",
                       help="pull REGISTRY's images from URL; a bare URL serves every registry without a mirror "
                            "of its own (repeatable; also $LINUXKIT_MIRROR)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                   help="allow plain http for this registry (loopback registries always may)")
    p.add_argument("--cert-file", action="append", default=[], metavar="FILE",
                   help="extra CA certificate(s) to trust for registries")


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    """LinuxKit's persistent flags, written before the verb; a verb's own --cache or --mirror also works."""
    parser.add_argument("-v", "--verbose", type=verbosity, default=None, metavar="N",
                        help="log level: 0 errors, 1 info, 2 debug, 3 trace (default: warnings; -vv is -v 2)")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")
    parser.add_argument("--cache", dest="global_cache", type=Path, default=None, metavar="DIR",
                        help="image cache directory, for every verb that has one")
    parser.add_argument("--mirror", dest="global_mirror", action="append", default=[], metavar="[REGISTRY=]URL",
                        help="pull REGISTRY's images from URL; a bare URL serves every registry without a mirror")
    parser.add_argument("--cert-file", dest="global_cert_file", action="append", default=[], metavar="FILE",
                        help="extra CA certificate(s) to trust for registries")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linuxkit-py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build outputs from one or more spec files")
    b.add_argument("files", nargs="+", metavar="SPEC", help="YAML spec file(s), merged in order; - for stdin")
    b.add_argument("-f", "--format", action="append", default=[], dest="formats",
                   help="output format (repeatable or comma-separated; default kernel+initrd, tar with -o)")
    b.add_argument("--name", help="output base name (default: the first spec's name)")
    b.add_argument("--dir", type=Path, default=None, help="output directory (default: outputs)")
    b.add_argument("-o", "--o", dest="output", metavar="FILE",
                   help="write one streamable format to FILE (- for stdout); --o is LinuxKit's spelling")
    b.add_argument("--arch", help="target architecture: amd64/x86_64, arm64/aarch64 (default: host)")
    b.add_argument("--pull", action="store_true", help="always pull images, even when cached")
    add_shared_cache_options(b)
    b.add_argument("--input-tar", metavar="FILE", help="reuse the unchanged sections of the tar FILE an earlier "
                   "build wrote (needs a files: entry with metadata:); their images are not pulled")
    b.add_argument("--decompress-kernel", action="store_true",
                   help="write the kernel decompressed (vmlinux), as LinuxKit's --decompress-kernel")
    b.add_argument("--docker", action="store_true", help="accepted for LinuxKit; no Docker is needed or used")
    b.add_argument("--no-sbom", action="store_true", help="write no SBOM (default: NAME.spdx.json, SPDX 2.3)")
    b.add_argument("--sbom-output", metavar="PATH", help="also put the SBOM into the image at PATH "
                   "(LinuxKit's place for it is sbom.spdx.json)")
    b.add_argument("--sbom-current-time", action="store_true",
                   help="date the SBOM now instead of the build's epoch (not reproducible)")
    b.add_argument("--sign-key", type=Path, metavar="KEY.pem",
                   help="sign every EFI binary with this RSA key (PEM) for Secure Boot; needs --sign-cert")
    b.add_argument("--sign-cert", type=Path, metavar="CERT.pem", help="the X.509 certificate of --sign-key (PEM)")
    b.add_argument("--ab", action="store_true", help="raw-efi/qcow2-efi: an A/B disk (systemd-boot, two root slots, "
                   "boot counting) that pkg/update updates from `-f update` bundles; implies --root squashfs")
    b.add_argument("--image-version", metavar="VERSION", help="the version of an --ab image or update bundle "
                   "(dotted numbers; default: the build's epoch, $SOURCE_DATE_EPOCH)")
    b.add_argument("--slot-size", metavar="SIZE", help="--ab: size of each root slot (default: twice the root image)")
    b.add_argument("--data-size", metavar="SIZE", help="--ab: add a data partition of SIZE (ext4, mounted on "
                   "/var/lib/data; updates never write it)")
    b.add_argument("--verity", action="store_true",
                   help="protect the root image with dm-verity (with --root squashfs|erofs, kernel+squashfs/erofs)")
    b.add_argument("--dry-run", action="store_true", help="print the merged, resolved spec and stop")
    b.add_argument("--max-layer-size", metavar="SIZE",
                   help="refuse a layer that inflates beyond SIZE, e.g. 16G (default 16G; $LINUXKIT_PY_MAX_LAYER_SIZE)")
    b.add_argument("--max-layer-entries", metavar="N",
                   help="refuse a layer with more than N entries (default 1000000; $LINUXKIT_PY_MAX_LAYER_ENTRIES)")
    b.add_argument("--size", help="disk image size, e.g. 1G or 512M (default: what fits plus headroom)")
    b.add_argument("--root", choices=("ram", "squashfs", "erofs"), default=None,
                   help="ISO and disk formats: boot from an initrd in RAM (default), or keep the root "
                        "filesystem on the medium as squashfs/erofs (for images larger than memory)")
    _add_cache_option(b)
    _add_registry_options(b)

    c = sub.add_parser("cache", help="inspect or clean the image cache")
    csub = c.add_subparsers(dest="cache_command", required=True)
    for name, text in (("ls", "list cached images"), ("clean", "remove every cached image")):
        _add_cache_option(csub.add_parser(name, help=text))
    verify = csub.add_parser("verify", help="check every blob's digest and every image reference "
                             "(one line per problem, exit 1 if any)")
    verify.add_argument("--repair", action="store_true",
                        help="remove broken blobs, stale temp files and refs to missing blobs")
    _add_cache_option(verify)
    rm = csub.add_parser("rm", help="remove cached image(s) by reference")
    rm.add_argument("refs", nargs="+", metavar="REF")
    _add_cache_option(rm)
    push = csub.add_parser("push", help="push a cached image (every platform it has) to its registry")
    push.add_argument("ref", metavar="REF")
    push.add_argument("--remote-name", metavar="REF", help="push it under this name instead (another registry, "
                      "repository or tag)")
    _add_cache_option(push)
    _add_registry_options(push, mirror=False)
    _add_cache_archive_parsers(csub)

    add_pkg_parser(sub)
    add_run_parser(sub)
    serve = sub.add_parser("serve", help="serve a directory over HTTP (e.g. outputs for iPXE), as `linuxkit serve`")
    serve.add_argument("--port", default=DEFAULT_ADDRESS, metavar="[HOST]:PORT",
                       help=f"address to listen on (default {DEFAULT_ADDRESS}: every interface, as LinuxKit)")
    serve.add_argument("--directory", type=Path, default=Path("."), help="directory to serve (default .)")
    completion = sub.add_parser("completion", help="print a shell completion script: "
                                "eval \"$(linuxkit-py completion bash)\"")
    completion.add_argument("shell", choices=SHELLS)
    completion.add_argument("--no-descriptions", action="store_true", help="accepted for LinuxKit (cobra); "
                            "the scripts have no descriptions")
    metadata = sub.add_parser("metadata", help="manage ISO metadata (LinuxKit's `metadata create`)")
    msub = metadata.add_subparsers(dest="metadata_command", required=True)
    create = msub.add_parser("create", help="write an ISO holding DATA as /config, for pkg/metadata's cdrom "
                                            "provider (the same DATA gives the same bytes)")
    create.add_argument("iso", type=Path, metavar="FILE.iso")
    create.add_argument("data", metavar="DATA")
    keys = sub.add_parser("keys", help="Secure Boot keys (docs/trust.md)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kcreate = ksub.add_parser("create", help="make a new PK/KEK/db set in DIR: keys, certificates, EFI signature "
                              "lists, .auth files and OVMF/AAVMF variable stores with them enrolled")
    kcreate.add_argument("directory", type=Path, metavar="DIR")
    kcreate.add_argument("--name", default="linuxkit-py", help="common name prefix of the certificates "
                         "(default linuxkit-py: 'linuxkit-py PK', ...)")
    kcreate.add_argument("--days", type=int, default=3650, help="validity of the certificates (default 3650)")
    update = sub.add_parser("update", help="A/B update bundles (docs/updates.md)")
    usub = update.add_subparsers(dest="update_command", required=True)
    upush = usub.add_parser("push", help="push NAME.update (`build -f update`) to a registry as an OCI artifact, "
                            "for `update apply oci://REGISTRY/REPO:TAG` on a device")
    upush.add_argument("bundle", type=Path, metavar="NAME.update")
    upush.add_argument("ref", metavar="REGISTRY/REPO[:TAG]")
    _add_registry_options(upush, mirror=False)
    sub.add_parser("version", help="print the version")
    _add_persistent_log_options(parser)
    return parser


def _add_persistent_log_options(parser: argparse.ArgumentParser) -> None:
    """-v N and -q after the verb too (`linuxkit build -v 2 ...`, LinuxKit's persistent flags); a verb's parser
    sets them only when given (SUPPRESS), so the values written before the verb stay otherwise."""
    for path, p in parsers(parser):
        if path:
            p.add_argument("-v", "--verbose", type=verbosity, default=argparse.SUPPRESS, metavar="N",
                           help="log level 0-3, as before the verb")
            p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="errors only")


def _registry_options(args: argparse.Namespace) -> RegistryOptions:
    from linuxkit_py.registry.pull import RegistryOptions, parse_mirrors

    return RegistryOptions(
        mirrors=parse_mirrors(args.mirror, os.environ.get("LINUXKIT_MIRROR")) if "mirror" in args else {},
        insecure=frozenset(args.insecure_registry),
        ca_files=tuple(args.cert_file),
    )


def _option_values() -> dict[str, list[str]]:
    """Values the completion scripts offer for options whose choices argparse does not know."""
    from linuxkit_py.arch import ARCH_ALIASES
    from linuxkit_py.formats import all_formats

    levels = ["0", "1", "2", "3"]
    return {"--format": sorted(all_formats()), "-f": sorted(all_formats()), "--arch": sorted(ARCH_ALIASES),
            "-v": levels, "--verbose": levels}


def _cmd_build(args: argparse.Namespace) -> int:
    from linuxkit_py.build import BuildOptions, build, parse_size
    from linuxkit_py.formats.ab import check_version

    # The limits live in the environment so that every layer reader (also in worker threads) sees them.
    if args.max_layer_size:
        os.environ["LINUXKIT_PY_MAX_LAYER_SIZE"] = args.max_layer_size
    if args.max_layer_entries:
        os.environ["LINUXKIT_PY_MAX_LAYER_ENTRIES"] = args.max_layer_entries
    if args.output is not None and (args.name or args.dir):
        raise UserError("-o cannot be combined with --name or --dir")
    if args.docker:
        print("linuxkit-py: --docker: no Docker needed; images come from the cache and registries",
              file=sys.stderr)
    if args.input_tar is not None:
        _check_input_tar(Path(args.input_tar), args.output, args.pull)
    cache_from, cache_to = shared_cache_refs(args)
    opts = BuildOptions(
        paths=args.files,
        formats=args.formats,
        name=args.name,
        directory=args.dir or Path("outputs"),
        output=args.output,
        arch=args.arch,
        pull=args.pull,
        cache_dir=args.cache,
        registry=_registry_options(args),
        dry_run=args.dry_run,
        size=parse_size(args.size) if args.size else None,
        root=args.root or ("squashfs" if args.ab or "update" in ",".join(args.formats).split(",") else "ram"),
        input_tar=Path(args.input_tar) if args.input_tar else None,
        decompress_kernel=args.decompress_kernel,
        sign_key=args.sign_key,
        sign_cert=args.sign_cert,
        verity=args.verity,
        ab=args.ab,
        image_version=check_version(args.image_version) if args.image_version is not None else None,
        slot_size=parse_size(args.slot_size) if args.slot_size else None,
        sbom=not args.no_sbom,
        sbom_output=args.sbom_output,
        sbom_current_time=args.sbom_current_time,
        data_size=parse_size(args.data_size) if args.data_size else None,
        cache_from=cache_from,
        cache_to=cache_to,
    )
    for path in build(opts):
        log.warning("wrote %s", path)
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from linuxkit_py.sign.keys import create_keys

    if args.days < 1:
        raise UserError(f"--days {args.days}: must be at least 1")
    keys = create_keys(args.directory, args.name, args.days)
    for path in keys.written:
        log.warning("wrote %s", path)
    log.warning("sign with: linuxkit-py build --sign-key %s --sign-cert %s ...", keys.directory / "db.key",
                keys.directory / "db.crt")
    return 0


def _check_input_tar(input_tar: Path, output: str | None, pull: bool) -> None:
    """LinuxKit's --input-tar rules, checked before anything is written (so the input stays intact)."""
    if pull:
        raise UserError("cannot use --input-tar and --pull together")
    if output not in (None, "-") and (os.path.realpath(input_tar) == os.path.realpath(output) or (
            input_tar.exists() and Path(output).exists() and input_tar.samefile(output))):
        raise UserError("--input-tar and the output file cannot be the same", hint="write the new tar elsewhere")
    if not input_tar.is_file():
        raise UserError(f"--input-tar {input_tar}: no such file")


def _add_cache_archive_parsers(csub: Any) -> None:
    """`cache export`, `cache import`, `cache pull`: LinuxKit's verbs and flags (docs/compatibility.md)."""
    platform_help = "linux/ARCH: which image of a multi-platform reference (default: the host's)"
    export = csub.add_parser("export", help="write a cached image as an OCI or docker-archive tar")
    export.add_argument("ref", metavar="REF")
    export.add_argument("--outfile", "-o", dest="outfile", metavar="FILE", help="where to write it (- for stdout)")
    export.add_argument("--format", dest="archive_format", choices=("oci", "docker", "filesystem"), default="oci",
                        help="oci (an OCI layout tar, skopeo's oci-archive:), docker (docker-archive:, "
                             "`docker load`) or filesystem (the flattened root filesystem tar); default oci")
    export.add_argument("--platform", metavar="linux/ARCH", help=platform_help)
    export.add_argument("--name", help="the name the archive gives the image (default: REF, normalised)")
    _add_cache_option(export)
    imp = csub.add_parser("import", help="add an OCI-archive or docker-archive tar's images to the cache")
    imp.add_argument("file", metavar="FILE", help="the tar (- for stdin)")
    imp.add_argument("--name", metavar="REF", help="name its (only) image REF instead of the names it carries")
    _add_cache_option(imp)
    pull = csub.add_parser("pull", help="pull image(s) into the cache, replacing what it had under the name")
    pull.add_argument("refs", nargs="+", metavar="REF")
    pull.add_argument("--platform", metavar="linux/ARCH", help=platform_help)
    _add_cache_option(pull)
    _add_registry_options(pull)


def _platform_arch(text: str | None) -> str:
    """`linux/arm64` (or `arm64`, `linux/arm64/v8`) -> arm64; default the host's."""
    from linuxkit_py.arch import normalize_arch

    if not text:
        return normalize_arch(None)
    parts = text.split("/")
    if len(parts) > 1 and parts[0] != "linux":
        raise UserError(f"--platform {text}: only linux images exist here", hint="e.g. linux/amd64")
    return normalize_arch(parts[1] if len(parts) > 1 else parts[0])


def _archive_name(text: str) -> str | None:
    """A name found in an imported archive as a cache reference, or None for a bare tag such as `latest`."""
    from linuxkit_py.registry.reference import normalize_reference

    if "/" not in text and ":" not in text:
        return None
    try:
        return normalize_reference(text)
    except UserError:
        return None


def _cmd_cache_archive(cache: Cache, args: argparse.Namespace) -> int:
    from linuxkit_py.registry.reference import normalize_reference

    if args.cache_command == "pull":
        from linuxkit_py.registry.pull import pull_image

        arch = _platform_arch(args.platform)
        for ref in args.refs:
            image = pull_image(cache, ref, arch, _registry_options(args), pull=True)
            root = cache.get_ref(image.ref) or {}
            print(f"{image.ref}\t{root.get('digest', image.digest)}", flush=True)  # as `cache ls` shows it
    elif args.cache_command == "import":
        from linuxkit_py.cache.archive_import import import_archive

        name = normalize_reference(args.name) if args.name else None
        if args.file == "-":
            imported = import_archive(cache, sys.stdin.buffer, "stdin", _archive_name, name)
        else:
            try:
                f = open(args.file, "rb")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise UserError(f"cannot read {args.file}: {exc.strerror}") from None
            with f:
                imported = import_archive(cache, f, args.file, _archive_name, name)
        for named in imported:
            print(f"{named.name}\t{named.digest}")
    elif args.cache_command == "export":
        _cache_export(cache, args, normalize_reference(args.ref))
    return 0


def _cache_export(cache: Cache, args: argparse.Namespace, ref: str) -> None:
    from linuxkit_py.cache.export import export_image
    from linuxkit_py.fsutil import atomic_output

    if not args.outfile:
        raise UserError("cache export needs --outfile FILE (or -o FILE; - for stdout)")
    arch = _platform_arch(args.platform)
    if args.archive_format == "filesystem":
        write = _filesystem_export(cache, ref, arch)
    else:
        def write(out: BinaryIO) -> None:
            export_image(cache, ref, out, arch=arch, fmt=args.archive_format, name=args.name)
    if args.outfile == "-":
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        with atomic_output(Path(args.outfile)) as out:
            write(out)


def _filesystem_export(cache: Cache, ref: str, arch: str) -> Callable[[BinaryIO], None]:
    """`--format filesystem`: the image's layers flattened (whiteouts applied) as one tar."""
    from linuxkit_py.archive.tar import write_tar
    from linuxkit_py.cache.image import load_cached_image
    from linuxkit_py.cache.layers import unpack_images
    from linuxkit_py.rootfs.flatten import flatten_image

    image = load_cached_image(cache, ref, arch)
    if image is None:
        raise UserError(f"{ref} is not in the cache for linux/{arch}", hint=f"linuxkit-py cache pull {ref}")
    unpack_images(cache, [image])

    def write(out: BinaryIO) -> None:
        write_tar(flatten_image(cache, image), out, 0)
    return write


def _cmd_cache(args: argparse.Namespace) -> int:
    from linuxkit_py.cache.layout import Cache, default_cache_dir
    from linuxkit_py.registry.reference import normalize_reference

    cache = Cache(args.cache or default_cache_dir())
    if args.cache_command in ("export", "import", "pull"):
        return _cmd_cache_archive(cache, args)
    if args.cache_command == "ls":
        for name, desc in cache.refs():
            print(f"{name}\t{desc.get('digest', '')}")
    elif args.cache_command == "rm":
        status = 0
        for ref in args.refs:
            name = normalize_reference(ref)
            if not cache.remove_ref(name):
                print(f"linuxkit-py: {name} is not in the cache", file=sys.stderr)
                status = 1
        return status
    elif args.cache_command == "clean":
        cache.clean()
    elif args.cache_command == "verify":
        from linuxkit_py.cache.verify import verify_cache

        report = verify_cache(cache, repair=args.repair)
        for line in report.problems:
            print(line)
        for line in report.repaired:
            print(f"repaired: {line}")
        if report.repaired:
            report = verify_cache(cache)  # what is still wrong after the repair
            for line in report.problems:
                print(f"still: {line}")
        return 1 if report.problems else 0
    elif args.cache_command == "push":
        from linuxkit_py.registry.push import push_image
        from linuxkit_py.registry.reference import parse_reference

        destination = parse_reference(args.remote_name or args.ref)
        digest = push_image(cache, args.ref, str(destination), _registry_options(args))
        print(dataclasses.replace(destination, digest=digest))  # the pushed image, pinned
    return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse as LinuxKit reads a command line: globals before the verb, arguments and options in any order."""
    args, extra = parser.parse_known_args(argv)
    trailing = TRAILING_ARGUMENTS.get(args.command)
    if extra and trailing and all(map(is_argument, extra)):
        setattr(args, trailing, [*getattr(args, trailing), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(w for w in extra if not is_argument(w)) or extra[0]}")
    if args.quiet and args.verbose:
        parser.error("-q and -v N (N > 0) cannot be used together")
    # The global options, merged with the verb's own (which win for --cache, add to the lists).
    if "cache" in args and args.cache is None:
        args.cache = args.global_cache
    if "mirror" in args:
        args.mirror = [*args.global_mirror, *args.mirror]
    if "cert_file" in args:
        args.cert_file = [*args.global_cert_file, *args.cert_file]
    args.argv = argv
    return args


def _log_level(args: argparse.Namespace) -> int:
    if args.quiet:
        return logging.ERROR
    return logging.WARNING if args.verbose is None else VERBOSITY_LEVELS[args.verbose]


# A build makes hundreds of thousands of small objects (entries, their regions, tar headers) and frees them by
# reference counting; hardly any is in a cycle. At CPython's default threshold (700 allocations) the cyclic
# collector ran 230 times in a one-edit rebuild of the benchmark workload, 82 ms of a 0.8 s build; once
# per 100,000 allocations it does not run at all there, and cycles are still collected.
GC_THRESHOLDS = (100_000, 20, 100)
# How long a thread running Python keeps the GIL from one waiting for it (CPython's default: 5 ms). A thread
# streaming a blob gives the GIL up three times a MiB (recv, sha256, write) and, beside a thread assembling the
# rootfs, waited up to that long each time: a `--cache-from` build's 133 MB of blocks took 0.6 s instead of 0.25 s
# (docs/benchmarks.md, "the interpreter lock handed over sooner").
SWITCH_INTERVAL = 0.0005


def tune_gc() -> None:
    """Collect cycles less often (GC_THRESHOLDS), and never look again at what exists so far (modules,
    parsers); hand the GIL over sooner (SWITCH_INTERVAL): for the command's own process only."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the program's own process (not a caller's, whose objects freezing would keep)
        tune_gc()
    parser = _parser()
    argv = single_dash_long_options(list(sys.argv[1:] if argv is None else argv), option_strings(parser))
    argv = go_bool_options(argv, switch_strings(parser))
    args = _parse(parser, argv)
    logging.basicConfig(level=_log_level(args), format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "build":
            return _cmd_build(args)
        if args.command == "cache":
            return _cmd_cache(args)
        if args.command == "pkg":
            return run_pkg_command(args)
        if args.command == "run":
            return run_command(args)
        if args.command == "metadata":
            write_metadata_iso(args.iso, args.data.encode())
            return 0
        if args.command == "keys":
            return _cmd_keys(args)
        if args.command == "update":
            from linuxkit_py.registry.artifact import push_bundle

            print(f"{args.ref.split('@')[0]}@{push_bundle(args.bundle, args.ref, _registry_options(args))}")
            return 0
        if args.command == "serve":
            return serve_directory(args.directory, args.port)
        if args.command == "completion":
            sys.stdout.write(completion_script(args.shell, parser, _option_values(), {"run": ["qemu"]}))
            return 0
        if args.command == "version":
            print(f"linuxkit-py {__version__}")
            return 0
    except UserError as exc:
        print(f"linuxkit-py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("linuxkit-py: interrupted", file=sys.stderr)
        return 130
    return 2
