"""The helpers of the m = 64 log-spectrum-against-depth figure
(`shapedsde.experiments.spectrum_depth`), on tiny inputs."""

from __future__ import annotations

import numpy as np
import torch

from shapedsde.experiments import spectrum_depth as sd


def test_wishart_start_is_fixed_and_positive_definite() -> None:
    a, b = sd.wishart_start(8, 16, seed=3), sd.wishart_start(8, 16, seed=3)
    assert np.array_equal(a, b) and np.allclose(a, a.T)
    assert np.linalg.eigvalsh(a).min() > 0
    assert sd.eigen_index(64) == {"smallest": 0, "median": 32, "largest": 63}


def test_quantile_bands_skip_nan_rows() -> None:
    x = np.arange(2 * 5 * 3, dtype=float).reshape(2, 5, 3)
    x[1, 0] = np.nan  # one dropped path at the second time
    q = sd.quantile_bands(x, [0, 2], q=(0.0, 0.5, 1.0))
    assert q.shape == (2, 2, 3)
    assert np.array_equal(q[0, 0], [0.0, 6.0, 12.0])  # column 0 over 5 paths
    assert np.array_equal(q[1, 1], [20.0, 24.5, 29.0])  # column 2 over the 4 finite paths
    assert np.isnan(sd.quantile_bands(np.full((1, 2, 3), np.nan), [0])).all()


def test_unresolved_counts_and_drop_exploded() -> None:
    ls = np.log(np.array([[1e-20, 1e-3, 1.0], [1e-2, 1e-1, 1.0], [np.nan, 1.0, 2.0]]))
    assert sd.unresolved_counts(ls).tolist() == [1, 0, -1]
    V = torch.eye(2, dtype=torch.float64).repeat(3, 2, 1, 1)  # (times, nets, m, m)
    V[1, 0] *= 10.0
    V[1, 1] *= 1e7  # net 1 explodes at time 1 and stays dropped
    out = sd.drop_exploded(V, level=1e6)
    assert np.isfinite(out[:, 0]).all()
    assert np.isfinite(out[0, 1]).all() and np.isnan(out[1:, 1]).all()


def test_floored_log_spectrum_keeps_rounding_rows() -> None:
    V = np.stack([np.diag([-1e-18, 1.0, 4.0]), np.diag([1.0, 2.0, 3.0]),
                  np.full((3, 3), np.nan)])
    ls, holes = sd.floored_log_spectrum(V)
    assert holes.tolist() == [1, 0, 0]
    assert np.isclose(ls[0, 0], np.log(3 * np.finfo(float).eps) + np.log(4.0))
    assert np.allclose(ls[1], np.log([1.0, 2.0, 3.0])) and np.isnan(ls[2]).all()
    assert sd.unresolved_counts(ls).tolist() == [1, 0, -1]
