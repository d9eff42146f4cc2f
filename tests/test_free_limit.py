"""The linear block at many tokens (`shapedsde.symbolic.free_limit`): the trace-moment
system from Ito against the block's own derived coefficients, exact finite-m moments, the
large-m limit by three routes (factorised generator, Lagrange inversion of the S-transform,
Biane's free unitary moments continued to negative time), its density, and (slow) the SDE
at m = 64 and 128 against all of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

import shapedsde
from shapedsde.experiments.spectrum_limit import density_distance, linear_rows
from shapedsde.symbolic import free_limit as fl
from shapedsde.symbolic.layers import covariance_symbols

GAMMA = sp.Symbol("gamma", positive=True)


@pytest.mark.parametrize("m", [2, 3])
def test_trace_generator_equals_ito_on_the_blocks_derived_coefficients(m: int) -> None:
    """L p_k and L (p_i p_j) from the closed rules equal Ito's formula applied entry by
    entry to the linear block's b and Sigma (as derived, with gamma a symbol): this is
    where c = gamma^2 (2 - gamma^2) and the form of Sigma are checked, not assumed."""
    coef = shapedsde.block("linear", gamma=0.5).coefficients(m)
    (g,) = [x for x in coef.diffusion.free_symbols if x.name == "gamma"]
    Vm = covariance_symbols(m)
    c_block = g**2 * (2 - g**2)
    assert sp.simplify(coef.diffusion[0, 0, 0, 0] - 2 * c_block * Vm[0, 0] ** 2) == 0
    kmax = 4 if m == 2 else 3
    tr = fl.traces_of(Vm, 2 * kmax)
    for F in [fl.p(k) for k in range(1, kmax + 1)] + [fl.p(1) * fl.p(2), fl.p(1) ** 2]:
        by_entries = fl.entry_generator(F.xreplace(tr), coef.drift, coef.diffusion, Vm)
        by_rules = fl.generator(F).xreplace({fl.c: c_block}).xreplace(tr)
        assert sp.expand(by_entries - by_rules) == 0, F


def test_the_moment_system_is_closed_and_exact_second_moment_for_every_m() -> None:
    lams, A = fl.moment_matrix(2)
    assert lams == ((2,), (1, 1)) and A == sp.Matrix([[1, 1], [2, 0]])
    for k in range(1, 6):  # raises where L p_lambda leaves the partitions of k
        fl.moment_matrix(k)
    got = fl.exact_second_moment()
    c, t, m = fl.c, fl.t, fl.m
    want = m * (m + 2) / 3 * sp.exp(2 * c * t) + m * (1 - m) / 3 * sp.exp(-c * t)
    assert sp.simplify(got - want) == 0
    # d/dt E p_2 = c (E p_2 + E p_1^2) at t = 0 with p_1 = tr V constant in mean.
    assert sp.simplify(sp.diff(got, t).subs(t, 0) - c * (m + m**2)) == 0
    # The float64 matrix exponential agrees with the closed form (every m tried).
    for mv in (2, 7, 64, 1000):
        num = fl.exact_normalised_moment(2, 0.75, mv, 1.3)
        assert num == pytest.approx(float(want.subs({c: 0.75, t: 1.3 / mv, m: mv})) / mv,
                                    rel=1e-12)


def test_large_m_limit_and_first_correction_of_the_exact_moments() -> None:
    c, s, m = fl.c, fl.s, fl.m
    exact = fl.exact_second_moment().subs(fl.t, s / m) / m
    x = sp.Symbol("x", positive=True)  # x = 1 / m
    series = sp.series(exact.subs(m, 1 / x), x, 0, 2).removeO()
    assert sp.simplify(series.coeff(x, 0) - fl.limit_moment(2)) == 0
    assert sp.simplify(series.coeff(x, 1) - fl.first_correction(2)) == 0
    assert fl.limit_moment(2) == 1 + c * s
    # k = 3, 4: m (exact_m - limit) -> delta_k, at rate 1/m.
    for k in (3, 4):
        lim = fl.limit_moment_value(k, 0.6, 1.5)
        delta = float(fl.first_correction(k).subs({c: 0.6, s: 1.5}))
        gaps = [mv * (fl.exact_normalised_moment(k, 0.6, mv, 1.5) - lim) - delta
                for mv in (100, 1000)]
        assert abs(gaps[1]) < abs(gaps[0]) / 5 and abs(gaps[1]) < 0.02 * abs(delta)
    # Factorisation: q0_lambda = prod_r mu_{lambda_r}.
    lams, q0, _ = fl.large_m_moments(4)
    for lam, q in zip(lams, q0, strict=True):
        assert sp.expand(q - sp.Mul(*(fl.limit_moment(i) for i in lam))) == 0


def test_the_limit_three_ways_generator_lagrange_biane() -> None:
    c, s = fl.c, fl.s
    rec = fl.recursion_moments(7)
    for n in range(1, 8):
        lag = fl.lagrange_moment(n)
        assert sp.expand(rec[n - 1] - lag) == 0
        # Biane's free unitary BM: tau(u_t^n) = e^{-nt/2} P_n(t); here mu_n = P_n(-c s).
        P_n = sp.expand(fl.biane_unitary_moment(n) * sp.exp(n * fl.t / 2))
        assert sp.expand(P_n.subs(fl.t, -c * s) - lag) == 0
        if n <= 5:
            assert sp.expand(fl.limit_moment(n) - lag) == 0
    assert fl.lagrange_moment(3) == 1 + 3 * c * s + sp.Rational(3, 2) * c**2 * s**2


@pytest.mark.parametrize("time", [0.25, 1.0, 2.0])
def test_limit_density_integrates_to_one_with_the_limit_moments(time: float) -> None:
    x = np.unique(np.r_[np.geomspace(1e-9, 0.5, 2000),
                        np.linspace(0.5, 4 * math.exp(1.5 * time) + 2, 4000)])
    d = fl.limit_density(x, time)
    assert np.all(d >= 0) and d[-1] == 0 and d[0] == 0
    assert np.trapezoid(d, x) == pytest.approx(1.0, abs=1e-4)
    for n in (1, 2, 3):
        assert np.trapezoid(d * x**n, x) == pytest.approx(fl.limit_moment_value(n, 1.0, time),
                                                          rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("m, paths", [(64, 800), (128, 200)])
def test_sde_moments_at_many_tokens_against_the_exact_and_the_limit(m: int, paths: int) -> None:
    """shapedsde.solve (default step) of the linear block (gamma = 1, c = 1) from V_0 = I
    to t = 1 / m: E[(1/m) tr V^k], k = 2, 3, against the exact finite-m value within
    4 SE plus a 1.5% allowance of the distance from the start value 1 (the solver's
    measured discrepancy at m = 64: docs/spectrum.md), and against the limit within that
    plus the exact finite-m correction; the pooled eigenvalue density is within L1 0.1
    of the limit density."""
    rows, eig = linear_rows(((m, paths),), seed=100)
    for r in rows:
        if r["k"] > 3:
            continue
        allowance = 4 * r["se"] + 0.015 * (r["exact_m"] - 1)
        assert abs(r["mc"] - r["exact_m"]) < allowance, r
        assert abs(r["mc"] - r["limit"]) < allowance + abs(r["exact_m"] - r["limit"]), r
        assert abs(r["exact_m"] - r["limit_plus_1_over_m"]) < 0.1 * abs(r["exact_m"]
                                                                         - r["limit"]), r
    assert density_distance(eig[m], 1.0)["l1"] < 0.1
