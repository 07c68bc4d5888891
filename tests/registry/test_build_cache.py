"""`build --cache-to REF` / `--cache-from REF` against a real docker-registry: a second builder with an
empty cache starts warm (no package build, blocks not deflated again), and faults on the cache only warn."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from linuxkit_py.archive.blockcache import pack_members
from linuxkit_py.cache.layout import Cache
from linuxkit_py.cache.verify import verify_cache
from linuxkit_py.registry.buildcache import latest_deflate_key
from tests.integration.conftest import run_cli
from tests.registry.faultproxy import CORRUPT, FaultProxy, status
from tests.registry.servers import RegistryProcess, free_port

pytestmark = pytest.mark.registry

BUSYBOX_YML = "image: linuxkit-py/cache-busybox\npackages: [busybox-static]\nlibraries: none\n"
TOOK = re.compile(r"^--cache-from \S+: took (\d+) packages, (\d+) layer indexes, (\d+) deflate blocks$", re.M)


def _text(seed: int, size: int) -> bytes:
    """Compressible but not trivially so (deflate takes real time), the same for the same seed."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghij klmnop", k=rng.randint(2, 9))) for _ in range(4000)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


@pytest.fixture(scope="module")
def spec_dir(registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spec with a kernel and a 3 MiB data image from the registry and one `@pkg:` package."""
    from tests.imagetools import F, ImageSpec, Layout, skopeo_push, tar_layer

    layout = Layout(tmp_path_factory.mktemp("cache-layout"))
    # the kernel before a kernel.tar twice its size, as in LinuxKit's kernel images
    modules = tar_layer(F("lib/modules/6.1.0/modules.dep", "\n"), F("lib/modules/6.1.0/big.ko", _text(3, 2 << 20)))
    layout.add_image("kernel", ImageSpec(layers=[tar_layer(F("kernel", _text(1, 1 << 20)), F("kernel.tar", modules))]))
    layout.add_image("data", ImageSpec(layers=[tar_layer(F("opt/data", _text(2, 3 << 20))),
                                               tar_layer(F("etc/data.conf", "conf\n"))],
                                       config={"Cmd": ["/bin/true"]}))
    for tag in ("kernel", "data"):
        skopeo_push(layout.root, tag, f"{registry.host}/cachetest/{tag}:1")
    directory = tmp_path_factory.mktemp("cache-spec")
    (directory / "busybox").mkdir()
    (directory / "busybox" / "build.yml").write_text(BUSYBOX_YML)
    (directory / "system.yml").write_text(f"""\
kernel:
  image: {registry.host}/cachetest/kernel:1
  cmdline: console=ttyS0
init:
  - "@pkg:busybox"
onboot:
  - name: data
    image: {registry.host}/cachetest/data:1
""")
    return directory


def build(spec_dir: Path, cache: Path, out: Path, *options: str) -> tuple[str, bytes]:
    """One `linuxkit-py build` (kernel+initrd); its stderr and the initrd's bytes."""
    done = run_cli("build", "--cache", cache, "--dir", out, *options, spec_dir / "system.yml", cwd=spec_dir)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    return stderr, (out / "system-initrd.img").read_bytes()


@pytest.fixture(scope="module")
def builder_a(spec_dir: Path, registry: RegistryProcess,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """Builder A: a cold build that pushes its cache to REGISTRY/ci/cache; its cache dir and initrd."""
    cache = tmp_path_factory.mktemp("builder-a") / "cache"
    stderr, initrd = build(spec_dir, cache, cache.parent / "out", "--cache-to", f"{registry.host}/ci/cache")
    assert "building package" in stderr
    assert "--cache-to" not in stderr  # no warning
    return cache, initrd


def blocks(cache: Path) -> set[str]:
    """The keys of the deflated blocks the cache holds: in files of their own, and in packs (--cache-from)."""
    deflate = cache / "linuxkit-py" / "deflate"
    own = {p.name for p in deflate.glob("??/*") if p.is_file()}
    return own | {key for pack in deflate.glob("packs/*.tar") for key, _, _ in pack_members(str(pack))}


def packs(cache: Path) -> list[Path]:
    return sorted((cache / "linuxkit-py" / "deflate").glob("packs/*"))


def test_a_second_builder_starts_warm_from_the_registry(spec_dir: Path, registry: RegistryProcess,
                                                        builder_a: tuple[Path, bytes], tmp_path: Path) -> None:
    cache_a, initrd_a = builder_a
    cache_b = tmp_path / "builder-b"
    stderr, initrd_b = build(spec_dir, cache_b, tmp_path / "out", "--cache-from",
                             f"type=registry,ref={registry.host}/ci/cache")
    assert hashlib.sha256(initrd_b).hexdigest() == hashlib.sha256(initrd_a).hexdigest()
    assert "building package" not in stderr
    took = TOOK.search(stderr)
    assert took is not None, stderr
    packages, layers, taken_blocks = map(int, took.groups())
    assert packages == 1
    # the 4 layers' (kernel, data image's 2, package): a kernel+initrd build waits for them before it unpacks
    assert layers == 4
    assert taken_blocks == len(blocks(cache_a)) > 4
    assert blocks(cache_b) == blocks(cache_a)  # every block came from the registry, none was deflated again
    # kept as the one file they came in (the blob the registry sent), no file of their own
    assert [p.name for p in packs(cache_b)] == [deflate_blob(registry).split(":")[1] + ".tar"]
    assert not list((cache_b / "linuxkit-py" / "deflate").glob("??/*"))
    assert verify_cache(Cache(cache_b)).problems == []
    # the kernel layer's artifact carries the index of its kernel.tar too (placing the modules needs no tar)
    (inner,) = (cache_a / "linuxkit-py" / "layers").glob("*.*-*.json")
    hexdigest, _, region = inner.name.removesuffix(".json").partition(".")
    items = layer_items(registry, hexdigest)
    assert items["region-" + region + ".json"] == inner.read_bytes() == \
        (cache_b / "linuxkit-py" / "layers" / inner.name).read_bytes()
    assert sorted(items) == ["index.json", f"region-{region}.json", "sbom.json"]


def layer_items(registry: RegistryProcess, hexdigest: str) -> dict[str, bytes]:
    """The items of the cache artifact of the layer `hexdigest` (name -> bytes)."""
    import tarfile

    base = f"http://{registry.host}/v2/ci/cache"
    manifest = requests.get(f"{base}/manifests/cache-layer-{hexdigest}", timeout=5,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    blob = requests.get(f"{base}/blobs/{manifest['layers'][0]['digest']}", timeout=5).content
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_without_the_cache_the_same_bytes(spec_dir: Path, builder_a: tuple[Path, bytes], tmp_path: Path) -> None:
    _, initrd = build(spec_dir, tmp_path / "cache", tmp_path / "out")
    assert initrd == builder_a[1]


@pytest.fixture
def proxy(registry: RegistryProcess, builder_a: tuple[Path, bytes]) -> Iterator[FaultProxy]:
    fp = FaultProxy(registry.host)
    try:
        yield fp
    finally:
        fp.close()


@pytest.mark.parametrize("fault", ["unreachable", "500", "corrupt blob", "garbage manifest"])
def test_a_fault_on_the_cache_is_one_warning_and_the_same_bytes(
        fault: str, spec_dir: Path, builder_a: tuple[Path, bytes], proxy: FaultProxy, tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}" if fault == "unreachable" else proxy.host
    if fault == "500":
        proxy.inject("/manifests/", status(500), times=-1)
    elif fault == "corrupt blob":
        proxy.inject("/blobs/", CORRUPT, times=-1)
    elif fault == "garbage manifest":
        proxy.inject("/manifests/", CORRUPT, times=-1)
    cache = tmp_path / "cache"
    stderr, initrd = build(spec_dir, cache, tmp_path / "out", "--cache-from", f"{host}/ci/cache")
    assert initrd == builder_a[1]
    warnings = [line for line in stderr.splitlines() if line.startswith("--cache-from")]
    assert len(warnings) == 1, stderr
    assert warnings[0].startswith(f"--cache-from {host}/ci/cache: ")
    assert warnings[0].endswith("; building without it")
    assert {"unreachable": "(connection refused)", "500": "(HTTP 500)", "corrupt blob": "does not match its digest",
            "garbage manifest": "is not valid JSON"}[fault] in warnings[0]
    assert verify_cache(Cache(cache)).problems == []
    # what the local cache now holds builds the same bytes again
    _, again = build(spec_dir, cache, tmp_path / "again")
    assert again == builder_a[1]


GIVE = "give REGISTRY/REPOSITORY[:TAG] (hint: e.g. {0} registry.example.com/ci/cache; the cache's tags start with TAG)"


def test_a_corrupt_block_archive_is_refused_and_the_blocks_deflated_here(
        spec_dir: Path, registry: RegistryProcess, builder_a: tuple[Path, bytes], proxy: FaultProxy,
        tmp_path: Path) -> None:
    proxy.inject(deflate_blob(registry), CORRUPT, times=-1)
    cache = tmp_path / "cache"
    stderr, initrd = build(spec_dir, cache, tmp_path / "out", "--cache-from", f"{proxy.host}/ci/cache")
    assert initrd == builder_a[1]
    assert "building package" not in stderr  # the package and the layer indexes came; the blocks did not
    [warning] = [line for line in stderr.splitlines() if line.startswith("--cache-from")]
    assert "does not match its digest" in warning
    assert TOOK.search(stderr) is None
    assert blocks(cache) == blocks(builder_a[0])  # deflated here, from this build's own bytes
    assert verify_cache(Cache(cache)).problems == []


def test_an_unreachable_cache_to_is_one_warning_after_the_outputs(spec_dir: Path, builder_a: tuple[Path, bytes],
                                                                  tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    stderr, initrd = build(spec_dir, builder_a[0], tmp_path / "out", "--cache-to", f"{host}/ci/cache")
    assert initrd == builder_a[1]
    assert [line for line in stderr.splitlines() if line.startswith("--cache-to")] == [
        f"--cache-to {host}/ci/cache: cannot connect to registry {host} (connection refused); the cache was not pushed"]


def test_cache_to_after_an_up_to_date_build_pushes_the_blocks_too(spec_dir: Path, registry: RegistryProcess,
                                                                 builder_a: tuple[Path, bytes], tmp_path: Path) -> None:
    cache_a, initrd_a = builder_a
    build(spec_dir, cache_a, tmp_path / "out")
    build(spec_dir, cache_a, tmp_path / "out", "--cache-to", f"{registry.host}/ci/later")  # nothing changed

    stderr, initrd = build(spec_dir, tmp_path / "fresh", tmp_path / "fresh-out", "--cache-from",
                           f"{registry.host}/ci/later")
    assert initrd == initrd_a
    took = TOOK.search(stderr)
    assert took is not None, stderr
    assert int(took[3]) == len(blocks(tmp_path / "fresh")) == len(blocks(cache_a)) > 4  # none deflated again


def deflate_blob(registry: RegistryProcess) -> str:
    """The digest of the tar of blocks the latest build of system.yml pushed."""
    tag = "cache-deflate-" + latest_deflate_key("system", ["kernel+initrd"], "amd64")
    manifest = requests.get(f"http://{registry.host}/v2/ci/cache/manifests/{tag}", timeout=5,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    return str(manifest["layers"][0]["digest"])


def test_a_warm_builder_fetches_only_the_lists_of_what_it_has(spec_dir: Path, registry: RegistryProcess,
                                                             builder_a: tuple[Path, bytes], tmp_path: Path) -> None:
    blob = deflate_blob(registry)
    seen = len(registry.requests_log())
    stderr, initrd = build(spec_dir, builder_a[0], tmp_path / "out", "--cache-from", f"{registry.host}/ci/cache")
    assert initrd == builder_a[1]
    assert "--cache-from " + f"{registry.host}/ci/cache: took 0 packages, 0 layer indexes, 0 deflate blocks" in stderr
    blob_gets = [path for method, path, _ in registry.requests_log()[seen:] if method == "GET" and "/blobs/" in path]
    assert len(blob_gets) == 1 and not blob_gets[0].endswith(blob)  # the artifact's config only


@pytest.mark.parametrize(("option", "value", "error"), [
    ("--cache-from", "cache", GIVE),
    ("--cache-to", "127.0.0.1:5000/ci@sha256:" + "0" * 64, GIVE),
    ("--cache-from", "type=local,src=/tmp/x", "only type=registry,ref=REGISTRY/REPOSITORY[:TAG] is supported "
                                              "(hint: e.g. {0} type=registry,ref=registry.example.com/ci/cache)"),
    ("--cache-to", "127.0.0.1:5000/ci:" + "t" * 60, "the tag '" + "t" * 60 + "' is too long to prefix the "
                                                    "cache's tags (hint: at most 55 characters)"),
])
def test_a_bad_cache_ref_is_one_line(option: str, value: str, error: str, tmp_path: Path) -> None:
    (tmp_path / "s.yml").write_text("onboot: []\n")
    done = run_cli("build", "--cache", tmp_path / "cache", option, value, tmp_path / "s.yml")
    assert done.returncode == 1
    assert done.stderr.decode() == f"linuxkit-py: {option} {value!r}: {error.format(option)}\n"
    assert not (tmp_path / "cache").exists()  # checked before anything is pulled or built


def test_pkg_build_takes_the_package_from_the_cache(spec_dir: Path, registry: RegistryProcess,
                                                    builder_a: tuple[Path, bytes], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = run_cli("pkg", "build", "--cache", cache, "--cache-from", f"{registry.host}/ci/cache", spec_dir / "busybox")
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "downloading" not in stderr
    name = done.stdout.decode().strip()
    assert f"docker.io/{name} is already in the cache" in stderr
    assert Cache(cache).get_ref(f"docker.io/{name}") == Cache(builder_a[0]).get_ref(f"docker.io/{name}")


def _packed(cache: Path) -> set[str]:
    """The layers whose index is in the cache but not their tar (left packed until something reads them)."""
    layers = cache / "linuxkit-py" / "layers"
    return {p.stem for p in layers.glob("*.json") if "." not in p.stem and not p.with_suffix(".tar").exists()}


def _edited(spec_dir: Path, command: str) -> Path:
    """system.yml with a command for the data container: its config.json changes, so do the deflate blocks around
    it, which hold the start of the data image's 3 MiB file."""
    text = (spec_dir / "system.yml").read_text()
    edited = spec_dir / f"edited-{command}.yml"
    edited.write_text(text + f'    command: ["/bin/{command}"]\n')
    return edited


def _build_spec(spec: Path, cache: Path, out: Path, *options: str) -> tuple[int, str]:
    done = run_cli("build", "--cache", cache, "--dir", out, *options, spec, cwd=spec.parent)
    return done.returncode, done.stderr.decode()


def test_a_second_builder_decompresses_only_the_layers_it_reads(spec_dir: Path, registry: RegistryProcess,
                                                                builder_a: tuple[Path, bytes], tmp_path: Path) -> None:
    """kernel+initrd with --cache-from: the kernel's layer is decompressed (its kernel is copied), the others wait
    packed until an edit needs bytes the block cache lacks, or a format reads every file; the bytes are always
    those of a build that decompressed everything."""
    cache = tmp_path / "builder-b"
    blob = deflate_blob(registry)
    seen = len(registry.requests_log())
    _, initrd = build(spec_dir, cache, tmp_path / "out", "--cache-from", f"{registry.host}/ci/cache")
    assert initrd == builder_a[1]
    # the blocks' blob is fetched once
    assert [path for method, path, _ in registry.requests_log()[seen:] if method == "GET" and path.endswith(blob)] \
        == [f"/v2/ci/cache/blobs/{blob}"]
    packed = _packed(cache)
    # the data image's 2 layers, the package's and the kernel's, whose kernel was read from the head of its tar
    assert len(packed) == 4
    # the data image's layer blobs were not even downloaded (the package's came with the package), the kernel's only
    # to read the kernel; neither image is named in the cache, which names whole images only
    left = {hex_ for hex_ in packed if not Cache(cache).blob_path(f"sha256:{hex_}").is_file()}
    assert len(left) == 2
    assert not [path for method, path, _ in registry.requests_log()[seen:]
                if method == "GET" and any(path.endswith(f"/blobs/sha256:{hex_}") for hex_ in left)]
    data_ref = f"{registry.host}/cachetest/data:1"
    assert Cache(cache).get_ref(data_ref) is None
    assert Cache(cache).get_ref(f"{registry.host}/cachetest/kernel:1") is None
    assert verify_cache(Cache(cache)).problems == []
    _, again = build(spec_dir, tmp_path / "scratch-sbom", tmp_path / "out-scratch")
    assert again == initrd  # and the SBOM, which names the images, is that of a build that pulled everything
    assert (tmp_path / "out" / "system.spdx.json").read_bytes() == \
        (tmp_path / "out-scratch" / "system.spdx.json").read_bytes()

    edited = _edited(spec_dir, "false")
    # a second builder's edit: the blocks around the data container's changed config.json miss, so the bytes of the
    # data image's layer are read after all: its blob is downloaded then, and the bytes are those of a full build
    seen = len(registry.requests_log())
    rc, stderr = _build_spec(edited, tmp_path / "builder-c", tmp_path / "edit-c", "--cache-from",
                             f"{registry.host}/ci/cache")
    assert rc == 0, stderr
    assert [path for method, path, _ in registry.requests_log()[seen:]
            if method == "GET" and any(path.endswith(f"/blobs/sha256:{hex_}") for hex_ in left)]
    builder_c = Cache(tmp_path / "builder-c")  # left out by the pull (the image is not named), fetched when read
    assert builder_c.get_ref(data_ref) is None and any(builder_c.has_blob(f"sha256:{hex_}") for hex_ in left)
    assert verify_cache(builder_c).problems == []
    rc, stderr = _build_spec(edited, cache, tmp_path / "edit")
    assert rc == 0, stderr
    assert Cache(cache).get_ref(data_ref) is not None  # pulled whole by a build without the option
    assert (tmp_path / "edit" / f"{edited.stem}-initrd.img").read_bytes() == \
        (tmp_path / "edit-c" / f"{edited.stem}-initrd.img").read_bytes()
    rc, stderr = _build_spec(edited, tmp_path / "scratch", tmp_path / "edit-scratch")
    assert rc == 0, stderr
    assert (tmp_path / "edit" / f"{edited.stem}-initrd.img").read_bytes() == \
        (tmp_path / "edit-scratch" / f"{edited.stem}-initrd.img").read_bytes()
    assert len(_packed(cache)) < len(packed)  # the data layer was decompressed for the blocks that changed

    for directory, where in ((cache, "tar"), (tmp_path / "scratch", "tar-scratch")):
        rc, stderr = _build_spec(spec_dir / "system.yml", directory, tmp_path / where, "-f", "tar")
        assert rc == 0, stderr
    assert (tmp_path / "tar" / "system.tar").read_bytes() == (tmp_path / "tar-scratch" / "system.tar").read_bytes()
    assert _packed(cache) == set()  # a format that reads every file decompresses every layer
    assert verify_cache(Cache(cache)).problems == []


def test_a_fetched_index_that_does_not_fit_its_layer_stops_the_build_once(
        spec_dir: Path, registry: RegistryProcess, builder_a: tuple[Path, bytes], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    build(spec_dir, cache, tmp_path / "out", "--cache-from", f"{registry.host}/ci/cache")
    layers = cache / "linuxkit-py" / "layers"
    for hex_ in _packed(cache):  # the data image's layer, whose bytes the edit reads
        index = layers / f"{hex_}.json"
        doc = json.loads(index.read_bytes())
        if any(entry[0] == "opt/data" for entry in doc["entries"]):
            doc["tar_size"] += 512
            index.write_text(json.dumps(doc))
    edited = _edited(spec_dir, "sh")  # not /bin/true: the image's own Cmd
    rc, stderr = _build_spec(edited, cache, tmp_path / "edit")
    assert rc == 1
    [line] = stderr.splitlines()[-1:]
    assert re.fullmatch(r"linuxkit-py: layer sha256:[0-9a-f]{64}: its index \(from --cache-from\) is of a \d+-byte "
                        r"tar, the layer's is \d+ bytes \(hint: the index was removed: build again\)", line), stderr
    assert not (tmp_path / "edit" / f"{edited.stem}-initrd.img").exists()
    rc, stderr = _build_spec(edited, cache, tmp_path / "edit")
    assert rc == 0, stderr
    rc, _ = _build_spec(edited, tmp_path / "scratch", tmp_path / "scratch-out")
    assert (tmp_path / "edit" / f"{edited.stem}-initrd.img").read_bytes() == \
        (tmp_path / "scratch-out" / f"{edited.stem}-initrd.img").read_bytes()


def test_a_blob_left_for_later_that_then_fails_stops_the_build_with_one_line(
        spec_dir: Path, registry: RegistryProcess, builder_a: tuple[Path, bytes], proxy: FaultProxy,
        tmp_path: Path) -> None:
    """A --cache-from build leaves the data image's layer blobs for later (the cache brings their indexes); when
    its bytes are needed after all (no deflated blocks for this spec) and the registry serves a corrupt blob, the
    build stops with the pull's one-line error, writes no output and leaves a cache that verifies."""
    data = f"{registry.host}/cachetest/data:1"
    spec = spec_dir / "proxied.yml"  # another spec: neither its build key nor its name has blocks in the cache
    spec.write_text((spec_dir / "system.yml").read_text().replace(data, f"{proxy.host}/cachetest/data:1"))
    manifest = requests.get(f"http://{registry.host}/v2/cachetest/data/manifests/1", timeout=5,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    for layer in manifest["layers"]:
        proxy.inject(layer["digest"], CORRUPT, times=-1)
    rc, stderr = _build_spec(spec, tmp_path / "cache", tmp_path / "out", "-v", "2", "--cache-from",
                             f"{registry.host}/ci/cache")
    assert rc == 1
    assert "downloading it now (first read)" in stderr  # left out by the pull, fetched when read
    line = stderr.splitlines()[-1]
    assert re.fullmatch(rf"linuxkit-py: {re.escape(proxy.host)}/cachetest/data:1: registry {re.escape(proxy.host)}: "
                        r"blob sha256:[0-9a-f]{64} does not match its digest \(got sha256:[0-9a-f]{64}\)", line), stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert verify_cache(Cache(tmp_path / "cache")).problems == []
