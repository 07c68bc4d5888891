"""Spec validation: the exact one-line error for every class of mistake, and the normalised values."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from linuxkit_py.errors import SpecError
from linuxkit_py.spec import Spec, load_specs
from linuxkit_py.spec.model import Position

SVC = "services:\n  - name: s\n    image: alpine\n"  # a service; append its fields indented by 4


def load_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Spec:
    monkeypatch.chdir(tmp_path)
    Path("spec.yml").write_text(text)
    return load_specs(["spec.yml"])


CASES = [
    # unknown keys, with a suggestion or the list of known keys
    (
        "unknownField: abc\n",
        "spec.yml:1:1: unknownField: unknown key "
        "(hint: known keys: kernel, init, onboot, onshutdown, services, files, volumes, trust)",
    ),
    (
        SVC + "    capabilites: [CAP_NET_ADMIN]\n",
        'spec.yml:4:5: services[0].capabilites: unknown key (hint: did you mean "capabilities"?)',
    ),
    (
        SVC + "    resources:\n      memory: {limitt: 5}\n",
        'spec.yml:5:16: services[0].resources.memory.limitt: unknown key (hint: did you mean "limit"?)',
    ),
    (SVC + "    frobnicate: true\n", "spec.yml:4:5: services[0].frobnicate: unknown key"),
    # types
    (
        SVC + "    net: 1\n",
        'spec.yml:4:10: services[0].net: expected a string, got the number 1 (hint: quote it: "1")',
    ),
    (
        SVC + "    sysctl:\n      net.ipv4.ip_forward: 1\n",
        "spec.yml:5:28: services[0].sysctl.net.ipv4.ip_forward: expected a string, got the number 1 "
        '(hint: quote it: "1")',
    ),
    ("services:\n", "spec.yml:1:1: services: expected a list, got an empty value"),
    ("kernel: [a]\n", "spec.yml:1:9: kernel: expected a mapping, got a list"),
    ("init: linuxkit/init:v1\n", 'spec.yml:1:7: init: expected a list, got the string "linuxkit/init:v1"'),
    (
        SVC + "    readonly: yes\n",
        'spec.yml:4:15: services[0].readonly: expected true or false, got the string "yes" '
        "(hint: yes/no/on/off are strings in YAML 1.2 (as in LinuxKit): write true or false)",
    ),
    (
        SVC + "    uid: 1.5\n",
        "spec.yml:4:10: services[0].uid: expected an integer or a string, got the number 1.5 (hint: "
        'quote it: "1.5")',
    ),
    (
        SVC + "    oomScoreAdj: 1.0\n",
        "spec.yml:4:18: services[0].oomScoreAdj: expected an integer, got the number 1.0",
    ),
    # required keys
    ("services:\n  - name: s\n    command: [x]\n", 'spec.yml:2:5: services[0]: missing required key "image"'),
    ("onboot:\n  - image: alpine\n", 'spec.yml:2:5: onboot[0]: missing required key "name"'),
    ("files:\n  - contents: x\n", 'spec.yml:2:5: files[0]: missing required key "path"'),
    ("volumes:\n  - readonly: true\n", 'spec.yml:2:5: volumes[0]: missing required key "name"'),
    (
        SVC + "    runtime:\n      interfaces:\n        - add: veth\n",
        'spec.yml:6:11: services[0].runtime.interfaces[0]: missing required key "name"',
    ),
    # allowed values
    (
        "files:\n  - path: a\n    metadata: toml\n",
        'spec.yml:3:15: files[0].metadata: "toml" is not one of: yaml, json',
    ),
    (
        "volumes:\n  - name: v\n    format: tar\n",
        'spec.yml:3:13: volumes[0].format: "tar" is not one of: oci, filesystem',
    ),
    (
        SVC + "    restart: sometimes\n",
        'spec.yml:4:14: services[0].restart: "sometimes" is not one of: always, on-failure, no',
    ),
    (
        SVC + "    oomScoreAdj: -2000\n",
        "spec.yml:4:18: services[0].oomScoreAdj: -2000 is below the minimum -1000",
    ),
    # capabilities
    (
        "services:\n  - name: a\n    image: b\n  - name: c\n    image: d\n    capabilities:\n      - "
        "CAP_FOO\n",
        'spec.yml:7:9: services[1].capabilities[0]: unknown capability "CAP_FOO"',
    ),
    (
        SVC + "    capabilities.add: [CAP_NET_ADMN]\n",
        'spec.yml:4:24: services[0].capabilities.add[0]: unknown capability "CAP_NET_ADMN" (hint: did '
        'you mean "CAP_NET_ADMIN"?)',
    ),
    (
        SVC + "    capabilities: [all, CAP_CHOWN]\n",
        'spec.yml:4:20: services[0].capabilities[0]: "all" must be the only entry of the list',
    ),
    # rlimits
    (
        SVC + '    rlimits: ["nofiles,1,2"]\n',
        'spec.yml:4:15: services[0].rlimits[0]: unknown rlimit "nofiles" (hint: known: cpu, fsize, '
        "data, stack, core, "
        "rss, nproc, nofile, memlock, as, locks, sigpending, msgqueue, nice, rtprio, rttime)",
    ),
    (
        SVC + '    rlimits: ["nofile,1"]\n',
        'spec.yml:4:15: services[0].rlimits[0]: "nofile,1" is not an rlimit: expected name,soft,hard '
        "(e.g. nofile,1024,4096)",
    ),
    (
        SVC + '    rlimits: ["nofile,many,2"]\n',
        'spec.yml:4:15: services[0].rlimits[0]: rlimit "nofile,many,2": "many" is not a number or unlimited',
    ),
    (
        SVC + '    rlimits: ["nofile,20,10"]\n',
        'spec.yml:4:15: services[0].rlimits[0]: rlimit "nofile,20,10": the soft limit is above the hard '
        "limit",
    ),
    # binds and tmpfs
    (
        SVC + '    binds: ["/a"]\n',
        'spec.yml:4:13: services[0].binds[0]: "/a" is not a bind: expected source:destination[:options]',
    ),
    (
        SVC + '    binds.add: ["/a:/b:ro:x"]\n',
        'spec.yml:4:17: services[0].binds.add[0]: "/a:/b:ro:x" is not a bind: expected '
        "source:destination[:options] (hint: too many ':')",
    ),
    (SVC + '    binds: [":/b"]\n', 'spec.yml:4:13: services[0].binds[0]: bind ":/b" has an empty source'),
    (
        SVC + '    binds: ["/a:/b:ro,"]\n',
        'spec.yml:4:13: services[0].binds[0]: empty mount option in "/a:/b:ro,"',
    ),
    (
        SVC + '    tmpfs: ["/a:b:c"]\n',
        'spec.yml:4:13: services[0].tmpfs[0]: "/a:b:c" is not a tmpfs: expected /destination[:options] '
        "(too many ':')",
    ),
    # namespaces and other strings with a fixed form
    (
        SVC + "    net: bridge\n",
        'spec.yml:4:10: services[0].net: "bridge" is not host, root, new, none or the absolute path of '
        "a namespace to join",
    ),
    (
        SVC + "    pid: none\n",
        'spec.yml:4:10: services[0].pid: "none" is not host, root, new or the absolute path of a '
        "namespace to join",
    ),
    (
        SVC + "    rootfsPropagation: shred\n",
        'spec.yml:4:24: services[0].rootfsPropagation: "shred" is not one of shared, slave, private, '
        "unbindable, rshared, rslave, rprivate, runbindable",
    ),
    (
        SVC + "    cwd: tmp\n",
        'spec.yml:4:10: services[0].cwd: working directory "tmp" must be an absolute path',
    ),
    (SVC + "    env: [FOO]\n", 'spec.yml:4:11: services[0].env[0]: "FOO" is not NAME=value'),
    (
        "services:\n  - name: a/b\n    image: b\n",
        'spec.yml:2:11: services[0].name: "a/b" is not a valid container name (hint: use letters, '
        "digits, '_', '.' and '-', starting with a letter or digit)",
    ),
    (
        "volumes:\n  - name: Vol\n",
        'spec.yml:2:11: volumes[0].name: "Vol" is not a valid volume name (hint: use lower-case '
        "letters, digits, '_' and '-')",
    ),
    (
        "volumes:\n  - name: v\n    image: alpine\n    format: oci\n    platforms: [amd64]\n",
        'spec.yml:5:17: volumes[0].platforms[0]: "amd64" is not a platform like linux/amd64 or '
        "linux/arm64/v8",
    ),
    (
        "services:\n  - name: a\n    image: Foo/Bar\n",
        "spec.yml:3:12: services[0].image: invalid image reference 'Foo/Bar': bad repository name 'Bar'",
    ),
    ("init:\n  - '@pkg:'\n", 'spec.yml:2:5: init[0]: "@pkg:" names no package directory'),
    # octal modes
    (
        "files:\n  - path: a\n    contents: x\n    mode: 644\n",
        "spec.yml:4:11: files[0].mode: 644 is not an octal mode: a number without a leading 0 is ambiguous "
        '(hint: write the mode as an octal string, e.g. "0644")',
    ),
    (
        'files:\n  - path: a\n    contents: x\n    mode: "0999"\n',
        'spec.yml:4:11: files[0].mode: "0999" is not an octal mode (hint: write e.g. "0644")',
    ),
    (
        'files:\n  - path: a\n    contents: x\n    mode: "17777"\n',
        'spec.yml:4:11: files[0].mode: "17777" is not a mode: more than 07777',
    ),
    # devices
    (
        SVC + "    devices:\n      - {path: /dev/console, type: c, major: 5, minor: 1}\n",
        'spec.yml:5:9: services[0].devices[0]: a device needs a "mode", e.g. mode: "0666"',
    ),
    (
        SVC + "    devices:\n      - {path: all, type: x}\n",
        'spec.yml:5:27: services[0].devices[0].type: a device with path "all" needs type a, b or c',
    ),
    (
        SVC + "    devices:\n      - {path: /dev/tty0, type: c, mode: '0620'}\n",
        'spec.yml:5:9: services[0].devices[0]: a device of type c needs "major" and "minor"',
    ),
    (
        SVC + "    devices:\n      - {path: /dev/x, type: c, major: 1, minor: 1, mode: 666}\n",
        "spec.yml:5:59: services[0].devices[0].mode: 666 is not an octal mode: a number without a "
        'leading 0 is ambiguous (hint: write the mode as an octal string, e.g. "0666")',
    ),
    # mounts
    (
        SVC + "    mounts:\n      - source: /x\n        destination: /y\n",
        'spec.yml:5:9: services[0].mounts[0]: missing "type" (hint: only the sources mqueue, devpts, '
        "proc, sysfs, cgroup and /dev imply a type)",
    ),
    (
        SVC + "    mounts:\n      - type: tmpfs\n",
        'spec.yml:5:9: services[0].mounts[0]: missing "destination" (a tmpfs mount has no default mount '
        "point)",
    ),
    (
        SVC + "    mounts:\n      - {type: bind, destination: /y}\n",
        'spec.yml:5:9: services[0].mounts[0]: a bind mount needs a "source" (a path, or a volume name)',
    ),
    # files
    (
        "files:\n  - path: a\n",
        "spec.yml:2:5: files[0]: no content: give one of contents, source, metadata, directory: true or "
        "symlink",
    ),
    (
        "files:\n  - path: a\n    directory: false\n",
        "spec.yml:2:5: files[0]: no content: give one of contents, source, metadata, directory: true or "
        "symlink",
    ),
    (
        "files:\n  - path: a\n    contents: x\n    source: y\n",
        'spec.yml:4:13: files[0].source: cannot be combined with "contents"',
    ),
    (
        "files:\n  - path: a\n    directory: true\n    contents: x\n",
        'spec.yml:3:16: files[0].directory: cannot be combined with "contents"',
    ),
    (
        "files:\n  - path: /\n    directory: true\n",
        "spec.yml:2:11: files[0].path: a file needs a path below /",
    ),
    ("files:\n  - path: a\n    symlink: ''\n", "spec.yml:3:14: files[0].symlink: must not be empty"),
    # both spellings of a camelCase key
    (
        SVC + "    resources:\n      memory:\n        kerneltcp: 1\n        kernelTCP: 2\n",
        'spec.yml:6:9: services[0].resources.memory.kerneltcp: same key as "kernelTCP" '
        "(LinuxKit's lower-case spelling); give it once",
    ),
    # ids
    (SVC + "    uid: -1\n", "spec.yml:4:10: services[0].uid: -1 is out of range (0 to 4294967295)"),
    (
        SVC + "    additionalGids: ['4294967296']\n",
        "spec.yml:4:22: services[0].additionalGids[0]: 4294967296 is out of range (0 to 4294967295)",
    ),
    # across the spec
    (
        "services:\n  - name: a\n    image: b\n  - name: a\n    image: c\n",
        'spec.yml:4:11: services[1].name: duplicate service name "a" (first at spec.yml:2:11)',
    ),
    (
        "volumes:\n  - name: v\n  - name: v\n",
        'spec.yml:3:11: volumes[1].name: duplicate volume name "v" (first at spec.yml:2:11)',
    ),
    (
        "onboot:\n  - name: redis-init\n    image: b\nservices:\n  - name: s\n    image: b\n    uid: "
        "redis-int\n",
        'spec.yml:7:10: services[0].uid: "redis-int" is not a number, root or a container in the spec '
        '(hint: did you mean "redis-init"?)',
    ),
    (
        "files:\n  - path: a\n    contents: x\n    gid: nobody\n",
        'spec.yml:4:10: files[0].gid: "nobody" is not a number, root or a container in the spec '
        "(hint: a uid/gid is a number, root, or the name of a container)",
    ),
    (
        SVC + "    binds:\n      - data:/data\n",
        'spec.yml:5:9: services[0].binds[0]: "data" is not a declared volume (hint: a source that does '
        "not start with / names a volume)",
    ),
    (
        "volumes:\n  - name: data\n    readonly: true\n" + SVC + "    binds:\n      - data:/data\n",
        'spec.yml:8:9: services[0].binds[0]: volume "data" is read-only: mount it with the ro option '
        "(hint: e.g. vol:/dst:ro)",
    ),
    (
        "volumes:\n  - name: data\n    readonly: true\n"
        + SVC
        + "    mounts:\n      - {type: bind, source: data, destination: /d, options: [rw]}\n",
        'spec.yml:8:30: services[0].mounts[0].source: volume "data" is read-only: mount it with the ro '
        "option (hint: e.g. vol:/dst:ro)",
    ),
    (
        "volumes:\n  - name: data\n"
        + SVC
        + "    mounts:\n      - {type: bind, source: date, destination: /d}\n",
        'spec.yml:7:30: services[0].mounts[0].source: "date" is not a declared volume (hint: did you '
        'mean "data"?)',
    ),
    # the first mistake in document order wins
    (
        SVC + "    net: bridge\n    capabilities: [CAP_FOO]\n    frob: 1\n",
        "spec.yml:6:5: services[0].frob: unknown key",
    ),
    (
        SVC + "    pid: nope\n    capabilities: [CAP_FOO]\n",
        'spec.yml:4:10: services[0].pid: "nope" is not host, root, new or the absolute path of a '
        "namespace to join",
    ),
]


@pytest.mark.parametrize(("text", "message"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_spec_gives_one_precise_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    with pytest.raises(SpecError) as exc:
        load_text(tmp_path, monkeypatch, text)
    assert str(exc.value) == message
    assert "\n" not in str(exc.value)


def test_linuxkit_validate_test_case_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LinuxKit's own 091_validate_linuxkit_yaml input (which LinuxKit's test never really checks)."""
    text = (
        'kernel:\n  image: linuxkit/kernel:6.12.59\n  cmdline: "console=ttyS0"\n'
        "init:\n  - linuxkit/init:b5506cc74a6812dc40982cacfd2f4328f8a4b12a\n"
        'unknownField: "abc"\n'
    )
    with pytest.raises(SpecError) as exc:
        load_text(tmp_path, monkeypatch, text)
    assert exc.value.line == 6 and exc.value.column == 1
    assert exc.value.detail.startswith("unknownField: unknown key")


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("0644", "0644"),
        ("0o755", "0755"),
        ("'644'", "0644"),
        ('"0600"', "0600"),
        ("04755", "4755"),
        ("0", "0000"),
    ],
)
def test_modes_become_octal_strings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str, normalised: str
) -> None:
    text = (
        f"files:\n  - path: etc/x\n    contents: x\n    mode: {written}\n"
        + SVC
        + f"    devices:\n      - {{path: /dev/console, type: c, major: 5, minor: 1, mode: {written}}}\n"
    )
    spec = load_text(tmp_path, monkeypatch, text)
    assert spec.files[0]["mode"] == normalised
    assert spec.services[0]["devices"][0]["mode"] == normalised


