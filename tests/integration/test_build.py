"""End-to-end builds through the command line, from a cache filled with test images (no registry)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from tests.bootimages import LayoutImage
from tests.imagetools import file_sha256
from tests.integration.conftest import BUSYBOX_REF, INIT_REF, KERNEL_REF, TOOLS_REF, fill_cache, run_cli

SPEC = f"""\
kernel:
  image: {KERNEL_REF}
  cmdline: "console=ttyS0 quiet"
init:
  - {INIT_REF}
volumes:
  - name: blank
  - name: data
    image: {BUSYBOX_REF}
onboot:
  - name: first
    image: {BUSYBOX_REF}
    command: ["/bin/echo", "first"]
  - name: second
    image: {BUSYBOX_REF}
    binds:
      - data:/data
onshutdown:
  - name: bye
    image: {TOOLS_REF}
services:
  - name: tools
    image: {TOOLS_REF}
    uid: first
files:
  - path: etc/marker
    contents: "marker from files"
    mode: "0644"
  - path: /etc/linuxkit-config
    metadata: yaml
  - path: var/lib/empty
    directory: true
  - path: etc/link
    symlink: /etc/marker
  - path: root/notes.txt
    source: notes.txt
    uid: tools
"""


def write_spec(tmp_path: Path, text: str = SPEC, name: str = "system.yml") -> Path:
    spec = tmp_path / name
    spec.write_text(text)
    (tmp_path / "notes.txt").write_text("notes from the host\n")
    return spec


def build(tmp_path: Path, cache: Path, *args: str, spec: Path | None = None, env: dict[str, str] | None = None):
    spec = spec or write_spec(tmp_path)
    return run_cli("build", "--cache", cache, "--dir", tmp_path / "out", *args, spec, env=env)


def members(tar_path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tar_path) as tf:
        return {m.name: m for m in tf.getmembers()}


def read_member(tar_path: Path, name: str) -> bytes:
    with tarfile.open(tar_path) as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()




def test_tar_has_linuxkit_layout(tmp_path: Path, warm_cache: Path) -> None:
    result = build(tmp_path, warm_cache, "-f", "tar")
    assert result.returncode == 0, result.stderr.decode()
    tar = tmp_path / "out" / "system.tar"
    m = members(tar)
    # kernel section
    assert read_member(tar, "boot/cmdline") == b"console=ttyS0 quiet"
    assert m["boot/kernel"].size > 1_000_000
    assert any(name.startswith("lib/modules/") and name.endswith("virtio_net.ko") for name in m)
    # init image at /, with resolv.conf as LinuxKit's symlink
    assert m["init"].mode & 0o111
    assert m["etc/resolv.conf"].issym() and m["etc/resolv.conf"].linkname == "/run/resolvconf/resolv.conf"
    # volumes
    assert m["containers/volumes/blank/lower"].isdir()
    assert m["containers/volumes/blank/merged"].isdir()
    assert read_member(tar, "containers/volumes/data/lower/etc/motd") == b"hello from layer 2\n"
    # onboot bundles: the first extraction is rw (lower/tmp/rootfs), the second reuses it
    first = "containers/onboot/000-first"
    assert read_member(tar, f"{first}/lower/etc/motd") == b"hello from layer 2\n"
    assert f"{first}/lower/etc/obsolete" not in m  # whiteout applied
    assert f"{first}/lower/etc/hostname" not in m  # LinuxKit's exclude list
    assert m[f"{first}/lower/dev"].isdir() and m[f"{first}/lower/proc"].isdir()
    assert b"no resolv.conf configured" in read_member(tar, f"{first}/lower/etc/resolv.conf")
    assert m[f"{first}/tmp"].isdir() and m[f"{first}/rootfs"].isdir()
    second = "containers/onboot/001-second"
    assert not any(n.startswith(f"{second}/lower/") for n in m)
    runtime = json.loads(read_member(tar, f"{second}/runtime.json"))
    overlay = [mnt for mnt in runtime["mounts"] if mnt.get("type") == "overlay"][0]
    assert f"lowerdir=/{first}/lower" in overlay["options"]
    config = json.loads(read_member(tar, f"{second}/config.json"))
    binds = {mnt["destination"]: mnt["source"] for mnt in config["mounts"]}
    assert binds["/data"] == "/containers/volumes/data/merged"
    assert json.loads(read_member(tar, f"{first}/config.json"))["process"]["args"] == ["/bin/echo", "first"]
    # the label makes `tools` readonly with host pid; uid by container name: first=100 ... tools=103
    tools = json.loads(read_member(tar, "containers/services/tools/config.json"))
    assert tools["root"]["readonly"] is True
    assert tools["process"]["user"]["uid"] == 100
    assert "pid" not in [ns["type"] for ns in tools["linux"]["namespaces"]]
    assert tools["process"]["capabilities"]["bounding"] == ["CAP_SYS_BOOT"]
    # `tools` reuses the read-only extraction made for the onshutdown container `bye`
    assert "containers/onshutdown/000-bye/rootfs/bin/busybox" in m
    assert not any(n.startswith("containers/services/tools/rootfs/") for n in m)
    assert m["containers/services/tools/rootfs"].isdir()
    tools_runtime = json.loads(read_member(tar, "containers/services/tools/runtime.json"))
    assert tools_runtime["mounts"][0] == {"source": "/containers/onshutdown/000-bye/rootfs",
                                          "destination": "/containers/services/tools/rootfs", "options": ["bind"]}
    # files
    assert read_member(tar, "etc/marker") == b"marker from files"
    assert m["etc/marker"].mode == 0o644
    assert m["var/lib/empty"].isdir() and m["var/lib/empty"].mode == 0o700
    assert m["etc/link"].issym() and m["etc/link"].linkname == "/etc/marker"
    notes = m["root/notes.txt"]
    assert (notes.mode, notes.uid) == (0o600, 103)
    metadata = read_member(tar, "etc/linuxkit-config").decode()
    assert f"image: {KERNEL_REF}" in metadata and "name: tools" in metadata
    # every entry is stamped like LinuxKit's, with its source and location
    assert {mem.mtime for mem in m.values()} == {1492533000}
    assert m["etc/marker"].pax_headers["LINUXKIT.location"] == "files[0]"
    assert m[f"{first}/config.json"].pax_headers["LINUXKIT.source"] == BUSYBOX_REF


def test_paths_are_unique_and_parents_come_first(tmp_path: Path, warm_cache: Path) -> None:
    assert build(tmp_path, warm_cache, "-f", "tar").returncode == 0
    with tarfile.open(tmp_path / "out" / "system.tar") as tf:
        names = [mem.name for mem in tf.getmembers()]
    assert len(names) == len(set(names))
    seen: set[str] = set()
    for name in names:
        parent = name.rpartition("/")[0]
        assert not parent or parent in seen, f"{name} comes before its parent"
        seen.add(name)


def test_kernel_initrd_outputs_and_reproducibility(tmp_path: Path, warm_cache: Path, kernel_image: LayoutImage,
                                                   init_image: LayoutImage, container_layout: Path) -> None:
    formats = ("-f", "kernel+initrd", "-f", "tar", "-f", "tar-kernel-initrd")
    result = build(tmp_path, warm_cache, *formats)
    assert result.returncode == 0, result.stderr.decode()
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["system-cmdline", "system-initrd.img", "system-initrd.tar", "system-kernel",
                     "system.spdx.json", "system.tar"]
    assert (out / "system-cmdline").read_text() == "console=ttyS0 quiet"
    first = {p.name: file_sha256(p) for p in out.iterdir()}
    # again from the warm cache, then from an empty cache filled anew
    assert build(tmp_path, warm_cache, *formats).returncode == 0
    assert {p.name: file_sha256(p) for p in out.iterdir()} == first
    shutil.rmtree(out)
    cold = tmp_path / "cold-cache"
    fill_cache(cold, kernel_image, init_image, container_layout)
    assert build(tmp_path, cold, *formats).returncode == 0
    assert {p.name: file_sha256(p) for p in out.iterdir()} == first


def test_source_date_epoch_sets_every_mtime(tmp_path: Path, warm_cache: Path) -> None:
    result = build(tmp_path, warm_cache, "-f", "tar", env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert result.returncode == 0, result.stderr.decode()
    assert {mem.mtime for mem in members(tmp_path / "out" / "system.tar").values()} == {1700000000}


def test_tar_to_stdout(tmp_path: Path, warm_cache: Path) -> None:
    spec = write_spec(tmp_path)
    result = run_cli("build", "--cache", warm_cache, "-o", "-", spec)
    assert result.returncode == 0, result.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tf:
        assert "boot/kernel" in tf.getnames()


def test_dry_run_prints_resolved_spec(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "init:\n  - busybox\nonboot:\n  - name: x\n    image: alpine:3.20\n")
    result = run_cli("build", "--dry-run", spec)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "docker.io/library/busybox:latest" in out and "docker.io/library/alpine:3.20" in out
    assert not (tmp_path / "outputs").exists()
