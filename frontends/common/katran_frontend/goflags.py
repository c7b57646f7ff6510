"""Command-line flags parsed the way Go's ``flag`` package does, so the
command lines of Katran's Go tools work unchanged - or, with
``FlagSet(..., gflags=True)``, the way Katran's C++ servers (gflags) do.

Go style (katran-cli): ``-flag``, ``--flag``, ``-flag=value``,
``-flag value`` (not for booleans: ``-flag=false``), and GNU spellings with
dashes (``--tls-cert``).  Parsing stops at the first non-flag argument or at
``--``.

gflags style (the servers) adds what users copy from Katran's command lines
and flag files:

* ``-noflag`` / ``--noflag`` sets a boolean flag to false; booleans also take
  ``yes``/``no``/``y``/``n`` (any case);
* ``--flagfile=FILE[,FILE...]`` (or ``--flagfile FILE``) reads one flag per
  line, in place: later arguments override the file, the file overrides
  earlier ones.  Blank lines and lines starting with ``#`` are skipped; a
  line that does not start with ``-`` is a list of program name globs
  (gflags' filter): the flags after it apply only when one of the globs
  matches this program.  Each line is one argument (``--port=80``; the value
  may contain spaces).  Flag files may include flag files;
* flags after a non-flag argument are still parsed (the argument is kept in
  ``args``); ``--`` ends the flags.
"""

from __future__ import annotations

import fnmatch
import sys
from typing import Any, Callable, Optional, TextIO

import attrs

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}
_GFLAGS_TRUE = {"1", "t", "true", "y", "yes"}  # compared lower-cased, as gflags does
_GFLAGS_FALSE = {"0", "f", "false", "n", "no"}
_MAX_FLAGFILE_DEPTH = 16


class FlagError(Exception):
    """Bad command line; the message is Go's wording."""


class HelpRequested(Exception):
    """-h / -help was given."""


class VersionRequested(Exception):
    """-version / --version was given (and the program defines no flag of that name)."""


@attrs.define
class Flag:
    name: str
    kind: str  # "bool", "string", "strings" (repeatable: a list), "int", "uint", "float"
    default: Any
    help: str
    hidden: bool = False
    check: Optional[Callable[[Any], Any]] = None


