"""validate_label: an image's org.mobyproject.config label, checked and normalised like a spec entry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from linuxkit_py.errors import UserError
from linuxkit_py.spec import validate_label

REF = "docker.io/linuxkit/getty:v1"

# what `linuxkit pkg build` writes for pkg/getty (json.Marshal of its build.yml config)
GETTY_LABEL = json.loads(
    '{"capabilities":["all"],"binds":["/etc/resolv.conf:/etc/resolv.conf","/run:/run","/tmp:/tmp",'
    '"/etc:/hostroot/etc","/usr/bin/ctr:/usr/bin/ctr","/usr/bin/runc:/usr/bin/runc","/containers:/containers",'
    '"/var/log:/var/log","/var/lib/containerd:/var/lib/containerd","/dev:/dev","/sys:/sys"],'
    '"devices":[{"path":"/dev/console","type":"c","major":5,"minor":1,"mode":"0666"},'
    '{"path":"all","type":"b","major":0,"minor":0}],"pid":"host","net":"host",'
    '"runtime":{"bindNS":{},"mkdir":["/var/log"]}}'
)


def test_a_real_label_is_accepted_unchanged() -> None:
    assert validate_label(GETTY_LABEL, REF) == GETTY_LABEL


def test_label_values_are_normalised_and_the_input_is_not_modified() -> None:
    label: dict[str, Any] = {
        "capabilities": ["sys_admin", "NET_ADMIN"],
        "devices": [{"path": "/dev/tty0", "type": "c", "major": 4, "minor": 0, "mode": "620"}],
        "uid": "100",
        "uidMappings": [{"hostid": 1000, "containerid": 0, "size": 1}],
    }
    original = json.loads(json.dumps(label))
    assert validate_label(label, REF) == {
        "capabilities": ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"],
        "devices": [{"path": "/dev/tty0", "type": "c", "major": 4, "minor": 0, "mode": "0620"}],
        "uid": 100,
        "uidMappings": [{"hostID": 1000, "containerID": 0, "size": 1}],
    }
    assert label == original


def test_container_names_in_a_label_are_left_for_the_build_to_resolve() -> None:
    assert validate_label({"uid": "redis"}, REF) == {"uid": "redis"}


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ([1, 2], "expected a JSON object, got a list"),
        ({"name": "x"}, "name: cannot be set in a label"),
        ({"pid": "host", "image": "alpine"}, "image: cannot be set in a label"),
        (
            {"readonly": True, "capabilites": []},
            'capabilites: unknown key (hint: did you mean "capabilities"?)',
        ),
        ({"capabilities": ["CAP_SYS_ADMIN", "CAP_BOGUS"]}, 'capabilities[1]: unknown capability "CAP_BOGUS"'),
        ({"net": 5}, 'net: expected a string, got the number 5 (hint: quote it: "5")'),
        (
            {"devices": [{"path": "/dev/console", "type": "c", "major": 5, "minor": 1, "mode": 438}]},
            "devices[0].mode: 438 is not an octal mode: a number without a leading 0 is ambiguous "
            '(hint: write the mode as an octal string: "0666" if 438 is decimal)',
        ),
        (
            {"binds": ["/a"], "rlimits": ["x"]},
            'binds[0]: "/a" is not a bind: expected source:destination[:options]',
        ),
        (
            {"runtime": {"mounts": [{"destination": 1}]}},
            'runtime.mounts[0].destination: expected a string, got the number 1 (hint: quote it: "1")',
        ),
    ],
)
def test_bad_labels_name_the_image_and_the_field(label: Any, message: str) -> None:
    with pytest.raises(UserError) as exc:
        validate_label(label, REF)
    assert str(exc.value) == f"image {REF}: invalid org.mobyproject.config label: {message}"


def test_label_written_by_linuxkit_pkg_build_uses_oci_json_spellings() -> None:
    # `linuxkit pkg build` marshals the label with the OCI structs' JSON tags: blockIO, uidMappings, hostID.
    label = {
        "resources": {"blockIO": {"weight": 10}},
        "mounts": [{"destination": "/x", "type": "bind", "source": "/y",
                    "uidMappings": [{"hostID": 1000, "containerID": 0, "size": 1}]}],
    }
    out = validate_label(label, "docker.io/linuxkit/x:1")
    assert out["resources"] == {"blockio": {"weight": 10}}
    assert out["mounts"][0]["uidMappings"] == [{"hostID": 1000, "containerID": 0, "size": 1}]
