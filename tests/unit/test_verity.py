"""--verity: the dm-verity hash tree of media/verity.py against cryptsetup's veritysetup, and what stage one
(formats/stage1.py) and the build get from it: the build of a spec takes dmsetup from pkg/dmsetup in its init
images. The boots are tests/boot/test_verity_boot.py.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from linuxkit_py.archive.entry import Entry, Kind
from linuxkit_py.errors import UserError
from linuxkit_py.formats import FormatOptions, Rootfs
from linuxkit_py.formats.rootimage import root_location
from linuxkit_py.formats.stage1 import INIT_SCRIPT, RootLocation, verity_cmdline
from linuxkit_py.media.verity import BLOCK_SIZE, VerityTree, append_verity_tree, level_sizes
from tests.debian import DebianKernel
from tests.debstore import stored_debs
from tests.integration.conftest import run_cli
from tests.unit.test_stage1 import (
    IMAGE_MODULES,
    ROOT_ID,
    busybox,
    bytes_entry,
    conf,
    file_entry,
    image,
    kernel_entries,
    make_kernel_entries,
    module_names,
    read_newc,
    stage_one,
)

__all__ = ["busybox", "kernel_entries"]  # test_stage1's module fixtures, used here too

VERITYSETUP = shutil.which("veritysetup") or "/usr/sbin/veritysetup"
SALT = bytes(range(32))


def data_file(path: Path, size: int, seed: int = 1) -> Path:
    """`size` bytes that differ from block to block (so a misplaced block changes the tree)."""
    with open(path, "wb") as f:
        block = 0
        while f.tell() < size:
            f.write(hashlib.sha256(f"{seed}:{block}".encode()).digest() * (BLOCK_SIZE // 32))
            block += 1
        f.truncate(size)
    return path


def veritysetup(*args: str | Path) -> str:
    return subprocess.run([VERITYSETUP, *map(str, args)], capture_output=True, text=True, check=True).stdout


# 1 block: no tree, the root hash is the block's; 128/129: one full and one partial level-0 block;
# 128*128+1: three levels
@pytest.mark.parametrize("blocks", [1, 2, 128, 129, 128 * 128 + 1])
def test_tree_and_root_hash_are_veritysetups(tmp_path: Path, blocks: int) -> None:
    ours = data_file(tmp_path / "ours.img", blocks * BLOCK_SIZE)
    theirs = Path(shutil.copyfile(ours, tmp_path / "data.img"))

    tree = append_verity_tree(ours, salt=SALT)
    printed = veritysetup("format", "--no-superblock", "--salt", SALT.hex(), theirs, tmp_path / "hash.img")

    root = re.search(r"^Root hash:\s+([0-9a-f]{64})$", printed, re.M)
    assert root and tree.root_hash == root.group(1)
    assert tree.salt == SALT.hex() and tree.data_blocks == blocks and tree.hash_offset == blocks * BLOCK_SIZE
    with open(ours, "rb") as f:
        f.seek(tree.hash_offset)
        assert f.read() == (tmp_path / "hash.img").read_bytes()
    assert tree.hash_blocks == sum(level_sizes(blocks)) == (tmp_path / "hash.img").stat().st_size // BLOCK_SIZE


def test_veritysetup_verify_accepts_the_image_with_its_tree_and_refuses_a_flipped_byte(tmp_path: Path) -> None:
    path = data_file(tmp_path / "root.img", 300 * BLOCK_SIZE)
    tree = append_verity_tree(path)
    args: list[str | Path] = ["verify", "--no-superblock", f"--hash-offset={tree.hash_offset}",
                              f"--data-blocks={tree.data_blocks}", f"--salt={tree.salt}", path, path, tree.root_hash]
    veritysetup(*args)
    with open(path, "r+b") as f:
        f.seek(123 * BLOCK_SIZE + 45)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(subprocess.CalledProcessError) as failed:
        veritysetup(*args)
    assert "Verification failed at position" in failed.value.stderr


def test_a_size_not_a_multiple_of_4096_is_padded_with_zeros_and_verified_with_them(tmp_path: Path) -> None:
    path = data_file(tmp_path / "odd.img", 5 * BLOCK_SIZE + 1000)
    padded = Path(shutil.copyfile(path, tmp_path / "padded.img"))
    os.truncate(padded, 6 * BLOCK_SIZE)

    tree = append_verity_tree(path)

    assert tree.data_blocks == 6 and tree.hash_offset == 6 * BLOCK_SIZE
    assert path.read_bytes()[:tree.hash_offset] == padded.read_bytes()
    veritysetup("verify", "--no-superblock", f"--hash-offset={tree.hash_offset}", "--data-blocks=6",
                f"--salt={tree.salt}", path, path, tree.root_hash)


def test_the_salt_follows_the_content_so_the_same_image_gives_the_same_bytes(tmp_path: Path) -> None:
    trees, digests = [], []
    for name in ("a", "b"):
        path = data_file(tmp_path / name, 200 * BLOCK_SIZE)
        trees.append(append_verity_tree(path))
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    other = append_verity_tree(data_file(tmp_path / "c", 200 * BLOCK_SIZE, seed=2))

    assert trees[0] == trees[1] and digests[0] == digests[1]
    assert trees[0].salt == hashlib.sha256(data_file(tmp_path / "d", 200 * BLOCK_SIZE).read_bytes()).hexdigest()
    assert other.salt != trees[0].salt and other.root_hash != trees[0].root_hash


def test_an_empty_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="an empty image has no dm-verity tree"):
        append_verity_tree(tmp_path / "empty")


def test_the_table_is_the_kernels_verity_target_line() -> None:
    tree = VerityTree(root_hash="ab" * 32, salt="cd" * 32, data_blocks=5978, hash_offset=5978 * BLOCK_SIZE,
                      hash_blocks=49)
    assert tree.table("/dev/vda", "/dev/vda") == (
        f"0 47824 verity 1 /dev/vda /dev/vda 4096 4096 5978 5978 sha256 {'ab' * 32} {'cd' * 32}")


# -- stage one ---------------------------------------------------------------------------------------------

TREE = VerityTree(root_hash="ab" * 32, salt="cd" * 32, data_blocks=100, hash_offset=100 * BLOCK_SIZE, hash_blocks=1)
HOST_DMSETUP = Path("/sbin/dmsetup")


def dmsetup_entries(drop: str = "") -> list[Entry]:
    """The host's dmsetup at sbin/dmsetup with its interpreter and libraries where ldd finds them."""
    ldd = subprocess.run(["ldd", str(HOST_DMSETUP)], capture_output=True, text=True, check=True).stdout
    paths = re.findall(r"(/\S+) \(0x", ldd)
    entries = [file_entry("sbin/dmsetup", Path(os.path.realpath(HOST_DMSETUP)), 0o755)]
    entries += [file_entry(p.lstrip("/"), Path(os.path.realpath(p))) for p in paths
                if not p.startswith("/lib64/") and (not drop or drop not in p)]
    # the loader as libc6 lays it out: in the multiarch directory, PT_INTERP's /lib64 name a symlink to it
    loader = next(p for p in paths if p.startswith("/lib64/"))
    name = loader.rsplit("/", 1)[-1]
    entries += [file_entry(f"lib/x86_64-linux-gnu/{name}", Path(os.path.realpath(loader)), 0o755),
                Entry(f"lib64/{name}", Kind.SYMLINK, 0o777, linkname=f"/lib/x86_64-linux-gnu/{name}")]
    return entries


