"""Assemble the root filesystem from the resolved spec and the cached images.

Sections in LinuxKit's order: kernel, init, volumes, onboot, onshutdown, services, files.
The result is a list of entries (metadata plus data references), never a tree on disk.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.archive.tree import Tree, normalize_path
from linuxkit_py.bundle import config as oci_runtime
from linuxkit_py.bundle.shell import render_runtime_shell
from linuxkit_py.cache.image import Image
from linuxkit_py.cache.layers import region_entries
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import SpecError, UserError
from linuxkit_py.rootfs.filters import RESOLV_SYMLINK, filter_image
from linuxkit_py.rootfs.flatten import flatten_image
from linuxkit_py.spec.model import SECTIONS, Spec

log = logging.getLogger("linuxkit_py")

APK_DB = "lib/apk/db/installed"
FILES_SOURCE = "linuxkit.files"
VOLUMES_SOURCE = "linuxkit.volumes"


@dataclass
class Assembly:
    """What assemble needs besides the spec: the images by normalised ref and where they live."""

    spec: Spec  # with image references normalised (see spec.resolve)
    images: dict[str, Image]
    cache: Cache
    metadata: Callable[[str], bytes]  # `files: metadata: yaml|json` -> document bytes
    # location ("kernel", "init[0]", ...) -> entries copied as they are instead of built (rootfs/reuse.py)
    reused: dict[str, list[Entry]] = field(default_factory=dict)


def assemble(a: Assembly) -> list[Entry]:
    """The whole root filesystem, in output order."""
    tree = Tree()
    if a.spec.kernel.get("image"):
        _add_kernel(tree, a)
    _add_init(tree, a)
    _add_volumes(tree, a)
    _add_containers(tree, a)
    _add_files(tree, a)
    return tree.entries()


def _flat(a: Assembly, ref: str) -> list[Entry]:
    return flatten_image(a.cache, a.images[ref])


def _dir(path: str, source: str, location: str, mode: int = 0o755) -> Entry:
    return Entry(path, Kind.DIR, mode, source=source, location=location)


def _file(path: str, data: bytes, source: str, location: str, mode: int = 0o644) -> Entry:
    return Entry(path, Kind.FILE, mode, size=len(data), data=data, source=source, location=location)


def _add_prefix_dirs(tree: Tree, prefix: str, source: str, location: str) -> None:
    parts = prefix.split("/")
    for i in range(len(parts)):
        tree.add(_dir("/".join(parts[: i + 1]), source, location))


# -- kernel -----------------------------------------------------------------------------------------
def _add_reused(tree: Tree, a: Assembly, location: str) -> bool:
    """Add the entries `--input-tar` supplies for `location`; False when it supplies none."""
    if location not in a.reused:
        return False
    for e in a.reused[location]:
        tree.add(e)
    return True


def _add_kernel(tree: Tree, a: Assembly) -> None:
    if _add_reused(tree, a, "kernel"):
        return
    k = a.spec.kernel
    ref = k["image"]
    binary = k.get("binary") or "kernel"
    tar_name = k.get("tar", "kernel.tar")
    tar_name = "" if tar_name in (None, "none") else tar_name
    ucode = k.get("ucode") or ""
    flat = _flat(a, ref)
    by_path = {e.path: e for e in flat}

    def regular(name: str, what: str) -> Entry:
        entry = by_path.get(normalize_path(name))
        while entry is not None and entry.kind == Kind.HARDLINK:
            entry = by_path.get(entry.linkname)
        if entry is None:
            raise UserError(f"{ref}: did not find {what} {name!r} in the kernel image")
        if entry.kind != Kind.FILE:
            raise UserError(f"{ref}: {what} {name!r} in the kernel image is not a regular file")
        return entry

    kernel = regular(binary, "kernel")
    cmdline = (k.get("cmdline") or "").encode()
    tree.add(_dir("boot", ref, "kernel"))
    tree.add(_file("boot/cmdline", cmdline, ref, "kernel"))
    tree.add(kernel.evolve(path="boot/kernel", source=ref, location="kernel"))
    if ucode:
        tree.add(regular(ucode, "ucode").evolve(path="boot/ucode.cpio", source=ref, location="kernel"))
    if tar_name:
        tar = regular(tar_name, "kernel tar")
        assert isinstance(tar.data, FileRegion) or tar.data is None
        if isinstance(tar.data, FileRegion):
            for e in region_entries(a.cache, tar.data, f"{ref}: {tar_name}"):
                tree.add(e.evolve(source=ref, location="kernel"))


# -- init -------------------------------------------------------------------------------------------
def _add_init(tree: Tree, a: Assembly) -> None:
    apk_dbs: list[bytes] = []
    for i, ref in enumerate(a.spec.init):
        location = f"init[{i}]"
        entries = a.reused.get(location) or filter_image(_flat(a, ref), ref, location, RESOLV_SYMLINK)
        for e in entries:
            if e.path == APK_DB and e.kind == Kind.FILE and e.location == location:
                apk_dbs.append(_read_small(e))
            tree.add(e)
    earlier = a.reused.get("init")  # the earlier tar's union for the first init images (rootfs/reuse.py)
    if earlier or len(apk_dbs) > 1:
        # The union of the init images' apk databases, as LinuxKit writes it (each followed by a blank line).
        data = (_read_small(earlier[0]) if earlier else b"") + b"".join(db + b"\n\n" for db in apk_dbs)
        tree.add(_file(APK_DB, data, "LINUXKIT.apkinit", "init"))


def _read_small(entry: Entry) -> bytes:
    from linuxkit_py.archive.entry import read_data

    return read_data(entry.data)


# -- volumes ----------------------------------------------------------------------------------------
def _add_volumes(tree: Tree, a: Assembly) -> None:
    for i, vol in enumerate(a.spec.volumes):
        location = f"volume[{i}]"
        if _add_reused(tree, a, location):
            continue
        base = f"containers/volumes/{vol['name']}"
        ref = vol.get("image")
        _add_prefix_dirs(tree, f"{base}/lower", ref or "empty", location)
        if ref:
            if vol.get("format", "filesystem") == "oci":
                _add_oci_layout(tree, a, ref, f"{base}/lower", location, vol.get("platforms") or [])
            else:
                for e in filter_image(_flat(a, ref), ref, location, RESOLV_SYMLINK, prefix=f"{base}/lower"):
                    tree.add(e)
        tree.add(_dir(f"{base}/tmp", VOLUMES_SOURCE, location))
        tree.add(_dir(f"{base}/merged", VOLUMES_SOURCE, location))


def _add_oci_layout(tree: Tree, a: Assembly, ref: str, prefix: str, location: str, platforms: list[str]) -> None:
    """An OCI image layout of the image (the platform this build is for) inside a volume."""
    image = a.images[ref]
    arch = image.config.get("architecture", "")
    for p in platforms:
        if p.split("/")[:2] != ["linux", arch]:
            raise UserError(
                f"volume image {ref}: platform {p!r} is not available",
                hint=f"only the build's platform (linux/{arch}) can be written into a format: oci volume yet",
            )
    manifest_bytes = a.cache.read_blob(image.digest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": image.manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
            "digest": image.digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": ref},
        }],
    }
    tree.add(_file(f"{prefix}/oci-layout", b'{"imageLayoutVersion":"1.0.0"}', ref, location))
    tree.add(_file(f"{prefix}/index.json", json.dumps(index, indent=2).encode(), ref, location))
    digests = [image.digest, image.manifest["config"]["digest"]] + [layer["digest"] for layer in image.layers]
    for d in digests:
        path = a.cache.blob_path(d)
        size = path.stat().st_size
        blob = Entry(f"{prefix}/blobs/sha256/{d.split(':', 1)[1]}", Kind.FILE, 0o644, size=size,
                     data=FileRegion(str(path), 0, size), source=ref, location=location)
        tree.add(blob)


# -- containers -------------------------------------------------------------------------------------
def _add_containers(tree: Tree, a: Assembly) -> None:
    ids = oci_runtime.allocate_ids(a.spec)
    volumes = {v["name"]: v for v in a.spec.volumes}
    extracted: dict[str, str] = {}  # image ref -> absolute dir of its first extraction (LinuxKit's dupMap)
    from linuxkit_py.spec.validate import validate_label

    for section in SECTIONS:
        for i, entry in enumerate(getattr(a.spec, section)):
            ref = entry["image"]
            location = f"{section}[{i}]"
            if _add_reused(tree, a, location):
                continue
            image = a.images[ref]
            raw_label = image.moby_config_label()
            label = validate_label(raw_label, ref) if raw_label is not None else None
            try:
                cc = oci_runtime.container_config(entry, image.runtime_config, label, ids=ids, volumes=volumes)
            except oci_runtime.ContainerConfigError as exc:
                pos = None if exc.from_label else a.spec.position(f"{section}/{i}/{exc.key}")
                if pos is None:
                    raise
                raise SpecError(pos.file, pos.line, pos.column, f"{location}.{exc.field}: {exc.detail}") from exc
            dirname = f"{i:03d}-{entry['name']}" if section != "services" else entry["name"]
            bundle = f"containers/{section}/{dirname}"
            content_dir = f"{bundle}/{'rootfs' if cc.readonly else 'lower'}"
            first = extracted.get(ref)
            if first is None:
                _add_prefix_dirs(tree, content_dir, ref, location)
                for e in filter_image(_flat(a, ref), ref, location, None, prefix=content_dir):
                    tree.add(e)
                extracted[ref] = "/" + content_dir
                content = "/" + content_dir
            else:
                _add_prefix_dirs(tree, bundle, ref, location)
                content = first
            tree.add(_file(f"{bundle}/config.json", oci_runtime.config_json(cc.config), ref, location))
            if not cc.readonly:
                tree.add(_dir(f"{bundle}/tmp", ref, location))
                tree.add(_dir(f"{bundle}/rootfs", ref, location))
            elif first is not None:
                tree.add(_dir(f"{bundle}/rootfs", ref, location))
            runtime = oci_runtime.bundle_runtime(cc.runtime, "/" + bundle, content, cc.readonly)
            tree.add(_file(f"{bundle}/runtime.json", oci_runtime.runtime_json(runtime), ref, location))
            restart = entry.get("restart", "always") if section == "services" else None
            script = render_runtime_shell(runtime, name=dirname, section=section, restart=restart)
            tree.add(_file(f"{bundle}/runtime.sh", script, ref, location))


# -- files ------------------------------------------------------------------------------------------
def _dir_mode(mode: int) -> int:
    """A file's mode with x added wherever r or w is set (the mode of the parents it implies)."""
    for rw, x in ((0o700, 0o100), (0o070, 0o010), (0o007, 0o001)):
        if mode & rw:
            mode |= x
    return mode


