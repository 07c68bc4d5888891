"""Reading spec files: YAML -> plain dicts/lists with the position of every node, then `load_specs`.

Plain scalars are typed the way LinuxKit's YAML library (yaml.v3) types them (scalars.py), not the
YAML 1.1 way PyYAML does: `restart: no` and `command: [echo, yes]` mean what they say.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from linuxkit_py.errors import SpecError, UserError
from linuxkit_py.spec.consistency import check_spec
from linuxkit_py.spec.dump import spec_to_json, spec_to_yaml
from linuxkit_py.spec.merge import merge_documents
from linuxkit_py.spec.model import STDIN, STDIN_NAME, Position, Spec, child, display_path
from linuxkit_py.spec.scalars import resolve_plain
from linuxkit_py.spec.validate import validate_document

__all__ = ["Document", "load_specs", "parse_document", "read_document", "spec_to_json", "spec_to_yaml"]

_PLAIN_TAG = "tag:linuxkit-py,2024:plain"  # marks untagged plain scalars, typed by resolve_plain()
_YAML_TAG = "tag:yaml.org,2002:"
_MAX_NODES = 1_000_000  # alias expansion bound ("billion laughs")


class _Loader(Reader, Scanner, Parser, Composer, BaseResolver):
    """PyYAML's composer without its YAML 1.1 implicit typing: we type scalars ourselves."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        BaseResolver.__init__(self)


_Loader.add_implicit_resolver(_PLAIN_TAG, re.compile(r".*", re.DOTALL), None)


@dataclass
class Document:
    """One spec file as plain data, with where each value came from.

    Keys of the maps are pointer() paths: "" is the whole document, "services/1/capabilities/0" an item.
    """

    file: str
    data: dict[str, Any]
    positions: dict[str, Position] = field(default_factory=dict)  # where each value starts
    key_positions: dict[str, Position] = field(default_factory=dict)  # where each mapping key is
    texts: dict[str, str] = field(default_factory=dict)  # source text of non-string scalars

    def position(self, path: str, at_key: bool = False) -> Position:
        """The position of `path` (of its key if `at_key`), else of its closest ancestor."""
        while True:
            if at_key and path in self.key_positions:
                return self.key_positions[path]
            if path in self.positions:
                return self.positions[path]
            if not path:
                return Position(self.file, 1, 1)
            path = path.rsplit("/", 1)[0] if "/" in path else ""

    def error(self, path: str, message: str, hint: str | None = None, at_key: bool = False) -> SpecError:
        """A SpecError at `path`, the message prefixed with the element path (`services[1].net: ...`)."""
        pos = self.position(path, at_key)
        shown = display_path(path)
        return SpecError(pos.file, pos.line, pos.column, f"{shown}: {message}" if shown else message, hint)

    def rename_key(self, parent: str, old: str, new: str) -> None:
        """Move the recorded positions of `parent/old` (and below) to `parent/new`."""
        old_path, new_path = child(parent, old), child(parent, new)
        _move_keys(self.positions, old_path, new_path)
        _move_keys(self.key_positions, old_path, new_path)
        _move_keys(self.texts, old_path, new_path)


def _move_keys(table: dict[str, Any], old_path: str, new_path: str) -> None:
    moved = {}
    for key in list(table):
        if key == old_path or key.startswith(old_path + "/"):
            moved[new_path + key[len(old_path) :]] = table.pop(key)
    table.update(moved)


_EXPLICIT_SCALARS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _mark(file: str, mark: Any) -> Position:
    return Position(file, mark.line + 1, mark.column + 1)


