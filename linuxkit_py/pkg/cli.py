"""`linuxkit-py pkg build [--push REGISTRY] DIR...` and `linuxkit-py pkg show-tag DIR...`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("linuxkit_py")


def add_pkg_parser(subparsers: Any) -> None:
    """Add the `pkg` verb and its subcommands to the main parser's subparsers."""
    p = subparsers.add_parser("pkg", help="build images from package definitions (DIR/build.yml)")
    sub = p.add_subparsers(dest="pkg_command", required=True)
    build = sub.add_parser("build", help="build each package's image into the cache (skipped when it is there)")
    build.add_argument("dirs", nargs="+", metavar="DIR", help="package directory holding build.yml")
    build.add_argument("--force", action="store_true", help="build even when the cache has the image")
    build.add_argument("--push", metavar="REGISTRY", help="then push each image as REGISTRY/<image>:<tag>, "
                       "e.g. 127.0.0.1:5000 or ghcr.io/me (credentials: ~/.docker/config.json)")
    build.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                       help="allow plain http for this registry (loopback registries always may)")
    build.add_argument("--cert-file", action="append", default=[], metavar="FILE",
                       help="extra CA certificate(s) to trust for registries")
    show = sub.add_parser("show-tag", help="print each package's image name and tag (downloads nothing)")
    show.add_argument("dirs", nargs="+", metavar="DIR", help="package directory holding build.yml")
    for parser in (build, show):
        parser.add_argument("--cache", type=Path, default=None,
                            help="cache directory (default: $LINUXKIT_CACHE or ~/.cache/linuxkit-py); "
                                 "Debian packages are kept in its linuxkit-py/debs/")


def run_pkg_command(args: argparse.Namespace) -> int:
    """Run a parsed `pkg` command; UserErrors propagate to the caller (one line, exit 1)."""
    from linuxkit_py.cache.layout import Cache, default_cache_dir
    from linuxkit_py.pkg.build import build_package, plan_package
    from linuxkit_py.registry.client import RegistryOptions
    from linuxkit_py.registry.push import push_image, registry_destination

    cache = Cache(args.cache or default_cache_dir())
    if args.pkg_command == "show-tag":
        for directory in args.dirs:
            print(plan_package(directory, cache).name, flush=True)
        return 0
    if args.push:  # a bad REGISTRY fails before anything is built
        registry_destination(args.push, "linuxkit-py/check")
        options = RegistryOptions(insecure=frozenset(args.insecure_registry), ca_files=tuple(args.cert_file))
    for directory in args.dirs:
        built = build_package(cache, directory, force=args.force)
        if built.built:
            log.warning("built %s %s", built.plan.ref, built.digest)
        else:
            log.warning("%s is already in the cache (%s)", built.plan.ref, built.digest)
        if args.push:
            destination = registry_destination(args.push, built.plan.name)
            log.warning("pushed %s %s", destination, push_image(cache, built.plan.ref, destination, options))
        print(built.plan.name, flush=True)
    return 0
