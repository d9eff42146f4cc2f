"""Fixtures shared by several test modules (imported as `_shared`; tests/ is on sys.path)."""

from __future__ import annotations

import numpy as np
import pytest

from shapedsde.cli import main

#: Parameters at which the blocks' kernels are compared with their derivations.
PARAMS = {"linear": {"gamma": 0.6}, "attention": {"gamma": 0.8, "tau0": 0.7, "heads": 2},
          "mlp": {"gamma": 0.7, "c_plus": 0.5, "c_minus": -1.5},
          "transformer": {"gamma": 0.6, "tau0": 0.9, "c_plus": 0.2, "c_minus": -1.0}}


def random_cov(m: int, seed: int, batch: tuple[int, ...] = ()) -> np.ndarray:
    """A random positive-definite (..., m, m) covariance."""
    G = np.random.default_rng(seed).normal(size=batch + (m, m + 2))
    return G @ np.swapaxes(G, -1, -2) / (m + 2)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`shapedsde.cli.main(argv)` in process: (exit status, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit status 2 and one `error: ...` line on stderr containing every needle."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
