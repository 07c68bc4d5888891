"""pkg/update's `update apply` refuses a bundle before it writes anything: a bad signature, another
architecture, an older version, contents that are not what the manifest says, a file that is no bundle.

The script runs here on the host (the same POSIX shell code as in the image; GNU tar, sort and sha256sum
instead of busybox's) against bundles written by formats/ab.write_bundle. A bundle that passes every check
gets as far as looking for the slot partitions, which this machine does not have: that refusal is the
proof that it was accepted. Applying one on a real A/B disk is tests/boot/test_ab_updates.py.
"""

from __future__ import annotations

import functools
import http.server
import io
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from linuxkit_py.formats.ab import LOADER_GUID, Slot, write_bundle
from linuxkit_py.sign import Signer
from linuxkit_py.sign.keys import create_keys

SCRIPT = Path(__file__).resolve().parents[2] / "pkg" / "update" / "update.sh"
ACCEPTED = "update: refused: no partition linuxkit-b"  # every check passed; this host has no A/B disk


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("update-keys")
    create_keys(root / "ours", "ours")
    create_keys(root / "theirs", "theirs")
    return root / "ours", root / "theirs"


def _bundle(path: Path, keys_dir: Path, version: str = "2", arch: str = "amd64") -> Path:
    root = path.with_suffix(".root")
    uki = path.with_suffix(".uki")
    root.write_bytes(b"hsqs" + bytes(8188))
    uki.write_bytes(b"MZ" + bytes(4094))
    with open(path, "wb") as out:
        write_bundle(out, Slot(uki, root, "squashfs"), version, arch, Signer(keys_dir / "db.key", keys_dir / "db.crt"),
                     1492533000)
    return path


