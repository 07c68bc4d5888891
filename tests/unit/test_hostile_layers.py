"""Hostile layers: what a stranger's image may hold, and what the builder does with it.

Layers are made byte by byte with `tarfile` (which writes `../` and absolute names as
given). Each case is either refused with one line naming the layer digest and the path,
or resolved inside the image root; nothing is ever written or opened on the host through
a layer's names, and a built image holds no entry that escapes its root.
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from linuxkit_py.archive.cpio import write_cpio
from linuxkit_py.archive.entry import Entry, Kind, read_data
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.cache.layers import layer_entries, layers_dir
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.rootfs.flatten import flatten_layers
from tests.bootimages import load_layout_into_cache
from tests.imagetools import ImageSpec, Layout
from tests.integration.conftest import run_cli

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
HOSTILE_REF = "localhost:5000/test/hostile:1"

Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644,
           **fields: Any) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size, info.mtime = kind, mode, link, len(data), 1_500_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def raw_tar(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def store(cache: Cache, blob: bytes, media_type: str = OCI_TAR) -> dict[str, Any]:
    cache.ensure()
    return {"mediaType": media_type, "digest": cache.put_blob(blob), "size": len(blob)}


def flatten_raw(tmp_path: Path, *layers: bytes) -> list[Entry]:
    """Index each layer from a cache (as a build does) and flatten them, bottom first."""
    cache = Cache(tmp_path / "cache")
    descs = [store(cache, raw) for raw in layers]
    return flatten_layers([layer_entries(cache, d) for d in descs], [f"layer {d['digest']}" for d in descs])


def refusal(tmp_path: Path, *layers: bytes) -> tuple[str, str]:
    """(the error line, the digest of the last layer) for layers that must be refused."""
    cache = Cache(tmp_path / "cache")
    descs = [store(cache, raw) for raw in layers]
    with pytest.raises(UserError) as info:
        flatten_layers([layer_entries(cache, d) for d in descs], [f"layer {d['digest']}" for d in descs])
    message = str(info.value)
    assert "\n" not in message
    return message, descs[-1]["digest"]


def by_path(entries: list[Entry]) -> dict[str, Entry]:
    return {e.path: e for e in entries}


# -- refused ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../etc/passwd", "a/../../etc/passwd", "./../x", "/../../x"])
def test_path_climbing_out_is_refused(tmp_path: Path, name: str) -> None:
    message, digest = refusal(tmp_path, raw_tar(member("a", tarfile.DIRTYPE, mode=0o755), member(name, data=b"x")))
    assert message == f"layer {digest}: refusing tar entry {name!r}: its path leaves the root"


@pytest.mark.parametrize("target", ["../outside", "a/../../outside", "/../outside"])
def test_hard_link_out_of_the_image_is_refused(tmp_path: Path, target: str) -> None:
    message, digest = refusal(tmp_path, raw_tar(member("etc/x", tarfile.LNKTYPE, link=target)))
    assert message == f"layer {digest}: refusing hard link 'etc/x' -> {target!r}: its target leaves the root"


def test_hard_link_to_a_later_entry_is_refused(tmp_path: Path) -> None:
    layer = raw_tar(member("early", tarfile.LNKTYPE, link="late"), member("late", data=b"secret"))
    message, digest = refusal(tmp_path, layer)
    assert message == f"layer {digest}: hard link 'early' -> 'late': no such file in this layer or below"


def test_hard_link_to_a_host_file_the_image_lacks_is_refused(tmp_path: Path) -> None:
    message, digest = refusal(tmp_path, raw_tar(member("shadow", tarfile.LNKTYPE, link="/etc/shadow")))
    assert message == f"layer {digest}: hard link 'shadow' -> 'etc/shadow': no such file in this layer or below"


@pytest.mark.parametrize("name", ["etc/.wh..", ".wh..", "etc/.wh."])
def test_whiteout_naming_dot_dot_is_refused(tmp_path: Path, name: str) -> None:
    lower = raw_tar(member("etc", tarfile.DIRTYPE, mode=0o755), member("etc/keep", data=b"k"))
    upper = raw_tar(member(name))
    message, digest = refusal(tmp_path, lower, upper)
    assert message == f"layer {digest}: invalid whiteout {name!r}"


def test_symlink_loop_through_the_root_is_refused(tmp_path: Path) -> None:
    """`etc -> /etc` then `etc/passwd`: inside the image root `etc` resolves to itself (ELOOP)."""
    layer = raw_tar(member("etc", tarfile.SYMTYPE, link="/etc"), member("etc/passwd", data=b"root::0:0::/:/bin/sh\n"))
    message, digest = refusal(tmp_path, layer)
    assert message == f"layer {digest}: too many levels of symbolic links in 'etc'"


def test_sparse_files_are_refused(tmp_path: Path) -> None:
    gnu = raw_tar(member("holes", tarfile.GNUTYPE_SPARSE, data=b"x"), fmt=tarfile.GNU_FORMAT)
    message, digest = refusal(tmp_path, gnu)
    assert message == f"layer {digest}: holes: sparse files in tar archives are not supported"
    pax = raw_tar(member("holes2", data=b"x", pax_headers={"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                                            "GNU.sparse.name": "real", "GNU.sparse.realsize": "9"}))
    message, digest = refusal(tmp_path / "pax", pax)
    assert message == f"layer {digest}: real: sparse files in tar archives are not supported"


@pytest.mark.parametrize("declared", [1 << 40, (1 << 88) - 1])  # octal, then GNU base-256
def test_huge_declared_size_is_refused_without_reading_it(tmp_path: Path, declared: int) -> None:
    info = tarfile.TarInfo("huge")
    info.size = declared
    layer = info.tobuf(tarfile.GNU_FORMAT) + b"tiny" + bytes(508) + bytes(1024)
    message, digest = refusal(tmp_path, layer)
    assert message == (f"layer {digest}: not a valid tar archive: truncated: an entry at byte 0 needs "
                       f"{declared} bytes of data")


def test_decompression_bomb_stops_at_the_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = gzip.compress(raw_tar(member("zeros", data=bytes(32 << 20))), compresslevel=9, mtime=0)
    assert len(bomb) < 64 << 10  # 32 MiB from under 64 KiB
    monkeypatch.setenv("LINUXKIT_PY_MAX_LAYER_SIZE", "4M")
    cache = Cache(tmp_path / "cache")
    layer = store(cache, bomb, OCI_GZIP)
    with pytest.raises(UserError) as info:
        layer_entries(cache, layer)
    assert str(info.value) == (f"layer {layer['digest']}: uncompressed size exceeds the limit of {4 << 20} bytes "
                               "(set by LINUXKIT_PY_MAX_LAYER_SIZE); refusing it")
    leftovers = [p.name for p in layers_dir(cache).iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []  # no partial tar under a final or temporary name
    monkeypatch.setenv("LINUXKIT_PY_MAX_LAYER_SIZE", "64M")  # raising the limit lets it through
    assert [e.size for e in layer_entries(cache, layer)] == [32 << 20]


def test_entry_count_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINUXKIT_PY_MAX_LAYER_ENTRIES", "10")
    layer = raw_tar(*(member(f"f{i:02d}") for i in range(11)))
    message, digest = refusal(tmp_path, layer)
    assert message == (f"layer {digest}: more than 10 entries, refusing at 'f10' "
                       "(limit set by LINUXKIT_PY_MAX_LAYER_ENTRIES)")


@pytest.mark.parametrize("value", ["lots", "0", "-5", "12X", "1.5G"])
def test_bad_limit_value_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LINUXKIT_PY_MAX_LAYER_SIZE", value)
    cache = Cache(tmp_path / "cache")
    with pytest.raises(UserError) as info:
        layer_entries(cache, store(cache, raw_tar(member("a"))))
    assert str(info.value) == (f"LINUXKIT_PY_MAX_LAYER_SIZE={value!r} is not a positive number "
                               "(e.g. 1000000, 512M or 16G)")


# -- resolved inside the image root -------------------------------------------------------------------
def test_absolute_paths_land_inside_the_root(tmp_path: Path) -> None:
    layer = raw_tar(member("/etc", tarfile.DIRTYPE, mode=0o755), member("/etc/passwd", data=b"p"),
                    member("//usr///bin/./x", data=b"x"))
    assert {p: read_data(e.data) for p, e in by_path(flatten_raw(tmp_path, layer)).items()} == {
        "etc": b"", "etc/passwd": b"p", "usr": b"", "usr/bin": b"", "usr/bin/x": b"x"}


@pytest.mark.parametrize(("link", "lands_at"), [
    ("/tmp/escape", "tmp/escape/f"),
    ("../../../../../tmp/escape", "tmp/escape/f"),
    ("/../../../tmp/escape", "tmp/escape/f"),
    ("../../..", "f"),
    ("/", "f"),
])
def test_file_written_through_an_escaping_symlink_stays_in_the_image(tmp_path: Path, link: str,
                                                                      lands_at: str) -> None:
    """A file under a symlink whose target climbs out is placed where the target resolves *in the image*."""
    layer = raw_tar(member("sub", tarfile.DIRTYPE, mode=0o755), member("sub/out", tarfile.SYMTYPE, link=link),
                    member("sub/out/f", data=b"payload"))
    entries = by_path(flatten_raw(tmp_path, layer))
    assert read_data(entries[lands_at].data) == b"payload"
    assert entries["sub/out"].kind is Kind.SYMLINK and entries["sub/out"].linkname == link  # kept verbatim
    assert not Path("/tmp/escape").exists()


def test_whiteout_through_an_escaping_symlink_stays_in_the_image(tmp_path: Path) -> None:
    lower = raw_tar(member("keep", data=b"k"), member("d", tarfile.DIRTYPE, mode=0o755),
                    member("d/up", tarfile.SYMTYPE, link="../../../.."))
    upper = raw_tar(member("d/up/.wh.keep"))
    assert "keep" not in by_path(flatten_raw(tmp_path, lower, upper))


def test_duplicate_entries_last_one_wins(tmp_path: Path) -> None:
    layer = raw_tar(member("f", data=b"first"), member("f", data=b"second", mode=0o600),
                    member("d", tarfile.DIRTYPE, mode=0o700), member("d", tarfile.DIRTYPE, mode=0o755))
    entries = by_path(flatten_raw(tmp_path, layer))
    assert (read_data(entries["f"].data), entries["f"].mode, entries["d"].mode) == (b"second", 0o600, 0o755)
    assert len([e for e in flatten_raw(tmp_path / "again", layer) if e.path == "f"]) == 1


def test_special_files_and_modes_are_kept_as_the_image_says(tmp_path: Path) -> None:
    """Device nodes, setuid/setgid/sticky bits: an image may carry them (LinuxKit keeps them); they are
    metadata in the output archive, never created on the host."""
    layer = raw_tar(member("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0),
                    member("dev/mem", tarfile.CHRTYPE, mode=0o640, devmajor=1, devminor=1),
                    member("fifo", tarfile.FIFOTYPE, mode=0o600),
                    member("bin/su", data=b"#!", mode=0o4755), member("tmp", tarfile.DIRTYPE, mode=0o1777),
                    member("bin/wall", data=b"w", mode=0o2755))
    entries = by_path(flatten_raw(tmp_path, layer))
    summary = {p: (e.kind, e.mode, e.devmajor, e.devminor) for p, e in entries.items()}
    assert summary == {"bin": (Kind.DIR, 0o755, 0, 0), "bin/su": (Kind.FILE, 0o4755, 0, 0),
                       "bin/wall": (Kind.FILE, 0o2755, 0, 0), "dev": (Kind.DIR, 0o755, 0, 0),
                       "dev/mem": (Kind.CHAR, 0o640, 1, 1), "dev/sda": (Kind.BLOCK, 0o660, 8, 0),
                       "fifo": (Kind.FIFO, 0o600, 0, 0), "tmp": (Kind.DIR, 0o1777, 0, 0)}
    assert not (Path(tmp_path) / "dev").exists()


NON_UTF8 = b"caf\xe9-\xff\xfe".decode("utf-8", "surrogateescape")
LONG = "/".join(["d" * 255] * 15) + "/" + "f" * 255  # 4095 bytes: PATH_MAX - 1, every component NAME_MAX


def test_non_utf8_and_long_names_survive_to_the_output_byte_for_byte(tmp_path: Path) -> None:
    layer = raw_tar(member(NON_UTF8, data=b"latin1"), member(LONG, data=b"deep"),
                    member("l" * 200, tarfile.SYMTYPE, link="t" * 4000), fmt=tarfile.GNU_FORMAT)
    entries = flatten_raw(tmp_path, layer)
    out = io.BytesIO()
    write_tar(entries, out, 0)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), encoding="utf-8", errors="surrogateescape") as tf:
        members = {m.name: m for m in tf.getmembers()}
        assert tf.extractfile(members[NON_UTF8]).read() == b"latin1"  # type: ignore[union-attr]
        assert tf.extractfile(members[LONG]).read() == b"deep"  # type: ignore[union-attr]
        assert members["l" * 200].linkname == "t" * 4000
    names = cpio_names(entries)
    assert NON_UTF8.encode("utf-8", "surrogateescape") in names and LONG.encode() in names


# -- the builder opens nothing on the host named by a layer ---------------------------------------------
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, Path)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


def test_indexing_flattening_and_writing_open_only_the_cache_and_the_output(tmp_path: Path,
                                                                           opened: list[str]) -> None:
    layer = raw_tar(member("etc", tarfile.SYMTYPE, link="/etc"), member("x", tarfile.SYMTYPE, link="/etc/shadow"),
                    member("/etc2/passwd", data=b"p"), member("host", tarfile.SYMTYPE, link="/"),
                    member("host/root/.ssh/authorized_keys", data=b"key"),
                    member("hl", tarfile.LNKTYPE, link="/etc2/passwd"))
    entries = flatten_raw(tmp_path, layer)
    with open(tmp_path / "out.tar", "wb") as out:
        write_tar(entries, out, 0)
    cpio_names(entries)
    outside = [p for p in opened if not p.startswith(str(tmp_path))]
    assert outside == []
    assert any(p.startswith(str(tmp_path / "cache")) for p in opened)  # the hook did see the reads


# -- an image built from a hostile image ----------------------------------------------------------------
def cpio_names(entries: list[Entry]) -> list[bytes]:
    """Member names of the newc archive write_cpio makes of `entries`."""
    buf = io.BytesIO()
    write_cpio(entries, buf, 0)
    data, pos, names = buf.getvalue(), 0, list[bytes]()
    while True:
        namesize, filesize = int(data[pos + 94 : pos + 102], 16), int(data[pos + 54 : pos + 62], 16)
        name = data[pos + 110 : pos + 110 + namesize - 1]
        if name == b"TRAILER!!!":
            return names
        names.append(name)
        pos += 110 + namesize
        pos += -pos % 4 + filesize
        pos += -pos % 4


def hostile_layers() -> list[bytes]:
    base = raw_tar(
        member("/bin", tarfile.DIRTYPE, mode=0o755), member("/bin/busybox", data=b"\x7fELF", mode=0o4755),
        member("etc", tarfile.DIRTYPE, mode=0o755), member("etc/passwd", data=b"root:x:0:0::/:/bin/sh\n"),
        member("up", tarfile.SYMTYPE, link="../../../../../../../../tmp/escape"),
        member("up/planted", data=b"through a climbing link"),
        member("abs", tarfile.SYMTYPE, link="/containers/onboot"),
        member("abs/planted", data=b"through an absolute link"),
        member("root", tarfile.SYMTYPE, link="/"),
        member("root/etc/shadow", data=b"root:*:1::::::\n"),
        member("/bin/sh", tarfile.LNKTYPE, link="/bin/busybox"),
        member("usr/bin/env", tarfile.LNKTYPE, link="bin/busybox"),
        member("dev/kmem", tarfile.CHRTYPE, mode=0o640, devmajor=1, devminor=2),
        member(NON_UTF8, data=b"x"), member(LONG, data=b"deep"),
        member("dup", data=b"one"), member("dup", data=b"two"),
    )
    upper = raw_tar(member("etc/.wh.passwd"), member("/etc/passwd", data=b"replaced\n"),
                    member("root/.wh.up"), member("escape", tarfile.SYMTYPE, link="../../../../.."))
    return [base, upper]


def test_build_of_a_hostile_image_has_no_entry_escaping_its_root(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layout.add_image("hostile", ImageSpec(hostile_layers(), config={"Cmd": ["/bin/sh"]}))
    cache = Cache(tmp_path / "cache")
    load_layout_into_cache(tmp_path / "layout", "hostile", cache, HOSTILE_REF)
    spec = tmp_path / "hostile.yml"
    spec.write_text(f"services:\n  - name: hostile\n    image: {HOSTILE_REF}\n")
    result = run_cli("build", "--cache", tmp_path / "cache", "--dir", tmp_path / "out", "-f", "tar", spec)
    assert result.returncode == 0, result.stderr.decode()
    assert not Path("/tmp/escape").exists()
    bundle = "containers/services/hostile/lower/"
    with tarfile.open(tmp_path / "out" / "hostile.tar", encoding="utf-8", errors="surrogateescape") as tf:
        members = tf.getmembers()
        files = {m.name: m for m in members}
        content = {m.name: tf.extractfile(m).read() for m in members if m.isfile()}  # type: ignore[union-attr]
    for m in members:
        parts = m.name.split("/")
        assert not m.name.startswith("/") and "" not in parts and "." not in parts and ".." not in parts, m.name
        assert not any(files[p].issym() for p in ("/".join(parts[:i]) for i in range(1, len(parts)))
                       if p in files), f"{m.name} lies under a symlink"
        if m.islnk():
            assert not m.linkname.startswith("/") and ".." not in m.linkname.split("/"), m.linkname
            if m.name.startswith(bundle):
                assert m.linkname.startswith(bundle), (m.name, m.linkname)
    assert content[bundle + "tmp/escape/planted"] == b"through a climbing link"
    assert content[bundle + "containers/onboot/planted"] == b"through an absolute link"
    assert content[bundle + "etc/shadow"] == b"root:*:1::::::\n"
    assert content[bundle + "etc/passwd"] == b"replaced\n"
    assert content[bundle + "dup"] == b"two"
    assert "containers/onboot/planted" not in files and "tmp/escape/planted" not in files
    assert files[bundle + "bin/busybox"].mode == 0o4755 and files[bundle + "dev/kmem"].ischr()
    assert bundle + "up" not in files  # whited out through the `root -> /` link
    assert files[bundle + "escape"].linkname == "../../../../.."  # a symlink's target is data: kept verbatim
    assert bundle + NON_UTF8 in files and bundle + LONG in files

