"""LinuxKit's command-line forms, typed as a LinuxKit user types them (issue 10): `run qemu [options] PATH` in any
order and with one-dash long options, LinuxKit's `run qemu` flags, global options before the verb, `-v N`,
`build --input-tar` refusing its own output, `serve`, `completion`, and the kernel decompression behind
`build --decompress-kernel`. No qemu is started and nothing is pulled here."""

from __future__ import annotations

import gzip
import io
import lzma
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import zstandard

from linuxkit_py.cli import main
from linuxkit_py.errors import UserError
from linuxkit_py.kernel.vmlinux import decompress_kernel
from tests.boot.test_qemu_runner import free_port


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """`linuxkit-py ARGS` in-process: its exit status and stderr (argparse's exit 2 included)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


@pytest.fixture
def kernel_output(tmp_path: Path) -> Path:
    for name in ("os-kernel", "os-initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path / "os"


# -- run qemu [options] PATH --------------------------------------------------------------------------------

SMALL = "invalid VM size: 8 MiB of memory, 1 CPUs (hint: use at least 16 MiB and 1 CPU)"


@pytest.mark.parametrize("order", [
    ["qemu", "--publish", "8080:80", "--mem", "8", "PATH"],  # the form of issue 10
    ["qemu", "--mem", "8", "PATH", "--publish", "8080:80"],
    ["--mem", "8", "qemu", "--publish", "8080:80", "PATH"],
    ["PATH", "--mem", "8"],
    ["qemu", "-publish", "8080:80", "-mem", "8", "PATH"],  # Go's one-dash flags, as in LinuxKit's docs
    ["qemu", "-mem=8", "PATH"],
])
def test_run_options_go_anywhere(kernel_output: Path, capsys: pytest.CaptureFixture[str], order: list[str]) -> None:
    args = [str(kernel_output) if word == "PATH" else word for word in order]
    # The memory check comes after PATH was found and every option read: its error proves both.
    assert cli(capsys, "run", *args) == (1, f"linuxkit-py: {SMALL}\n")


def test_run_options_after_qemu_reach_qemu(kernel_output: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu: the run gets as far as starting it
    assert cli(capsys, "run", "qemu", "--publish", "8080:80", "--timeout", "5", kernel_output) == (
        1, "linuxkit-py: qemu-system-x86_64 not found (hint: apt-get install qemu-system-x86)\n")


def test_arch_and_qemu_choose_the_binary(kernel_output: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "my-qemu"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"fake qemu ran: $1 $2\" >&2\nexit 3\n")
    fake.chmod(0o755)
    assert cli(capsys, "run", "qemu", "--accel", "tcg", "--timeout", "5", "--qemu", fake, kernel_output) == (
        1, "linuxkit-py: qemu exited with status 3: fake qemu ran: -accel tcg\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli(capsys, "run", "qemu", "--arch", "aarch64", "--timeout", "5", kernel_output) == (
        1, "linuxkit-py: qemu-system-aarch64 not found (hint: apt-get install qemu-system-arm)\n")


def test_an_unknown_option_is_still_refused(kernel_output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = cli(capsys, "run", "qemu", "--bogus", kernel_output)
    assert status == 2
    assert err.splitlines()[-1] == "linuxkit-py: error: unrecognized arguments: --bogus"


@pytest.mark.parametrize(("args", "message"), [
    (["--gui"], "not supported: --gui: guests run headless; their console is the serial console on this terminal"),
    (["--usb"], "not supported: --usb: no USB controller; disks and the network are virtio"),
    (["--device", "virtio-balloon"], "not supported: --device: qemu -device options are not passed through"),
    (["--virtiofs", "/srv"], "not supported: --virtiofs: no virtiofsd shares; attach a --disk or put the files "
                             "in the image with files:"),
    (["-gui"], "not supported: --gui: guests run headless; their console is the serial console on this terminal"),
    (["--arch", "sparc"], "unsupported architecture 'sparc' (hint: supported: amd64 (x86_64), arm64 (aarch64))"),
    (["--qemu", "/no/such/qemu"], "--qemu /no/such/qemu: not an executable file"),
])
def test_linuxkit_run_flags_that_are_declined(kernel_output: Path, capsys: pytest.CaptureFixture[str],
                                              args: list[str], message: str) -> None:
    assert cli(capsys, "run", "qemu", *args, kernel_output) == (1, f"linuxkit-py: {message}\n")


def test_type_hints_force_how_path_is_read(tmp_path: Path, kernel_output: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "image.bin"  # a name that says nothing
    image.write_bytes(b"x")
    assert cli(capsys, "run", "qemu", "--append", "quiet", image) == (
        1, f"linuxkit-py: cannot tell how to boot {image}: the name ends in none of -kernel, -initrd.img, .iso, "
           ".img, .raw, .qcow2, .vhd, .vhdx, .vmdk, .efi\n")
    # --iso: read as an ISO (whose boot loader has its own command line).
    assert cli(capsys, "run", "qemu", "--iso", "--append", "quiet", image) == (
        1, f"linuxkit-py: --append needs a kernel boot; the boot loader of {image} sets its own command line\n")
    assert cli(capsys, "run", "qemu", "--squashfs", kernel_output) == (
        1, f"linuxkit-py: --squashfs: {kernel_output}-squashfs.img not found\n")
    assert cli(capsys, "run", "qemu", "--kernel", "--mem", "8", kernel_output) == (1, f"linuxkit-py: {SMALL}\n")
    status, err = cli(capsys, "run", "qemu", "--kernel", "--iso", kernel_output)
    assert status == 2 and "not allowed with argument" in err


def test_detached_prints_the_pid_and_returns(kernel_output: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # the background run fails at once: no qemu
    status = main(["run", "qemu", "--detached", "--mem", "64", str(kernel_output)])
    out = capsys.readouterr().out
    state = tmp_path / "os-state"
    assert status == 0
    assert out == f"{int(out)}\n" and (state / "run.pid").read_text() == out
    deadline = time.monotonic() + 30
    while "not found" not in (state / "run.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (state / "run.log").read_text() == (
        "linuxkit-py: qemu-system-x86_64 not found (hint: apt-get install qemu-system-x86)\n")


# -- global options, -v N -----------------------------------------------------------------------------------


def test_verbose_takes_linuxkits_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "empty.yml"
    spec.write_text("init: []\n")
    for level in ("0", "1", "2", "3", "v"):  # -vv is read as -v v
        assert cli(capsys, "-v", level, "build", "--dry-run", spec)[0] == 0
    status, err = cli(capsys, "-v", "7", "build", "--dry-run", spec)
    assert status == 2
    assert err.splitlines()[-1] == ("linuxkit-py: error: argument -v/--verbose: '7': verbose flag can only be "
                                    "set to 0, 1, 2 or 3")
    status, err = cli(capsys, "-q", "-v", "2", "build", "--dry-run", spec)
    assert (status, err.splitlines()[-1]) == (2, "linuxkit-py: error: -q and -v N (N > 0) cannot be used together")
    assert cli(capsys, "-q", "-v", "0", "build", "--dry-run", spec)[0] == 0
    # After the verb too, as LinuxKit's persistent flags (its test 060_input_tar: `linuxkit build -v 2 ...`).
    assert cli(capsys, "build", "-v", "2", "--dry-run", spec)[0] == 0
    status, err = cli(capsys, "build", "-q", "-v", "1", "--dry-run", spec)
    assert (status, err.splitlines()[-1]) == (2, "linuxkit-py: error: -q and -v N (N > 0) cannot be used together")


def test_global_mirror_is_checked_like_the_verbs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "one.yml"
    spec.write_text("onboot:\n  - name: x\n    image: busybox:1\n")
    assert cli(capsys, "--mirror", "localhost:5001", "--cache", tmp_path / "cache", "build", spec) == (
        1, "linuxkit-py: mirror 'localhost:5001' must start with http:// or https:// "
           "(hint: --mirror REGISTRY=URL, e.g. docker.io=http://mirror.local:5000)\n")


# -- build --input-tar, --docker ----------------------------------------------------------------------------


def test_input_tar_cannot_be_the_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yml"
    spec.write_text("init: []\n")
    old = tmp_path / "x.tar"
    old.write_bytes(b"the previous build\n")
    for output in ("--o", "-o"):
        assert cli(capsys, "build", output, old, "--input-tar", old, spec) == (
            1, "linuxkit-py: --input-tar and the output file cannot be the same "
               "(hint: write the new tar elsewhere)\n")
    assert cli(capsys, "build", "--o", tmp_path / "new.tar", "--input-tar", old, "--pull", spec) == (
        1, "linuxkit-py: cannot use --input-tar and --pull together\n")
    assert old.read_bytes() == b"the previous build\n"


def test_docker_is_accepted_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yml"
    spec.write_text("init: []\n")
    assert cli(capsys, "build", "--docker", "--dry-run", spec) == (
        0, "linuxkit-py: --docker: no Docker needed; images come from the cache and registries\n")
    assert cli(capsys, "build", "--no-sbom", "--dry-run", spec) == (0, "")


# -- --decompress-kernel: the decompressor ------------------------------------------------------------------

VMLINUX = b"\x7fELF" + bytes(range(256)) * 4000


def bzimage(payload: bytes, setup_sects: int = 3) -> bytes:
    """A minimal bzImage: boot flag, "HdrS", protocol 2.15, and the payload fields (boot.rst)."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    body = b"decompressor stub" + payload + struct.pack("<I", len(VMLINUX))  # the kernel's size_append
    struct.pack_into("<II", setup, 0x248, len(b"decompressor stub"), len(payload) + 4)
    return bytes(setup) + body


