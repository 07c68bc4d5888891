"""`kernel+initrd` and `tar-kernel-initrd` outputs, and the parallel gzip under them."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from zlib_ng import zlib_ng

from linuxkit_py.archive.compress import GZIP_DEFAULT_LEVEL, ParallelGzipWriter
from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.errors import UserError
from linuxkit_py.formats import KEPT, Rootfs, get_format
from linuxkit_py.formats.initrd import kernel_initrd_digests, split_boot, write_initrd

EPOCH = 1_700_000_000
UCODE = b"070701" + b"0" * 104 + b"kernel/x86/microcode/GenuineIntel.bin\0" + b"\0" * 350
CMDLINE = b"console=ttyS0 page_poison=1"


def _rootfs(tmp_path: Path, ucode: bool = True) -> Rootfs:
    layer = tmp_path / "layer.tar"
    kernel = os.urandom(100_000)
    layer.write_bytes(b"\0" * 512 + kernel + b"\0" * 512 + UCODE)
    entries = [
        Entry("boot", Kind.DIR, 0o755),
        Entry("boot/cmdline", Kind.FILE, 0o644, size=len(CMDLINE), data=CMDLINE),
        Entry("boot/dtb", Kind.DIR, 0o755),
        Entry("boot/dtb/board.dtb", Kind.FILE, 0o644, size=3, data=b"dtb"),
        Entry("boot/kernel", Kind.FILE, 0o644, size=len(kernel),
              data=FileRegion(str(layer), 512, len(kernel))),
        Entry("bin", Kind.DIR, 0o755),
        Entry("bin/busybox", Kind.FILE, 0o755, size=20_000, data=os.urandom(10_000) * 2),
        Entry("bin/sh", Kind.HARDLINK, 0o755, linkname="bin/busybox"),
        Entry("etc", Kind.DIR, 0o755),
        Entry("etc/board.dtb", Kind.HARDLINK, 0o644, linkname="boot/dtb/board.dtb"),
        Entry("etc/board-copy.dtb", Kind.HARDLINK, 0o644, linkname="boot/dtb/board.dtb"),
        Entry("etc/motd", Kind.FILE, 0o644, size=6, data=b"hello\n"),
        Entry("init", Kind.SYMLINK, 0o777, linkname="bin/busybox"),
        Entry("lib/modules", Kind.DIR, 0o755),
    ]
    if ucode:
        entries.insert(5, Entry("boot/ucode.cpio", Kind.FILE, 0o644, size=len(UCODE),
                                data=FileRegion(str(layer), 1024 + len(kernel), len(UCODE))))
    return Rootfs(entries, EPOCH)


def _kernel_initrd(rootfs: Rootfs) -> tuple[bytes, bytes, bytes]:
    outs = [io.BytesIO(), io.BytesIO(), io.BytesIO()]
    get_format("kernel+initrd").write(rootfs, outs)  # type: ignore[arg-type]
    kernel, initrd, cmdline = (o.getvalue() for o in outs)
    return kernel, initrd, cmdline


def _cpio_names(cpio: bytes) -> list[str]:
    return subprocess.run(["cpio", "-t", "--quiet"], input=cpio, check=True,
                          capture_output=True).stdout.decode().splitlines()


def test_format_rows() -> None:
    assert get_format("kernel+initrd").suffixes == ("-kernel", "-initrd.img", "-cmdline")
    assert get_format("tar-kernel-initrd").suffixes == ("-initrd.tar",)


def test_kernel_initrd_outputs(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    kernel, initrd, cmdline = _kernel_initrd(rootfs)
    assert kernel == (tmp_path / "layer.tar").read_bytes()[512:100_512]
    assert cmdline == CMDLINE
    # ucode first, uncompressed, then a gzip member with no mtime and no name.
    assert initrd.startswith(UCODE)
    compressed = initrd[len(UCODE):]
    assert compressed[:4] == b"\x1f\x8b\x08\x00" and compressed[4:8] == b"\0\0\0\0"
    subprocess.run(["gzip", "-t"], input=compressed, check=True)
    names = _cpio_names(gzip.decompress(compressed))
    assert names == ["bin", "bin/busybox", "bin/sh", "etc", "etc/board.dtb", "etc/board-copy.dtb", "etc/motd",
                     "init", "lib/modules"]


def test_initrd_holds_the_tar_outputs_non_boot_entries(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    tar_buf = io.BytesIO()
    get_format("tar").write(rootfs, [tar_buf])
    tar_names = subprocess.run(["tar", "-t"], input=tar_buf.getvalue(), check=True,
                               capture_output=True).stdout.decode().splitlines()
    non_boot = [n.rstrip("/") for n in tar_names if not (n == "boot/" or n.startswith("boot/"))]
    _, initrd, _ = _kernel_initrd(rootfs)
    assert _cpio_names(gzip.decompress(initrd[len(UCODE):])) == non_boot


def test_initrd_extracts_with_hard_links_and_boot_links_resolved(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    _, initrd, _ = _kernel_initrd(rootfs)
    out = tmp_path / "out"
    out.mkdir()
    cpio = gzip.decompress(initrd[len(UCODE):])
    subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=out, check=True)
    busybox = next(e for e in rootfs.entries if e.path == "bin/busybox").data
    assert (out / "bin/busybox").read_bytes() == busybox
    assert os.stat(out / "bin/sh").st_ino == os.stat(out / "bin/busybox").st_ino
    # The dtb itself was dropped with boot/; its first link outside boot/ now holds the data.
    assert (out / "etc/board.dtb").read_bytes() == b"dtb"
    assert os.stat(out / "etc/board-copy.dtb").st_ino == os.stat(out / "etc/board.dtb").st_ino
    assert os.readlink(out / "init") == "bin/busybox"
    assert not (out / "boot").exists()


def test_without_ucode_the_initrd_is_plain_gzip(tmp_path: Path) -> None:
    _, initrd, _ = _kernel_initrd(_rootfs(tmp_path, ucode=False))
    assert initrd.startswith(b"\x1f\x8b")
    assert "bin/busybox" in _cpio_names(gzip.decompress(initrd))


def test_deterministic(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    assert _kernel_initrd(rootfs) == _kernel_initrd(rootfs)


def test_missing_kernel_is_a_user_error(tmp_path: Path) -> None:
    rootfs = Rootfs([e for e in _rootfs(tmp_path).entries if e.path != "boot/kernel"], EPOCH)
    with pytest.raises(UserError, match="^no kernel: the root filesystem has no boot/kernel"):
        _kernel_initrd(rootfs)


def test_tar_kernel_initrd(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    out = tmp_path / "name-initrd.tar"
    with open(out, "wb") as f:
        get_format("tar-kernel-initrd").write(rootfs, [f])
    kernel, initrd, _ = _kernel_initrd(rootfs)
    with tarfile.open(out) as tf:
        members = tf.getmembers()
        assert [(m.name, m.mode, m.mtime) for m in members] == [
            ("kernel", 0o644, EPOCH), ("initrd.img", 0o644, EPOCH), ("cmdline", 0o644, EPOCH),
            ("ucode.cpio", 0o644, EPOCH)]
        contents = [tf.extractfile(m).read() for m in members]  # type: ignore[union-attr]
    assert contents == [kernel, initrd[len(UCODE):], CMDLINE, UCODE]
    assert sorted(os.listdir(tmp_path)) == ["layer.tar", "name-initrd.tar"]  # no temporary left behind


def test_zstd_initrd(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path, ucode=False)
    entries = split_boot(rootfs.entries).initrd
    outs = []
    for threads in (1, 2):
        buf = io.BytesIO()
        write_initrd(entries, buf, EPOCH, compression="zstd", threads=threads)
        outs.append(buf.getvalue())
    assert outs[0] == outs[1]
    cpio = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(outs[0])).read()
    assert subprocess.run(["zstd", "-t", "-q"], input=outs[0]).returncode == 0
    assert _cpio_names(cpio)[:3] == ["bin", "bin/busybox", "bin/sh"]


def test_parallel_gzip_is_the_same_for_any_thread_count() -> None:
    data = b"".join(os.urandom(300) * 40 + bytes(range(256)) * 20 for _ in range(400))  # ~7 MB
    outs = set()
    for threads in (1, 2, 5):
        buf = io.BytesIO()
        writer = ParallelGzipWriter(buf, threads=threads, block_size=256 * 1024)
        for i in range(0, len(data), 70_001):
            writer.write(data[i : i + 70_001])
        writer.close()
        outs.add(buf.getvalue())
    (out,) = outs
    assert gzip.decompress(out) == data
    assert subprocess.run(["gzip", "-dc"], input=out, capture_output=True, check=True).stdout == data
    # Blocks primed with the previous block's window compress about as well as one stream at that level
    # (within 0.05% on the benchmark's 442 MB cpio; this synthetic data at 256 KiB blocks costs 3.4%).
    assert len(out) < len(zlib_ng.compress(data, GZIP_DEFAULT_LEVEL, wbits=31)) * 1.05


def test_each_file_has_a_digest_of_what_it_is_made_of(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    kernel, initrd, cmdline = kernel_initrd_digests(rootfs)
    assert kernel_initrd_digests(Rootfs(list(rootfs.entries), EPOCH)) == [kernel, initrd, cmdline]

    def changed(path: str, data: bytes) -> list[bool]:
        entries = [e.evolve(size=len(data), data=data) if e.path == path else e for e in rootfs.entries]
        return [a != b for a, b in zip(kernel_initrd_digests(Rootfs(entries, EPOCH)),
                                       [kernel, initrd, cmdline], strict=True)]

    assert changed("boot/cmdline", b"console=ttyS0 quiet") == [False, False, True]
    assert changed("etc/motd", b"welcome, edited\n") == [False, True, False]
    assert changed("boot/dtb/board.dtb", b"other") == [False, True, False]  # in the initrd through its links
    host = tmp_path / "motd"
    host.write_bytes(b"hello\n")
    entries = [*rootfs.entries, Entry("etc/host", Kind.FILE, 0o644, size=6, data=FileRegion(str(host), 0, 6))]
    before = kernel_initrd_digests(Rootfs(entries, EPOCH))
    host.write_bytes(b"HELLO\n")  # a host file is named by its bytes
    assert kernel_initrd_digests(Rootfs(entries, EPOCH))[1] != before[1]


def test_kept_files_are_not_written(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    _, initrd, _ = _kernel_initrd(rootfs)
    out = io.BytesIO()
    get_format("kernel+initrd").write(rootfs, [KEPT, out, KEPT])  # type: ignore[list-item]
    assert out.getvalue() == initrd
    with pytest.raises(RuntimeError):
        KEPT.write(b"x")
