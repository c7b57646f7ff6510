"""Command-line flags parsed the way Go's ``flag`` package does, so the
command lines of Katran's Go tools work unchanged.

Accepted: ``-flag``, ``--flag``, ``-flag=value``, ``-flag value`` (not for
booleans: ``-flag=false``), and GNU spellings with dashes (``--tls-cert``).
Parsing stops at the first non-flag argument or at ``--``.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, TextIO

import attrs

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


class FlagError(Exception):
    """Bad command line; the message is Go's wording."""


class HelpRequested(Exception):
    """-h / -help was given."""


@attrs.define
class Flag:
    name: str
    kind: str  # "bool", "string", "int", "uint", "float"
    default: Any
    help: str
    hidden: bool = False
    check: Optional[Callable[[Any], Any]] = None


def _parse_value(flag: Flag, text: str) -> Any:
    if flag.kind == "string":
        return text
    if flag.kind == "bool":
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise FlagError(f'invalid boolean value "{text}" for -{flag.name}: parse error')
    try:
        value = float(text) if flag.kind == "float" else int(text.replace("_", ""), 0)
    except ValueError:
        raise FlagError(f'invalid value "{text}" for flag -{flag.name}: parse error') from None
    if flag.kind == "uint" and value < 0:
        raise FlagError(f'invalid value "{text}" for flag -{flag.name}: parse error')
    return value


class FlagSet:
    """A set of Go-style flags; ``parse`` returns a namespace of their values."""

    def __init__(self, prog: str, summary: str = "") -> None:
        self.prog = prog
        self.summary = summary
        self._flags: dict[str, Flag] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, kind: str, default: Any, help: str, *, aliases: tuple = (), hidden: bool = False) -> None:
        self._flags[name] = Flag(name, kind, default, help, hidden)
        for alias in aliases:
            self._aliases[alias] = name

    def bool(self, name: str, default: bool, help: str, **kw) -> None:
        self.add(name, "bool", default, help, **kw)

    def string(self, name: str, default: Optional[str], help: str, **kw) -> None:
        self.add(name, "string", default, help, **kw)

    def int(self, name: str, default: int, help: str, **kw) -> None:
        self.add(name, "int", default, help, **kw)

    def uint(self, name: str, default: int, help: str, **kw) -> None:
        self.add(name, "uint", default, help, **kw)

    def float(self, name: str, default: float, help: str, **kw) -> None:
        self.add(name, "float", default, help, **kw)

    def _lookup(self, name: str) -> Optional[Flag]:
        for candidate in (name, name.replace("-", "_")):
            candidate = self._aliases.get(candidate, candidate)
            if candidate in self._flags:
                return self._flags[candidate]
        return None

    def parse(self, argv: list[str]):
        """Parse argv (without the program name).  Raises FlagError / HelpRequested."""
        values = {name: flag.default for name, flag in self._flags.items()}
        seen: set[str] = set()
        args = list(argv)
        while args:
            arg = args[0]
            if len(arg) < 2 or arg[0] != "-":
                break
            args.pop(0)
            if arg == "--":
                break
            name = arg[2:] if arg.startswith("--") else arg[1:]
            if not name or name[0] in "-=":
                raise FlagError(f"bad flag syntax: {arg}")
            name, has_value, text = name.partition("=")
            flag = self._lookup(name)
            if flag is None:
                if name in ("h", "help"):
                    raise HelpRequested()
                raise FlagError(f"flag provided but not defined: -{name}")
            if flag.kind == "bool":
                value = _parse_value(flag, text) if has_value else True
            else:
                if not has_value:
                    if not args:
                        raise FlagError(f"flag needs an argument: -{name}")
                    text = args.pop(0)
                value = _parse_value(flag, text)
            values[flag.name] = value
            seen.add(flag.name)
        ns = _Namespace(values, seen, args)
        return ns

    def usage(self, out: Optional[TextIO] = None) -> None:
        """Print Go-style usage (hidden flags left out)."""
        out = out or sys.stderr
        print(f"Usage of {self.prog}:", file=out)
        for name in sorted(self._flags):
            flag = self._flags[name]
            if flag.hidden:
                continue
            kind = "" if flag.kind == "bool" else f" {flag.kind}"
            line = f"  -{name}{kind}"
            line += "\n    \t" + flag.help.replace("\n", "\n    \t")
            if flag.default not in (None, "", False, 0):
                if flag.kind == "string":
                    shown = f'"{flag.default}"'
                elif flag.kind == "bool":
                    shown = "true"
                else:
                    shown = f"{flag.default:g}" if flag.kind == "float" else str(flag.default)
                line += f" (default {shown})"
            print(line, file=out)


class _Namespace:
    """Flag values as attributes; ``is_set(name)`` tells if given explicitly."""

    def __init__(self, values: dict, seen: set, args: list) -> None:
        self.__dict__.update(values)
        self._seen = frozenset(seen)
        self.args = args

    def is_set(self, name: str) -> bool:
        return name in self._seen
