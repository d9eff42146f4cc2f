"""Progress bars that suit both a terminal and a captured log.

On a terminal a tqdm bar redraws in place, so frequent updates cost nothing. Written
to a file or a pipe (a CI log, `2> run.log`), each redraw is kept, and a long run
would fill the log with hundreds of bar lines. Following tqdm's advice for
non-interactive output, a bar on a stream that is not a terminal redraws at most
every `LOG_INTERVAL` seconds: a log gets the first line, one a minute, and the last.
Every progress bar in the package is made here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm

#: Seconds between two redraws of a bar whose stream is not a terminal.
LOG_INTERVAL = 60.0


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True,
                 terminal_only: bool = False, file: IO[str] | None = None,
                 **options: Any) -> tqdm:
    """A tqdm bar on `file` (default: stderr at call time), or a silent one when not
    `enabled`; `terminal_only`: no bar at all unless `file` is a terminal. `options`
    are tqdm's (total, desc, unit, ...)."""
    stream = sys.stderr if file is None else file
    terminal = is_terminal(stream)
    if not terminal:  # a log: a few lines, not one per update
        options.setdefault("mininterval", LOG_INTERVAL)
        options.setdefault("maxinterval", max(LOG_INTERVAL, options["mininterval"]))
    disable = not enabled or (terminal_only and not terminal)
    return tqdm(iterable, file=stream, disable=disable, **options)


def is_terminal(stream: Any) -> bool:
    """Whether `stream` is an interactive terminal (False for files, pipes, closed
    streams and objects without `isatty`)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
