"""The build benchmark's images, prepared once into an OCI layout under bench/.work/.

Images (issue "Core build pipeline", performance section):

* `kernel`: the Debian cloud kernel's bzImage as `/kernel` and ALL its modules as `/kernel.tar`;
* `init`: static busybox with a small `/init` (tests/bootimages.py's init layer);
* `runc`: Debian's runc with libseccomp;
* `minbase`: `debootstrap --variant=minbase bookworm` without its downloaded .debs, split into 3
  layers by top-level directory;
* `python`: ~15k small files: Debian's Python 3.11 stdlib and test suite (sources, and byte code
  at optimisation levels 0 and 1 as `compileall` writes it) plus the kernel's headers.

Layers are PAX tars of real trees, gzip level 6 (what Docker and Go write by default). Every
step keeps its result under bench/.work/, so a rerun only checks what is there.

    python -m bench.workload            # prepare (or check) the layout; prints its path
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bootimages import init_layer  # noqa: E402
from tests.debian import resolve_dependency, unpacked_package  # noqa: E402

WORK = ROOT / "bench" / ".work"
LAYOUT = WORK / "layout"
DEBIAN = WORK / "debian"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
PYTHON_PACKAGES = ("libpython3.11-minimal", "libpython3.11-stdlib", "libpython3.11-testsuite")
RUNC_PACKAGES = ("runc", "libseccomp2")
SUITE = "bookworm"
GZIP_LEVEL = 6
CHUNK = 1 << 20
# minbase split into 3 layers by top-level directory: usr, var, and everything else.
MINBASE_LAYERS = (("usr",), ("var",), None)
TAGS = ("kernel", "init", "runc", "minbase", "python")


def log(message: str) -> None:
    print(f"workload: {message}", file=sys.stderr, flush=True)


# -- layers and the layout ---------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Numeric owners only, like layers built by Docker/buildkit from a root filesystem.
    info.uname = info.gname = ""
    return info


def write_tar(out: Path, root: Path, names: Iterable[str]) -> None:
    """A PAX tar of `names` (paths relative to `root`, each added recursively, sorted)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(names):
            tf.add(root / name, arcname=name, recursive=True, filter=_tar_filter)


class LayoutWriter:
    """An OCI image layout whose blobs are written from files (no whole layer in memory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        index = root / "index.json"
        self.manifests: list[dict[str, Any]] = json.loads(index.read_text())["manifests"] if index.exists() else []

    def json_blob(self, doc: dict[str, Any]) -> Blob:
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.blobs / digest.split(":")[1]).write_bytes(data)
        return Blob(digest, len(data))

    def layer_blob(self, tar_path: Path) -> tuple[Blob, str]:
        """gzip `tar_path` into a blob; returns it and the tar's diff_id."""
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".layer-")
        diff = hashlib.sha256()
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL,
                                                      mtime=0) as gz, open(tar_path, "rb") as src:
            while chunk := src.read(CHUNK):
                diff.update(chunk)
                gz.write(chunk)
        digest = _sha256_file(Path(tmp))
        size = os.stat(tmp).st_size
        os.replace(tmp, self.blobs / digest.split(":")[1])
        return Blob(digest, size), "sha256:" + diff.hexdigest()

    def add_image(self, tag: str, tars: list[Path], config: dict[str, Any] | None = None) -> str:
        layers, diff_ids = [], []
        for tar in tars:
            blob, diff_id = self.layer_blob(tar)
            layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                           "digest": blob.digest, "size": blob.size})
            diff_ids.append(diff_id)
        return self.add_layers(tag, layers, diff_ids, config)

    def add_layers(self, tag: str, layers: list[dict[str, Any]], diff_ids: list[str],
                   config: dict[str, Any] | None = None) -> str:
        """The image `tag` of layer blobs already in the layout (descriptors and their diff_ids)."""
        cfg = self.json_blob({"architecture": "amd64", "os": "linux", "config": config or {},
                              "rootfs": {"type": "layers", "diff_ids": diff_ids}})
        manifest = self.json_blob({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.digest,
                       "size": cfg.size},
            "layers": layers})
        self.manifests = [m for m in self.manifests
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
        self.manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": manifest.digest, "size": manifest.size,
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": self.manifests}
        (self.root / "index.json").write_text(json.dumps(index, indent=1))
        return manifest.digest

    def tags(self) -> dict[str, str]:
        return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in self.manifests
                if "org.opencontainers.image.ref.name" in m.get("annotations", {})}


# -- the trees ---------------------------------------------------------------------------------


def kernel_tree() -> tuple[Path, Path, str]:
    """(bzImage, lib/modules/<version> dir, version) of the current Debian cloud kernel."""
    package = resolve_dependency(KERNEL_META_PACKAGE)
    root = unpacked_package(package, DEBIAN)
    (bzimage,) = sorted((root / "boot").glob("vmlinuz-*"))
    version = bzimage.name.removeprefix("vmlinuz-")
    for modules in (root / "lib" / "modules" / version, root / "usr" / "lib" / "modules" / version):
        if modules.is_dir():
            return bzimage, modules, version
    raise SystemExit(f"{package}: no modules directory for {version}")


def minbase_tree() -> Path:
    target = WORK / "minbase"
    if not target.is_dir():
        _debootstrap(target)
    # As `apt-get clean` in a Dockerfile: the downloaded .debs are not part of the image.
    for deb in (target / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()
    return target


def _debootstrap(target: Path) -> None:
    tmp = WORK / "minbase.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    log(f"debootstrap --variant=minbase {SUITE} (a few minutes)")
    subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(tmp)], check=True,
                   stdout=subprocess.DEVNULL)
    os.rename(tmp, target)