@pytest.mark.parametrize("compress", [
    gzip.compress, lambda d: lzma.compress(d, check=lzma.CHECK_CRC32), zstandard.ZstdCompressor().compress,
    lambda d: subprocess.run(["lz4", "-l", "-c"], input=d, capture_output=True, check=True).stdout,
], ids=["gzip", "xz", "zstd", "lz4"])
def test_bzimage_payloads_decompress(compress: object, tmp_path: Path) -> None:
    image = bzimage(compress(VMLINUX))  # type: ignore[operator]
    out = io.BytesIO()
    assert decompress_kernel(io.BytesIO(image), len(image), out, "k") == len(VMLINUX)
    assert out.getvalue() == VMLINUX


def test_a_gzipped_image_decompresses_and_plain_kernels_are_refused() -> None:
    packed = gzip.compress(VMLINUX)  # arm64's Image.gz
    out = io.BytesIO()
    decompress_kernel(io.BytesIO(packed), len(packed), out, "k")
    assert out.getvalue() == VMLINUX
    with pytest.raises(UserError) as err:
        decompress_kernel(io.BytesIO(VMLINUX), len(VMLINUX), io.BytesIO(), "img: kernel")
    assert str(err.value) == "img: kernel: not a compressed kernel (neither a bzImage nor a compressed file)"
    lzo = bzimage(b"\x89LZO\x00" + bytes(20))
    with pytest.raises(UserError) as err:
        decompress_kernel(io.BytesIO(lzo), len(lzo), io.BytesIO(), "k")
    assert str(err.value) == "k: unsupported bzImage payload format at offset 2065"