def _source_path(source: str, spec_file: str | None) -> Path:
    if source.startswith("~/"):
        return Path.home() / source[2:]
    path = Path(source)
    if not path.is_absolute() and spec_file and spec_file != "<stdin>":
        path = Path(spec_file).parent / path
    return path


def file_sources(spec: Spec) -> list[Path]:
    """The host file each `files:` entry with a `source:` reads, in spec order."""
    return [_source_path(f["source"], pos.file if (pos := spec.position(f"files/{i}")) else None)
            for i, f in enumerate(spec.files) if f.get("source")]


def _add_files(tree: Tree, a: Assembly) -> None:
    ids = oci_runtime.allocate_ids(a.spec)
    for i, f in enumerate(a.spec.files):
        location = f"files[{i}]"
        path = normalize_path(f["path"])
        pos = a.spec.position(f"files/{i}")
        where = f"{pos}: " if pos else ""
        if not path:
            raise UserError(f"{where}{location}: path {f['path']!r} names the root directory")
        is_dir = bool(f.get("directory"))
        mode = int(f["mode"], 8) if f.get("mode") else (0o700 if is_dir else 0o600)
        try:
            uid = oci_runtime.resolve_id(f.get("uid"), ids)
            gid = oci_runtime.resolve_id(f.get("gid"), ids)
        except UserError as exc:
            raise UserError(f"{where}{location}: {exc.message}") from exc
        base = Entry(path, Kind.FILE, mode, uid=uid, gid=gid, source=FILES_SOURCE, location=location)
        if is_dir:
            entry = base.evolve(kind=Kind.DIR)
        elif f.get("symlink"):
            entry = base.evolve(kind=Kind.SYMLINK, linkname=f["symlink"])
        elif "contents" in f and f["contents"] is not None:
            data = str(f["contents"]).encode()
            entry = base.evolve(size=len(data), data=data)
        elif f.get("source"):
            src = _source_path(f["source"], pos.file if pos else None)
            try:
                st = src.stat()
                if not os.access(src, os.R_OK):
                    raise PermissionError(13, "Permission denied")
            except OSError as exc:
                if f.get("optional"):
                    log.info("skipping optional file %s: %s is not readable", path, src)
                    continue
                raise UserError(f"{where}{location}: cannot read source {src}: {exc.strerror}") from exc
            if not src.is_file():
                raise UserError(f"{where}{location}: source {src} is not a regular file")
            entry = base.evolve(size=st.st_size, data=FileRegion(str(src), 0, st.st_size))
        elif f.get("metadata"):
            data = a.metadata(f["metadata"])
            entry = base.evolve(size=len(data), data=data)
        else:
            raise UserError(f"{where}{location}: contents of file {path} not specified")
        parent = Entry("", Kind.DIR, _dir_mode(mode), uid=uid, gid=gid, source=FILES_SOURCE, location=location)
        tree.add(entry, parent=parent)


def metadata_writer(spec: Spec) -> Callable[[str], bytes]:
    """`files: metadata:` renders the resolved spec as YAML or JSON."""
    from linuxkit_py.spec.dump import spec_to_moby_json, spec_to_moby_yaml

    def render(kind: str) -> bytes:  # the documents LinuxKit writes
        if kind == "yaml":
            return spec_to_moby_yaml(spec).encode()
        if kind == "json":
            return spec_to_moby_json(spec)
        raise UserError(f"unsupported metadata type {kind!r} (use yaml or json)")

    return render


def image_refs(spec: Spec) -> list[str]:
    """Every image the spec needs, in first-use order, without duplicates."""
    refs: list[str] = []
    if spec.kernel.get("image"):
        refs.append(spec.kernel["image"])
    refs.extend(spec.init)
    refs.extend(v["image"] for v in spec.volumes if v.get("image"))
    for section in SECTIONS:
        refs.extend(e["image"] for e in getattr(spec, section))
    return list(dict.fromkeys(refs))


__all__ = ["Assembly", "assemble", "file_sources", "image_refs", "metadata_writer"]
