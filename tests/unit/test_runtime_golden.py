"""config.json / runtime.json golden files: every field, precedence, merging, bundle layouts, volumes.

Each case is a spec entry (YAML, as a user writes it), the image config, the image's label and the
volumes; the outputs are compared byte for byte with tests/golden/runtime/<case>/. The `minimal` and
`readonly` goldens were written by hand from LinuxKit's ConfigToOCI/ImageBundle, not generated.
Regenerate the others with LINUXKIT_PY_UPDATE_GOLDEN=1 after checking the diff.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from linuxkit_py.bundle import config as runtime
from linuxkit_py.spec.model import Spec

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "runtime"
UPDATE = os.environ.get("LINUXKIT_PY_UPDATE_GOLDEN") == "1"

# uid/gid names resolve to: sysctl 100, dhcpcd 101, shutdown 102, getty 103, sshd 104, redis 105.
SPEC = Spec(
    onboot=[{"name": "sysctl", "image": "x"}, {"name": "dhcpcd", "image": "x"}],
    onshutdown=[{"name": "shutdown", "image": "x"}],
    services=[{"name": name, "image": "x"} for name in ("getty", "sshd", "redis")],
)
VOLUMES: dict[str, dict[str, Any]] = {
    "data": {"name": "data"},
    "certs": {"name": "certs", "image": "alpine", "readonly": True},
}
ALPINE = {
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    "Cmd": ["/bin/sh"],
}
GETTY_LABEL = """
pid: host
net: host
binds:
  - /etc/resolv.conf:/etc/resolv.conf
  - /run:/run
  - /tmp:/tmp
  - /etc:/hostroot/etc
  - /containers:/containers
  - /var/log:/var/log
  - /dev:/dev
  - /sys:/sys
devices:
  - {path: /dev/console, type: c, major: 5, minor: 1, mode: "0666"}
  - {path: /dev/ttyS0, type: c, major: 4, minor: 64, mode: "0666"}
capabilities:
  - all
