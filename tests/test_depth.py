"""The stopped-process comparison of `shapedsde.verification.depth`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shapedsde.verification.depth import (
    Stopped,
    compare_stopped,
    depth_check,
    extrapolated,
    stopped_statistics,
)

V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])


def sample(n: int, p_exit: float, seed: int, scale: float = 1.0) -> Stopped:
    """n states near scale * V0, a fraction p_exit of them exited at t = 0.6."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, 3, 40)) / math.sqrt(40)
    V = scale * np.einsum("ij,njk,nlk,ml->nim", np.linalg.cholesky(V0), A, A,
                          np.linalg.cholesky(V0))
    t = np.where(rng.random(n) < p_exit, 0.6, np.inf)
    return Stopped(V, t, 1.0, float(np.trace(V0)))


def test_extrapolation_in_inverse_sqrt_width() -> None:
    """p(n) = p_inf - c / sqrt(n) is extrapolated exactly from two widths."""
    stats = {n: {"n": 10_000, "proportions": {"x": 0.4 - 1.0 / math.sqrt(n)}}
             for n in (64, 256)}
    p, se = extrapolated(stats, "x")
    assert p == pytest.approx(0.4)
    s64, s256 = (math.sqrt(q * (1 - q) / 10_000) for q in (0.275, 0.3375))
    assert se == pytest.approx(math.hypot(16 * s256, 8 * s64) / 8)


def test_same_law_agrees_and_a_shift_is_rejected() -> None:
    sde = sample(6000, 0.3, 1)
    same = {512: sample(4000, 0.3, 2)}
    assert compare_stopped(same, sde)["agrees"]
    exits = compare_stopped({512: sample(4000, 0.4, 3)}, sde)  # P(exit) 0.4 vs 0.3
    assert not exits["agrees"] and exits["z_max"] > 8
    law = compare_stopped({512: sample(4000, 0.3, 4, scale=1.1)}, sde)  # tr V 10% larger
    assert not law["agrees"] and law["ks"]["trace"]["pvalue"] < 1e-6


def test_statistics_count_survivors_only() -> None:
    s = sample(1000, 0.25, 5)
    st = stopped_statistics(s, np.array([0.5, 1.0]))
    assert len(st["trace"]) == int((~s.exited).sum())
    assert st["proportions"]["survival(t=0.5)"] == 1.0
    assert st["proportions"]["survival(t=1)"] == pytest.approx(1 - s.exited.mean())


def test_depth_check_runs_small() -> None:
    r = depth_check("attention", "attention", {"gamma": 0.9, "tau0": 0.5}, "gram", 0.25,
                    widths=[16, 64], nets=300, paths=300, T=0.5, R=3.0, seed=1)
    assert r["verdict"] in ("PASS", "FAIL", "NO POWER")
    assert r["line"].startswith(r["verdict"] + " depth attention")
    assert set(r["p_exit_finite"]) == {16, 64}
    assert 0 <= r["sde_meta"]["p_exit"] <= 1
