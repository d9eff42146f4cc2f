"""Causal shaped attention: the matrix form derived for every m (row projectors) is the
closed form of shapedsde/causal.py, both equal the per-entry derivation, and the finite
face masks the future."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import shapedsde
from shapedsde.causal import causal_diffusion, causal_drift
from shapedsde.symbolic.entrywise import derive_block
from shapedsde.symbolic.evaluate import explicit, explicit_diffusion, prefix_projector
from shapedsde.symbolic.kron import Kron
from shapedsde.symbolic.layers import (
    GAMMA,
    HEADS,
    TAU0,
    covariance_symbols,
    shaped_attention_matrix,
)
from shapedsde.symbolic.matrixform import (
    EPS,
    M_TOKENS,
    ROW_LENGTHS,
    ROW_PROJECTORS,
    P,
    V,
    _collect,
    _tidy_matrix,
    attention_expansion,
    matrix_form,
)

PX, LX = ROW_PROJECTORS, ROW_LENGTHS


def _closed_form_drift() -> sp.MatrixExpr:
    """causal.py's b in matrix notation: b^{ab} is entry (a, b), r_a q_a^b the second term."""
    J = sp.OneMatrix(M_TOKENS, M_TOKENS)
    Pa, Pb, la, lb = PX["a"], PX["b"], LX["a"], LX["b"]
    return GAMMA**2 / TAU0**2 * (sp.Trace(Pa * V * Pb * V) / (la * lb) * V
                                 + Dg(V) * J * Dg(Pa * V * Pa) * Pa * V / (2 * la)
                                 + V * Pb * Dg(Pb * V * Pb) * J * Dg(V) / (2 * lb))


def _closed_form_diffusion() -> list[Kron]:
    """causal.py's Sigma: the value part and K^{pq,rs} = V^{pr} (V M_p V M_r V)^{qs}."""
    value = [Kron(GAMMA**2 * (2 - GAMMA**2), V, xl, V, yl)
             for xl, yl in ((("a", "c"), ("b", "d")), (("a", "d"), ("b", "c")))]
    att = [Kron(GAMMA**4 / (HEADS * TAU0**2 * LX[p] * LX[r]), V, (p, r),
                V * PX[p] * V * PX[r] * V, (q, s))
           for p, q, r, s in ("abcd", "abdc", "bacd", "badc")]
    return value + att


def Dg(X: sp.MatrixExpr) -> sp.MatrixExpr:
    return sp.HadamardProduct(sp.Identity(M_TOKENS), X)


def test_matrix_form_is_the_closed_form_for_every_m() -> None:
    """The derived b and Sigma equal causal.py's closed form as matrix expressions (m and
    the row projectors symbolic): the difference is zero term by term."""
    mf = matrix_form("causal")
    assert _tidy_matrix(mf.drift - _closed_form_drift()) == sp.ZeroMatrix(M_TOKENS, M_TOKENS)
    negated = [Kron(-k.coef, k.X, k.xl, k.Y, k.yl) for k in _closed_form_diffusion()]
    assert _collect(list(mf.diffusion) + negated) == []


def test_matrix_form_with_one_projector_is_the_noncausal_block() -> None:
    """With P_x = P and l_x = m for every row, the causal matrix form is attention's."""
    same = {s: P for s in PX.values()} | {s: M_TOKENS for s in LX.values()}
    causal, plain = matrix_form("causal"), matrix_form("attention")
    assert _tidy_matrix(causal.drift.xreplace(same) - plain.drift) == sp.ZeroMatrix(
        M_TOKENS, M_TOKENS)
    renamed = [Kron(k.coef.xreplace(same), k.X.xreplace(same), k.xl, k.Y.xreplace(same), k.yl)
               for k in causal.diffusion]
    negated = [Kron(-k.coef, k.X, k.xl, k.Y, k.yl) for k in plain.diffusion]
    assert _collect(renamed + negated) == []


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_row_expansion_equals_the_per_entry_softmax_series(m: int) -> None:
    """Row x of A_x = I + eps z P_x / l_x + eps^2 ((z P_x) o (z P_x)) P_x / (2 l_x) is row x
    of causal attention's A to O(eps^2)."""
    z = sp.Matrix(m, m, lambda a, b: sp.Symbol(f"z{a}{b}"))
    per_entry = shaped_attention_matrix(z, causal=True)
    expected = sum((EPS**k * per_entry[k] for k in range(3)), sp.zeros(m, m))
    zsym = sp.MatrixSymbol("z", M_TOKENS, M_TOKENS)
    row_form = attention_expansion(zsym, PX["a"], LX["a"])
    for x in range(m):
        Ax = explicit(row_form.xreplace({LX["a"]: x + 1}), m, covariance_symbols(m), z=z,
                      P_a=prefix_projector(x + 1, m))
        assert (Ax.row(x) - expected.row(x)).applyfunc(sp.expand) == sp.zeros(1, m)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_matrix_form_equals_per_entry_derivation(m: int) -> None:
    ew = derive_block("causal", m)
    mf = matrix_form("causal")
    assert (explicit(mf.drift, m, ew.V) - ew.drift).applyfunc(sp.expand) == sp.zeros(m, m)
    diff = explicit_diffusion(mf.diffusion, m, ew.V) - ew.diffusion
    assert all(sp.expand(x) == 0 for x in sp.flatten(diff.tolist()))


