"""`files: metadata: yaml` is the document LinuxKit writes (yaml.v2 of its Moby struct): every section, its key
order and defaults, its quoting; and `hugepageLimits[].pageSize` as an integer, as LinuxKit's schema types it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from linuxkit_py.spec.load import load_specs
from linuxkit_py.spec.moby import spec_to_moby_json, spec_to_moby_yaml
from linuxkit_py.spec.resolve import resolve_spec

SPEC = """\
kernel:
  image: linuxkit/kernel:6.6.71
  cmdline: "console=ttyS0"
init:
  - linuxkit/init:v1
services:
  - name: web
    image: nginx:1.27
    capabilities: [CAP_NET_BIND_SERVICE]
    binds: ["/etc/resolv.conf:/etc/resolv.conf"]
    env: ["DEBUG=true", "PORT=80"]
    readonly: true
    resources:
      hugepageLimits:
        - pageSize: 2097152
          limit: 1
files:
  - path: etc/linuxkit.yml
    metadata: yaml
  - path: etc/on
    contents: "on"
"""

EXPECTED = """\
kernel:
  image: docker.io/linuxkit/kernel:6.6.71
  cmdline: console=ttyS0
init:
- docker.io/linuxkit/init:v1
onboot: []
onshutdown: []
services:
- name: web
  image: docker.io/library/nginx:1.27
  capabilities:
  - CAP_NET_BIND_SERVICE
  binds:
  - /etc/resolv.conf:/etc/resolv.conf
  env:
  - DEBUG=true
  - PORT=80
  readonly: true
  resources:
    devices: []
    memory: null
    cpu: null
    pids: null
    blockio: null
    hugepagelimits:
    - pagesize: 2097152
      limit: 1
    network: null
    rdma: {}
    unified: {}
files:
- path: etc/linuxkit.yml
  directory: false
  metadata: yaml
  optional: false
- path: etc/on
  directory: false
  contents: "on"
  optional: false
volumes: []
"""


def _render(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.yml"
    path.write_text(text)
    return spec_to_moby_yaml(resolve_spec(load_specs([str(path)])))


def test_metadata_yaml_is_linuxkits_document(tmp_path: Path) -> None:
    assert _render(tmp_path, SPEC) == EXPECTED


def test_every_section_is_there_even_when_empty(tmp_path: Path) -> None:
    text = _render(tmp_path, "kernel:\n  image: k:1\n")
    assert list(yaml.safe_load(text)) == ["kernel", "init", "onboot", "onshutdown", "services", "files", "volumes"]
    assert "onboot: []\n" in text and "init: []\n" in text


def test_runtime_spec_objects_have_every_field_lower_cased(tmp_path: Path) -> None:
    text = _render(tmp_path, "onboot:\n  - name: a\n    image: a:1\n    mounts:\n      - type: bind\n"
                             "        source: /x\n        destination: /y\n    runtime:\n      interfaces:\n"
                             "        - name: eth0\n")
    assert ("  mounts:\n  - destination: /y\n    type: bind\n    source: /x\n    options: []\n"
            "    uidmappings: []\n    gidmappings: []\n") in text
    assert "  runtime:\n    interfaces:\n    - name: eth0\n      createInRoot: false\n" in text


def test_strings_that_read_as_other_types_are_double_quoted_and_long_lines_fold(tmp_path: Path) -> None:
    cmdline = " ".join(["console=ttyS0"] * 8)
    text = _render(tmp_path, f"kernel:\n  image: k:1\n  cmdline: \"{cmdline}\"\nfiles:\n"
                             "  - path: a\n    contents: \"yes\"\n  - path: b\n    contents: \"\"\n"
                             "  - path: c\n    contents: \"0755\"\n")
    assert 'contents: "yes"\n' in text and 'contents: ""\n' in text and 'contents: "0755"\n' in text
    assert "\n    console=ttyS0" in text  # folded past column 80 at a space, as libyaml's emitter does
    assert yaml.safe_load(text)["kernel"]["cmdline"] == cmdline


def test_page_size_in_bytes_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "hugepages.yml"
    path.write_text("kernel:\n  image: linuxkit/kernel:6.6\nonboot:\n  - name: x\n    image: busybox\n"
                    "    resources:\n      hugepageLimits:\n        - pageSize: 2097152\n          limit: 1024\n")
    done = subprocess.run([sys.executable, "-m", "linuxkit_py", "build", "--dry-run", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert "        - pageSize: 2097152\n" in done.stdout


JSON_SPEC = """\
kernel:
  image: linuxkit/kernel:6.6.71
onboot:
  - name: a
    image: a:1
    mounts:
      - type: bind
        source: /x
        destination: /y
    runtime:
      mkdir: [/var/a]
    sysctl:
      b: "2"
      a: "1"
files:
  - path: etc/m
    contents: "<&>"
"""

JSON_EXPECTED = """\
{
    "kernel": {
        "image": "docker.io/linuxkit/kernel:6.6.71"
    },
    "init": null,
    "onboot": [
        {
            "name": "a",
            "image": "docker.io/library/a:1",
            "mounts": [
                {
                    "destination": "/y",
                    "type": "bind",
                    "source": "/x"
                }
            ],
            "sysctl": {
                "a": "1",
                "b": "2"
            },
            "runtime": {
                "mkdir": [
                    "/var/a"
                ],
                "bindNS": {}
            }
        }
    ],
    "onshutdown": null,
    "services": null,
    "files": [
        {
            "path": "etc/m",
            "directory": false,
            "contents": "\\u003c\\u0026\\u003e",
            "optional": false
        }
    ],
    "volumes": null
}"""


def test_metadata_json_is_linuxkits_document(tmp_path: Path) -> None:
    """encoding/json: json names, omitempty as tagged (runtime-spec mounts lose their empty fields, a struct such as
    bindNS stays), sorted maps, null sections, HTML-safe escapes, no final newline."""
    path = tmp_path / "spec.yml"
    path.write_text(JSON_SPEC)
    assert spec_to_moby_json(resolve_spec(load_specs([str(path)]))).decode() == JSON_EXPECTED