@pytest.fixture(scope="module")
def verity_kernel(debian_kernel: DebianKernel) -> list[Entry]:
    """The kernel image's modules plus the dm-verity ones (kernels/cloud-amd64 has both)."""
    return make_kernel_entries(debian_kernel, (*IMAGE_MODULES, "dm_verity"))


def test_verity_stage_one_holds_dmsetup_its_libraries_the_dm_modules_and_the_table_parameters(
        verity_kernel: list[Entry], busybox: Entry, tmp_path: Path) -> None:
    tools = dmsetup_entries()
    members = stage_one(image(verity_kernel, busybox, *tools), RootLocation("erofs", ROOT_ID, verity=TREE),
                        "virtio", tmp_path)

    assert {entry.path for entry in tools} <= set(members)
    assert members["sbin/dmsetup"].data == HOST_DMSETUP.read_bytes()
    assert {"dm_mod", "dm_bufio", "dm_verity", "reed_solomon"} <= module_names(members)
    assert members["bin/losetup"].data == b"busybox"
    text = conf(members)
    assert "MODULES='erofs overlay dm_mod dm_bufio dm_verity'\n" in text
    for line in (f"VERITY_ROOT_HASH={'ab' * 32}", f"VERITY_SALT={'cd' * 32}", "VERITY_DATA_BLOCKS=100",
                 "VERITY_HASH_START=100", "VERITY_BLOCK_SIZE=4096", "VERITY_HASH_ALGORITHM=sha256",
                 "VERITY_NAME=linuxkit-root", "DMSETUP=/sbin/dmsetup"):
        assert line + "\n" in text