class _Builder:
    """Turns a composed node tree into plain values, recording positions; rejects duplicate keys."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.count = 0
        self.active: set[int] = set()

    def fail(self, node: Node, message: str, hint: str | None = None) -> SpecError:
        pos = _mark(self.doc.file, node.start_mark)
        return SpecError(pos.file, pos.line, pos.column, message, hint)

    def build(self, node: Node, path: str, pos: Position | None = None) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise self.fail(node, "invalid YAML: too many nodes (alias expansion?)")
        self.doc.positions[path] = pos or _mark(self.doc.file, node.start_mark)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            raise self.fail(node, "invalid YAML: recursive alias")
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                self.check_tag(node, "seq")
                return [self.build(item, child(path, i)) for i, item in enumerate(node.value)]
            assert isinstance(node, MappingNode)
            self.check_tag(node, "map")
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def check_tag(self, node: Node, kind: str) -> None:
        if node.tag != _YAML_TAG + kind:
            raise self.fail(node, f"invalid YAML: unsupported tag {node.tag}")

    def scalar(self, node: ScalarNode, path: str) -> Any:
        text = node.value
        value: Any
        if node.tag == _PLAIN_TAG:
            value = resolve_plain(text)
        elif node.tag == _YAML_TAG + "str":
            return text
        elif node.tag.removeprefix(_YAML_TAG) in _EXPLICIT_SCALARS:
            wanted = node.tag.removeprefix(_YAML_TAG)
            value = resolve_plain(text) if text else None
            if not _EXPLICIT_SCALARS[wanted](value):
                raise self.fail(node, f"invalid YAML: {text!r} is not a valid !!{wanted}")
            if wanted == "float":
                value = float(value)
        else:
            raise self.fail(node, f"invalid YAML: unsupported tag {node.tag}")
        if not isinstance(value, str):
            self.doc.texts[path] = text
        return value

    def mapping(self, node: MappingNode, path: str) -> dict[str, Any]:
        explicit: dict[str, Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.fail(
                    key_node, "invalid YAML: a mapping key must be a plain name, not a list or mapping"
                )
            key = key_node.value
            if key == "<<" and key_node.tag == _PLAIN_TAG:
                continue
            key_path = child(path, key)
            if key in explicit:
                first = _mark(self.doc.file, explicit[key].start_mark)
                shown = display_path(key_path)
                raise self.fail(key_node, f"{shown}: duplicate key (first defined at line {first.line})")
            explicit[key] = key_node
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key == "<<" and key_node.tag == _PLAIN_TAG:
                for source in self.merge_sources(value_node):
                    for sub_key, (sub_key_node, sub_value_node) in source.items():
                        if sub_key not in explicit and sub_key not in result:
                            self.add(result, path, sub_key, sub_key_node, sub_value_node)
                continue
            self.add(result, path, key, key_node, value_node)
        return result

    def add(self, result: dict[str, Any], path: str, key: str, key_node: Node, value_node: Node) -> None:
        key_path = child(path, key)
        key_pos = _mark(self.doc.file, key_node.start_mark)
        self.doc.key_positions[key_path] = key_pos
        empty = isinstance(value_node, ScalarNode) and value_node.value == "" and value_node.style is None
        result[key] = self.build(value_node, key_path, key_pos if empty else None)

    def merge_sources(self, node: Node) -> list[dict[str, tuple[Any, Any]]]:
        """The mappings a `<<:` key merges in, earliest first (earlier ones win, as YAML says)."""
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        sources = []
        for source in nodes:
            if not isinstance(source, MappingNode):
                raise self.fail(source, "invalid YAML: `<<` must merge a mapping or a list of mappings")
            sources.append({k.value: (k, v) for k, v in source.value if isinstance(k, ScalarNode)})
        return sources


def parse_document(text: str, file: str) -> Document:
    """Parse spec text; a YAML mistake is a SpecError at the position PyYAML reports."""
    doc = Document(file=file, data={})
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # checks for unprintable characters already
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = _mark(file, mark) if mark else Position(file, 1, 1)
        problem = exc.problem or exc.context or "syntax error"
        if exc.problem and exc.context and exc.context.startswith("expected"):
            problem = f"{exc.context}, {exc.problem}"
        raise SpecError(pos.file, pos.line, pos.column, f"invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise SpecError(file, line, column, f"invalid YAML: {exc.reason}: character {char!r}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        return doc
    data = _Builder(doc).build(root, "")
    if data is None:
        return doc
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the scalar {json.dumps(root.value)}"
        pos = doc.positions[""]
        raise SpecError(
            file, pos.line, pos.column, f"a spec must be a mapping (kernel:, init:, ...), got {kind}"
        )
    doc.data = data
    return doc


def read_document(path: str) -> Document:
    """Read and parse one spec file; `-` reads stdin (named `<stdin>` in messages)."""
    name = STDIN_NAME if path == STDIN else path
    try:
        if path == STDIN:
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as exc:
        raise UserError(f"cannot read spec file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(name, line, column, "invalid YAML: the file is not UTF-8 text") from None
    return parse_document(text.removeprefix("\ufeff"), name)


def load_specs(paths: list[str]) -> Spec:
    """Load, validate and merge spec files in order (later kernel fields override, lists append)."""
    if not paths:
        raise UserError("no spec file given")
    documents = []
    for path in paths:
        doc = read_document(path)
        validate_document(doc)
        documents.append(doc)
    spec = merge_documents(documents)
    spec.sources = list(paths)
    check_spec(spec)
    return spec
