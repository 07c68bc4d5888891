"""Validation of one spec document (or one image label): JSON Schema, then the field checks.

Both stages collect every problem and report the first in document order, as one line:
`spec.yml:14:5: services[1].capabilities[0]: unknown capability "CAP_FOO"`.
Valid values are normalised in place (octal modes, capability names, numeric ids, camelCase keys).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
from jsonschema import Draft202012Validator

from linuxkit_py.errors import UserError
from linuxkit_py.spec.fields import CHECKS, FieldError, quoted, suggest
from linuxkit_py.spec.model import display_path, pointer

if TYPE_CHECKING:
    from linuxkit_py.spec.load import Document

SCHEMA_FILE = Path(__file__).with_name("schema.json")
LABEL = "org.mobyproject.config"

PathParts = tuple[str | int, ...]

_EXPECTED = {
    "string": "a string",
    "integer": "an integer",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
}
_YAML11_BOOLS = ("yes", "no", "on", "off", "y", "n")


@dataclass
class Problem:
    """One thing wrong, at `path` (at its key rather than its value when `at_key`)."""

    path: PathParts
    message: str
    hint: str | None = None
    at_key: bool = False


@functools.cache
def load_schema() -> dict[str, Any]:
    """The spec's JSON Schema (schema.json next to this module)."""
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return schema


def _is_integer(checker: Any, instance: Any) -> bool:
    # YAML 1.0 and `true` are not integers (jsonschema's default accepts both)
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer)
)


@functools.cache
def _spec_validator() -> Any:
    return _Validator(load_schema())


@functools.cache
def label_schema() -> dict[str, Any]:
    """The image object without `name` and `image`: what an image label may contain."""
    schema = load_schema()
    image = copy.deepcopy(schema["$defs"]["image"])
    del image["properties"]["name"], image["properties"]["image"]
    image.pop("required")
    return {"$schema": schema["$schema"], "$defs": schema["$defs"], **image}


@functools.cache
def _label_validator() -> Any:
    return _Validator(label_schema())


def _describe(value: Any, text: str | None) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return text or json.dumps(value)
    if isinstance(value, int | float):
        return f"the number {text or value}"
    if isinstance(value, str):
        return f"the string {quoted(value)}"
    return "a list" if isinstance(value, list) else "a mapping"


def _schema_problems(error: Any, text_of: Callable[[PathParts], str | None]) -> list[Problem]:
    """Our wording of one jsonschema error: which key, what was expected, which values are allowed."""
    path: PathParts = tuple(error.absolute_path)
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind == "type":
        types = [value] if isinstance(value, str) else value
        expected = " or ".join(_EXPECTED.get(t, t) for t in types)
        text = text_of(path)
        hint = None
        if "string" in types and isinstance(instance, int | float | bool):
            hint = f"quote it: {quoted(text or json.dumps(instance))}"
        elif "boolean" in types and isinstance(instance, str) and instance.lower() in _YAML11_BOOLS:
            hint = "yes/no/on/off are strings in YAML 1.2 (as in LinuxKit): write true or false"
        return [Problem(path, f"expected {expected}, got {_describe(instance, text)}", hint)]
    if kind == "additionalProperties":
        properties = error.schema.get("properties", {})
        known = [k for k, v in properties.items() if "x-alias-of" not in v]
        problems = []
        for key in instance:
            if key not in properties:
                hint = suggest(key, known) or (
                    f"known keys: {', '.join(known)}" if len(known) <= 10 else None
                )
                problems.append(Problem((*path, key), "unknown key", hint, at_key=True))
        return problems
    if kind == "required":
        missing = [k for k in value if k not in instance]
        return [Problem(path, f"missing required key {quoted(k)}") for k in missing]
    if kind == "enum":
        shown = quoted(instance) if isinstance(instance, str) else _describe(instance, text_of(path))
        return [Problem(path, f"{shown} is not one of: {', '.join(str(v) for v in value)}")]
    if kind in ("minimum", "maximum"):
        return [
            Problem(
                path,
                f"{instance} is {'below the minimum' if kind == 'minimum' else 'above the maximum'} {value}",
            )
        ]
    return [Problem(path, error.message)]