def test_dmsetup_behind_a_merged_usr_sbin_symlink_is_run_from_its_real_path(
        verity_kernel: list[Entry], busybox: Entry, tmp_path: Path) -> None:
    tools = [Entry("usr/sbin/dmsetup", e.kind, e.mode, size=e.size, data=e.data) if e.path == "sbin/dmsetup" else e
             for e in dmsetup_entries()]
    members = stage_one(image(verity_kernel, busybox, *tools, Entry("sbin", Kind.SYMLINK, 0o777, linkname="usr/sbin")),
                        RootLocation("erofs", ROOT_ID, verity=TREE), "virtio", tmp_path)

    assert members["usr/sbin/dmsetup"].data == HOST_DMSETUP.read_bytes()
    assert "DMSETUP=/usr/sbin/dmsetup\n" in conf(members)
    assert stat.S_ISDIR(members["sbin"].mode) and "sbin/modprobe" in members  # stage one's own sbin stays a directory


def test_without_verity_stage_one_has_no_dmsetup(kernel_entries: list[Entry], busybox: Entry, tmp_path: Path) -> None:
    members = stage_one(image(kernel_entries, busybox), RootLocation("squashfs", ROOT_ID), "virtio", tmp_path)
    assert "sbin/dmsetup" not in members and "bin/losetup" not in members
    assert "VERITY" not in conf(members) and "dm_verity" not in module_names(members)


def verity_error(rootfs: Rootfs, tmp_path: Path) -> str:
    with pytest.raises(UserError) as err:
        stage_one(rootfs, RootLocation("squashfs", ROOT_ID, verity=TREE), "virtio", tmp_path)
    return str(err.value)


NO_DMSETUP = ("the image has no /sbin/dmsetup (nor /usr/sbin/dmsetup) for --verity (hint: add pkg/dmsetup to the "
              'spec\'s init images, e.g. init: [..., "@pkg:pkg/dmsetup"])')


def test_an_image_without_dmsetup_is_one_error_naming_pkg_dmsetup(kernel_entries: list[Entry], busybox: Entry,
                                                                  tmp_path: Path) -> None:
    assert verity_error(image(kernel_entries, busybox), tmp_path) == NO_DMSETUP


def test_a_missing_library_of_dmsetup_is_named(kernel_entries: list[Entry], busybox: Entry, tmp_path: Path) -> None:
    rootfs = image(kernel_entries, busybox, *dmsetup_entries(drop="libdevmapper"))
    assert verity_error(rootfs, tmp_path).startswith(
        "/sbin/dmsetup needs libdevmapper.so.1.02.1, which is not in the image (hint: ")


def test_a_dmsetup_that_is_no_elf_file_is_refused(kernel_entries: list[Entry], busybox: Entry, tmp_path: Path) -> None:
    script = bytes_entry("usr/sbin/dmsetup", b"#!/bin/sh\necho fake\n", 0o755)
    assert verity_error(image(kernel_entries, busybox, script), tmp_path).startswith(
        "/usr/sbin/dmsetup is not an ELF executable: --verity needs Debian's dmsetup")


def test_a_kernel_without_dm_verity_is_one_error(kernel_entries: list[Entry], busybox: Entry,
                                                 debian_kernel: DebianKernel, tmp_path: Path) -> None:
    version = debian_kernel.version
    assert verity_error(image(kernel_entries, busybox, *dmsetup_entries()), tmp_path) == (
        f"the kernel {version} has no dm_mod, dm_bufio, dm_verity (neither a module in lib/modules/{version} nor "
        "built in): root on media needs it (hint: add the module to the kernel image, e.g. "
        "kernels/cloud-amd64/build.yml)")


def test_the_root_hash_goes_on_the_command_line_only_with_verity() -> None:
    assert verity_cmdline("console=ttyS0", RootLocation("squashfs", ROOT_ID)) == "console=ttyS0"
    assert verity_cmdline("console=ttyS0", RootLocation("squashfs", ROOT_ID, verity=TREE)) == (
        f"console=ttyS0 linuxkit.verity={'ab' * 32}")


def test_the_init_script_reads_the_whole_device_and_says_one_line_on_a_mismatch() -> None:
    assert 'cat "$source" >/dev/null 2>&1 || fail "the root image fails dm-verity verification: it was changed ' \
           'after the build"' in INIT_SCRIPT
    assert "DM_DISABLE_UDEV=1" in INIT_SCRIPT and "--readonly --noudevsync" in INIT_SCRIPT


# -- the build: formats without a root image -----------------------------------------------------------------

