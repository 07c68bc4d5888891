"""`linuxkit-py completion bash|zsh|fish`: completion scripts generated from the argument parser itself, so a new
verb or flag is completed as soon as it exists. They complete verbs and sub-verbs, each one's flags, and the
values of flags that have a fixed set (formats, architectures, choices); anything else falls back to file names.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field

from linuxkit_py.cliparse import parsers

PROG = "linuxkit-py"
FUNCTION = "_linuxkit_py"
SHELLS = ("bash", "zsh", "fish")


@dataclass
class Command:
    """One verb (`build`), sub-verb (`cache ls`) or the root (``): what may follow it on the command line."""

    path: str
    subcommands: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # every option string, e.g. -f and --format
    values: dict[str, list[str] | None] = field(default_factory=dict)  # flag taking a value -> its values (None: any)
    arguments: list[str] = field(default_factory=list)  # fixed values of positional arguments (choices)


def commands(parser: argparse.ArgumentParser, option_values: dict[str, list[str]],
             arguments: dict[str, list[str]] | None = None) -> list[Command]:
    """The command tree of `parser`; `option_values` adds the values of flags that have no argparse choices,
    `arguments` words a command's positional arguments may be (`run` -> `qemu`)."""
    out = []
    for path, p in parsers(parser):
        command = Command(path, arguments=list((arguments or {}).get(path, [])))
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                command.subcommands += list(action.choices)
            elif action.option_strings:
                command.flags += [s for s in action.option_strings if s != "-h"]
                if action.nargs != 0:
                    known = list(action.choices) if action.choices else None
                    for flag in action.option_strings:
                        command.values[flag] = option_values.get(flag, known)
            elif action.choices:
                command.arguments += list(action.choices)
        out.append(command)
    return out


def _words(items: list[str]) -> str:
    return shlex.quote(" ".join(items))


def bash_script(tree: list[Command]) -> str:
    """A bash completion function (also used by zsh through bashcompinit)."""
    moves = [f'            {shlex.quote(f"{c.path}:{sub}")}) cmd={shlex.quote(f"{c.path} {sub}".strip())} ;;'
             for c in tree for sub in c.subcommands]
    takes_value = [shlex.quote(f"{c.path}:{flag}") for c in tree for flag in c.values]
    value_cases = []
    for c in tree:
        for flag, values in c.values.items():
            reply = f'COMPREPLY=($(compgen -W {_words(values)} -- "$cur"))' if values else "COMPREPLY=()"
            value_cases.append(f"        {shlex.quote(f'{c.path}:{flag}')}) {reply}; return ;;")
    word_cases = [f"        {shlex.quote(c.path)}) flags={_words(c.flags)}; "
                  f"words={_words(c.subcommands + c.arguments)} ;;" for c in tree]
    lines = [
        f"# {PROG} completion for bash, generated from {PROG}'s own argument parser.",
        f'# Load it with: eval "$({PROG} completion bash)"',
        f"{FUNCTION}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local cmd="" word flags="" words="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        word="${COMP_WORDS[i]}"',
        '        case "$cmd:$word" in',
        *moves,
        f"            {'|'.join(takes_value) or '__none__'}) ((i++)) ;;",
        "        esac",
        "    done",
        '    case "$cmd:$prev" in',
        *value_cases,
        "    esac",
        '    case "$cmd" in',
        *word_cases,
        "    esac",
        '    if [[ "$cur" == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$flags" -- "$cur"))',
        "    else",
        '        COMPREPLY=($(compgen -W "$words" -- "$cur"))',
        "    fi",
        "}",
        f"complete -o default -F {FUNCTION} {PROG}",
        "",
    ]
    return "\n".join(lines)


def zsh_script(tree: list[Command]) -> str:
    """zsh runs the bash function through its bashcompinit emulation."""
    header = [f"#compdef {PROG}", f"# {PROG} completion for zsh, generated from {PROG}'s own argument parser.",
              f'# Load it with: eval "$({PROG} completion zsh)"',
              "autoload -U +X bashcompinit && bashcompinit", ""]
    return "\n".join(header) + bash_script(tree).split("\n", 2)[2]


def _fish_condition(path: str, tree: list[Command]) -> str:
    if not path:
        return "__fish_use_subcommand"
    words = path.split()
    below = next(c for c in tree if c.path == path).subcommands
    parts = [f"__fish_seen_subcommand_from {w}" for w in words]
    if below:
        parts.append(f"not __fish_seen_subcommand_from {' '.join(below)}")
    return "; and ".join(parts)


def fish_script(tree: list[Command]) -> str:
    lines = [f"# {PROG} completion for fish, generated from {PROG}'s own argument parser.",
             f"# Load it with: {PROG} completion fish | source", f"complete -c {PROG} -f"]
    for c in tree:
        condition = shlex.quote(_fish_condition(c.path, tree))
        if c.subcommands or c.arguments:
            lines.append(f"complete -c {PROG} -n {condition} -a {_words(c.subcommands + c.arguments)}")
        else:
            lines.append(f"complete -c {PROG} -n {condition} -F")  # arguments are files
        for flag in c.flags:
            spec = f"-s {flag[1:]}" if len(flag) == 2 else f"-l {flag.lstrip('-')}"
            if flag not in c.values:
                lines.append(f"complete -c {PROG} -n {condition} {spec}")
            elif c.values[flag]:
                lines.append(f"complete -c {PROG} -n {condition} {spec} -x -a {_words(c.values[flag] or [])}")
            else:
                lines.append(f"complete -c {PROG} -n {condition} {spec} -r -F")
    return "\n".join(lines) + "\n"


def completion_script(shell: str, parser: argparse.ArgumentParser, option_values: dict[str, list[str]],
                      arguments: dict[str, list[str]] | None = None) -> str:
    """The completion script for `shell` (one of SHELLS)."""
    tree = commands(parser, option_values, arguments)
    return {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}[shell](tree)
