"""The derivation engine: Softmax series, Wick moments, width sums, and the
matrix form proved equal to the per-entry derivation for m = 2, 3, 4."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

from shapedsde.symbolic.entrywise import derive_block
from shapedsde.symbolic.evaluate import explicit, explicit_diffusion
from shapedsde.symbolic.layers import covariance_symbols, shaped_attention_matrix
from shapedsde.symbolic.matrixform import EPS, M_TOKENS, attention_expansion, matrix_form
from shapedsde.symbolic.softmax import softmax_expansion
from shapedsde.symbolic.wick import gaussian_expectation, isserlis_moment
from shapedsde.symbolic.width_sums import WidthSum, gaussian_vector


@pytest.mark.parametrize("m,order", [(2, 2), (3, 2), (4, 3), (3, 4)])
def test_softmax_series_matches_numeric_softmax(m: int, order: int) -> None:
    z = sp.symbols(f"z0:{m}")
    coeffs = softmax_expansion(z, order)
    f = sp.lambdify([z], [sum(coeffs[k][b] for k in range(order + 1)) for b in range(m)])
    g = [sp.lambdify([z], list(coeffs[k])) for k in range(order + 1)]
    zv = np.random.default_rng(m + order).normal(size=m)

    def error(t: float) -> float:
        approx = np.array([sum(t**k * g[k](zv)[b] for k in range(order + 1)) for b in range(m)])
        exact = np.exp(t * zv) / np.exp(t * zv).sum()
        return float(np.abs(approx - exact).max())

    # The remainder is O(t^(order+1)): halving t divides it by ~2^(order+1).
    ratio = error(0.02) / error(0.01)
    assert 2 ** (order + 1) * 0.8 < ratio < 2 ** (order + 1) * 1.25
    assert f(tuple(np.zeros(m))) == pytest.approx([1 / m] * m)
    for k in range(1, order + 1):  # probabilities keep summing to one
        assert sp.expand(sum(coeffs[k])) == 0


def test_softmax_series_is_shift_invariant() -> None:
    z = sp.symbols("z0:3")
    c = sp.Symbol("c")
    shifted = softmax_expansion([zi + c for zi in z], 3)
    plain = softmax_expansion(z, 3)
    assert all(sp.expand(a - b) == 0 for ra, rb in zip(shifted, plain, strict=True)
               for a, b in zip(ra, rb, strict=True))


def test_isserlis_known_moments() -> None:
    s11, s12, s22 = sp.symbols("s11 s12 s22")
    C = sp.Matrix([[s11, s12], [s12, s22]])
    assert isserlis_moment((0, 0, 0, 0), C) == 3 * s11**2
    assert sp.expand(isserlis_moment((0, 0, 1, 1), C) - (s11 * s22 + 2 * s12**2)) == 0
    assert isserlis_moment((0, 0, 0), C) == 0
    assert isserlis_moment((0,) * 6, C) == 15 * s11**3
    g = sp.symbols("g0:2")
    # E[(g0 + g1)^2] = s11 + 2 s12 + s22, E[g0^2 g1^2] via the two-argument form
    assert sp.expand(gaussian_expectation((g[0] + g[1]) ** 2, g, C)
                     - (s11 + 2 * s12 + s22)) == 0
    assert sp.expand(gaussian_expectation(g[0] ** 2, g, C, g[1] ** 2)
                     - (s11 * s22 + 2 * s12**2)) == 0


def test_width_sum_gram_covariance_is_wishart() -> None:
    V = covariance_symbols(2)
    h, C = gaussian_vector("h", V)
    hv = sp.Matrix(h)
    xi, flat, cov = WidthSum(tuple(h), C, {"S": hv * hv.T}).noise()
    i = {s: k for k, s in enumerate(flat)}
    for a, b, c, d in [(0, 1, 0, 1), (0, 0, 1, 1), (0, 1, 1, 1)]:
        expected = V[a, c] * V[b, d] + V[a, d] * V[b, c]
        assert sp.expand(cov[i[xi["S"][a, b]], i[xi["S"][c, d]]] - expected) == 0


@pytest.mark.parametrize("m", [2, 3, 4])
def test_matrix_form_softmax_expansion_equals_per_entry(m: int) -> None:
    z = sp.Matrix(m, m, lambda a, b: sp.Symbol(f"z{a}{b}"))
    per_entry = shaped_attention_matrix(z)
    zsym = sp.MatrixSymbol("z", M_TOKENS, M_TOKENS)
    full = explicit(attention_expansion(zsym), m, covariance_symbols(m), z=z)
    expected = sum((EPS**k * per_entry[k] for k in range(3)), sp.zeros(m, m))
    assert (full - expected).applyfunc(sp.expand) == sp.zeros(m, m)


@pytest.mark.parametrize("name", ["linear", "attention", "mlp", "transformer"])
@pytest.mark.parametrize("m", [2, 3, 4])
def test_matrix_form_equals_per_entry_derivation(name: str, m: int) -> None:
    """Symbolic proof for this m: the difference simplifies to exactly zero.

    The per-entry Transformer is the composition with single-head attention (n_H = 1)."""
    from shapedsde.symbolic.layers import HEADS

    ew = derive_block(name, m)
    mf = matrix_form(name)
    heads = {HEADS: 1} if name == "transformer" else {}
    drift = explicit(mf.drift, m, ew.V).subs(heads)
    assert (drift - ew.drift).applyfunc(sp.simplify) == sp.zeros(m, m)
    diff = explicit_diffusion(mf.diffusion, m, ew.V).subs(heads) - ew.diffusion
    assert all(sp.expand(x) == 0 for x in sp.flatten(diff.tolist()))


@pytest.mark.parametrize("name", ["linear", "attention", "mlp"])
def test_diffusion_has_the_covariance_symmetries(name: str) -> None:
    S = derive_block(name, 3).diffusion
    for a, b, c, d in [(0, 1, 2, 2), (0, 0, 1, 2), (1, 2, 0, 1)]:
        assert sp.expand(S[a, b, c, d] - S[b, a, c, d]) == 0
        assert sp.expand(S[a, b, c, d] - S[c, d, a, b]) == 0


def test_linear_block_has_no_drift_and_wishart_diffusion() -> None:
    """Independent check: X W / sqrt(n) has Gaussian columns, so V' is Wishart-like."""
    ew = derive_block("linear", 2)
    g = sp.Symbol("gamma", positive=True)
    V = ew.V
    assert ew.drift == sp.zeros(2, 2)
    k = g**2 * (2 - g**2)
    assert sp.expand(ew.diffusion[0, 1, 0, 1] - k * (V[0, 0] * V[1, 1] + V[0, 1] ** 2)) == 0
    assert math.isclose(float(k.subs(g, 1)), 1.0)


