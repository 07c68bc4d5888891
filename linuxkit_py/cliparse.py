"""How LinuxKit users type commands, made into what argparse reads.

* `-mem 2048`, `-publish 8080:80`, `-format tar`: Go's flag package (LinuxKit before cobra, and LinuxKit's
  docs to this day) reads a long option with one dash; each such word naming one of our `--options` is
  read as that option.
* Options and arguments in any order (`run qemu --publish 8080:80 PATH`, `build a.yml -f tar b.yml`): the
  words argparse leaves over that are arguments are given to the verb's list of arguments.
* `-v N` (LinuxKit's levels 0-3), and our own `-vv`.
* `--flag=true|false` for an on/off option (Go's flag and cobra spell booleans so): `--flag` or nothing.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator

# LinuxKit's -v levels -> our log levels (without -v: warnings, which is where "wrote PATH" is logged).
VERBOSITY_LEVELS = {0: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}
VERBOSITY_ERROR = "verbose flag can only be set to 0, 1, 2 or 3"


def verbosity(text: str) -> int:
    """`-v N` with N in 0..3; `-vv` (argparse reads it as `-v v`) is 2, `-vvv` is 3."""
    if text and set(text) == {"v"}:
        return min(1 + len(text), 3)
    if text in {"0", "1", "2", "3"}:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: {VERBOSITY_ERROR}")


def parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(`cache ls`, its parser) for the root parser ("") and every verb and sub-verb below it."""
    stack = [("", parser)]
    while stack:
        path, current = stack.pop(0)
        yield path, current
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    stack.append((f"{path} {name}".strip(), child))


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of `parser` and its sub-parsers."""
    return {s for _, p in parsers(parser) for a in p._actions for s in a.option_strings}


def single_dash_long_options(argv: list[str], known: set[str]) -> list[str]:
    """`-mem 2048` -> `--mem 2048`, `-format=tar` -> `--format=tar`, for words naming a known `--option`
    that are not themselves options (`-vv`, `-o` stay as they are). Words after `--` are left alone."""
    out: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            return out + argv[i:]
        name = word[1:].partition("=")[0]
        if word.startswith("-") and not word.startswith("--") and len(name) > 1 and word not in known \
                and f"--{name}" in known:
            word = "-" + word
        out.append(word)
    return out


def is_argument(word: str) -> bool:
    """A word argparse left over that is an argument (a path, `-` for stdin), not an unknown option."""
    return word == "-" or not word.startswith("-")


def go_bool_options(argv: list[str], switches: set[str]) -> list[str]:
    """`--no-sbom=true` -> `--no-sbom`, `--sbom-current-time=false` -> nothing, for the on/off `switches`."""
    out = []
    for word in argv:
        name, equals, value = word.partition("=")
        if equals and name in switches and value.lower() in ("true", "false", "1", "0", "t", "f"):
            if value.lower() in ("true", "1", "t"):
                out.append(name)
            continue
        out.append(word)
    return out


def switch_strings(parser: argparse.ArgumentParser) -> set[str]:
    """The long option strings of every on/off option (store_true) of the parser and its verbs."""
    return {option for _, current in parsers(parser) for action in current._actions
            if isinstance(action, argparse._StoreTrueAction) for option in action.option_strings
            if option.startswith("--")}