def _apply(tmp_path: Path, keys_dir: Path, bundle: Path | str, *args: str, running: str = "1",
           cert: bool = True) -> subprocess.CompletedProcess[str]:
    image = tmp_path / "image"
    image.write_text(f"version={running}\narch=amd64\n")
    efivars = tmp_path / "efivars"
    efivars.mkdir(exist_ok=True)
    # systemd-boot's LoaderEntrySelected: attributes, then UTF-16LE
    (efivars / f"LoaderEntrySelected-{LOADER_GUID}").write_bytes(b"\x06\0\0\0" + "linuxkit-a.efi".encode("utf-16-le"))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "UPDATE_IMAGE": str(image),
           "UPDATE_CERT": str(keys_dir / "db.crt") if cert else str(tmp_path / "none.crt"),
           "UPDATE_WORK": str(tmp_path / "work"), "UPDATE_EFIVARS": str(efivars), "UPDATE_CONSOLE": "/dev/null"}
    return subprocess.run(["sh", str(SCRIPT), "apply", str(bundle), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def _refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line
    assert not result.stdout
    return lines[0]


def test_a_good_bundle_passes_every_check(keys: tuple[Path, Path], tmp_path: Path) -> None:
    ours, _ = keys
    assert _refusal(_apply(tmp_path, ours, _bundle(tmp_path / "v2.update", ours))) == ACCEPTED
    assert not (tmp_path / "work").exists()  # nothing left behind


def test_a_bundle_signed_by_another_key_is_refused(keys: tuple[Path, Path], tmp_path: Path) -> None:
    ours, theirs = keys
    line = _refusal(_apply(tmp_path, ours, _bundle(tmp_path / "v2.update", theirs)))
    assert line.startswith("update: refused: ") and "the signature does not verify with" in line


def _tamper(bundle: Path, member: str) -> Path:
    """The same bundle with one byte of `member` changed (manifest and signature as they were)."""
    with tarfile.open(bundle) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]  # type: ignore[union-attr]
    out = bundle.with_name(f"tampered-{member}.update")
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if info.name == member:
                data = bytes([data[0] ^ 1]) + data[1:]
            tar.addfile(info, io.BytesIO(data))
    return out


@pytest.mark.parametrize(("member", "message"), [
    ("root.img", "its root image does not match its manifest"),
    ("uki.efi", "its UKI does not match its manifest"),
    ("manifest", "the signature does not verify"),
])
def test_a_changed_byte_anywhere_is_refused(keys: tuple[Path, Path], tmp_path: Path, member: str,
                                            message: str) -> None:
    ours, _ = keys
    tampered = _tamper(_bundle(tmp_path / "v2.update", ours), member)
    assert message in _refusal(_apply(tmp_path, ours, tampered))


def test_another_architecture_is_refused(keys: tuple[Path, Path], tmp_path: Path) -> None:
    ours, _ = keys
    line = _refusal(_apply(tmp_path, ours, _bundle(tmp_path / "arm.update", ours, arch="arm64")))
    assert "is for arm64, this device is amd64" in line


def test_an_older_or_the_same_version_needs_allow_downgrade(keys: tuple[Path, Path], tmp_path: Path) -> None:
    ours, _ = keys
    for version in ("1.9", "2"):
        bundle = _bundle(tmp_path / f"v{version}.update", ours, version=version)
        line = _refusal(_apply(tmp_path, ours, bundle, running="2"))
        assert f"is version {version}, not newer than the running 2 (--allow-downgrade" in line
        assert _refusal(_apply(tmp_path, ours, bundle, "--allow-downgrade", running="2")) == ACCEPTED
    newer = _bundle(tmp_path / "v10.update", ours, version="2.10")
    assert _refusal(_apply(tmp_path, ours, newer, running="2.9")) == ACCEPTED  # versions, not strings


def test_what_is_no_bundle_or_no_file_or_has_no_certificate_is_refused(keys: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    ours, _ = keys
    junk = tmp_path / "junk.update"
    junk.write_bytes(b"not a tar" * 100)
    assert "is not an update bundle" in _refusal(_apply(tmp_path, ours, junk))
    assert "no bundle" in _refusal(_apply(tmp_path, ours, tmp_path / "missing.update"))
    bundle = _bundle(tmp_path / "v2.update", ours)
    assert "takes no updates" in _refusal(_apply(tmp_path, ours, bundle, cert=False))



def _health(tmp_path: Path, hooks: dict[str, str], services: dict[str, tuple[str, str]] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """`update health` with these health.d files (name -> script; a name ending in .txt is not executable) and
    services (name -> status, restarts)."""
    health_dir = tmp_path / "health.d"
    health_dir.mkdir(parents=True)
    for name, body in hooks.items():
        hook = health_dir / name
        hook.write_text(f"#!/bin/sh\n{body}\n")
        hook.chmod(0o644 if name.endswith(".txt") else 0o755)
    state = tmp_path / "services"
    for name, (status, restarts) in (services or {"web": ("running", "0")}).items():
        (state / name).mkdir(parents=True)
        (state / name / "status").write_text(f"{status}\n")
        (state / name / "restarts").write_text(f"{restarts}\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "UPDATE_SERVICES": str(state), "UPDATE_HEALTH_DIR": str(health_dir),
           "UPDATE_HEALTH_HOOK_SECONDS": "1", "UPDATE_CONSOLE": "/dev/null"}
    return subprocess.run(["sh", str(SCRIPT), "health"], capture_output=True, text=True, env=env, timeout=60)


def test_the_images_own_health_checks_decide_with_the_services(tmp_path: Path) -> None:
    passing = _health(tmp_path / "ok", {"10-web": "exit 0", "notes.txt": "exit 1"})  # notes.txt: not executable
    assert (passing.returncode, passing.stdout) == (0, "healthy\n")
    failing = _health(tmp_path / "bad", {"10-web": "exit 0", "30-never-run": "exit 1",
                                         "20-db": "echo starting\necho 'no answer on :5432'\nexit 3"})
    assert (failing.returncode, failing.stdout) == (1, "unhealthy: health check 20-db: exit 3: no answer on :5432\n")
    slow = _health(tmp_path / "slow", {"10-slow": "sleep 5"})
    assert slow.stdout == "unhealthy: health check 10-slow: exit 124: did not finish within 1s\n"
    restarted = _health(tmp_path / "restarted", {"10-web": "exit 1"}, {"web": ("running", "2")})
    assert restarted.stdout == "unhealthy: service web: running, 2 restarts\n"  # the services are checked first


def test_a_bundle_over_http_is_checked_like_a_file(keys: tuple[Path, Path], tmp_path: Path) -> None:
    ours, _ = keys
    served = tmp_path / "served"
    served.mkdir()
    _bundle(served / "v2.update", ours)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert _refusal(_apply(tmp_path, ours, f"{url}/v2.update")) == ACCEPTED
        missing = f"{url}/v3.update"
        assert _refusal(_apply(tmp_path, ours, missing)) == f"update: refused: cannot download {missing}"
    finally:
        server.shutdown()