def test_values_are_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "onboot:\n  - name: init-db\n    image: alpine\n"
        + SVC
        + "    capabilities: [net_admin, SYS_ADMIN, CAP_CHOWN]\n"
        "    ambient: [ALL]\n"
        "    uid: init-db\n"
        '    gid: "7"\n'
        "    additionalGids: [root, '', 12, '13']\n"
    )
    service = load_text(tmp_path, monkeypatch, text).services[0]
    assert service["capabilities"] == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_CHOWN"]
    assert service["ambient"] == ["all"]
    assert service["uid"] == "init-db"
    assert service["gid"] == 7
    assert service["additionalGids"] == ["root", "", 12, 13]


def test_lower_case_oci_keys_become_camel_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SVC + (
        "    uidMappings:\n      - {hostid: 1000, containerid: 0, size: 1}\n"
        "    mounts:\n"
        "      - type: bind\n        source: /x\n        destination: /y\n"
        "        uidmappings: [{hostID: 1, containerID: 0, size: 1}]\n"
        "    resources:\n"
        "      memory: {limit: 100, kerneltcp: 5, disableoomkiller: true}\n"
        "      cpu: {realtimeruntime: 1, realtimeperiod: 2}\n"
        "      blockio:\n"
        "        weightdevice: [{major: 8, minor: 0, weight: 10, leafweight: 5}]\n"
        "        throttlereadbpsdevice: [{major: 8, minor: 0, rate: 100}]\n"
        "      hugepagelimits: [{pagesize: 2MB, limit: 10}]\n"
        "      network: {classid: 7}\n"
    )
    spec = load_text(tmp_path, monkeypatch, text)
    service = spec.services[0]
    assert service["uidMappings"] == [{"hostID": 1000, "containerID": 0, "size": 1}]
    assert service["mounts"][0]["uidMappings"] == [{"hostID": 1, "containerID": 0, "size": 1}]
    assert service["resources"] == {
        "memory": {"limit": 100, "kernelTCP": 5, "disableOOMKiller": True},
        "cpu": {"realtimeRuntime": 1, "realtimePeriod": 2},
        "blockio": {
            "weightDevice": [{"major": 8, "minor": 0, "weight": 10, "leafWeight": 5}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 100}],
        },
        "hugepageLimits": [{"pageSize": "2MB", "limit": 10}],
        "network": {"classID": 7},
    }
    # positions follow the renamed keys, so later errors can still point at the user's text
    assert spec.positions["services/0/uidMappings/0/hostID"] == Position("spec.yml", 5, 18)
    assert spec.positions["services/0/resources/network/classID"] == Position("spec.yml", 18, 26)


