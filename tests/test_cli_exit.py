"""`shapedsde sde|finite --exit-trace R`: the stopped process on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shapedsde.cli import main

V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])
BLOCK = ["--block", "attention", "--gamma", "0.9", "--tau0", "0.5"]


@pytest.mark.parametrize("command, extra", [
    ("sde", ["--paths", "300"]),
    ("finite", ["--nets", "300", "--width", "32", "--method", "gram"]),
])
def test_exit_trace_writes_exit_times_and_metadata(tmp_path: Path, command: str,
                                                   extra: list[str]) -> None:
    np.save(tmp_path / "V0.npy", V0)
    out = tmp_path / "run.npy"
    R = 2.0
    code = main([command, *BLOCK, "--V0", str(tmp_path / "V0.npy"), "--T", "0.5", "--seed", "1",
                 "--exit-trace", str(R), "--out", str(out), "--quiet", *extra])
    assert code == 0
    V, t = np.load(out), np.load(tmp_path / "run.exit.npy")
    meta = json.loads((tmp_path / "run.json").read_text())
    assert V.shape == (300, 3, 3) and t.shape == (300,)
    exited = np.isfinite(t)
    assert 0 < exited.sum() < 300  # R = 2 at strong attention: some, not all, exit by T
    assert np.all((t[exited] > 0) & (t[exited] <= 0.5)) and np.all(np.isinf(t[~exited]))
    assert meta["exit_trace"] == R and meta["n_exits"] == int(exited.sum())
    assert meta["p_exit"] == pytest.approx(exited.mean())
    assert meta["p_exit_se"] == pytest.approx(np.sqrt(exited.mean() * (1 - exited.mean()) / 300))
    # Stopped at the exit: the survivors are inside the ball, the exited on its edge.
    trace = np.trace(V, axis1=1, axis2=2)
    assert np.all(trace[~exited] < R * np.trace(V0))
    if command == "finite":  # frozen at the first layer past the level
        assert np.all(trace[exited] >= R * np.trace(V0))


def test_exit_trace_must_exceed_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "V0.npy", V0)
    code = main(["sde", *BLOCK, "--V0", str(tmp_path / "V0.npy"), "--T", "0.5", "--seed", "1",
                 "--paths", "3", "--exit-trace", "0.5", "--out", str(tmp_path / "o.npy")])
    assert code == 2 and "exit_trace" in capsys.readouterr().err