"""


@dataclass
class Case:
    entry: str
    image_config: dict[str, Any] = field(default_factory=lambda: dict(ALPINE))
    label: str | None = None
    bundle: str = "/containers/services/svc"
    content: str | None = None  # default: the bundle's own rootfs/ or lower/


CASES: dict[str, Case] = {
    # Nothing but name and image: every LinuxKit default.
    "minimal": Case("name: svc\nimage: alpine\n"),
    # readonly: ro /dev and /sys, root.readonly, and the rootfs bind-mounted onto itself.
    "readonly": Case("name: svc\nimage: alpine\nreadonly: true\n", bundle="/containers/onboot/001-svc"),
    # The same image already extracted for another (rw) container: overlay lowerdir points there.
    "dedup-rw": Case("name: svc\nimage: alpine\n", content="/containers/onboot/000-first/lower"),
    # ... and a readonly container binds the first copy onto its rootfs.
    "dedup-readonly": Case("name: svc\nimage: alpine\nreadonly: true\n",
                           content="/containers/onboot/000-first/rootfs"),
    # A getty-like package label plus YAML additions: binds.add and capabilities.add merge.
    "label-getty": Case(
        """
        name: getty
        image: linuxkit/getty
        env: [INSECURE=true]
        binds.add:
          - /var/lib/containerd:/var/lib/containerd
          - /run:/run
        capabilities.add: [CAP_SYS_ADMIN]
        """,
        image_config={"Entrypoint": ["/usr/bin/rungetty.sh"], "Env": ["PATH=/bin"]},
        label=GETTY_LABEL,
    ),
    # capabilities.add merges into the label's list without repeats (LinuxKit keeps repeats);
    # names may omit CAP_ and be lower case; ambient caps join bounding/permitted/inheritable.
    "capabilities-merge": Case(
        """
        name: svc
        image: alpine
        capabilities.add: [CAP_NET_RAW, net_admin, CAP_SYS_ADMIN, CAP_NET_RAW]
        ambient: [CAP_SYS_TIME]
        """,
        label="capabilities: [CAP_SYS_ADMIN, CAP_NET_ADMIN]\n",
    ),
    # YAML > label > image config, field by field; an empty YAML value clears the label's.
    "precedence": Case(
        """
        name: svc
        image: alpine
        command: [/usr/bin/yaml-cmd, --flag]
        hostname: from-yaml
        readonly: false
        sysctl: {}
        annotations: {org.example.from: yaml}
        binds: [/yaml:/yaml]
        capabilities: [CAP_KILL]
        uid: 7
        pid: ""
        maskedPaths: []
        """,
        image_config={
            "Entrypoint": ["/image-entrypoint"], "Cmd": ["image-cmd"], "Env": ["FROM=image"],
            "WorkingDir": "/image-dir", "User": "nobody",
        },
        label="""
        command: [/label-cmd]
        env: [FROM=label]
        cwd: /label-dir
        hostname: from-label
        readonly: true
        pid: host
        net: new
        sysctl: {net.ipv4.ip_forward: "1"}
        annotations: {org.example.from: label, org.example.label: "yes"}
        binds: [/label:/label]
        capabilities: [CAP_CHOWN]
        uid: 5
        gid: 6
        maskedPaths: [/proc/kcore]
        readonlyPaths: [/proc/sys]
        oomScoreAdj: -800
        noNewPrivileges: true
        rlimits: ["nofile,10,20"]
        runtime:
          mkdir: [/var/label]
        """,
    ),
    # Every field set in the YAML.
    "every-field": Case(
        """
        name: svc
        image: alpine
        command: [/bin/sh, -c, "echo ok && exit 0 <in >out"]
        env: [A=1, B=two words]
        cwd: /work
        net: /run/netns/wg
        ipc: new
        uts: new
        pid: host
        userns: new
        hostname: box
        readonly: false
        uid: getty
        gid: "42"
        additionalGids: [root, 17, redis, "9"]
        noNewPrivileges: true
        oomScoreAdj: -500
        rootfsPropagation: shared
        cgroupsPath: /linuxkit/svc
        maskedPaths: [/proc/kcore, /sys/firmware]
        readonlyPaths: [/proc/sys, /proc/sysrq-trigger]
        sysctl: {net.ipv4.ip_forward: "1", kernel.shmmax: "1024"}
        annotations: {org.opencontainers.image.title: svc, a.b: c}
        capabilities: [CAP_NET_ADMIN, CAP_CHOWN]
        ambient: [CAP_NET_BIND_SERVICE]
        rlimits:
          - nofile,1024,4096
          - RLIMIT_CORE, unlimited, UNLIMITED
          - memlock,0,unlimited
        tmpfs:
          - /run:size=1m,mode=0755
          - /var/tmp
        binds:
          - /dev:/dev
          - /var:/var:rshared,rbind
          - /etc/ssl:/etc/ssl:ro
        mounts:
          - {source: proc}
          - {type: mqueue}
          - {destination: /dev}
          - {type: cgroup, options: [rw]}
          - type: bind
            source: /lib/modules
            destination: /lib/modules
            options: [rbind, ro]
            uidmappings: [{hostID: 1000, containerID: 0, size: 1}]
            gidmappings: [{hostID: 1000, containerID: 0, size: 1}]
        devices:
          - {path: all, type: b}
          - {path: /dev/fuse, type: c, major: 10, minor: 229, mode: "0666"}
          - {path: /dev/null, type: c, major: 1, minor: 3}
        uidMappings: [{containerID: 0, hostID: 100000, size: 65536}]
        gidMappings: [{hostID: 100000, containerID: 0, size: 65536}]
        resources:
          devices: [{allow: false, access: rwm}, {allow: true, type: c, major: 1, minor: 5, access: rw}]
          memory: {limit: 536870912, reservation: 268435456, swap: 0, kernel: 1, kernelTCP: 2, swappiness: 10,
                   disableOOMKiller: true}
          cpu: {shares: 512, quota: 50000, period: 100000, realtimeRuntime: 950000, realtimePeriod: 1000000,
                cpus: "0-1", mems: "0"}
          pids: {limit: 64}
          blockio:
            weight: 500
            leafWeight: 300
            weightDevice: [{major: 8, minor: 0, weight: 600, leafWeight: 400}]
            throttleReadBpsDevice: [{major: 8, minor: 0, rate: 1048576}]
            throttleWriteBpsDevice: [{major: 8, minor: 0, rate: 2097152}]
            throttleReadIOPSDevice: [{major: 8, minor: 0, rate: 100}]
            throttleWriteIOPSDevice: [{major: 8, minor: 0, rate: 200}]
          hugepageLimits: [{pageSize: 2097152, limit: 1073741824}, {pageSize: 1073741824, limit: 0}]
          network:
            classID: 1048577
            priorities: [{name: eth0, priority: 5}]
        runtime:
          cgroups: [svc, svc/sub]
          mounts:
            - {type: overlay, source: overlay, destination: /mnt/x,
               options: ["lowerdir=/a", "upperdir=/b", "workdir=/c"]}
          mkdir: [/var/lib/svc, rel/dir]
          interfaces:
            - {name: wg0, add: wireguard, createInRoot: true}
            - {name: veth0, peer: veth1}
            - {name: eth1}
          bindNS: {net: /run/netns/svc, uts: /run/utsns/svc}
          namespace: custom.ns
        """,
        image_config={"Cmd": ["/bin/true"], "WorkingDir": "/image-dir"},
    ),
    # runtime.json: every field merged separately, YAML over label; bindNS per namespace.
    "runtime-merge": Case(
        """
        name: svc
        image: alpine
        runtime:
          mkdir: [/var/yaml]
          bindNS: {pid: /run/pidns/svc, net: ""}
          namespace: yaml.ns
        """,
        label="""
        runtime:
          cgroups: [fromlabel]
          mkdir: [/var/label]
          mounts: [{type: tmpfs, source: tmpfs, destination: /run/label}]
          interfaces: [{name: eth0}]
          bindNS: {net: /run/netns/label, ipc: /run/ipcns/label}
          namespace: label.ns
        """,
    ),
    # Volume names as bind sources (binds, binds.add, bind mounts) become /containers/volumes/<v>/merged;
    # a read-only volume mounted with ro.
    "volumes": Case(
        """
        name: svc
        image: alpine
        binds:
          - data:/data
          - certs:/etc/certs:ro
        binds.add:
          - data:/more:rw,rshared
        mounts:
          - {type: bind, source: certs, destination: /certs, options: [rw, ro]}
        """,
        label="binds: [/label:/label]\n",
    ),
}


def _load(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = yaml.safe_load(text.replace("\n        ", "\n"))
    assert isinstance(value, dict)
    return value


def _outputs(case: Case) -> tuple[dict[str, Any], bytes, bytes]:
    entry = _load(case.entry)
    assert entry is not None
    cc = runtime.container_config(entry, case.image_config, _load(case.label), ids=runtime.allocate_ids(SPEC),
                                  volumes=VOLUMES)
    content = case.content or f"{case.bundle}/{'rootfs' if cc.readonly else 'lower'}"
    bundled = runtime.bundle_runtime(cc.runtime, case.bundle, content, cc.readonly)
    return cc.config, runtime.config_json(cc.config), runtime.runtime_json(bundled)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    config, config_bytes, runtime_bytes = _outputs(CASES[name])
    directory = GOLDEN / name
    if UPDATE and name not in ("minimal", "readonly"):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_bytes(config_bytes)
        (directory / "runtime.json").write_bytes(runtime_bytes)
    assert config_bytes.decode() == (directory / "config.json").read_text()
    assert runtime_bytes.decode() == (directory / "runtime.json").read_text()
    runtime.validate_config(config)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_files_are_valid_runtime_spec(name: str) -> None:
    """The golden config.json files themselves (not only our dicts) pass the vendored OCI schema."""
    doc = json.loads((GOLDEN / name / "config.json").read_bytes())
    assert doc["ociVersion"] == runtime.OCI_VERSION == "1.2.1"
    runtime.validate_config(doc)
