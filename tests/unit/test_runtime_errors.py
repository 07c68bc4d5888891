"""Bad container fields (in the YAML or in the image label) give one clear line naming container and field."""

from __future__ import annotations

from typing import Any

import pytest

from linuxkit_py.bundle import config as runtime
from linuxkit_py.errors import UserError

IDS = {"getty": 100, "sshd": 101}
VOLUMES: dict[str, dict[str, Any]] = {"data": {"name": "data"}, "certs": {"name": "certs", "readonly": True}}
IMAGE = {"Cmd": ["/bin/sh"]}
IN_LABEL = " (in the image's org.mobyproject.config label)"


def _error(entry: dict[str, Any], label: dict[str, Any] | None = None,
           image: dict[str, Any] | None = None) -> runtime.ContainerConfigError:
    with pytest.raises(runtime.ContainerConfigError) as info:
        entry = {"name": "svc", "image": "alpine", **entry}
        runtime.container_config(entry, IMAGE if image is None else image, label, ids=IDS, volumes=VOLUMES)
    error = info.value
    assert isinstance(error, UserError)
    assert "\n" not in str(error)
    return error


@pytest.mark.parametrize(("entry", "label", "message"), [
    ({}, {"capabilities": ["CAP_NET_ADMIN", "CAP_FOO"]},
     "capabilities: unknown capability 'CAP_FOO'" + IN_LABEL),
    ({"capabilities.add": ["CAP_BAR"]}, {"capabilities": ["CAP_NET_ADMIN"]},
     "capabilities: unknown capability 'CAP_BAR'"),
    ({"ambient": ["all", "bogus"]}, None, "ambient: unknown capability 'bogus'"),
    ({"uid": "nosuch"}, None,
     "uid: 'nosuch' is not a number, 'root' or the name of a container in the spec"),
    ({}, {"gid": "ghost"},
     "gid: 'ghost' is not a number, 'root' or the name of a container in the spec" + IN_LABEL),
    ({"additionalGids": [1, "getty", "nobody"]}, None,
     "additionalGids: 'nobody' is not a number, 'root' or the name of a container in the spec"),
    ({"uid": 4294967296}, None, "uid: 4294967296 is out of range (0-4294967295)"),
    ({"rlimits": ["nofile,100"]}, None,
     "rlimits: 'nofile,100' is not name,soft,hard (e.g. nofile,1024,4096)"),
    ({"rlimits": ["nofiles,1,2"]}, None,
     "rlimits: 'nofiles,1,2': unknown limit 'nofiles' (known: cpu, fsize, data, stack, core, "
     "rss, nproc, nofile, memlock, as, locks, sigpending, msgqueue, nice, rtprio, rttime)"),
    ({"rlimits": ["nofile,lots,2"]}, None,
     "rlimits: 'nofile,lots,2': 'lots' is not a number or 'unlimited'"),
    ({"rlimits": ["nofile,-1,2"]}, None,
     "rlimits: 'nofile,-1,2': '-1' is not a number or 'unlimited'"),
    ({"rlimits": ["nofile,unlimited,10"]}, None,
     "rlimits: 'nofile,unlimited,10': the soft limit is above the hard limit"),
    ({"binds": ["certs:/etc/certs"]}, None,
     "binds: 'certs:/etc/certs': volume 'certs' is read-only, so it must be mounted with 'ro'"),
    ({"binds.add": ["certs:/etc/certs:ro,rw"]}, None,
     "binds.add: 'certs:/etc/certs:ro,rw': volume 'certs' is read-only, so it must be mounted "
     "with 'ro'"),
    ({"mounts": [{"type": "bind", "source": "certs", "destination": "/c", "options": ["ro", "rw"]}]}, None,
     "mounts[0]: 'certs': volume 'certs' is read-only, so it must be mounted with 'ro'"),
    ({"binds": ["nosuch:/x"]}, None,
     "binds: 'nosuch:/x': no volume named 'nosuch' (a source not starting with '/' names a volume)"),
    ({"binds": ["/etc"]}, None,
     "binds: '/etc': missing ':' (expected source:destination[:options])"),
    ({}, {"binds": ["/a:/b:ro:x"]},
     "binds: '/a:/b:ro:x': too many ':' (expected source:destination[:options])" + IN_LABEL),
    ({"tmpfs": ["/run:a:b"]}, None,
     "tmpfs: '/run:a:b': too many ':' (expected /destination[:options])"),
    ({"mounts": [{"destination": "/x", "source": "/y"}]}, None, "mounts[0]: mount on /x has no type"),
    ({"mounts": [{"type": "tmpfs"}]}, None, "mounts[0]: tmpfs mount has no destination"),
    ({"command": []}, None, "command: is empty: a container needs a program to run"),
    ({"devices": [{"path": "/dev/x", "type": "c", "major": 1, "minor": 1, "mode": "0999"}]}, None,
     "devices: /dev/x: mode '0999' is not an octal string such as \"0666\""),
    ({"pid": "proc/1/ns/pid"}, None,
     "pid: 'proc/1/ns/pid' is not host, new or the absolute path of a namespace to join"),
    ({"ipc": "none"}, None, "ipc: 'none' is not host, new or the absolute path of a namespace to join"),
    ({}, {"net": "netns"},
     "net: 'netns' is not host, new, none or the absolute path of a namespace to join" + IN_LABEL),
    ({"resources": {"hugepageLimits": [{"pageSize": 3000, "limit": 1}]}}, None,
     "resources.hugepageLimits[0].pageSize: 3000 is not a page size: not a multiple of 1024 "
     "bytes"),
    ({}, {"resources": {"memory": {"limits": 1}}},
     "resources.memory: unknown key 'limits'" + IN_LABEL),
])
def test_error_line(entry: dict[str, Any], label: dict[str, Any] | None, message: str) -> None:
    assert str(_error(entry, label)) == "container 'svc': " + message


def test_nothing_to_run() -> None:
    error = _error({}, image={"Env": ["A=1"]})
    assert str(error) == ("container 'svc': command: not set, and the image has no Entrypoint or Cmd: "
                          "nothing to run")


def test_error_carries_the_field_for_positions() -> None:
    """The lead maps `field` to the spec position (services/N/<field>) and may reuse `detail`."""
    error = _error({"uid": "nosuch"})
    assert (error.container, error.field, error.from_label) == ("svc", "uid", False)
    assert error.detail == "'nosuch' is not a number, 'root' or the name of a container in the spec"
    labelled = _error({}, {"capabilities": ["CAP_FOO"]})
    assert labelled.from_label and labelled.field == "capabilities"
    assert _error({"binds.add": ["nosuch:/x"]}).key == "binds.add"
    assert _error({"mounts": [{"type": "tmpfs"}]}).key == "mounts"
    assert _error({"resources": {"memory": {"x": 1}}}).key == "resources"


def test_resolve_id_for_files() -> None:
    with pytest.raises(UserError) as info:
        runtime.resolve_id("nosuch", IDS, "uid")
    assert str(info.value) == "uid: 'nosuch' is not a number, 'root' or the name of a container in the spec"
    with pytest.raises(UserError):
        runtime.resolve_id(True, IDS)
    with pytest.raises(UserError):
        runtime.resolve_id(-1, IDS)