# -- serve, completion --------------------------------------------------------------------------------------


def test_serve_a_directory(tmp_path: Path) -> None:
    (tmp_path / "os-kernel").write_bytes(b"kernel bytes")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "linuxkit_py", "serve", "--port", f"127.0.0.1:{port}",
                             "-directory", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/os-kernel", timeout=5) as answer:
                    body = answer.read()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            listing = answer.read().decode()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert body == b"kernel bytes"
    assert 'href="os-kernel"' in listing
    lines = err.decode().splitlines()
    assert lines[:3] == [f"serving {tmp_path} on http://127.0.0.1:{port}/", "GET /os-kernel", "GET /"]


def test_serve_refuses_a_bad_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "serve", "--port", "localhost", "--directory", tmp_path) == (
        1, "linuxkit-py: --port 'localhost': not an address (hint: use [HOST]:PORT, e.g. :8080 or 127.0.0.1:8080)\n")


def bash_complete(script: str, words: list[str]) -> list[str]:
    """What bash offers after `words` (the last one is being typed), with the generated script loaded."""
    line = " ".join(words)
    program = f"""{script}
COMP_WORDS=({line})
COMP_CWORD={len(words) - 1}
[ -z "{words[-1]}" ] && COMP_WORDS+=("")
_linuxkit_py
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_bash_completion_from_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert bash_complete(script, ["linuxkit-py", "bu"]) == ["build"]
    assert bash_complete(script, ["linuxkit-py", "--cache", "/tmp/c", "ca"]) == ["cache"]
    formats = bash_complete(script, ["linuxkit-py", "build", "-f", "kernel+"])
    assert {"kernel+initrd", "kernel+squashfs", "kernel+erofs"} <= set(formats)
    assert bash_complete(script, ["linuxkit-py", "run", "qemu", "--pub"]) == ["--publish"]
    assert {"ls", "clean", "verify", "rm", "push"} <= set(bash_complete(script, ["linuxkit-py", "cache", ""]))
    assert bash_complete(script, ["linuxkit-py", "completion", "f"]) == ["fish"]
    assert bash_complete(script, ["linuxkit-py", "build", "--arch", "aa"]) == ["aarch64"]
    assert bash_complete(script, ["linuxkit-py", "run", "q"]) == ["qemu"]
    assert bash_complete(script, ["linuxkit-py", "-v", ""]) == ["0", "1", "2", "3"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    if shell == "fish":
        assert "complete -c linuxkit-py -n __fish_use_subcommand -a 'build cache pkg run serve completion " in script
        assert "complete -c linuxkit-py -n '__fish_seen_subcommand_from build' -s f -x -a '" in script
    else:
        assert script.startswith("#compdef linuxkit-py\n") and "complete -o default -F _linuxkit_py" in script
    # CI installs both shells (.ci/debian-packages.txt): the script must parse in the real one.
    check = subprocess.run([shell, "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