def _parse_value(flag: Flag, text: str, gflags: bool = False) -> Any:
    if flag.kind in ("string", "strings"):
        return text
    if flag.kind == "bool":
        if text in _TRUE or (gflags and text.lower() in _GFLAGS_TRUE):
            return True
        if text in _FALSE or (gflags and text.lower() in _GFLAGS_FALSE):
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

    def __init__(self, prog: str, summary: str = "", *, gflags: bool = False) -> None:
        self.prog = prog
        self.summary = summary
        self.gflags = gflags  # also accept gflags' syntax (-noflag, --flagfile, ...)
        self._flags: dict[str, Flag] = {}
        self._aliases: dict[str, str] = {}
        self.examples = ""  # printed after the flags by usage()

    def add(self, name: str, kind: str, default: Any, help: str, *, aliases: tuple = (), hidden: bool = False) -> None:
        self._flags[name] = Flag(name, kind, default, help, hidden)
        for alias in aliases:
            self._aliases[alias] = name

    def bool(self, name: str, default: bool, help: str, **kw) -> None:
        self.add(name, "bool", default, help, **kw)

    def string(self, name: str, default: Optional[str], help: str, **kw) -> None:
        self.add(name, "string", default, help, **kw)

    def strings(self, name: str, help: str, **kw) -> None:
        """A repeatable string flag: its value is the list of the values given, in order."""
        self.add(name, "strings", (), help, **kw)

    def names(self, hidden: bool = False) -> list[str]:
        """The flag names (sorted), hidden ones only if asked."""
        return sorted(n for n, f in self._flags.items() if hidden or not f.hidden)

    def kind(self, name: str) -> Optional[str]:
        flag = self._lookup(name)
        return None if flag is None else flag.kind

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
        values = {name: list(flag.default) if flag.kind == "strings" else flag.default
                  for name, flag in self._flags.items()}
        seen: set[str] = set()
        rest: list[str] = []  # non-flag arguments
        # (argument, origin): origin is "" for the command line, "FILE:LINE" for a flag file line
        args: list[tuple[str, str]] = [(a, "") for a in argv]
        depth: dict[str, int] = {}  # flag file -> how many of its copies are being read
        while args:
            arg, origin = args[0]
            if arg.startswith("\0end:"):  # marker: the end of a flag file
                args.pop(0)
                depth[arg[5:]] -= 1
                continue
            if len(arg) < 2 or arg[0] != "-":
                if not self.gflags:
                    break
                rest.append(args.pop(0)[0])
                continue
            args.pop(0)
            if arg == "--":
                break
            where = f"{origin}: " if origin else ""
            name = arg[2:] if arg.startswith("--") else arg[1:]
            if not name or name[0] in "-=":
                raise FlagError(f"{where}bad flag syntax: {arg}")
            name, has_value, text = name.partition("=")
            if self.gflags and name == "flagfile" and self._lookup(name) is None:
                if not has_value:
                    if origin or not args or args[0][1] or args[0][0].startswith("\0end:"):
                        raise FlagError(f"{where}flag needs an argument: -flagfile")
                    text = args.pop(0)[0]
                args[:0] = self._read_flagfiles(text, where, depth)
                continue
            flag = self._lookup(name)
            negated = False
            if flag is None and self.gflags and name.startswith("no"):
                flag = self._lookup(name[2:])
                if flag is not None and flag.kind != "bool":
                    raise FlagError(f"{where}-{name}: -{flag.name} is not a boolean flag (use -{flag.name}=<value>)")
                if flag is not None and has_value:
                    raise FlagError(f"{where}-{name}={text}: -no<flag> takes no value (use -{flag.name}=false)")
                negated = flag is not None
            if flag is None:
                if name in ("h", "help"):
                    raise HelpRequested()
                if name == "version" and not has_value:
                    raise VersionRequested()
                raise FlagError(f"{where}flag provided but not defined: -{name}")
            try:
                if negated:
                    value = False
                elif flag.kind == "bool":
                    value = _parse_value(flag, text, self.gflags) if has_value else True
                else:
                    if not has_value:  # the value is the next command-line argument (never the next file line)
                        if origin or not args or args[0][1] or args[0][0].startswith("\0end:"):
                            raise FlagError(f"flag needs an argument: -{name}")
                        text = args.pop(0)[0]
                    value = _parse_value(flag, text, self.gflags)
            except FlagError as exc:
                raise FlagError(f"{where}{exc}") from None
            if flag.kind == "strings":
                values[flag.name].append(value)
            else:
                values[flag.name] = value
            seen.add(flag.name)
        ns = _Namespace(values, seen, rest + [a for a, _ in args if not a.startswith("\0end:")])
        return ns

    def _read_flagfiles(self, paths: str, where: str, depth: dict) -> list[tuple[str, str]]:
        """The arguments of the flag files ``paths`` (comma separated), gflags' format."""
        out: list[tuple[str, str]] = []
        for path in (p.strip() for p in paths.split(",")):
            if not path:
                continue
            if depth.get(path, 0) >= _MAX_FLAGFILE_DEPTH:
                raise FlagError(f"{where}--flagfile={path}: flag files include each other too deeply")
            try:
                with open(path, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise FlagError(f"{where}--flagfile={path}: cannot read: {reason}") from None
            applies = True
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if not line.startswith("-"):  # gflags: program name globs for the next flags
                    applies = any(fnmatch.fnmatchcase(self.prog, glob) for glob in line.split())
                    continue
                if applies:
                    out.append((line, f"{path}:{number}"))
            depth[path] = depth.get(path, 0) + 1
            out.append((f"\0end:{path}", ""))
        return out

    def usage(self, out: Optional[TextIO] = None) -> None:
        """Print Go-style usage (hidden flags left out)."""
        out = out or sys.stderr
        print(f"Usage of {self.prog}:", file=out)
        for name in sorted(self._flags):
            flag = self._flags[name]
            if flag.hidden:
                continue
            kind = "" if flag.kind == "bool" else " string" if flag.kind == "strings" else f" {flag.kind}"
            line = f"  -{name}{kind}"
            line += "\n    \t" + flag.help.replace("\n", "\n    \t")
            if flag.default not in (None, "", False, 0, ()):
                if flag.kind == "string":
                    shown = f'"{flag.default}"'
                elif flag.kind == "bool":
                    shown = "true"
                else:
                    shown = f"{flag.default:g}" if flag.kind == "float" else str(flag.default)
                line += f" (default {shown})"
            print(line, file=out)
        if self.examples:
            print(self.examples.rstrip("\n"), file=out)


class _Namespace:
    """Flag values as attributes; ``is_set(name)`` tells if given explicitly."""

    def __init__(self, values: dict, seen: set, args: list) -> None:
        self.__dict__.update(values)
        self._seen = frozenset(seen)
        self.args = args

    def is_set(self, name: str) -> bool:
        return name in self._seen
