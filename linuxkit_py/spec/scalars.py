"""How untagged plain YAML scalars are typed: yaml.v3's rules, which LinuxKit's YAML follows.

`yes`, `no`, `on`, `off` stay strings; `0644` and `0o644` are octal integers; `1:20` is a string;
`1e5` and `09` are floats. (PyYAML's YAML 1.1 rules differ on all of these.)
"""

from __future__ import annotations

import math
import re
from typing import Any

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUES = frozenset({"true", "True", "TRUE"})
_FALSES = frozenset({"false", "False", "FALSE"})
_SPECIAL_FLOATS = {
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
}
# Go's strconv.ParseInt(s, 0, 64) syntax, which yaml.v3 uses (underscores already removed)
_INT_RE = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_DOT_FLOAT_RE = re.compile(r"\.[0-9]+(?:[eE][-+]?[0-9]+)?")


def _parse_go_int(text: str) -> int:
    sign = -1 if text[0] == "-" else 1
    digits = text.lstrip("+-")
    prefix = digits[:2].lower()
    if prefix in ("0x", "0o", "0b"):
        return sign * int(digits[2:], {"0x": 16, "0o": 8, "0b": 2}[prefix])
    if len(digits) > 1 and digits[0] == "0":
        return sign * int(digits, 8)
    return sign * int(digits)


def resolve_plain(text: str) -> Any:
    """The value of an untagged plain scalar, as yaml.v3 decodes it into an untyped value."""
    if text in _NULLS:
        return None
    if text in _TRUES:
        return True
    if text in _FALSES:
        return False
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    if text[0] in "+-0123456789":
        plain = text.replace("_", "")
        if _INT_RE.fullmatch(plain):
            return _parse_go_int(plain)
        if _FLOAT_RE.fullmatch(plain):
            return float(plain)
    elif text[0] == "." and _DOT_FLOAT_RE.fullmatch(text):
        return float(text)
    return text
