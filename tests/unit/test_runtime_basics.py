"""uid/gid allocation, id resolution, image-config fallbacks, JSON bytes, schema validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from linuxkit_py.bundle import config as runtime
from linuxkit_py.bundle.capabilities import ALL_CAPABILITIES
from linuxkit_py.errors import UserError
from linuxkit_py.spec.model import Spec


def _config(entry: dict[str, Any], image: dict[str, Any] | None = None,
            label: dict[str, Any] | None = None, ids: dict[str, int] | None = None) -> dict[str, Any]:
    cc = runtime.container_config({"name": "svc", "image": "alpine", **entry},
                                  {"Cmd": ["/bin/sh"]} if image is None else image, label,
                                  ids=ids or {}, volumes={})
    runtime.validate_config(cc.config)
    return cc.config


def test_ids_are_allocated_from_100_in_section_order() -> None:
    spec = Spec(
        services=[{"name": "s1", "image": "x"}, {"name": "s2", "image": "x"}],
        onshutdown=[{"name": "down", "image": "x"}],
        onboot=[{"name": "b1", "image": "x"}, {"name": "b2", "image": "x"}],
    )
    assert runtime.allocate_ids(spec) == {"b1": 100, "b2": 101, "down": 102, "s1": 103, "s2": 104}


def test_a_repeated_name_keeps_its_last_id() -> None:
    """As LinuxKit's idMap: later entries overwrite, and every entry consumes an id."""
    spec = Spec(onboot=[{"name": "a", "image": "x"}, {"name": "b", "image": "x"}],
                services=[{"name": "a", "image": "x"}, {"name": "c", "image": "x"}])
    assert runtime.allocate_ids(spec) == {"a": 102, "b": 101, "c": 103}


@pytest.mark.parametrize(("value", "expected"), [
    (None, 0), (0, 0), (1000, 1000), ("", 0), ("root", 0), ("7", 7), ("0042", 42), ("sshd", 101),
    (4294967295, 4294967295),
])
def test_resolve_id(value: Any, expected: int) -> None:
    assert runtime.resolve_id(value, {"getty": 100, "sshd": 101, "7": 999}) == expected


def test_uid_gid_by_container_name() -> None:
    user = _config({"uid": "getty", "gid": "sshd", "additionalGids": ["root", "getty", 3, "4"]},
                   ids={"getty": 100, "sshd": 101})["process"]["user"]
    assert user == {"uid": 100, "gid": 101, "additionalGids": [0, 100, 3, 4]}


def test_image_user_is_ignored_and_entrypoint_cmd_concatenate() -> None:
    process = _config({}, image={"Entrypoint": ["/init", "-v"], "Cmd": ["serve"], "User": "1000:1000",
                                 "Env": ["A=1"], "WorkingDir": "/srv"})["process"]
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["args"] == ["/init", "-v", "serve"]
    assert process["env"] == ["A=1"]
    assert process["cwd"] == "/srv"


def test_empty_env_clears_the_image_env_and_empty_cwd_falls_through() -> None:
    process = _config({"env": [], "cwd": ""}, image={"Cmd": ["x"], "Env": ["A=1"], "WorkingDir": "/srv"},
                      label={"cwd": "/from-label"})["process"]
    assert "env" not in process
    assert process["cwd"] == "/from-label"


@pytest.mark.parametrize(("value", "namespace"), [
    ("new", {"type": "network"}), ("none", {"type": "network"}), ("host", None), ("root", None),
    ("/run/netns/x", {"type": "network", "path": "/run/netns/x"}),
])
def test_net_namespace_values(value: str, namespace: dict[str, str] | None) -> None:
    namespaces = _config({"net": value})["linux"]["namespaces"]
    expected = ([namespace] if namespace else []) + [{"type": "pid"}, {"type": "mount"}]
    assert namespaces == expected


