"""`cache export` / `cache import` as a user types them: archives skopeo reads, the same bytes twice, platforms,
round trips, and bad archives that change nothing."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.imagetools import F, ImageSpec, Layout, tar_layer
from tests.integration.conftest import BUSYBOX_REF, run_cli

MULTI_REF = "localhost:5000/test/multi:1"


@pytest.fixture
def cache(tmp_path: Path, warm_cache: Path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(warm_cache, copy, ignore=shutil.ignore_patterns("linuxkit-py"))
    return copy


def cached_digest(cache: Path, ref: str) -> str:
    listed = run_cli("cache", "ls", "--cache", cache).stdout.decode().splitlines()
    return dict(line.split("\t") for line in listed)[ref]


def skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout


def export(cache: Path, ref: str, out: Path, *flags: str) -> None:
    done = run_cli("cache", "export", "--cache", cache, ref, "-o", out, *flags)
    assert done.returncode == 0, done.stderr.decode()


def members(path: Path) -> list[tuple[str, int, int, int, str, str]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.mtime, m.uid, m.gid, m.uname, m.gname) for m in tar]


def test_oci_export_is_read_by_skopeo_and_the_same_bytes_twice(tmp_path: Path, cache: Path) -> None:
    first, second = tmp_path / "one.tar", tmp_path / "two.tar"
    export(cache, BUSYBOX_REF, first)
    export(cache, BUSYBOX_REF, second, "--format", "oci")
    assert first.read_bytes() == second.read_bytes()
    digest = cached_digest(cache, BUSYBOX_REF)
    names = [m[0] for m in members(first)]
    assert names[:3] == ["oci-layout", "blobs", "blobs/sha256"] and names[-2:] == [
        f"blobs/sha256/{digest.removeprefix('sha256:')}", "index.json"]
    assert {m[1:] for m in members(first)} == {(0, 0, 0, "", "")}
    with tarfile.open(first) as tar:
        layout = tar.extractfile("oci-layout")
        index = tar.extractfile("index.json")
        assert layout is not None and index is not None
        assert layout.read() == b'{\n\t\t"imageLayoutVersion": "1.0.0"\n\t}'
        assert json.loads(index.read())["manifests"][0]["annotations"] == {
            "org.opencontainers.image.ref.name": BUSYBOX_REF}
    assert json.loads(skopeo("inspect", f"oci-archive:{first}"))["Digest"] == digest
    skopeo("copy", "--quiet", f"oci-archive:{first}", f"oci:{tmp_path / 'copy'}:x")
    assert json.loads(skopeo("inspect", f"oci:{tmp_path / 'copy'}:x"))["Digest"] == digest


def test_docker_export_is_read_by_skopeo(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "docker.tar"
    export(cache, BUSYBOX_REF, out, "--format", "docker", "--name", "example.com/me/box")
    again = tmp_path / "again.tar"
    export(cache, BUSYBOX_REF, again, "--format", "docker", "--name", "example.com/me/box")
    assert out.read_bytes() == again.read_bytes()
    manifest = json.loads(Path(cache / "blobs" / "sha256" /
                               cached_digest(cache, BUSYBOX_REF).removeprefix("sha256:")).read_bytes())
    layers = [layer["digest"].removeprefix("sha256:") + ".tar.gz" for layer in manifest["layers"]]
    with tarfile.open(out) as tar:
        listed = tar.extractfile("manifest.json")
        assert listed is not None
        assert listed.read() == json.dumps([{"Config": manifest["config"]["digest"],
                                             "RepoTags": ["example.com/me/box:latest"], "Layers": layers}],
                                           separators=(",", ":")).encode()
    assert [m[0] for m in members(out)] == [manifest["config"]["digest"], *layers, "manifest.json"]
    inspected = json.loads(skopeo("inspect", f"docker-archive:{out}"))
    assert inspected["Layers"] and inspected["Architecture"] == "amd64"
    skopeo("copy", "--quiet", f"docker-archive:{out}", f"oci:{tmp_path / 'copy'}:x")
    files = subprocess.run(["tar", "tf", str(out)], check=True, capture_output=True, text=True).stdout
    assert "manifest.json" in files


def test_platform_picks_the_image_of_an_index(tmp_path: Path, cache: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layout.add_index("multi", [ImageSpec(layers=[tar_layer(F("arch", arch))], arch=arch)
                               for arch in ("amd64", "arm64")])
    skopeo("copy", "--quiet", "--all", f"oci:{layout.root}:multi", f"oci:{cache}:{MULTI_REF}")
    out = tmp_path / "arm.tar"
    export(cache, MULTI_REF, out, "--platform", "linux/arm64")
    assert json.loads(skopeo("inspect", f"oci-archive:{out}"))["Architecture"] == "arm64"
    export(cache, MULTI_REF, out, "--platform", "linux/amd64")
    assert json.loads(skopeo("inspect", f"oci-archive:{out}"))["Architecture"] == "amd64"
    failed = run_cli("cache", "export", "--cache", cache, MULTI_REF, "-o", out, "--platform", "linux/riscv64")
    assert failed.returncode == 1
    assert failed.stderr.decode() == ("linuxkit-py: unsupported architecture 'riscv64' "
                                      "(hint: supported: amd64 (x86_64), arm64 (aarch64))\n")


def test_export_errors_are_one_line(tmp_path: Path, cache: Path) -> None:
    missing = run_cli("cache", "export", "--cache", cache, "nothing:1", "-o", tmp_path / "x.tar")
    assert missing.stderr.decode() == ("linuxkit-py: docker.io/library/nothing:1 is not in the cache (hint: "
                                       "linuxkit-py cache pull docker.io/library/nothing:1)\n")
    no_file = run_cli("cache", "export", "--cache", cache, BUSYBOX_REF)
    assert no_file.stderr.decode() == "linuxkit-py: cache export needs --outfile FILE (or -o FILE; - for stdout)\n"
    assert not (tmp_path / "x.tar").exists()


def test_filesystem_export_flattens_the_layers(tmp_path: Path, cache: Path) -> None:
    done = run_cli("cache", "export", "--cache", cache, BUSYBOX_REF, "--format", "filesystem", "--outfile", "-")
    assert done.returncode == 0, done.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        names = tar.getnames()
        motd = tar.extractfile("etc/motd")
        assert motd is not None and motd.read() == b"hello from layer 2\n"
    assert "etc/obsolete" not in names and "bin/busybox" in names  # the whiteout applied


def test_import_round_trips_our_and_skopeos_archives(tmp_path: Path, cache: Path) -> None:
    digest = cached_digest(cache, BUSYBOX_REF)
    oci, docker = tmp_path / "oci.tar", tmp_path / "docker.tar"
    export(cache, BUSYBOX_REF, oci)
    fresh = tmp_path / "fresh"
    done = run_cli("cache", "import", "--cache", fresh, oci)
    assert (done.returncode, done.stdout.decode()) == (0, f"{BUSYBOX_REF}\t{digest}\n")
    # our docker-archive: gzip layers named <digest>.tar.gz, checked against the config's diff_ids
    export(cache, BUSYBOX_REF, docker, "--format", "docker", "--name", "example.com/ours/box:1")
    done = run_cli("cache", "import", "--cache", fresh, docker)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("example.com/ours/box:1\tsha256:")
    # skopeo's docker-archive: uncompressed layers, <id>/layer.tar links, a RepoTags name
    docker.unlink()
    skopeo("copy", "--quiet", f"oci:{cache}:{BUSYBOX_REF}", f"docker-archive:{docker}:example.com/my/busybox:2")
    done = run_cli("cache", "import", "--cache", fresh, "-", stdin=docker.read_bytes())
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("example.com/my/busybox:2\tsha256:")
    assert run_cli("cache", "verify", "--cache", fresh).returncode == 0
    fs = run_cli("cache", "export", "--cache", fresh, "example.com/my/busybox:2", "--format", "filesystem", "-o", "-")
    with tarfile.open(fileobj=io.BytesIO(fs.stdout)) as tar:
        motd = tar.extractfile("etc/motd")
        assert motd is not None and motd.read() == b"hello from layer 2\n"
    # skopeo's oci-archive names the image by a bare tag: --name gives it a reference
    skopeo("copy", "--quiet", f"oci:{cache}:{BUSYBOX_REF}", f"oci-archive:{oci}:latest")
    unnamed = run_cli("cache", "import", "--cache", fresh, oci)
    assert unnamed.stderr.decode() == (f"linuxkit-py: {oci}: its images carry no name; their blobs are in the "
                                       "cache (hint: name one with --name REF)\n")
    named = run_cli("cache", "import", "--cache", fresh, "--name", "me/box:3", oci)
    assert named.stdout.decode() == f"docker.io/me/box:3\t{digest}\n"


def _rewrite(source: Path, target: Path, change: dict[str, bytes | None]) -> None:
    """Copy a tar, replacing (bytes) or dropping (None) the members named in `change`."""
    with tarfile.open(source) as tar, tarfile.open(target, "w") as out:
        for member in tar:
            data = tar.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name in change:
                data = change[member.name]
                if data is None:
                    continue
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)


def test_a_bad_archive_changes_nothing(tmp_path: Path, cache: Path) -> None:
    good = tmp_path / "good.tar"
    export(cache, BUSYBOX_REF, good)
    manifest = json.loads(Path(cache / "blobs" / "sha256" /
                               cached_digest(cache, BUSYBOX_REF).removeprefix("sha256:")).read_bytes())
    layer = "blobs/sha256/" + manifest["layers"][1]["digest"].removeprefix("sha256:")
    fresh = tmp_path / "fresh"
    run_cli("cache", "ls", "--cache", fresh)
    before = (fresh / "index.json").read_bytes() if (fresh / "index.json").exists() else None

    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[:600_000])
    corrupt, missing = tmp_path / "corrupt.tar", tmp_path / "missing.tar"
    _rewrite(good, corrupt, {layer: b"not the layer"})
    _rewrite(good, missing, {layer: None})
    got = hashlib.sha256(b"not the layer").hexdigest()
    expected = {
        truncated: f"linuxkit-py: {truncated}: not a readable tar archive: unexpected end of data\n",
        corrupt: f"linuxkit-py: {corrupt}: {layer}: its bytes have digest sha256:{got}, not "
                 f"sha256:{layer.rsplit('/', 1)[1]} (hint: the archive is corrupt)\n",
        missing: f"linuxkit-py: {missing}: {BUSYBOX_REF}: layer {manifest['layers'][1]['digest']} is missing or "
                 "broken (hint: the archive is incomplete or corrupt)\n",
    }
    for path, error in expected.items():
        done = run_cli("cache", "import", "--cache", fresh, path)
        assert (done.returncode, done.stdout, done.stderr.decode()) == (1, b"", error)
        after = (fresh / "index.json").read_bytes() if (fresh / "index.json").exists() else None
        assert after in (before, b'{\n  "schemaVersion": 2,\n  "mediaType": '
                                 b'"application/vnd.oci.image.index.v1+json",\n  "manifests": []\n}\n')
        assert not [p.name for p in (fresh / "blobs" / "sha256").iterdir() if p.name.startswith(".")]
    assert run_cli("cache", "ls", "--cache", fresh).stdout == b""
    assert run_cli("cache", "verify", "--cache", fresh).returncode == 0


def test_a_docker_archive_layer_must_match_its_diff_id(tmp_path: Path, cache: Path) -> None:
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    export(cache, BUSYBOX_REF, good, "--format", "docker")
    with tarfile.open(good) as tar:
        layer = [m.name for m in tar if m.name.endswith(".tar.gz")][1]
    other = gzip.compress(tar_layer(F("etc/other", "x")), mtime=0)
    _rewrite(good, bad, {layer: other})
    done = run_cli("cache", "import", "--cache", tmp_path / "fresh", bad)
    config = json.loads(subprocess.run(["tar", "xOf", str(good), "manifest.json"], check=True,
                                       capture_output=True).stdout)[0]["Config"]
    diff_ids = json.loads(subprocess.run(["tar", "xOf", str(good), config], check=True,
                                         capture_output=True).stdout)["rootfs"]["diff_ids"]
    got = "sha256:" + hashlib.sha256(tar_layer(F("etc/other", "x"))).hexdigest()
    assert done.stderr.decode() == (f"linuxkit-py: {bad}: manifest.json[0]: layer {layer} has diff_id {got}, its "
                                    f"config says {diff_ids[1]} (hint: the archive is corrupt)\n")
    assert run_cli("cache", "ls", "--cache", tmp_path / "fresh").stdout == b""
