"""OCI images for boot tests, built from Debian packages: a LinuxKit-shaped kernel image and a
busybox init image, each in its own OCI image layout, plus loading a layout image into a Cache.

* kernel image (tag `kernel`): `/kernel` (the Debian bzImage) and `/kernel.tar` (a tar of
  `lib/modules/<version>/...` holding KERNEL_MODULES and modules.builtin; no modules.dep).
* init image (tag `init`): static busybox at /bin/busybox with symlinks for BUSYBOX_APPLETS
  and an executable `/init` (INIT_SCRIPT) that mounts proc/sys/devtmpfs, prints INIT_MARKER,
  then /etc/marker if present, then the sorted `find /containers` listing, then INIT_END, and
  powers off. With `quiet` on the kernel command line nothing else interleaves on the console.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linuxkit_py.cache.layout import REF_NAME, Cache
from linuxkit_py.cache.platform import is_index
from tests.debian import DebianKernel
from tests.imagetools import D, F, ImageSpec, L, Layout, Member, tar_layer

INIT_MARKER = "LINUXKIT-PY-INIT-OK"
INIT_END = "LINUXKIT-PY-INIT-END"
INIT_SCRIPT = f"""#!/bin/sh
# linuxkit-py test init: the kernel runs /init from the initramfs as PID 1.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo {INIT_MARKER}
if [ -f /etc/marker ]; then cat /etc/marker; fi
if [ -d /containers ]; then find /containers | sort; fi
echo {INIT_END}
# -f: PID 1 is this shell, not an init that could run a shutdown sequence.
poweroff -f
"""
BUSYBOX_APPLETS = ("cat", "echo", "find", "grep", "insmod", "ip", "ls", "mkdir", "mount", "nc",
                   "poweroff", "sh", "sleep", "sort", "umount")

# Paths under lib/modules/<version>/, in an order insmod can load them one by one.
VIRTIO_NET_MODULES = (  # what eth0 needs
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
)
KERNEL_MODULES = (
    *VIRTIO_NET_MODULES,
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/char/virtio_console.ko",
    "kernel/fs/overlayfs/overlay.ko",
)
MODULES_METADATA = ("modules.builtin", "modules.builtin.modinfo")


@dataclass(frozen=True)
class LayoutImage:
    layout: Path  # an OCI image layout directory (skopeo: `oci:LAYOUT:TAG`)
    tag: str  # the image's ref name in the layout's index.json
    digest: str  # its manifest digest

    def load_into(self, cache: Cache, ref: str) -> dict[str, Any]:
        return load_layout_into_cache(self.layout, self.tag, cache, ref)


def _parent_dirs(paths: list[str]) -> list[str]:
    dirs: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(dirs)


def kernel_tar(kernel: DebianKernel, modules: tuple[str, ...] = KERNEL_MODULES) -> bytes:
    """The `/kernel.tar` of a LinuxKit kernel image: lib/modules/<version>/... with `modules`."""
    prefix = f"lib/modules/{kernel.version}"
    files = {f"{prefix}/{rel}": (kernel.modules_dir / rel).read_bytes() for rel in modules + MODULES_METADATA}
    members = [D(d) for d in _parent_dirs(list(files))]
    members += [F(path, data) for path, data in sorted(files.items())]
    return tar_layer(*members)


def build_kernel_image(
    kernel: DebianKernel, root: Path, modules: tuple[str, ...] = KERNEL_MODULES
) -> LayoutImage:
    layer = tar_layer(F("kernel", kernel.bzimage.read_bytes()), F("kernel.tar", kernel_tar(kernel, modules)))
    digest = Layout(root).add_image("kernel", ImageSpec(layers=[layer]))
    return LayoutImage(root, "kernel", digest)


def init_layer(busybox: Path) -> bytes:
    members: list[Member] = [D(d) for d in ("bin", "containers", "dev", "etc", "proc", "sys", "tmp")]
    members.append(F("bin/busybox", busybox.read_bytes(), mode=0o755))
    members += [L(f"bin/{applet}", "busybox") for applet in BUSYBOX_APPLETS]
    members.append(F("init", INIT_SCRIPT, mode=0o755))
    return tar_layer(*members)


def build_init_image(busybox: Path, root: Path) -> LayoutImage:
    digest = Layout(root).add_image("init", ImageSpec(layers=[init_layer(busybox)]))
    return LayoutImage(root, "init", digest)


def _file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def _copy_blobs(layout: Path, desc: dict[str, Any], cache: Cache) -> None:
    """Copy the blob `desc` names and every blob it references, each verified by Cache.write_blob."""
    source = layout / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]
    if not cache.has_blob(desc["digest"]):
        cache.write_blob(_file_chunks(source), desc["digest"], desc["size"])
    media_type = desc.get("mediaType", "")
    if not media_type.endswith("json"):
        return  # a layer or other opaque blob
    doc = json.loads(cache.read_blob(desc["digest"]))
    if is_index(doc, media_type):
        children = doc["manifests"]
    elif "layers" in doc:
        children = [doc["config"], *doc["layers"]]
    else:
        children = []  # an image config
    for child in children:
        _copy_blobs(layout, child, cache)


def load_layout_into_cache(layout: Path, tag: str, cache: Cache, ref: str) -> dict[str, Any]:
    """Copy image `tag` of an OCI layout into `cache` under the name `ref`; returns its descriptor."""
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if (desc.get("annotations") or {}).get(REF_NAME) == tag:
            break
    else:
        raise KeyError(f"{layout} has no image tagged {tag!r}")
    _copy_blobs(layout, desc, cache)
    descriptor = {key: value for key, value in desc.items() if key != "annotations"}
    cache.set_ref(ref, descriptor)
    return descriptor
