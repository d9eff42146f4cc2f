"""Progress bars in captured logs: a few lines, not one per update (tqdm's advice for
output that is not a terminal)."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
from _shared import run

from shapedsde.progress import LOG_INTERVAL, is_terminal, progress_bar


def _bar_lines(text: str) -> list[str]:
    """The bar's redraws: a log viewer shows each carriage return as a new line."""
    return [s for s in re.split(r"[\r\n]+", text) if s.strip()]


def test_a_bar_on_a_file_redraws_rarely() -> None:
    log = io.StringIO()  # not a terminal
    assert not is_terminal(log)
    with progress_bar(total=10**6, file=log, desc="t") as bar:
        end = time.monotonic() + 1.2  # tqdm's default redraws ~10 times a second
        while time.monotonic() < end:
            bar.update(1)
            time.sleep(1e-4)
    assert LOG_INTERVAL >= 30
    assert len(_bar_lines(log.getvalue())) <= 3, log.getvalue()


def test_disabled_and_terminal_only_bars_write_nothing() -> None:
    for kwargs in ({"enabled": False}, {"terminal_only": True}):
        log = io.StringIO()
        for _ in progress_bar(range(100), file=log, **kwargs):
            pass
        assert log.getvalue() == ""


def test_sde_progress_in_a_captured_log(tmp_path: Path, capsys) -> None:
    """A `sde` run of a few seconds with its bar on (stderr captured, not a terminal)."""
    np.save(tmp_path / "V0.npy", np.array([[1.0, 0.2], [0.2, 1.0]]))
    code, _, err = run(["sde", "--block", "linear", "--gamma", "0.8", "--V0",
                        str(tmp_path / "V0.npy"), "--T", "1", "--steps", "400", "--paths",
                        "200", "--seed", "0", "--out", str(tmp_path / "o.npy")], capsys)
    assert code == 0, err
    lines = _bar_lines(err)
    assert any("sde (t of the slowest path)" in s for s in lines), err
    assert len(lines) <= 3, err
