"""Check a config.json against the vendored OCI runtime-spec JSON schema (schemas/runtime-spec/)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft4Validator
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT4

from linuxkit_py.errors import UserError

OCI_VERSION = "1.2.1"  # the runtime-spec version LinuxKit vendors and writes; the schema files match it
_SCHEMA_DIR = "schemas/runtime-spec"
# The schema files have no $id; a base URI lets their relative $refs ("defs.json#/...") resolve.
_BASE_URI = f"https://linuxkit-py.invalid/runtime-spec/{OCI_VERSION}/"  # never fetched


@functools.cache
def _validator() -> Draft4Validator:
    directory = resources.files("linuxkit_py.bundle").joinpath(_SCHEMA_DIR)
    documents = [
        (_BASE_URI + item.name, DRAFT4.create_resource(json.loads(item.read_text(encoding="utf-8"))))
        for item in directory.iterdir()
        if item.name.endswith(".json")
    ]
    registry: Registry[Any] = Registry().with_resources(documents)
    return Draft4Validator({"$ref": _BASE_URI + "config-schema.json"}, registry=registry)


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate_config(doc: dict[str, Any]) -> None:
    """UserError (one line: where and what) unless `doc` is a valid config.json for runtime-spec 1.2.1."""
    error = best_match(_validator().iter_errors(doc))
    if error is not None:
        raise UserError(f"config.json does not match the OCI runtime-spec {OCI_VERSION} schema: "
                        f"{_where(error.absolute_path)}: {error.message}")
