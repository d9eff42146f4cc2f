"""Scaling regimes by power counting (shapedsde.symbolic.regimes, docs/regimes.md)."""

from __future__ import annotations

import pytest
import sympy as sp

from shapedsde.symbolic import regimes as R
from shapedsde.symbolic.entrywise import derive
from shapedsde.symbolic.layers import GAMMA, attention_layer, linear_layer

HALF = sp.Rational(1, 2)


def _paper(gamma_sym=GAMMA):
    return {R.GAMMA0: gamma_sym}


def test_paper_shaped_attention_is_the_sde_at_depth_n_with_the_derived_coefficients():
    r = R.regime(R.Parametrisation("paper", "attention", 0, HALF))
    assert (r.drift_exponent, r.noise_exponent, r.natural_depth) == (-1, -HALF, 1)
    assert r.at(1) == R.SDE and r.at(HALF) == R.FROZEN and r.at(2) == R.NO_LIMIT
    c = r.coefficients()
    ref = derive(attention_layer(2, heads=1))
    assert (c.drift.subs(_paper()) - ref.drift).applyfunc(sp.simplify) == sp.zeros(2, 2)
    diff = sp.Array(c.diffusion).subs(_paper()) - ref.diffusion
    assert all(sp.simplify(e) == 0 for e in sp.flatten(diff))


def test_one_over_sqrt_n_branch_freezes_shaped_attention_at_depth_n_sde_at_n_squared():
    r = R.regime(R.Parametrisation("a=1/2", "attention", HALF, HALF))
    assert (r.drift_exponent, r.noise_exponent, r.natural_depth) == (-2, -1, 2)
    assert r.at(1) == R.FROZEN and r.at(2) == R.SDE
    # at n^2: the paper's drift with gamma -> gamma0, and only the value noise, lam -> 1
    c = r.coefficients()
    ref = derive(attention_layer(2, heads=1))
    assert (c.drift.subs(_paper()) - ref.drift).applyfunc(sp.simplify) == sp.zeros(2, 2)
    lin = derive(linear_layer(2)).diffusion  # gamma^2 (2 - gamma^2) (V V + V V)
    lead = sp.Array([sp.limit(e / GAMMA**2, GAMMA, 0) * R.GAMMA0**2 for e in sp.flatten(lin)],
                    (2, 2, 2, 2))
    assert all(sp.simplify(e) == 0 for e in sp.flatten(sp.Array(c.diffusion) - lead))


def test_linear_with_one_over_sqrt_n_branch_is_frozen_at_depth_n():
    r = R.regime(R.Parametrisation("lin", "linear", HALF))
    assert r.drift_exponent == -sp.oo and r.noise_exponent == -1
    assert r.at(1) == R.FROZEN and r.natural_depth == 2 and r.at(2) == R.DIFFUSION
    assert r.coefficients().drift == sp.zeros(2, 2)


def test_standard_attention_moves_order_one_per_layer():
    r = R.regime(R.Parametrisation("std", "attention", 0, 0, (0, 1, 0)))
    assert (r.drift_exponent, r.noise_exponent, r.natural_depth) == (0, 0, 0)
    assert r.at(1) == R.NO_LIMIT
    with pytest.raises(ValueError, match="no limit"):
        r.coefficients(1)
    # with a 1/sqrt(n) branch: an ODE at depth n, whose drift is the full Softmax's
    # Gaussian expectation (not the truncated series)
    r2 = R.regime(R.Parametrisation("std/2", "attention", HALF, 0, (0, 1, 0)))
    assert r2.at(1) == R.ODE and not r2.exact


def test_intermediate_exponents_give_an_ode_with_the_papers_drift():
    q = sp.Rational(1, 4)
    r = R.regime(R.Parametrisation("1/4", "attention", q, q))
    assert r.at(1) == R.ODE and r.exact and r.coefficients().diffusion is None
    ref = derive(attention_layer(2, heads=1))
    assert (r.coefficients().drift.subs(_paper()) - ref.drift).applyfunc(
        sp.simplify) == sp.zeros(2, 2)


def test_sas_identity_at_init_and_without_centring():
    r = R.regime(R.Parametrisation("sas", "attention", 0, None, (1, 1, 1), residual=False))
    assert r.at(1) == R.DIFFUSION and r.natural_depth == 1
    r2 = R.regime(R.Parametrisation("sas-c0", "attention", 0, None, (1, 1, 0), residual=False))
    assert r2.at(1) == R.NO_LIMIT and r2.natural_depth == 0


def test_relu_mlp_with_one_over_sqrt_n_branch_is_the_arccosine_ode():
    r = R.regime(R.Parametrisation("relu", "mlp", HALF, shaping=None))
    assert r.at(1) == R.ODE and r.exact
    b = r.coefficients().drift.subs({sp.Symbol("c_+", real=True): 0,
                                     sp.Symbol("c_-", real=True): -1})
    V = {sp.Symbol("V_00"): 1, sp.Symbol("V_11"): 1, sp.Symbol("V_01"): sp.Rational(3, 10)}
    rho = sp.Rational(3, 10)
    k = (sp.sqrt(1 - rho**2) + (sp.pi - sp.acos(rho)) * rho) / sp.pi
    assert sp.simplify(b[0, 1].subs(V) - R.GAMMA0**2 * (k - rho)) == 0
    assert sp.simplify(b[0, 0].subs(V)) == 0
    shaped = R.regime(R.Parametrisation("shaped", "mlp", 0))
    assert shaped.at(1) == R.SDE


def test_truncation_is_checked():
    # kappa tiny: the dropped Softmax orders would sit above the leading noise
    with pytest.raises(ValueError, match="raise `order`"):
        R.regime(R.Parametrisation("k", "attention", HALF, sp.Rational(1, 20)), order=1)


@pytest.mark.slow
def test_finite_networks_follow_the_count():
    """Tiny finite checks (exact V chain): at depth n the 1/sqrt(n)-branch linear block's sd
    of rho shrinks like n^{-1/2} (frozen), the paper's shaped attention's does not (SDE);
    standard attention collapses within the same O(1) depth at every width."""
    import numpy as np
    import torch

    from shapedsde.experiments import regimes as E

    torch.set_num_threads(1)
    table = {p.label: p for p in R.PARAMETRISATIONS}
    frozen = E.check_row(table["linear, 1/sqrt(n) branch"], 1000, (32, 128, 512))
    assert abs(frozen["sd_slope"] + 0.5) < 0.1
    sde = E.check_row(table["shaped attention (paper)"], 1000, (32, 128, 512))
    assert abs(sde["sd_slope"]) < 0.1
    std = E.check_row(table["standard attention"], 500, (32, 512))
    curves = np.array([c["mean"] for c in std["curves"].values()])
    assert std["max_spread_over_n"] < 0.05 and (curves[:, -1] > 0.95).all()