@pytest.mark.parametrize("m", [5, 7])
def test_closed_form_code_equals_matrix_form_beyond_four_tokens(m: int) -> None:
    """causal.py against the derived form read at m tokens, exactly (rational V)."""
    rng = np.random.default_rng(m)
    G = sp.Matrix(rng.integers(-3, 4, size=(m, m + 1)).tolist())
    Vm = G * G.T / (m + 1)
    mf = matrix_form("causal")
    drift = explicit(mf.drift, m, Vm) - causal_drift(Vm, GAMMA, TAU0)
    assert drift.applyfunc(sp.expand) == sp.zeros(m, m)
    diff = explicit_diffusion(mf.diffusion, m, Vm) - causal_diffusion(Vm, GAMMA, TAU0, HEADS)
    assert all(sp.expand(x) == 0 for x in sp.flatten(diff.tolist()))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_closed_form_equals_per_entry_derivation(m: int) -> None:
    ew = derive_block("causal", m)
    drift = (causal_drift(ew.V, GAMMA, TAU0) - ew.drift).applyfunc(sp.expand)
    assert drift == sp.zeros(m, m)
    diff = causal_diffusion(ew.V, GAMMA, TAU0, HEADS) - ew.diffusion
    assert all(sp.expand(x) == 0 for x in sp.flatten(diff.tolist()))


def test_first_token_is_not_mixed() -> None:
    """Token 0 sees only itself, so its variance has no attention drift."""
    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5, causal=True)
    V = np.array([[1.0, 0.4, 0.1], [0.4, 1.2, 0.3], [0.1, 0.3, 0.8]])
    assert blk.drift(V)[0, 0] == pytest.approx(0.0, abs=1e-15)
    assert blk.drift(V)[2, 2] > 0


def test_torch_and_numpy_agree_and_batch() -> None:
    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5, causal=True, heads=2)
    G = np.random.default_rng(0).normal(size=(2, 5, 7))
    V = G @ np.swapaxes(G, -1, -2) / 7
    np.testing.assert_allclose(blk.drift(torch.tensor(V)).numpy(), blk.drift(V), rtol=1e-12)
    S = blk.diffusion(V)
    assert S.shape == (2, 5, 5, 5, 5)
    np.testing.assert_allclose(S[1], blk.diffusion(V[1]), rtol=1e-12)
    Sm = S.reshape(2, 25, 25)
    assert np.linalg.eigvalsh(Sm).min() > -1e-10


def test_finite_mixing_is_lower_triangular_plus_identity() -> None:
    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5, causal=True)
    X = torch.randn(4, 3, 32, dtype=torch.float64)
    A = blk.branch_mixing(X, torch.Generator().manual_seed(0))
    upper = torch.triu(A - torch.eye(3, dtype=A.dtype), diagonal=1)
    assert torch.all(upper == 0)
    assert torch.allclose(A[:, 0], torch.tensor([1.0, 0, 0], dtype=A.dtype))
    assert torch.allclose(A.sum(-1), torch.ones(4, 3, dtype=A.dtype))


def test_block_coefficients_are_the_matrix_form_read_per_entry() -> None:
    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5, causal=True)
    c = blk.coefficients()
    assert c.m is None and c.name == "causal" and r"\Sigma^{ab,cd}(V)" in c.latex()
    e, ew = blk.coefficients(3), derive_block("causal", 3)
    assert (e.drift - ew.drift).applyfunc(sp.expand) == sp.zeros(3, 3)
