"""`linuxkit-py pkg build [--push REGISTRY] DIR...` and `linuxkit-py pkg show-tag DIR...`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from linuxkit_py.pkg.linuxkit_pkg import TagOptions
    from linuxkit_py.registry.buildcache import CacheRef

log = logging.getLogger("linuxkit_py")


def add_shared_cache_options(p: argparse.ArgumentParser) -> None:
    """--cache-from and --cache-to (BuildKit's names) of `build` and `pkg build`: registry/buildcache.py."""
    p.add_argument("--cache-from", metavar="REF", help="take what the local cache lacks (built packages, layer "
                   "indexes, deflated blocks) from the registry cache REF: REGISTRY/REPO[:TAG] or "
                   "type=registry,ref=REGISTRY/REPO[:TAG]; a fault on it is a warning")
    p.add_argument("--cache-to", metavar="REF", help="after the build, push what it used to the registry cache REF")


def shared_cache_refs(args: argparse.Namespace) -> tuple[CacheRef | None, CacheRef | None]:
    """--cache-from and --cache-to, checked before anything is built."""
    from linuxkit_py.registry.buildcache import parse_cache_ref

    return (parse_cache_ref(args.cache_from, "--cache-from") if args.cache_from else None,
            parse_cache_ref(args.cache_to, "--cache-to") if args.cache_to else None)


def add_pkg_parser(subparsers: Any) -> None:
    """Add the `pkg` verb and its subcommands to the main parser's subparsers."""
    p = subparsers.add_parser("pkg", help="build images from package definitions (DIR/build.yml)")
    sub = p.add_subparsers(dest="pkg_command", required=True)
    build = sub.add_parser("build", help="build each package's image into the cache (skipped when it is there)")
    build.add_argument("dirs", nargs="+", metavar="DIR", help="package directory holding build.yml")
    build.add_argument("--force", action="store_true", help="build even when the cache has the image")
    build.add_argument("--push", metavar="REGISTRY", help="then push each image as REGISTRY/<image>:<tag>, "
                       "e.g. 127.0.0.1:5000 or ghcr.io/me (credentials: ~/.docker/config.json)")
    add_shared_cache_options(build)
    build.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                       help="allow plain http for this registry (loopback registries always may)")
    build.add_argument("--cert-file", action="append", default=[], metavar="FILE",
                       help="extra CA certificate(s) to trust for registries")
    show = sub.add_parser("show-tag", help="print each package's image name and tag (downloads nothing)")
    show.add_argument("dirs", nargs="+", metavar="DIR", help="package directory holding build.yml")
    _add_show_tag_options(show)
    for parser in (build, show):
        parser.add_argument("--arch", action="append", default=[], metavar="ARCH[,ARCH]",
                            help="architecture(s) to build for: amd64, arm64 (repeatable or comma-separated; "
                                 "default: the host's); several make one multi-platform image (an OCI index). "
                                 "Another architecture's Debian packages come through a private apt state in "
                                 "the cache: no setup on the host")
        parser.add_argument("--platforms", dest="arch", action="append", metavar="linux/ARCH[,linux/ARCH]",
                            help="LinuxKit's spelling of --arch")
        parser.add_argument("--cache", type=Path, default=None,
                            help="cache directory (default: $LINUXKIT_CACHE or ~/.cache/linuxkit-py); "
                                 "Debian packages are kept in its linuxkit-py/debs/")


def _add_show_tag_options(show: argparse.ArgumentParser) -> None:
    """LinuxKit's `pkg show-tag` flags; all but --canonical apply to LinuxKit packages only (docs/packages.md)."""
    show.add_argument("--canonical", action="store_true", help="print the canonical name, e.g. "
                      "docker.io/linuxkit/foo:1234 rather than linuxkit/foo:1234")
    show.add_argument("--org", help="LinuxKit packages: override build.yml's org (default: $LINUXKIT_PKG_ORG)")
    show.add_argument("--hash", default="", help="LinuxKit packages: use this hash instead of git's")
    show.add_argument("--tag", default="", help="LinuxKit packages: tag template (default: build.yml's tag, "
                      "else {{.Hash}})")
    show.add_argument("--hash-commit", default="HEAD", help="LinuxKit packages: the commit to hash")
    show.add_argument("--hash-path", help="LinuxKit packages: hash this directory (a prefix of DIR) instead")
    show.add_argument("--force-dirty", action="store_true", help="LinuxKit packages: as if the tree were modified")
    show.add_argument("--dev", action="store_true", help="LinuxKit packages: org $USER, hash dev")


def _tag_options(args: argparse.Namespace) -> TagOptions:
    from linuxkit_py.pkg.linuxkit_pkg import ORG_ENV, TagOptions

    return TagOptions(org=args.org or os.environ.get(ORG_ENV) or None, hash=args.hash, tag=args.tag,
                      hash_commit=args.hash_commit, hash_path=args.hash_path, force_dirty=args.force_dirty,
                      dev=args.dev)


def run_pkg_command(args: argparse.Namespace) -> int:
    """Run a parsed `pkg` command; UserErrors propagate to the caller (one line, exit 1)."""
    from linuxkit_py.arch import normalize_arch
    from linuxkit_py.cache.layout import Cache, default_cache_dir
    from linuxkit_py.pkg.build import build_package, package_name, plan_package
    from linuxkit_py.registry.buildcache import RegistryBuildCache
    from linuxkit_py.registry.client import RegistryOptions
    from linuxkit_py.registry.push import push_image, registry_destination

    cache = Cache(args.cache or default_cache_dir())
    arches = [a.strip().removeprefix("linux/") for text in args.arch for a in text.split(",") if a.strip()] or None
    if args.pkg_command == "show-tag":
        from linuxkit_py.pkg.linuxkit_pkg import expand_reference

        names = [package_name(directory, cache, arches, _tag_options(args)) for directory in args.dirs]
        for name in names:  # any error stops the run before anything is printed, as LinuxKit
            print(expand_reference(name) if args.canonical else name, flush=True)
        return 0
    if args.push:  # a bad REGISTRY fails before anything is built
        registry_destination(args.push, "linuxkit-py/check")
    options = RegistryOptions(insecure=frozenset(args.insecure_registry), ca_files=tuple(args.cert_file))
    cache_from, cache_to = shared_cache_refs(args)
    shared = RegistryBuildCache(cache, cache_from, cache_to, options) if cache_from or cache_to else None
    for directory in args.dirs:
        if shared is not None and not args.force and len(arches or [None]) == 1:  # one platform: `build`'s case
            arch = normalize_arch(arches[0] if arches else None)
            shared.fetch_packages([plan_package(directory, cache, arches=arches).ref], arch)
        built = build_package(cache, directory, force=args.force, arches=arches)
        if shared is not None:
            shared.push([built.plan.ref], [], [], None)
        if built.built:
            log.warning("built %s %s", built.plan.ref, built.digest)
        else:
            log.warning("%s is already in the cache (%s)", built.plan.ref, built.digest)
        if args.push:
            destination = registry_destination(args.push, built.plan.name)
            log.warning("pushed %s %s", destination, push_image(cache, built.plan.ref, destination, options))
        print(built.plan.name, flush=True)
    return 0
