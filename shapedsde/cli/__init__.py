"""Command-line interface: `shapedsde {coeffs,sde,finite,derive,verify,figures,stability}`.

One module per command (`add_parser` and `run`), `common` and `options` for what they
share, and `app` with the parser and `main`. `main(argv)` returns the exit status instead
of exiting, so it can be called in-process. Invalid input (a ValueError from validation,
an unreadable file, a bad option) becomes one line `error: ...` on stderr and exit status
2, never a traceback.
"""

from .app import build_parser, main
from .common import load_block_file, load_matrix
from .verify import reference_dir, verify_command

__all__ = ["build_parser", "load_block_file", "load_matrix", "main", "reference_dir",
           "verify_command"]
