"""The in-image runtime (pkg/init + pkg/runc) booting real bundles under qemu TCG.

Each test builds a spec with `linuxkit-py build` from our packages (`@pkg:`: pkg/init, pkg/runc,
kernels/cloud-amd64 and a small busybox test package), boots the kernel+initrd and reads the serial
console. An init.d hook written by the spec's `files` drives the guest (kills a service, prints
logs) and powers it off, so qemu ends by itself.

The packages are built into tests/.cache/runtime-boot/ (kept between runs; tags are content
hashes, so an edited package is rebuilt). First run: the Debian packages are downloaded.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from linuxkit_py.build import BuildOptions, build
from linuxkit_py.run.qemu import BootResult, QemuOptions, boot

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "tests" / ".cache" / "runtime-boot"
BOOT_TIMEOUT = 150  # seconds; a boot takes 10-20 s under TCG
POWER_DOWN = "reboot: Power down"

BUSYBOX_PACKAGE = """\
image: linuxkit-py-test/busybox
packages: [busybox-static]
libraries: none
include: ["bin/busybox"]
symlinks:
  /bin/sh: busybox
  /bin/cat: busybox
  /bin/echo: busybox
  /bin/ls: busybox
  /bin/sleep: busybox
  /bin/touch: busybox
env: ["PATH=/bin"]
"""
# A service may write to the console only with the device allowed (runc's device cgroup).
CONSOLE_DEVICE = '[{path: /dev/console, type: c, major: 5, minor: 1, mode: "0600"}]'


@pytest.fixture(scope="module")
def busybox_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("busybox-package")
    (directory / "build.yml").write_text(BUSYBOX_PACKAGE)
    return directory


def spec_head(cmdline: str) -> str:
    return textwrap.dedent(f"""\
        kernel:
          image: "@pkg:{REPO / 'kernels' / 'cloud-amd64'}"
          cmdline: "console=ttyS0 quiet {cmdline}"
        init:
          - "@pkg:{REPO / 'pkg' / 'init'}"
          - "@pkg:{REPO / 'pkg' / 'runc'}"
        """)


def init_hook(script: str) -> str:
    """A `files` entry: /etc/init.d/090-test running `script` in the background, output on the console."""
    body = textwrap.indent(f"#!/bin/sh\n(\n{textwrap.indent(script, '  ')})</dev/null >/dev/console 2>&1 &\n",
                           "      ")
    return f"files:\n  - path: etc/init.d/090-test\n    mode: \"0755\"\n    contents: |\n{body}"


def build_and_boot(tmp_path: Path, spec: str) -> BootResult:
    spec_file = tmp_path / "runtime.yml"
    spec_file.write_text(spec)
    out = tmp_path / "out"
    build(BuildOptions(paths=[str(spec_file)], directory=out, cache_dir=CACHE))
    return boot(out / "runtime-kernel", out / "runtime-initrd.img", (out / "runtime-cmdline").read_text(),
                QemuOptions(mem=512), timeout=BOOT_TIMEOUT, log=tmp_path / "console.log")


def console_lines(result: BootResult) -> list[str]:
    return [line.rstrip() for line in result.output.splitlines()]


def assert_powered_off(result: BootResult) -> None:
    assert not result.timed_out, f"no power-off within {BOOT_TIMEOUT}s:\n{result.output[-3000:]}"
    assert POWER_DOWN in result.output, result.output[-3000:]
    assert result.exit_code == 0


@pytest.mark.boot
def test_onboot_and_onshutdown_containers(tmp_path: Path, busybox_package: Path) -> None:
    bb = f"\"@pkg:{busybox_package}\""
    spec = spec_head("linuxkit.onboot_timeout=2") + textwrap.dedent(f"""\
        volumes:
          - name: shared
        onboot:
          - name: hello
            image: {bb}
            binds: ["shared:/shared"]
            command: ["sh", "-c", "echo onboot says hello; echo to stderr >&2; echo kept > /shared/note"]
            runtime:
              mkdir: ["/var/lib/hello"]
          - name: failing
            image: {bb}
            command: ["sh", "-c", "echo about to fail; exit 3"]
          - name: stuck
            image: {bb}
            command: ["sh", "-c", "echo stuck forever; exec sleep 1000"]
          - name: netns
            image: {bb}
            net: new
            command: ["sh", "-c", "echo interfaces: $(ls /sys/class/net)"]
            runtime:
              interfaces: [{{name: inside, peer: outside}}]
              bindNS: {{net: /run/netns/netns}}
        onshutdown:
          - name: goodbye
            image: {bb}
            command: ["sh", "-c", "echo onshutdown says goodbye"]
        """) + init_hook(textwrap.dedent("""\
        sed 's/^/LOG: /' /var/log/onboot.000-hello.log
        [ -d /var/lib/hello ] && echo "CHECK: mkdir done"
        echo "CHECK: volume holds $(cat /containers/volumes/shared/merged/note)"
        grep -q " /run/netns/netns " /proc/mounts && echo "CHECK: netns bound"
        [ -e /sys/class/net/outside ] && echo "CHECK: veth peer outside"
        poweroff
        """))

    result = build_and_boot(tmp_path, spec)

    assert_powered_off(result)
    lines = console_lines(result)
    expected_in_order = [
        "hello: onboot says hello",  # stdout and stderr, prefixed with the name
        "hello: to stderr",
        "failing: about to fail",
        "onboot failing: failed with status 3",  # reported; the next one still runs
        "stuck: stuck forever",
        "onboot stuck: killed after the 2s timeout",
        "netns: interfaces: inside lo",  # the interface was moved in before the container started
        "LOG: onboot says hello",  # /var/log/onboot.000-hello.log
        "LOG: to stderr",
        "CHECK: mkdir done",
        "CHECK: volume holds kept",  # written through the bind by the container, after it ended
        "CHECK: netns bound",
        "CHECK: veth peer outside",
        "goodbye: onshutdown says goodbye",
        "onshutdown goodbye: done",
    ]
    found = [next((i for i, line in enumerate(lines) if line.startswith(want)), -1) for want in expected_in_order]
    missing = [want for want, i in zip(expected_in_order, found, strict=True) if i < 0]
    assert not missing, f"missing {missing}:\n{result.output}"
    assert found == sorted(found), f"out of order:\n{result.output}"
    assert [line for line in lines if line.startswith("onboot hello: ")][0].startswith("onboot hello: done in ")


@pytest.mark.boot
def test_services_are_supervised_and_stopped_at_shutdown(tmp_path: Path, busybox_package: Path) -> None:
    bb = f"\"@pkg:{busybox_package}\""
    spec = spec_head("") + textwrap.dedent(f"""\
        services:
          - name: ticker
            image: {bb}
            readonly: true
            devices: {CONSOLE_DEVICE}
            command:
              - sh
              - -c
              - exec >/dev/console; trap 'echo ticker got TERM; exit 0' TERM; echo ticker up; while :; do sleep 1; done
          - name: flaky
            image: {bb}
            restart: on-failure
            command: ["sh", "-c", "if [ -f /ran ]; then echo second run; exit 0; fi; touch /ran; exit 1"]
          - name: once
            image: {bb}
            restart: "no"
            command: ["sh", "-c", "echo once ran; exit 5"]
        onshutdown:
          - name: goodbye
            image: {bb}
            command: ["sh", "-c", "echo onshutdown says goodbye"]
        """) + init_hook(textwrap.dedent("""\
        running() {
          i=0
          while [ $i -lt 300 ]; do
            runc state ticker 2>/dev/null | grep -q '"status": "running"' && return 0
            sleep 0.2; i=$((i + 1))
          done
          return 1
        }
        running && echo "CHECK: ticker running"
        runc kill ticker KILL
        i=0
        while [ "$(cat /run/linuxkit-py/services/ticker/restarts)" = 0 ] && [ $i -lt 100 ]; do
          sleep 0.2; i=$((i + 1))
        done
        running && echo "CHECK: ticker running again"
        i=0
        while ! grep -q "^exited (0)" /run/linuxkit-py/services/flaky/status && [ $i -lt 100 ]; do
          sleep 0.2; i=$((i + 1))
        done
        service list
        service logs flaky | sed 's/^/LOG: /'
        poweroff
        """))

    result = build_and_boot(tmp_path, spec)

    assert_powered_off(result)
    lines = console_lines(result)
    text = "\n".join(lines)
    assert lines.count("ticker up") == 2, text  # started, killed, started again
    assert "service ticker: exited with status 137 after" in text and "restarting in 1s" in text, text
    assert "CHECK: ticker running again" in lines, text
    # on-failure: the failed first run is restarted, the successful second one is not
    assert "service flaky: exited with status 1 after" in text, text
    assert "LOG: second run" in lines, text  # its overlay kept /ran across the restart
    assert "; not restarted (restart: on-failure)" in text, text
    # no: not restarted, whatever the status
    assert "service once: exited with status 5 after" in text and "; not restarted (restart: no)" in text, text
    header = lines.index("NAME                 STATUS                 POLICY     RESTARTS")  # `service list`
    listing = {line.split()[0]: line.split()[1:] for line in lines[header + 1: header + 4]}
    assert listing == {"flaky": ["exited", "(0)", "on-failure", "1"], "once": ["exited", "(5)", "no", "0"],
                       "ticker": ["running", "always", "1"]}, text
    # at poweroff: the service gets TERM and is stopped first, then the onshutdown container runs
    stopped = lines.index("service ticker: stopped")
    assert lines.index("ticker got TERM") < stopped < lines.index("goodbye: onshutdown says goodbye"), text
