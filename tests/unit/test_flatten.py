"""Flattening layers: compared with `umoci unpack` on the same OCI layouts, plus our own guarantees."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from linuxkit_py.archive.entry import Entry, Kind, read_data
from linuxkit_py.archive.tarindex import read_tar_entries
from linuxkit_py.cache.image import load_cached_image
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.rootfs.flatten import flatten_image, flatten_layers
from tests.imagetools import OPQ, WH, D, F, H, ImageSpec, L, Layout, Member, tar_layer

# name -> layers (bottom first). Each is unpacked by umoci and by us, and the trees compared.
IMAGES: dict[str, list[list[Member]]] = {
    "whiteouts": [
        [D("etc"), F("etc/a", "a"), F("etc/b", "b"), D("etc/sub"), F("etc/sub/x", "x"), F("top", "t")],
        [D("etc"), WH("etc/a"), WH("etc/sub"), WH("top"), WH("etc/never-existed")],
    ],
    "opaque": [
        [D("d"), F("d/a", "a"), D("d/sub"), F("d/sub/c", "c"), D("keep"), F("keep/k", "k")],
        [D("d", mode=0o700), OPQ("d"), F("d/new", "n")],
        [D("d"), F("d/later", "l")],
    ],
    "recreated-dir": [
        [D("d"), F("d/old", "o"), D("d/oldsub"), F("d/oldsub/x", "x"), D("e"), F("e/old", "o")],
        [WH("d"), WH("e"), D("e"), F("e/new", "same layer")],
        [D("d", mode=0o750), F("d/new", "n")],
    ],
    "dir-file-replacement": [
        [D("x"), F("x/a", "a"), D("x/sub"), F("x/sub/b", "b"), F("y", "file y"), L("z", "x")],
        [F("x", "now a file"), D("y"), F("y/inside", "i"), D("z"), F("z/zz", "zz")],
        [D("x"), F("x/c", "c")],
    ],
    "hard-links": [
        [D("bin"), F("bin/busybox", "bb", mode=0o755), H("bin/sh", "bin/busybox"), H("bin/ls", "bin/busybox"),
         F("a", "old a"), H("b", "a")],
        [F("a", "new a"), H("c", "b"), H("bin/cat", "bin/ls"), WH("bin/busybox")],
        [H("d", "c")],
    ],
    "modes-and-symlinks": [
        [D("tmp", mode=0o1777), D("usr"), D("usr/bin"), F("usr/bin/su", "su", mode=0o4755),
         F("usr/bin/wall", "w", mode=0o2755), F("secret", "s", mode=0o400), L("abs", "/usr/bin/su"),
         L("dangling", "nowhere"), L("up", "../../.."), D("private", mode=0o700), F("private/p", "p")],
        [F("secret", "s2", mode=0o640), L("abs", "usr/bin/wall")],
    ],
    "symlinked-parents": [
        [D("usr"), D("usr/lib"), L("lib", "usr/lib"), L("abslib", "/usr/lib")],
        [F("lib/libc.so", "libc"), F("abslib/libm.so", "libm")],
        [WH("lib/libc.so")],
    ],
    "implicit-parents": [
        [F("a/b/c/file", "deep")],
        [F("a/b/other", "o"), D("a", mode=0o700)],
    ],
}


def _build(tmp_path: Path, name: str) -> tuple[Path, str]:
    layout = Layout(tmp_path / "layout")
    layout.add_image(name, ImageSpec(layers=[tar_layer(*layer) for layer in IMAGES[name]]))
    return layout.root, name


View = dict[str, tuple[object, ...]]


def _umoci_view(root: Path, tag: str, tmp_path: Path) -> View:
    bundle = tmp_path / "bundle"
    subprocess.run(["sh", "-c", 'umask 022 && exec umoci unpack --rootless --image "$0:$1" "$2"',
                    str(root), tag, str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    view: View = {}
    by_inode: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            path = str(full.relative_to(rootfs))
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                view[path] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISLNK(st.st_mode):
                view[path] = ("symlink", os.readlink(full))
            else:
                assert stat.S_ISREG(st.st_mode), path
                view[path] = ("file", stat.S_IMODE(st.st_mode), full.read_bytes())
                by_inode.setdefault(st.st_ino, []).append(path)
    for paths in by_inode.values():
        for path in paths:
            view[path] += (frozenset(paths),)
    return view


def _our_view(entries: list[Entry]) -> View:
    view: View = {}
    groups: dict[str, set[str]] = {}
    for e in entries:
        if e.kind is Kind.DIR:
            view[e.path] = ("dir", e.mode)
        elif e.kind is Kind.SYMLINK:
            view[e.path] = ("symlink", e.linkname)
        elif e.kind is Kind.FILE:
            view[e.path] = ("file", e.mode, read_data(e.data))
            groups[e.path] = {e.path}
        else:
            assert e.kind is Kind.HARDLINK, e
            view[e.path] = view[e.linkname][:3]
            groups[e.linkname].add(e.path)
    for members in groups.values():
        for path in members:
            view[path] += (frozenset(members),)
    return view


def _ours(root: Path, tag: str) -> list[Entry]:
    cache = Cache(root)
    image = load_cached_image(cache, tag, "amd64")
    assert image is not None
    return flatten_image(cache, image)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_flatten_matches_umoci(tmp_path: Path, name: str) -> None:
    root, tag = _build(tmp_path, name)
    expected = _umoci_view(root, tag, tmp_path)
    assert _our_view(_ours(root, tag)) == expected


def _paths(entries: list[Entry]) -> list[str]:
    return [e.path for e in entries]


def test_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    assert _paths(_ours(*_build(tmp_path, "whiteouts"))) == ["etc", "etc/b"]
    entries = _ours(*_build(tmp_path / "2", "opaque"))
    assert _paths(entries) == ["d", "d/later", "d/new", "keep", "keep/k"]
    assert entries[0].mode == 0o755  # the top layer's metadata for d


def test_a_recreated_directory_does_not_get_its_old_files_back(tmp_path: Path) -> None:
    entries = _ours(*_build(tmp_path, "recreated-dir"))
    assert _paths(entries) == ["d", "d/new", "e", "e/new"]
    assert entries[0].mode == 0o750


def test_hard_links_keep_the_content_they_linked(tmp_path: Path) -> None:
    entries = _ours(*_build(tmp_path, "hard-links"))
    by_path = {e.path: e for e in entries}
    assert read_data(by_path["a"].data) == b"new a"
    # b linked the old a; c and d linked b: one group, the first path in output order holds the data.
    assert (by_path["b"].kind, read_data(by_path["b"].data)) == (Kind.FILE, b"old a")
    assert [(by_path[p].kind, by_path[p].linkname) for p in ("c", "d")] == [(Kind.HARDLINK, "b")] * 2
    # busybox was whited out, its other names stay linked together.
    assert (by_path["bin/cat"].kind, read_data(by_path["bin/cat"].data), by_path["bin/cat"].mode) == (
        Kind.FILE, b"bb", 0o755)
    assert [(by_path[p].kind, by_path[p].linkname) for p in ("bin/ls", "bin/sh")] == [
        (Kind.HARDLINK, "bin/cat")] * 2


def test_output_is_sorted_with_parents_first_and_synthesised_dirs(tmp_path: Path) -> None:
    entries = _ours(*_build(tmp_path, "implicit-parents"))
    assert [(e.path, e.kind, e.mode) for e in entries] == [
        ("a", Kind.DIR, 0o700), ("a/b", Kind.DIR, 0o755), ("a/b/c", Kind.DIR, 0o755),
        ("a/b/c/file", Kind.FILE, 0o644), ("a/b/other", Kind.FILE, 0o644)]
    mixed = flatten_layers([_layer(tmp_path, F("a-b", "1"), F("a/b", "2"), F("a.b", "3"), F("a/a", "4"))])
    assert _paths(mixed) == ["a", "a/a", "a/b", "a-b", "a.b"]


def test_a_file_in_the_way_of_a_parent_becomes_a_directory(tmp_path: Path) -> None:
    # umoci 0.4.7 (Debian 12) fails here; later umoci replaces the file, and so do we.
    entries = flatten_layers([_layer(tmp_path, F("file", "f")), _layer(tmp_path, F("file/inside", "i"))])
    assert [(e.path, e.kind) for e in entries] == [("file", Kind.DIR), ("file/inside", Kind.FILE)]


def test_whiteout_only_hides_lower_layers(tmp_path: Path) -> None:
    # The whiteout comes after the file in the same layer: the file stays.
    entries = flatten_layers([_layer(tmp_path, F("x", "low")),
                              _layer(tmp_path, F("x", "same layer"), WH("x"))])
    assert [(e.path, read_data(e.data)) for e in entries] == [("x", b"same layer")]


def _layer(tmp_path: Path, *members: Member) -> list[Entry]:
    tar = tmp_path / f"layer{len(list(tmp_path.glob('layer*')))}.tar"
    tar.write_bytes(tar_layer(*members))
    return read_tar_entries(tar, tar.name)


@pytest.mark.parametrize(("layers", "message"), [
    ([[H("b", "a")]], "layer 1: hard link 'b' -> 'a': no such file in this layer or below"),
    ([[F("a", "x")], [WH("a"), H("b", "a")]], "layer 2: hard link 'b' -> 'a': no such file in this layer"),
    ([[D("d")], [H("b", "d")]], "layer 2: hard link 'b' -> 'd': no such file in this layer or below"),
    ([[H("b", "a"), F("a", "later in the tar")]], "layer 1: hard link 'b' -> 'a': no such file"),
    ([[F("d/.wh.")]], "layer 1: invalid whiteout 'd/.wh.'"),
    ([[L("loop", "loop"), F("loop/x")]], "layer 1: too many levels of symbolic links in 'loop'"),
])
def test_bad_layers(tmp_path: Path, layers: list[list[Member]], message: str) -> None:
    with pytest.raises(UserError) as err:
        flatten_layers([_layer(tmp_path, *members) for members in layers])
    assert str(err.value).startswith(message)


def test_errors_name_the_image_and_layer(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layout.add_image("bad", ImageSpec(layers=[tar_layer(F("a")), tar_layer(H("b", "nope"))]))
    cache = Cache(layout.root)
    image = load_cached_image(cache, "bad", "amd64")
    assert image is not None
    with pytest.raises(UserError, match=f"^bad: layer {image.layers[1]['digest']}: hard link 'b' -> 'nope'"):
        flatten_image(cache, image)


def test_aufs_metadata_and_whiteouts_never_appear(tmp_path: Path) -> None:
    entries = flatten_layers([
        _layer(tmp_path, D(".wh..wh.plnk"), F(".wh..wh.plnk/123.456", "x"), F(".wh..wh.aufs"), F("keep")),
        _layer(tmp_path, WH("gone"), OPQ("dir"), D("dir")),
    ])
    assert _paths(entries) == ["dir", "keep"]


def test_a_directory_replaced_between_its_members_is_made_again(tmp_path: Path) -> None:
    """Members of one directory share one lookup of it: not across an entry that replaces it or what a
    symlink on the way points to."""
    entries = flatten_layers([_layer(tmp_path, D("usr"), D("usr/lib"), L("lib", "usr/lib"), F("lib/a", "a"),
                                     F("usr/lib", "now a file"), F("lib/b", "b"),
                                     D("d"), F("d/x", "x"), F("d", "file"), F("d/y", "y"))])
    assert [(e.path, e.kind) for e in entries] == [
        ("d", Kind.DIR), ("d/y", Kind.FILE), ("lib", Kind.SYMLINK), ("usr", Kind.DIR), ("usr/lib", Kind.DIR),
        ("usr/lib/b", Kind.FILE)]


# -- the kept flattened image (derived/flat/) -----------------------------------------------------------------

KEPT_LAYERS = [
    [D("etc"), F("etc/a", "a" * 70_000), F("etc/b", "b"), L("etc/l", "a"), H("etc/h", "etc/a"), D("gone")],
    [D("etc"), WH("gone"), F("etc/b", "b again"), F("etc/c", "c", mode=0o600, uid=7, gid=8)],
]


def _kept_image(tmp_path: Path) -> tuple[Cache, Any]:
    layout = Layout(tmp_path / "layout")
    layout.add_image("kept", ImageSpec(layers=[tar_layer(*members) for members in KEPT_LAYERS]))
    cache = Cache(layout.root)
    image = load_cached_image(cache, "kept", "amd64")
    assert image is not None
    return cache, image


def _kept_files(cache: Cache) -> list[Path]:
    return sorted((cache.derived_dir / "flat").glob("*.marshal"))


def test_a_warm_flatten_loads_the_kept_image_not_the_layer_indexes(tmp_path: Path) -> None:
    cache, image = _kept_image(tmp_path)
    first = flatten_image(cache, image)
    assert len(_kept_files(cache)) == 1
    indexes = sorted((cache.derived_dir / "layers").glob("*.json"))
    assert len(indexes) == 2
    for index in indexes:
        index.unlink()  # a warm build that still read them would index the layers again
    again = flatten_image(cache, image)
    assert again == first  # every field, regions included
    assert not list((cache.derived_dir / "layers").glob("*.json"))
    assert [(e.path, read_data(e.data)) for e in again if e.kind is Kind.FILE] == [
        ("etc/a", b"a" * 70_000), ("etc/b", b"b again"), ("etc/c", b"c")]


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "not ours"])
def test_a_damaged_kept_image_is_a_miss_and_is_written_again(tmp_path: Path, damage: str) -> None:
    cache, image = _kept_image(tmp_path)
    first = flatten_image(cache, image)
    (kept,) = _kept_files(cache)
    good = kept.read_bytes()
    bad = {"flip a byte": good[:-5] + bytes([good[-5] ^ 1]) + good[-4:], "truncate": good[: len(good) // 2],
           "not ours": b"\x00" * len(good)}[damage]
    kept.write_bytes(bad)
    assert flatten_image(cache, image) == first
    assert kept.read_bytes() == good


def test_a_kept_image_is_not_used_when_a_layer_tar_changed(tmp_path: Path) -> None:
    cache, image = _kept_image(tmp_path)
    flatten_image(cache, image)
    tar = next((cache.derived_dir / "layers").glob("*.tar"))
    with tar.open("ab") as f:
        f.write(b"\0" * 512)  # another size: the regions the kept entries name may not hold what they did
    again = flatten_image(cache, image)
    assert [(e.path, read_data(e.data)) for e in again if e.kind is Kind.FILE] == [
        ("etc/a", b"a" * 70_000), ("etc/b", b"b again"), ("etc/c", b"c")]


def test_a_kept_image_still_obeys_a_lowered_entry_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, image = _kept_image(tmp_path)
    flatten_image(cache, image)
    monkeypatch.setenv("LINUXKIT_PY_MAX_LAYER_ENTRIES", "4")
    with pytest.raises(UserError, match=f"^layer {image.layers[0]['digest']}: more than 4 entries"):
        flatten_image(cache, image)
