"""The log-spectrum of V as an output: `shapedsde.spectrum`, the results' `log_spectrum()`,
`--save-spectrum` on the command line and the statistics of `verification.spectrum`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import shapedsde
from shapedsde.cli import main
from shapedsde.finite import simulate
from shapedsde.sde import solve
from shapedsde.spectrum import NonPositiveEigenvalueWarning, log_spectrum, log_spectrum_flags
from shapedsde.verification.spectrum import (
    compare_spectra,
    moment_table,
    spectral_density,
    spectrum_statistics,
    trace_moments,
)

V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])


def _spd(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    A = rng.standard_normal((n, m, m))
    return A @ A.transpose(0, 2, 1) / m + 0.1 * np.eye(m)


def test_log_spectrum_is_the_sorted_log_eigenvalues_numpy_and_torch() -> None:
    V = _spd(np.random.default_rng(0), 5, 4)
    want = np.log(np.linalg.eigvalsh(V))
    got = log_spectrum(V)
    assert isinstance(got, np.ndarray) and got.shape == (5, 4)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(got, axis=1) >= 0)
    t = log_spectrum(torch.as_tensor(V))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), want, rtol=1e-12, atol=1e-12)
    # Leading axes are kept: (k, paths, m, m) -> (k, paths, m).
    assert log_spectrum(np.stack([V, V])).shape == (2, 5, 4)


def test_nan_rows_stay_nan_and_nonpositive_eigenvalues_are_flagged_not_minus_inf() -> None:
    V = _spd(np.random.default_rng(1), 4, 3)
    V[1] = np.nan
    V[2] = np.ones((3, 3))  # rank one: eigenvalues 0, 0, 3 up to rounding
    V[2, 0, 1] = V[2, 1, 0] = 1 + 1e-15  # a rounding-level perturbation: may go negative
    v = np.array([1.0, 1.0, 1.0]) / math.sqrt(3)
    V[3] = 2.0 * np.outer(v, v) - 1e-14 * np.eye(3)  # eigenvalue -1e-14: rounding of 0
    with pytest.warns(NonPositiveEigenvalueWarning, match="1 states|2 states"):
        out = log_spectrum(V)
    assert np.all(np.isnan(out[1]))
    assert np.all(np.isfinite(out[0]))
    assert not np.any(np.isneginf(out))  # never -inf
    assert np.isnan(out[3, :2]).all() and out[3, 2] == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError, match="eigenvalue <= 0"):
        log_spectrum(V, nonpositive="raise")
    logw, bad, low = log_spectrum_flags(V)
    assert bad[3] and not bad[0] and not bad[1]
    assert low[3] and low[2] and not low[0] and not low[1]
    np.testing.assert_array_equal(np.isnan(logw), np.isnan(out))
    with pytest.raises(ValueError, match="nonpositive must be"):
        log_spectrum(V, nonpositive="ignore")
    with pytest.raises(ValueError, match=r"\(\.\.\., m, m\)"):
        log_spectrum(np.ones((3, 2)))


def test_solve_and_finite_results_return_the_log_spectrum() -> None:
    blk = shapedsde.block("attention", gamma=0.5, tau0=1.0)
    res = solve(blk, V0, 0.1, paths=20, seed=0)
    ls = res.log_spectrum()
    np.testing.assert_allclose(ls.numpy(), np.log(np.linalg.eigvalsh(res.V.numpy())),
                               rtol=1e-10, atol=1e-12)
    run = simulate(blk, V0, width=16, T=0.25, nets=10, seed=0, method="gram", record_every=2)
    np.testing.assert_allclose(run.log_spectrum().numpy(),
                               np.log(np.linalg.eigvalsh(run.V.numpy())), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("command, extra", [
    ("sde", ["--paths", "40"]),
    ("finite", ["--nets", "40", "--width", "16", "--method", "gram"]),
])
def test_save_spectrum_writes_the_sidecar_and_a_rerun_without_it_removes_it(
        tmp_path: Path, command: str, extra: list[str]) -> None:
    np.save(tmp_path / "V0.npy", V0)
    out = tmp_path / "run.npy"
    args = [command, "--block", "attention", "--gamma", "0.5", "--tau0", "1", "--V0",
            str(tmp_path / "V0.npy"), "--T", "0.25", "--seed", "3", "--out", str(out), "--quiet",
            *extra]
    assert main([*args, "--save-spectrum"]) == 0
    V, S = np.load(out), np.load(tmp_path / "run.spectrum.npy")
    assert S.shape == (40, 3)
    np.testing.assert_allclose(S, np.log(np.linalg.eigvalsh(V)), rtol=1e-10, atol=1e-12)
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["spectrum_file"] == str(tmp_path / "run.spectrum.npy")
    assert meta["spectrum_n_nonpositive"] == 0 and meta["spectrum_n_unresolved"] == 0
    assert not list(tmp_path.glob("*.partial*"))
    assert main(args) == 0  # the rerun's set has no spectrum: the stale one is removed
    assert not (tmp_path / "run.spectrum.npy").exists()
    assert "spectrum_file" not in json.loads((tmp_path / "run.json").read_text())


def test_statistics_density_and_comparison() -> None:
    rng = np.random.default_rng(2)
    x = np.sort(rng.standard_normal((400, 5)), axis=1)
    y = np.sort(rng.standard_normal((300, 5)), axis=1)
    far = np.sort(rng.standard_normal((300, 5)) + 1.0, axis=1)
    x[0, 2] = np.nan  # a flagged row is dropped
    s = spectrum_statistics(x)
    assert len(s["log_min"]) == 399
    np.testing.assert_allclose(s["log_cond"], s["log_max"] - s["log_min"])
    edges, dens = spectral_density(y, bins=20)
    assert dens.sum() * (edges[1] - edges[0]) == pytest.approx(1.0)
    out = compare_spectra(x, y, {"shifted": far}, alpha=0.01)
    for k in ("log_min", "log_max", "log_cond"):
        assert out["laws"][k].status in ("PASS", "NO POWER")
    assert out["laws"]["log_min"].status == "PASS"  # the shifted law is rejected
    assert out["density_l1"] < 0.3 and out["n_x"] == 399


def test_trace_moments_match_traces_of_powers() -> None:
    V = _spd(np.random.default_rng(3), 6, 4)
    mu = trace_moments(V, 3, scale=2.0)
    for j in (1, 2, 3):
        want = np.trace(np.linalg.matrix_power(V / 2.0, j), axis1=1, axis2=2) / 4
        np.testing.assert_allclose(mu[:, j - 1], want, rtol=1e-10)
    V[0] = np.nan
    tab = moment_table(V, 2)
    assert tab["n"] == 5 and tab["n_dropped"] == 1 and np.all(tab["se"] > 0)