@pytest.mark.parametrize(("args", "line"), [
    (["-f", "raw-efi"], "linuxkit-py: --verity: raw-efi with --root ram has no root image to protect (hint: add "
                        "--root squashfs (or --root erofs))"),
    (["-f", "iso-efi", "--root", "ram"], "linuxkit-py: --verity: iso-efi with --root ram has no root image to "
                                         "protect (hint: add --root squashfs (or --root erofs))"),
    (["-f", "tar"], "linuxkit-py: --verity: tar has no root image to protect (hint: use a disk or ISO format with "
                    "--root squashfs (e.g. raw-efi), or kernel+squashfs)"),
    (["-f", "uki", "--root", "squashfs"],
     "linuxkit-py: --verity: uki has no root image to protect (hint: use a disk or ISO format with --root squashfs "
     "(e.g. raw-efi), or kernel+squashfs)"),
])
def test_verity_without_a_root_image_is_one_line_naming_the_format_and_the_fix(
        tmp_path: Path, args: list[str], line: str) -> None:
    spec = tmp_path / "s.yml"
    spec.write_text("kernel: {image: linuxkit/kernel:6.6.13}\ninit: [linuxkit/init:v1.0.0]\n")
    result = run_cli("build", "--cache", tmp_path / "cache", "--dir", tmp_path / "out", "--verity", *args, spec,
                     stdin=b"")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [line]
    assert not (tmp_path / "out").exists()


def test_root_location_appends_the_tree_only_with_verity_and_keeps_the_root_id(tmp_path: Path) -> None:
    plain, protected = (data_file(tmp_path / name, 50 * BLOCK_SIZE) for name in ("plain.img", "verity.img"))
    without = root_location(Rootfs([], 0, options=FormatOptions(verity=False)), plain, "squashfs", "rootfs.squashfs")
    with_tree = root_location(Rootfs([], 0, options=FormatOptions(verity=True)), protected, "squashfs",
                              "rootfs.squashfs")

    assert without.verity is None and plain.stat().st_size == 50 * BLOCK_SIZE
    assert with_tree.verity is not None and protected.stat().st_size == (50 + 1) * BLOCK_SIZE  # one hash block
    assert with_tree.root_id == without.root_id  # the tree is after the superblock: stage one finds it the same
    assert (with_tree.image_path, with_tree.verity.hash_offset) == ("rootfs.squashfs", 50 * BLOCK_SIZE)


# -- the build: dmsetup from pkg/dmsetup ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def package_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the builds below (kernels/cloud-amd64, pkg/init, pkg/dmsetup), seeded with the stored .debs."""
    with stored_debs(tmp_path_factory.mktemp("verity-build") / "cache") as cache:
        yield cache


def build_verity_spec(cache: Path, tmp_path: Path, *init: str) -> subprocess.CompletedProcess[bytes]:
    """`build --verity -f kernel+squashfs` of a spec with Debian's cloud kernel and our packages `init`."""
    spec = tmp_path / "verity.yml"
    spec.write_text(yaml.safe_dump({
        "kernel": {"image": f"@pkg:{REPO / 'kernels' / 'cloud-amd64'}", "cmdline": "console=ttyS0"},
        "init": [f"@pkg:{REPO / 'pkg' / name}" for name in init]}))
    return run_cli("build", "--cache", cache, "--dir", tmp_path / "out", "--name", "v", "--no-sbom", "--verity",
                   "-f", "kernel+squashfs", spec, stdin=b"")


def test_a_verity_build_of_a_spec_without_pkg_dmsetup_is_one_line_naming_it(package_cache: Path,
                                                                            tmp_path: Path) -> None:
    result = build_verity_spec(package_cache, tmp_path, "init")

    assert result.returncode == 1
    errors = [line for line in result.stderr.decode().splitlines() if line.startswith("linuxkit-py: ")]
    assert errors == [f"linuxkit-py: {NO_DMSETUP}"]
    assert not list((tmp_path / "out").glob("v*"))


def test_a_verity_build_with_pkg_dmsetup_has_its_dmsetup_and_libraries_in_stage_one(package_cache: Path,
                                                                                  tmp_path: Path) -> None:
    result = build_verity_spec(package_cache, tmp_path, "init", "dmsetup")

    assert result.returncode == 0, result.stderr.decode()
    members = read_newc(gzip.decompress((tmp_path / "out" / "v-squashfs-initrd.img").read_bytes()))
    assert members["sbin/dmsetup"].data[:4] == b"\x7fELF" and members["sbin/dmsetup"].mode & 0o111
    assert {"lib/x86_64-linux-gnu/libdevmapper.so.1.02.1", "lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"} <= set(members)
    assert "DMSETUP=/sbin/dmsetup\n" in conf(members)
    assert re.search(r"linuxkit\.verity=[0-9a-f]{64}", (tmp_path / "out" / "v-cmdline").read_text())