def test_volumes_and_ro_binds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "volumes:\n  - name: ro_vol\n    readonly: true\n  - name: rw-vol\n"
        + SVC
        + "    binds: [ro_vol:/a:ro, 'rw-vol:/b', 'ro_vol:/c:rshared,ro']\n"
        "    binds.add: ['ro_vol:/d:ro,rbind']\n"
        "    mounts:\n      - {type: bind, source: ro_vol, destination: /e, options: [ro]}\n"
    )
    spec = load_text(tmp_path, monkeypatch, text)
    assert [v["name"] for v in spec.volumes] == ["ro_vol", "rw-vol"]


def test_pkg_templates_pass_where_images_are_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        "kernel:\n  image: '@pkg:../kernels/debian'\n"
        "init:\n  - '@pkg:../pkg/init'\n"
        "services:\n  - name: s\n    image: '@pkg:../pkg/sshd'\n"
        "volumes:\n  - name: v\n    image: '@pkg:../pkg/data'\n"
    )
    spec = load_text(tmp_path, monkeypatch, text)
    assert spec.kernel["image"] == "@pkg:../kernels/debian"
    assert spec.init == ["@pkg:../pkg/init"]


def test_restart_extension_and_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    text = (
        "onboot:\n  - name: o\n    image: alpine\n    restart: always\n"
        "services:\n  - name: s\n    image: alpine\n    restart: on-failure\n"
        "trust:\n  org: [linuxkit]\n"
    )
    with caplog.at_level(logging.WARNING, logger="linuxkit_py"):
        spec = load_text(tmp_path, monkeypatch, text)
    assert spec.services[0]["restart"] == "on-failure"
    assert spec.trust is None and "trust" not in spec.to_dict()
    assert [r.getMessage() for r in caplog.records] == [
        "spec.yml:9:1: trust: ignored (image signature checks are not supported, as in LinuxKit)",
        "spec.yml:4:14: onboot[0].restart: ignored: only services are restarted",
    ]
