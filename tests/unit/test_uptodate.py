"""The build key of no-op rebuilds (linuxkit_py/uptodate.py): every input that decides bytes is in it."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from linuxkit_py.build import BuildOptions, _output_records
from linuxkit_py.cache.image import Image
from linuxkit_py.cache.layout import Cache
from linuxkit_py.registry.buildcache import parse_cache_ref
from linuxkit_py.registry.pull import RegistryOptions
from linuxkit_py.rootfs.assemble import file_sources
from linuxkit_py.spec.model import Position, Spec
from linuxkit_py.uptodate import OutputRecords, build_key, content_digest

# Options that cannot change an output byte (how images are found, not which ones: their digests count).
NOT_IN_KEY = {"registry": RegistryOptions(timeout=5.0), "pull": True, "cache_dir": Path("/elsewhere"),
              "dry_run": True, "cache_from": parse_cache_ref("127.0.0.1:5000/ci", "--cache-from"),
              "cache_to": parse_cache_ref("127.0.0.1:5000/ci:other", "--cache-to")}
CHANGED: dict[str, Any] = {
    "paths": ["other.yml"], "formats": ["iso-efi"], "name": "other", "directory": Path("elsewhere"),
    "output": "out.tar", "arch": "arm64", "size": 1 << 30, "root": "squashfs", "input_tar": Path("in.tar"),
    "decompress_kernel": True, "sign_key": Path("db.key"), "sign_cert": Path("db.crt"), "verity": True,
    "ab": True, "image_version": "7", "slot_size": 1 << 29, "data_size": 1 << 25, "sbom": False,
    "sbom_output": "sbom.spdx.json", "sbom_current_time": True,
}


def spec(tmp_path: Path) -> Spec:
    (tmp_path / "notes.txt").write_text("notes\n")
    return Spec(kernel={"image": "k:1"}, files=[{"path": "etc/notes", "source": "notes.txt"}],
                positions={"files/0": Position(str(tmp_path / "system.yml"), 1, 1)})


def image(digest: str) -> Image:
    return Image(ref="k:1", digest=digest, manifest={}, config={})


def key(tmp_path: Path, opts: BuildOptions, epoch: int = 1) -> str:
    cache = Cache(tmp_path / "cache")
    return _output_records(opts, cache, spec(tmp_path), {"k:1": image("sha256:a")}, "amd64", epoch, [], {}).key


def test_every_build_option_is_in_the_key(tmp_path: Path) -> None:
    fields = {f.name for f in dataclasses.fields(BuildOptions)}
    assert fields == set(CHANGED) | set(NOT_IN_KEY), "a new BuildOptions field: say here whether it is in the key"
    base = key(tmp_path, BuildOptions(paths=["system.yml"]))
    for name, value in CHANGED.items():
        changed = dataclasses.replace(BuildOptions(paths=["system.yml"]), **{name: value})
        assert key(tmp_path, changed) != base, name
    for name, value in NOT_IN_KEY.items():
        same = dataclasses.replace(BuildOptions(paths=["system.yml"]), **{name: value})
        assert key(tmp_path, same) == base, name
    assert key(tmp_path, BuildOptions(paths=["system.yml"]), epoch=2) != base


def test_contents_and_digests_are_in_the_key(tmp_path: Path) -> None:
    s = spec(tmp_path)
    signing = tmp_path / "db.key"
    signing.write_text("key one")
    base = build_key(s, {"k:1": "sha256:a"}, {}, {"sign-key": signing}, file_sources(s))
    assert build_key(s, {"k:1": "sha256:b"}, {}, {"sign-key": signing}, file_sources(s)) != base
    st = signing.stat()
    signing.write_text("key two")  # same size and mtime, other content
    os.utime(signing, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert build_key(s, {"k:1": "sha256:a"}, {}, {"sign-key": signing}, file_sources(s)) != base
    signing.write_text("key one")
    notes = tmp_path / "notes.txt"
    notes.write_text("NOTES\n")
    assert build_key(s, {"k:1": "sha256:a"}, {}, {"sign-key": signing}, file_sources(s)) != base
    notes.write_text("notes\n")
    assert build_key(s, {"k:1": "sha256:a"}, {}, {"sign-key": signing}, file_sources(s)) == base


def test_a_directory_digest_follows_its_contents(tmp_path: Path) -> None:
    tree = tmp_path / "asset"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "grub.efi").write_bytes(b"one")
    first = content_digest(tree)
    (tree / "sub" / "grub.efi").write_bytes(b"two")
    assert content_digest(tree) != first
    assert content_digest(tmp_path / "missing") is None


@pytest.mark.parametrize("key_of_second", ["same", "other"])
def test_records_match_only_untouched_files_and_the_same_key(tmp_path: Path, key_of_second: str) -> None:
    out = tmp_path / "x-initrd.img"
    out.write_bytes(b"initrd")
    OutputRecords(tmp_path / "records", "k1").record("kernel+initrd", [out])
    second = OutputRecords(tmp_path / "records", "k1" if key_of_second == "same" else "k2")
    assert second.up_to_date("kernel+initrd", [out]) is (key_of_second == "same")
    assert not second.up_to_date("tar", [out])  # another format's record
    out.write_bytes(b"initrd")  # rewritten with the same bytes: no longer the file recorded
    assert not second.up_to_date("kernel+initrd", [out])


def test_a_file_is_kept_only_with_the_recorded_content_and_identity(tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "x-kernel", tmp_path / "x-initrd.img"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    targets = [kernel, initrd]
    OutputRecords(tmp_path / "records", "k1", "context").record("kernel+initrd", targets, ["kd", "id"])
    edited = OutputRecords(tmp_path / "records", "k2", "context")  # another spec: another build key
    assert not edited.up_to_date("kernel+initrd", targets)
    assert edited.kept("kernel+initrd", targets, ["kd", "id"]) == [True, True]
    assert edited.kept("kernel+initrd", targets, ["kd", "other"]) == [True, False]
    assert edited.kept("kernel+initrd", targets, [None, "id"]) == [False, True]  # no digest: never kept
    assert edited.kept("kernel+initrd", [initrd, kernel], ["id", "kd"]) == [False, False]  # another record
    options = OutputRecords(tmp_path / "records", "k2", "other context")  # an option, the code, the epoch
    assert options.kept("kernel+initrd", targets, ["kd", "id"]) == [False, False]
    kernel.write_bytes(b"kernel")  # rewritten with the same bytes: no longer the file recorded
    assert edited.kept("kernel+initrd", targets, ["kd", "id"]) == [False, True]
    OutputRecords(tmp_path / "records", "k3", "context").record("kernel+initrd", targets)  # without digests
    assert edited.kept("kernel+initrd", targets, ["kd", "id"]) == [False, False]
