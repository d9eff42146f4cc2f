"""The step map's second-order mean excess: derived, removed, and measured at many tokens.

Independent reason for the numbers: for the linear block at V = I the noise of a step in
factor coordinates is W = (k h)^{1/2} S, S a symmetric Gaussian matrix with
E[S_ab S_cd] = d_ac d_bd + d_ad d_bc, whose moments are E[S^2] = (m + 1) I and
E[S^4] = (2 m^2 + 5 m + 5) I (Wick's three pairings). The exponential of
X = -(m + 1) k h I / 2 + W then has E[exp(X)] = I - (m + 2)(m - 1) k^2 h^2 / 24 I + O(h^3),
so the uncorrected step makes E[tr V_T] / tr V_0 low by (m + 2)(m - 1) k^2 h T / 24.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import shapedsde
from shapedsde import scheme
from shapedsde.sde import solve
from shapedsde.symbolic import step_map


def test_excess_coefficients_are_the_derived_ones() -> None:
    derived = step_map.mean_excess_coefficients(scheme.SQUARINGS)
    stated = (scheme.EXCESS_DD, scheme.EXCESS_DWW, scheme.EXCESS_WWWW)
    assert [float(c) for c in derived] == list(stated)


def test_corrected_map_has_no_second_order_term() -> None:
    """exp_+(s^2 D + s W - s^4 excess(D, W)) = 1 + s W + s^2 (D + W^2/2) + s^3 (...) + O(s^5)
    with non-commuting D, W: every s^4 term cancels."""
    D, W = sp.symbols("D W", commutative=False)
    s = step_map._S
    c_dd, c_dww, c_wwww = step_map.mean_excess_coefficients(scheme.SQUARINGS)
    excess = c_dd * D**2 + c_dww * (W**2 * D + W * D * W + D * W**2) + c_wwww * W**4
    X = s**2 * D + s * W - s**4 * excess
    assert sp.expand(step_map.graded_coefficients(scheme.SQUARINGS, 2, X)
                     - (D + W**2 / 2)) == 0
    assert sp.expand(step_map.graded_coefficients(scheme.SQUARINGS, 4, X)) == 0
    # Control: without the correction the s^4 term is there.
    assert sp.expand(step_map.graded_coefficients(scheme.SQUARINGS, 4)) != 0


def test_mean_excess_kernel_is_the_polynomial() -> None:
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    Dh, W = A + A.transpose(-1, -2), B + B.transpose(-1, -2)
    W2 = W @ W
    expected = (0.5 * Dh @ Dh + (5 / 32) * (W2 @ Dh + W @ Dh @ W + Dh @ W2)
                + (17 / 512) * W2 @ W2)
    torch.testing.assert_close(scheme.mean_excess(Dh, W), expected, rtol=1e-12, atol=1e-12)


def _trace_ratio(paths: int, steps: int, m: int, T: float, gamma: float) -> tuple[float, float]:
    res = solve(shapedsde.block("linear", gamma=gamma), np.eye(m), T, paths=paths, seed=5,
                steps=steps, noise_map="corrected")
    ratio = torch.diagonal(res.V, 0, -2, -1).sum(-1).numpy() / m
    return float(ratio.mean() - 1.0), float(ratio.std() / np.sqrt(paths))


def test_trace_mean_is_kept_at_many_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linear block, m = 16, 50 steps to T = 0.5: E[tr V_T] = tr V_0 (exact) within 3 SE;
    the uncorrected map is low by the closed form above (within 3 SE) and rejected."""
    m, T, steps, paths, gamma = 16, 0.5, 50, 4000, 0.9
    k = gamma**2 * (2 - gamma**2)
    err, se = _trace_ratio(paths, steps, m, T, gamma)
    assert abs(err) < 3 * se
    monkeypatch.setattr(scheme, "mean_excess", lambda Dh, W: torch.zeros_like(W))
    plain, se_plain = _trace_ratio(paths, steps, m, T, gamma)
    predicted = -(m + 2) * (m - 1) * k**2 * (T / steps) * T / 24
    assert abs(plain - predicted) < 3 * se_plain
    assert plain < -4 * se_plain


def test_correction_is_skipped_where_the_increment_is_large() -> None:
    """The correction truncates a series in X: where it is not small (`step_matrix`) it
    is not applied (M = X) and the path is reported as uncorrected."""
    m = 4
    eye = torch.eye(m, dtype=torch.float64).expand(2, m, m)
    drift = torch.stack([0.01 * torch.eye(m), 50.0 * torch.eye(m)]).to(torch.float64)
    noise = torch.zeros(2, m, m, dtype=torch.float64)
    h = torch.full((2,), 0.1, dtype=torch.float64)
    M, corrected = scheme.step_matrix(eye, drift, noise, True, h)
    assert corrected.tolist() == [True, False]
    X = drift * 0.1
    torch.testing.assert_close(M[1], X[1])
    torch.testing.assert_close(M[0], X[0] - 0.5 * X[0] @ X[0])


def test_no_step_goes_uncorrected_near_blow_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strong attention to blow-up at the adaptive step: paths explode (flagged), none
    turns non-finite, and no path-step goes without the correction, with or without its
    guard: the correction now acts on the noise's factor alone, whose size the step
    bounds in the true metric (|K_d| h <= rtol). Before issue 18 the step bounded the
    drift in a regularised metric only, the guard fired near blow-up, and without it
    8 of 50 paths turned non-finite. Up to tr V = 1e10 tr V0, beyond the default level."""
    def run() -> dict:
        return solve(shapedsde.block("attention", gamma=0.9, tau0=0.3), np.eye(4) + 0.2,
                     2.0, paths=50, seed=1, nonfinite="warn", blowup=1e10).meta
    meta = run()
    assert meta["n_nonfinite"] == 0 and meta["n_exploded"] > 0
    assert meta["n_uncorrected_steps"] == 0
    monkeypatch.setattr(scheme, "EXCESS_RATIO", float("inf"))
    monkeypatch.setattr(scheme, "EXCESS_BOUND", float("inf"))
    unguarded = run()
    assert unguarded["n_nonfinite"] == 0 and unguarded["n_exploded"] == meta["n_exploded"]