def test_activation_kernel_is_the_arc_cosine_kernel_for_relu() -> None:
    """Independent check of the integration: ReLU (s_+ = 1, s_- = 0) gives Cho & Saul's
    arc-cosine kernel of degree 1, and the identity (s_pm = 1) gives rho."""
    from shapedsde.symbolic.activation import RHO, S_MINUS, S_PLUS, V_AA, V_BB, activation_kernel

    k = activation_kernel().subs({V_AA: 1, V_BB: 1})
    relu = (sp.sqrt(1 - RHO**2) + (sp.pi - sp.acos(RHO)) * RHO) / (2 * sp.pi)
    assert sp.simplify(k.subs({S_PLUS: 1, S_MINUS: 0}) - relu) == 0
    assert sp.simplify(k.subs({S_PLUS: 1, S_MINUS: 1}) - RHO) == 0


def test_activation_kernel_against_quadrature() -> None:
    from scipy import integrate

    from shapedsde.symbolic.activation import RHO, S_MINUS, S_PLUS, V_AA, V_BB, activation_kernel

    vals = {V_AA: 1.3, V_BB: 0.7, RHO: -0.4, S_PLUS: 1.2, S_MINUS: 0.3}
    f = float(activation_kernel().subs(vals))
    s1, s2, r = 1.3**0.5, 0.7**0.5, -0.4
    phi = lambda x: 1.2 * max(x, 0) + 0.3 * min(x, 0)  # noqa: E731

    def integrand(u: float, v: float) -> float:
        x, y = s1 * u, s2 * (r * u + (1 - r * r) ** 0.5 * v)
        return phi(x) * phi(y) * np.exp(-(u * u + v * v) / 2) / (2 * np.pi)

    q, _ = integrate.dblquad(integrand, -9, 9, -9, 9, epsabs=1e-10)
    assert abs(q - f) < 1e-6


@pytest.mark.parametrize("m", [2, 3])
def test_composed_transformer_coefficients_are_the_sum_of_its_sublayers(m: int) -> None:
    """Attention then MLP, composed as one update V -> MLP(Attn(V)) and expanded to
    eps^2: its b and Sigma equal the sums of the sub-layers' (heads = 1)."""
    from shapedsde.symbolic.layers import HEADS

    tr, at, ml = (derive_block(n, m) for n in ("transformer", "attention", "mlp"))
    drift = tr.drift - at.drift.subs(HEADS, 1) - ml.drift
    assert drift.applyfunc(sp.simplify) == sp.zeros(m, m)
    diff = tr.diffusion - at.diffusion.subs(HEADS, 1) - ml.diffusion
    assert all(sp.expand(x) == 0 for x in sp.flatten(diff.tolist()))


@pytest.mark.parametrize("heads", [2, 3])
def test_multihead_rule_is_derived_from_explicit_heads(heads: int) -> None:
    """Explicit heads (own logits, own value blocks of n/H columns), derived by Wick's
    theorem with no covariance divided by anything, equal the n_H rule at n_H = H (m = 2).
    The single head's copy (n_H = 1) is the control: its diffusion differs."""
    from shapedsde.symbolic.entrywise import derive
    from shapedsde.symbolic.layers import HEADS, multihead_attention_layer

    explicit_heads = derive(multihead_attention_layer(2, heads))
    rule = derive_block("attention", 2)
    drift = explicit_heads.drift - rule.drift.subs(HEADS, heads)
    assert drift.applyfunc(sp.simplify) == sp.zeros(2, 2)
    diff = explicit_heads.diffusion - rule.diffusion.subs(HEADS, heads)
    assert all(sp.simplify(x) == 0 for x in sp.flatten(diff.tolist()))
    one = explicit_heads.diffusion - rule.diffusion.subs(HEADS, 1)
    assert any(sp.simplify(x) != 0 for x in sp.flatten(one.tolist()))