def python_tree(kernel_version: str) -> Path:
    """usr/lib/python3.11 (sources + byte code) and usr/src/linux-headers-*-common."""
    target = WORK / "python"
    if target.is_dir():
        return target
    tmp = WORK / "python.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    packages = [*PYTHON_PACKAGES, f"linux-headers-{kernel_version.removesuffix('-cloud-amd64')}-common"]
    for package in packages:
        shutil.copytree(unpacked_package(package, DEBIAN), tmp, symlinks=True, dirs_exist_ok=True)
    (tmp / ".deb").unlink()
    shutil.rmtree(tmp / "usr" / "share", ignore_errors=True)  # docs and lintian overrides
    log("byte-compiling the Python tree at optimisation levels 0 and 1")
    # Some test files are deliberately not valid Python: compileall reports them and goes on.
    subprocess.run([sys.executable, "-W", "ignore", "-m", "compileall", "-q", "-j", "0", "-o", "0", "-o", "1",
                    str(tmp / "usr" / "lib" / "python3.11")], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    os.rename(tmp, target)
    return target


def runc_tree() -> Path:
    target = WORK / "runc"
    if not target.is_dir():
        tmp = WORK / "runc.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for package in RUNC_PACKAGES:
            shutil.copytree(unpacked_package(package, DEBIAN), tmp, symlinks=True, dirs_exist_ok=True)
        (tmp / ".deb").unlink()
        shutil.rmtree(tmp / "usr" / "share", ignore_errors=True)
        os.rename(tmp, target)
    return target


# -- the images --------------------------------------------------------------------------------


def _build_image(layout: LayoutWriter, tag: str, layers: list[tuple[Path, list[str] | None]],
                 config: dict[str, Any] | None = None) -> None:
    """Tar each (root, names) pair (names None: every top-level entry) and add the image."""
    log(f"building image {tag}")
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        tars = []
        for i, (root, names) in enumerate(layers):
            tar = Path(tmp) / f"{i}.tar"
            write_tar(tar, root, os.listdir(root) if names is None else names)
            tars.append(tar)
        layout.add_image(tag, tars, config)


def _build_kernel(layout: LayoutWriter) -> None:
    bzimage, modules, version = kernel_tree()
    log(f"building image kernel ({version}, all modules)")
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        stage = Path(tmp) / "stage"
        (stage / "lib" / "modules").mkdir(parents=True)
        kernel_tar = Path(tmp) / "kernel.tar"
        with tarfile.open(kernel_tar, "w", format=tarfile.PAX_FORMAT) as tf:
            tf.add(stage / "lib", arcname="lib", recursive=False, filter=_tar_filter)
            tf.add(stage / "lib" / "modules", arcname="lib/modules", recursive=False, filter=_tar_filter)
            tf.add(modules, arcname=f"lib/modules/{version}", recursive=True, filter=_tar_filter)
        layer = Path(tmp) / "layer"
        layer.mkdir()
        shutil.copyfile(bzimage, layer / "kernel")
        os.rename(kernel_tar, layer / "kernel.tar")
        tar = Path(tmp) / "0.tar"
        write_tar(tar, layer, ["kernel", "kernel.tar"])
        layout.add_image("kernel", [tar])


def _build_init(layout: LayoutWriter) -> None:
    log("building image init")
    busybox = unpacked_package("busybox-static", DEBIAN) / "bin" / "busybox"
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        tar = Path(tmp) / "0.tar"
        tar.write_bytes(init_layer(busybox))
        layout.add_image("init", [tar])


def prepare() -> Path:
    """Build whatever image the layout lacks; returns the layout directory."""
    WORK.mkdir(parents=True, exist_ok=True)
    layout = LayoutWriter(LAYOUT)
    have = layout.tags()
    _, _, kernel_version = kernel_tree()
    if "kernel" not in have:
        _build_kernel(layout)
    if "init" not in have:
        _build_init(layout)
    if "runc" not in have:
        _build_image(layout, "runc", [(runc_tree(), None)],
                     {"Entrypoint": ["/usr/sbin/runc"], "Cmd": ["--version"]})
    if "minbase" not in have:
        root = minbase_tree()
        rest = [n for n in os.listdir(root) if not any(n in names for names in MINBASE_LAYERS if names)]
        layers: list[tuple[Path, list[str] | None]] = [(root, list(names) if names else rest)
                                                       for names in MINBASE_LAYERS]
        _build_image(layout, "minbase", layers, {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]})
    if "python" not in have:
        _build_image(layout, "python", [(python_tree(kernel_version), None)], {"Cmd": ["/bin/true"]})
    return LAYOUT


def describe(layout: Path = LAYOUT) -> list[dict[str, Any]]:
    """Per image: tag, layers, compressed bytes, unpacked tar bytes and number of tar members."""
    index = json.loads((layout / "index.json").read_text())
    rows = []
    for desc in index["manifests"]:
        tag = desc["annotations"]["org.opencontainers.image.ref.name"]
        manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes())
        compressed = sum(layer["size"] for layer in manifest["layers"])
        unpacked = members = 0
        for layer in manifest["layers"]:
            with tarfile.open(layout / "blobs" / "sha256" / layer["digest"].split(":")[1], "r:gz") as tf:
                for member in tf:
                    members += 1
                    unpacked += member.size
        rows.append({"tag": tag, "layers": len(manifest["layers"]), "compressed": compressed,
                     "file_bytes": unpacked, "members": members})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--describe", action="store_true", help="print each image's size and member count")
    args = parser.parse_args()
    layout = prepare()
    print(layout)
    if args.describe:
        for row in describe(layout):
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