class _Walker:
    """Applies the schema's `format:` checks and `x-alias-of:` renames to schema-valid data."""

    def __init__(
        self,
        root: dict[str, Any],
        text_of: Callable[[PathParts], str | None],
        rename: Callable[[PathParts, str, str], None],
    ) -> None:
        self.defs = root["$defs"]
        self.text_of = text_of
        self.rename = rename
        self.problems: list[Problem] = []

    def resolved(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            target = self.defs[schema["$ref"].rsplit("/", 1)[1]]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def walk(self, value: Any, schema: dict[str, Any], path: PathParts) -> Any:
        schema = self.resolved(schema)
        if isinstance(value, dict):
            properties = schema.get("properties")
            if properties is not None:
                self.apply_aliases(value, properties, path)
                for key in value:
                    value[key] = self.walk(value[key], properties.get(key, {}), (*path, key))
            elif isinstance(schema.get("additionalProperties"), dict):
                for key in value:
                    value[key] = self.walk(value[key], schema["additionalProperties"], (*path, key))
        elif isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                value[i] = self.walk(item, schema["items"], (*path, i))
        check = CHECKS.get(schema.get("format", ""))
        if check is not None:
            text = None if isinstance(value, str | list | dict) else self.text_of(path)
            try:
                value = check(value, text)
            except FieldError as exc:
                self.problems.append(Problem((*path, *exc.subpath), exc.message, exc.hint))
        return value

    def apply_aliases(self, value: dict[str, Any], properties: dict[str, Any], path: PathParts) -> None:
        renames = {}
        for key in value:
            canonical = properties.get(key, {}).get("x-alias-of")
            if canonical is None:
                continue
            if canonical in value:
                message = f"same key as {quoted(canonical)} (LinuxKit's lower-case spelling); give it once"
                self.problems.append(Problem((*path, key), message, at_key=True))
            else:
                renames[key] = canonical
        if renames:
            rebuilt = {renames.get(k, k): v for k, v in value.items()}
            value.clear()
            value.update(rebuilt)
            for old, new in renames.items():
                self.rename(path, old, new)


def _check(
    data: dict[str, Any],
    schema: dict[str, Any],
    validator: Any,
    text_of: Callable[[PathParts], str | None],
    rename: Callable[[PathParts, str, str], None],
) -> list[Problem]:
    problems = [p for error in validator.iter_errors(data) for p in _schema_problems(error, text_of)]
    if problems:
        return problems
    walker = _Walker(schema, text_of, rename)
    walker.walk(data, schema, ())
    return walker.problems


def validate_document(doc: Document, schema: dict[str, Any] | None = None) -> None:
    """Validate and normalise one loaded spec file in place; raise the first SpecError in the file.

    With `schema`, validate another YAML document the same way (a package's build.yml)."""

    def text_of(path: PathParts) -> str | None:
        return doc.texts.get(pointer(*path))

    def rename(parent: PathParts, old: str, new: str) -> None:
        doc.rename_key(pointer(*parent), old, new)

    validator = _spec_validator() if schema is None else _Validator(schema)
    problems = _check(doc.data, schema or load_schema(), validator, text_of, rename)
    if problems:

        def where(problem: Problem) -> tuple[int, int]:
            pos = doc.position(pointer(*problem.path), problem.at_key)
            return pos.line, pos.column

        first = min(problems, key=where)
        raise doc.error(pointer(*first.path), first.message, first.hint, first.at_key)


def _document_order(
    value: Any, path: PathParts = (), order: dict[PathParts, int] | None = None
) -> dict[PathParts, int]:
    """Every path of `value` numbered in document (pre-)order: how label problems are ranked."""
    order = {} if order is None else order
    order[path] = len(order)
    if isinstance(value, dict):
        for key, item in value.items():
            _document_order(item, (*path, key), order)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _document_order(item, (*path, i), order)
    return order


def validate_label(label: Any, ref: str) -> dict[str, Any]:
    """Validate an image's `org.mobyproject.config` label (JSON-decoded) as an image object without
    name/image; return a normalised copy. A bad label is a UserError naming the image and the field."""
    prefix = f"image {ref}: invalid {LABEL} label"
    if not isinstance(label, dict):
        raise UserError(f"{prefix}: expected a JSON object, got {_describe(label, None)}")
    for key in ("name", "image"):
        if key in label:
            raise UserError(f"{prefix}: {key}: cannot be set in a label")
    data = copy.deepcopy(label)
    problems = _check(data, label_schema(), _label_validator(), lambda path: None, lambda *args: None)
    if problems:
        order = _document_order(data)

        def where(problem: Problem) -> int:
            path = problem.path
            while path not in order:
                path = path[:-1]
            return order[path]

        first = min(problems, key=where)
        shown = display_path(pointer(*first.path))
        raise UserError(f"{prefix}: {shown}: {first.message}", first.hint)
    return data