def test_capabilities_all_and_none() -> None:
    caps = _config({"capabilities": ["none"]})["process"]["capabilities"]
    assert caps == {}
    add_admin = {"capabilities.add": ["CAP_SYS_ADMIN"]}
    caps = _config(add_admin, label={"capabilities": ["all"]})["process"]["capabilities"]
    assert caps["effective"] == list(ALL_CAPABILITIES)  # kernel number order, CAP_SYS_ADMIN not repeated
    assert len(caps["bounding"]) == 41 and caps["bounding"] == sorted(caps["bounding"])
    caps = _config(add_admin, label={"capabilities": ["none"]})["process"]["capabilities"]
    assert caps["effective"] == ["CAP_SYS_ADMIN"]


def test_yaml_binds_and_binds_add_both_apply() -> None:
    mounts = _config({"binds": ["/a:/a"], "binds.add": ["/b:/b"]}, label={"binds": ["/l:/l"]})["mounts"]
    assert [m["destination"] for m in mounts if m["type"] == "bind"] == ["/a", "/b"]


def test_label_as_linuxkit_pkg_build_writes_it() -> None:
    """`linuxkit pkg build` json-marshals the Go structs: OCI key spelling (blockIO, kernelTCP, string
    page sizes, uidMappings in mounts); those keys are honoured too."""
    label = json.loads(json.dumps({
        "resources": {"blockIO": {"weight": 10}, "memory": {"kernelTCP": 1},
                      "hugepageLimits": [{"pageSize": "2MB", "limit": 5}]},
        "mounts": [{"destination": "/m", "type": "bind", "source": "/m", "options": ["rbind"],
                    "uidMappings": [{"containerID": 0, "hostID": 5, "size": 1}]}],
        "devices": [{"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "mode": "0644"}],
    }))
    linux = _config({}, label=label)["linux"]
    assert linux["resources"]["blockIO"] == {"weight": 10}
    assert linux["resources"]["memory"] == {"kernelTCP": 1}
    assert linux["resources"]["hugepageLimits"] == [{"pageSize": "2MB", "limit": 5}]
    assert linux["devices"] == [
        {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o644},
    ]


def test_json_bytes_are_go_marshalindent() -> None:
    """HTML-safe escapes, raw UTF-8, four-space indent, compact empty containers, no final newline."""
    doc = {"s": "a&b<c>d é \u2028", "n": 18446744073709551615, "e": [], "o": {}, "t": True}
    assert runtime.config_json(doc) == (
        b'{\n    "s": "a\\u0026b\\u003cc\\u003ed \xc3\xa9 \\u2028",\n    "n": 18446744073709551615,\n'
        b'    "e": [],\n    "o": {},\n    "t": true\n}'
    )
    assert runtime.runtime_json(doc) == runtime.config_json(doc)
    assert json.loads(runtime.config_json(doc)) == doc


def test_bundle_runtime_prepends_and_does_not_mutate() -> None:
    entry = {"name": "svc", "image": "x",
             "runtime": {"mounts": [{"type": "tmpfs", "source": "tmpfs", "destination": "/run/x"}]}}
    cc = runtime.container_config(entry, {"Cmd": ["x"]}, None, ids={}, volumes={})
    before = json.dumps(cc.runtime)
    bundle = "/containers/onboot/000-svc/"
    out = runtime.bundle_runtime(cc.runtime, bundle, bundle + "rootfs", True)
    assert json.dumps(cc.runtime) == before
    assert [m["destination"] for m in out["mounts"]] == ["/containers/onboot/000-svc/rootfs", "/run/x"]
    with pytest.raises(ValueError):
        runtime.bundle_runtime(cc.runtime, "containers/x", "/c", False)


def test_validate_config_names_the_bad_field() -> None:
    config = _config({})
    config["linux"]["rootfsPropagation"] = "sideways"
    with pytest.raises(UserError) as info:
        runtime.validate_config(config)
    assert str(info.value).startswith("config.json does not match the OCI runtime-spec 1.2.1 schema: "
                                      "linux.rootfsPropagation: 'sideways' is not one of")
    config = _config({})
    config["process"]["user"]["uid"] = -1
    with pytest.raises(UserError, match=r"schema: process\.user\.uid: -1 is less than the minimum of 0$"):
        runtime.validate_config(config)
