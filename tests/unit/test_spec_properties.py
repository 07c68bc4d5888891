"""Property tests: whatever a spec file or an image's config and label hold, the builder either accepts it
or says what is wrong in one line (a UserError), never a traceback and never a hang.

Bounds: each property runs at most 150 generated examples with a 2 s deadline per example (the whole
file takes a few seconds); hypothesis keeps no example database, so a run is self-contained.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linuxkit_py.bundle import config as oci_runtime
from linuxkit_py.bundle.shell import render_runtime_shell
from linuxkit_py.errors import UserError
from linuxkit_py.spec.consistency import check_spec
from linuxkit_py.spec.dump import spec_to_json, spec_to_yaml
from linuxkit_py.spec.load import parse_document
from linuxkit_py.spec.merge import merge_documents
from linuxkit_py.spec.model import SECTIONS
from linuxkit_py.spec.resolve import resolve_spec
from linuxkit_py.spec.validate import validate_document, validate_label

BOUNDS = settings(max_examples=150, deadline=2000, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Keys LinuxKit gives meaning to, so that generated documents reach past the first schema check.
IMAGE_KEYS = ["name", "image", "capabilities", "ambient", "mounts", "binds", "binds.add", "tmpfs", "command",
              "env", "cwd", "net", "pid", "ipc", "uts", "userns", "cgroupns", "hostname", "readonly",
              "maskedPaths", "readonlyPaths", "writeableRootfs", "uid", "gid", "noNewPrivileges",
              "additionalGids", "oomScoreAdj", "rootfsPropagation", "cgroupsPath", "resources", "sysctl",
              "rlimits", "uidMappings", "gidMappings", "annotations", "devices", "runtime", "restart",
              "rootfsPropagation", "platforms", "format", "readonly"]
KERNEL_KEYS = ["image", "cmdline", "binary", "tar", "ucode"]
FILE_KEYS = ["path", "directory", "symlink", "contents", "source", "metadata", "optional", "mode", "uid", "gid"]
TOP_KEYS = ["kernel", "init", *SECTIONS, "files", "volumes", "trust"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False) | st.text(max_size=20)
           | st.sampled_from(["/dev:/dev", "CAP_SYS_ADMIN", "all", "host", "0755", "rw", "nofile:1024:2048",
                              "linuxkit/init:v1", "localhost:5000/a:b", "root", "-1", "1e3", "~", "yes"]))


def values(keys: list[str]) -> st.SearchStrategy[Any]:
    """A mapping with (mostly) the given keys, values of any shape."""
    leaf = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), leaf, max_size=6)


documents = st.dictionaries(
    st.sampled_from(TOP_KEYS) | st.text(max_size=6),
    st.one_of(values(KERNEL_KEYS), st.lists(values(IMAGE_KEYS), max_size=3), st.lists(values(FILE_KEYS), max_size=3),
              st.lists(st.text(max_size=20), max_size=3), scalars),
    max_size=5,
)


def assert_one_line(exc: UserError) -> None:
    assert "\n" not in str(exc), str(exc)


def load_and_check(texts: list[str]) -> None:
    """What `build` does with spec text before it pulls anything, up to the resolved spec and its dump."""
    docs = []
    for i, text in enumerate(texts):
        doc = parse_document(text, f"spec{i}.yml")
        validate_document(doc)
        docs.append(doc)
    spec = merge_documents(docs)
    check_spec(spec)
    resolved = resolve_spec(spec)
    spec_to_yaml(resolved)
    spec_to_json(resolved)
    ids = oci_runtime.allocate_ids(resolved)
    volumes = {v["name"]: v for v in resolved.volumes}
    for section in SECTIONS:
        for entry in getattr(resolved, section):
            cc = oci_runtime.container_config(entry, {}, None, ids=ids, volumes=volumes)
            oci_runtime.config_json(cc.config)


@BOUNDS
@given(st.lists(documents, min_size=1, max_size=3))
def test_generated_spec_documents_load_or_fail_in_one_line(docs: list[dict[str, Any]]) -> None:
    texts = [yaml.safe_dump(d, allow_unicode=True) for d in docs]
    try:
        load_and_check(texts)
    except UserError as exc:
        assert_one_line(exc)


yaml_fragments = st.lists(st.sampled_from([
    "kernel:", "  image: x", "init:", "  - a", "- b", "services:", "  - name: s", "    image: i",
    "    capabilities: [", "]", "{", "}", "&a [1, 2]", "*a", "<<: *a", "<<: [*a]", "!!binary aGk=", "!tag x",
    "? complex", ": value", "'unterminated", '"\\x00"', "\t", "---", "...", "%YAML 1.1", "key: &x {a: 1}",
    "other: *x", "files:", "  - path: /etc/x", "    contents: |", "      text", "    mode: 0800",
    "onboot: null", "\ufeff", "\x85", "\x00",
]), max_size=12)


@BOUNDS
@given(yaml_fragments, st.text(max_size=40))
def test_generated_yaml_text_loads_or_fails_in_one_line(lines: list[str], noise: str) -> None:
    try:
        load_and_check(["\n".join(lines) + "\n" + noise])
    except UserError as exc:
        assert_one_line(exc)


def test_alias_bomb_is_bounded() -> None:
    """A `billion laughs` document: aliases must not expand into exponential work."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines.append("init: *a8")
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        load_and_check(["\n".join(lines)])
    assert str(info.value) == "spec0.yml:1:37: invalid YAML: too many nodes (alias expansion?)"
    assert time.monotonic() - started < 30  # 10**9 nodes if expanded; stopped after a million


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)
labels = st.dictionaries(st.sampled_from(IMAGE_KEYS[2:]) | st.text(max_size=8), json_values, max_size=6) | json_values
image_configs = st.dictionaries(
    st.sampled_from(["Entrypoint", "Cmd", "Env", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes"])
    | st.text(max_size=8),
    json_values, max_size=6)


@BOUNDS
@given(labels, image_configs)
def test_generated_labels_and_image_configs_give_a_config_or_one_line(label: Any,
                                                                      image_config: dict[str, Any]) -> None:
    """A label travels as JSON text in the image: decode it like the builder does, then validate and convert."""
    raw = json.loads(json.dumps(label))
    try:
        checked = validate_label(raw, "example.com/hostile:1")
        cc = oci_runtime.container_config({"name": "svc", "image": "example.com/hostile:1"}, image_config,
                                          checked, ids={}, volumes={})
        oci_runtime.config_json(cc.config)
        runtime = oci_runtime.bundle_runtime(cc.runtime, "/containers/services/svc", "/containers/services/svc/lower",
                                             cc.readonly)
        render_runtime_shell(runtime, name="svc", section="services", restart="always")
    except UserError as exc:
        assert_one_line(exc)
