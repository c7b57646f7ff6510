"""One flag convention for the small tools (``katran-xdp-root``, ``katran-decap``,
``katran-preflight``): GNU style as argparse parses it (``--intf eth0``, ``--map-path=P``),
and Katran's Go/gflags style accepted too (``-intf eth0``, ``-map_path=P``, ``--map_path``),
so a command line copied from the servers' or ``katran-cli``'s flags works unchanged.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence


def go_style(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` with each ``-name[=v]`` / ``--name_x[=v]`` naming one of ``parser``'s long options
    rewritten to ``--name-x[=v]``; everything else (values, ``-h``, after ``--``) as given."""
    longs = {opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")}
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg.startswith("-") and len(arg) > 2 and not (arg.startswith("--") and "_" not in arg.partition("=")[0]):
            name, eq, value = arg.lstrip("-").partition("=")
            candidate = "--" + name.replace("_", "-")
            if candidate in longs:
                arg = candidate + eq + value
        out.append(arg)
    return out


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parser.parse_args`` of the command line in either style (``sys.argv[1:]`` by default)."""
    import sys

    return parser.parse_args(go_style(parser, sys.argv[1:] if argv is None else list(argv)))


CONVENTION = ("flags: GNU style (--intf eth0, --map-path=P) or Katran's Go style "
              "(-intf eth0, -map_path=P)")
