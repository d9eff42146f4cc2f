"""The `shapedsde` parser and `main`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..userfile import attributed
from . import coeffs, derive, figures, finite, sde, stability, train, trainability, verify
from .common import EXIT_OK, EXIT_USAGE, Parser, UsageError, one_line

#: The commands in the order `shapedsde --help` lists them; each module adds its parser.
COMMANDS = (coeffs, sde, finite, derive, verify, figures, stability, train, trainability)

def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; a command's `func` runs it."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = Parser(prog="shapedsde", formatter_class=fmt,
                    description="Derive, solve and verify the covariance SDE "
                                "dV = b(V) dt + Sigma(V)^{1/2} dB of shaped Transformers "
                                "(Noci et al. 2023).")
    parser.add_argument("--version", action="version", version=f"shapedsde {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub, fmt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default sys.argv[1:]); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version: the only exits that are a success
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        if args.command is None:
            raise UsageError("missing command (see `shapedsde --help`)")
        with attributed(getattr(args, "block", None)):  # a user's block file: its errors
            return args.func(args)
    except (UsageError, ValueError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
