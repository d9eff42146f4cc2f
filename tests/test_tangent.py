"""The tangent (JVP) SDE: derived coefficients, their known answers, finite faces, depth.

Known answers: the linear block's tangent is the linear block on 2m rows (symbolically);
every tangent's token block is the block's own SDE; the coefficients are equivariant
under rescaling the tangent (b(D Q D) = D b(Q) D, D = diag(1, c)), so the law of
U / tr U_0 does not depend on the size of T_0. Finite faces: the JVP is the directional
derivative of the block's finite face with the same weights; the exact chain has the
networks' one-step law. At depth: the stopped law of the SDE against the exact chain,
with the dA = 0 control rejected. Monte Carlo tolerances are stated from standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch
from scipy.stats import ks_2samp

import shapedsde
from shapedsde.finite import gram_step, initial_hidden, simulate
from shapedsde.sde import solve
from shapedsde.symbolic.evaluate import explicit
from shapedsde.symbolic.tangent import BLOCKS, derive_tangent
from shapedsde.tangent import initial_joint, tangent

V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])


def _random_joint(m: int, seed: int) -> np.ndarray:
    G = np.random.default_rng(seed).standard_normal((2 * m, 3 * m))
    return G @ G.T / (3 * m)


BLOCK_CASES = [
    ("linear", dict(gamma=0.7)),
    ("attention", dict(gamma=0.6, tau0=0.7)),
    ("attention", dict(gamma=0.6, tau0=0.7, heads=2)),
    ("attention", dict(gamma=0.6, tau0=0.7, causal=True)),
    ("mlp", dict(gamma=0.7, c_plus=0.5, c_minus=-1.0)),
    ("mlp", dict(gamma=0.7, activation="tanh")),
    ("transformer", dict(gamma=0.6, tau0=0.7)),
]


def _blocks():
    out = [shapedsde.block(name, **kw) for name, kw in BLOCK_CASES]
    out.append(shapedsde.serial(shapedsde.block("attention", gamma=0.5, tau0=0.8),
                                shapedsde.block("mlp", gamma=0.4)))
    return out


def _entries(k, m, env):
    """Sigma^{ab,cd} entries of one Kronecker pattern, explicit."""
    X, Y = (explicit(F, m, env["V"], C=env["C"], U=env["U"]) for F in (k.X, k.Y))
    out = sp.MutableDenseNDimArray.zeros(m, m, m, m)
    for a, b, c, d in np.ndindex(m, m, m, m):
        idx = dict(zip("abcd", (a, b, c, d), strict=True))
        out[a, b, c, d] = k.coef * X[idx[k.xl[0]], idx[k.xl[1]]] * Y[idx[k.yl[0]], idx[k.yl[1]]]
    return out


def test_linear_tangent_is_the_linear_block_on_2m_rows_symbolically():
    """At m = 2 the block form, assembled into Q (4 x 4), equals the linear block's
    coefficients for 4 tokens at Q, entry by entry (the known answer: T is a second set of
    rows of the same linear network)."""
    m = 2
    q = sp.Matrix(2 * m, 2 * m, lambda i, j: sp.Symbol(f"q{min(i, j)}{max(i, j)}"))
    env = {"V": q[:m, :m], "C": q[:m, m:], "U": q[m:, m:]}
    tc = derive_tangent("linear")
    gam = sp.Symbol("gamma", positive=True)
    lin = shapedsde.block("linear", gamma=0.5).coefficients(2 * m)
    sub = {sp.Symbol(f"V_{i}{j}"): q[i, j] for i in range(2 * m) for j in range(i, 2 * m)}
    drift = {X: explicit(tc.drift[X], m, env["V"], C=env["C"], U=env["U"]) for X in BLOCKS}
    for X, rows, cols in (("V", 0, 0), ("C", 0, m), ("U", m, m)):
        for a, b in np.ndindex(m, m):
            assert sp.simplify(drift[X][a, b] - lin.drift[rows + a, cols + b].xreplace(sub)) == 0
    sigma = {k: _entries_sum(ks, m, env) for k, ks in tc.diffusion.items()}
    offset = {"V": (0, 0), "C": (0, m), "U": (m, m)}
    for (X, Y), S in sigma.items():
        (r1, c1), (r2, c2) = offset[X], offset[Y]
        for a, b, c, d in np.ndindex(m, m, m, m):
            want = lin.diffusion[r1 + a, c1 + b, r2 + c, c2 + d].xreplace(sub)
            got = S[a, b, c, d]
            assert sp.simplify((got - want).subs(gam, sp.Symbol("gamma", positive=True))) == 0


def _entries_sum(ks, m, env):
    total = sp.MutableDenseNDimArray.zeros(m, m, m, m)
    for k in ks:
        total += _entries(k, m, env)
    return total


@pytest.mark.parametrize("blk", _blocks(), ids=lambda b: b.name)
def test_token_block_is_the_blocks_own_sde(blk):
    Q = _random_joint(3, 0)
    t = tangent(blk)
    b, S = t.drift(Q), t.diffusion(Q)
    np.testing.assert_allclose(b[:3, :3], blk.drift(Q[:3, :3]), atol=1e-12)
    np.testing.assert_allclose(S[:3, :3, :3, :3], blk.diffusion(Q[:3, :3]), atol=1e-12)


@pytest.mark.parametrize("blk", _blocks(), ids=lambda b: b.name)
def test_sigma_is_a_covariance_and_numpy_equals_torch(blk):
    Q = _random_joint(3, 1)
    t = tangent(blk)
    S = t.diffusion(Q)
    M = S.reshape(36, 36)
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    np.testing.assert_allclose(S, S.transpose(1, 0, 2, 3), atol=1e-12)
    assert np.linalg.eigvalsh(M).min() > -1e-10 * np.abs(M).max()
    Qt = torch.as_tensor(Q)
    np.testing.assert_allclose(t.drift(Qt).numpy(), t.drift(Q), atol=1e-12)
    np.testing.assert_allclose(t.diffusion(Qt).numpy(), S, atol=1e-12)


@pytest.mark.parametrize("blk", _blocks(), ids=lambda b: b.name)
def test_coefficients_are_equivariant_in_the_tangents_scale(blk):
    """T -> c T maps Q -> D Q D (D = diag(1, c)): the block is linear in its tangent, so
    b(D Q D) = D b(Q) D and Sigma scales by D on each index."""
    Q, c = _random_joint(3, 2), 7.0
    d = np.r_[np.ones(3), c * np.ones(3)]
    t = tangent(blk)
    DQD = d[:, None] * Q * d[None, :]
    np.testing.assert_allclose(t.drift(DQD), d[:, None] * t.drift(Q) * d[None, :],
                               rtol=1e-10, atol=1e-12)
    S = t.diffusion(Q)
    scaled = np.einsum("i,j,k,l,ijkl->ijkl", d, d, d, d, S)
    np.testing.assert_allclose(t.diffusion(DQD), scaled, rtol=1e-10, atol=1e-10)


def test_law_of_the_jacobian_does_not_depend_on_the_tangents_size():
    """The solver inherits the equivariance: the same seed from U_0 = I and U_0 = 100 I
    gives the same V and U / tr U_0 path by path (to the rounding of the noise's eigen
    square root, amplified along a path; a scheme that is not equivariant differs by O(1)),
    and the same exits (which read tr V)."""
    t = tangent(shapedsde.block("attention", gamma=0.8, tau0=0.6))
    a = solve(t, initial_joint(V0), 0.2, paths=40, seed=3, exit_trace=3.0)
    b = solve(t, initial_joint(V0, scale=100.0), 0.2, paths=40, seed=3, exit_trace=3.0)
    np.testing.assert_allclose(b.V[:, :3, :3], a.V[:, :3, :3], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(b.V[:, 3:, 3:] / 100.0, a.V[:, 3:, 3:], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(a.exit_time.numpy(), b.exit_time.numpy(), rtol=1e-6)
    assert np.isfinite(a.exit_time.numpy()).any()  # the exit test was exercised


@pytest.mark.parametrize("blk", _blocks(), ids=lambda b: b.name)
def test_finite_face_is_the_directional_derivative_with_the_same_weights(blk):
    n, m, h = 16, 3, 1e-6
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2, m, n, generator=gen, dtype=torch.float64)
    T = torch.randn(2, m, n, generator=gen, dtype=torch.float64)
    out = tangent(blk).finite(torch.cat([X, T], 1), torch.Generator().manual_seed(5))

    def f(x):
        return blk.finite(x, torch.Generator().manual_seed(5))

    fd = (f(X + h * T) - f(X - h * T)) / (2 * h)
    torch.testing.assert_close(out[:, :m], f(X), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[:, m:], fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("frozen", [False, True])
def test_exact_chain_has_the_networks_one_step_law(frozen):
    """One sub-layer at n = 12: the chain on Q against JVP networks, both exact in law.
    Means and variances of the entries of Q' agree within 4.5 SE (30 statistics); the
    chain with dA = 0 (the control) is rejected on them."""
    blk = shapedsde.block("attention", gamma=0.8, tau0=0.4)
    n, B = 12, 20000
    Q = initial_joint(np.array([[1.0, 0.5], [0.5, 1.0]]))
    Z0 = initial_hidden(Q, n, seed=0)
    nets = tangent(blk).finite(Z0.expand(B, *Z0.shape).clone(), torch.Generator().manual_seed(1))
    Qn = (nets @ nets.transpose(-1, -2) / n).numpy()
    Qt = torch.as_tensor(Q).expand(B, 4, 4).clone()
    chain = gram_step(tangent(blk, frozen_mixing=frozen), Qt, n,
                      torch.Generator().manual_seed(2)).numpy()
    iu = np.triu_indices(4)
    z = []
    for f in (lambda x: x, lambda x: x**2):
        a, b = f(Qn[:, iu[0], iu[1]]), f(chain[:, iu[0], iu[1]])
        z.append((a.mean(0) - b.mean(0)) / np.sqrt(a.var(0) / B + b.var(0) / B))
    worst = np.abs(np.concatenate(z)).max()
    if frozen:
        assert worst > 8.0, worst
    else:
        assert worst < 4.5, worst


def test_one_step_diffusion_against_the_exact_chain():
    """n Cov[dQ] of one step of the exact chain at n = 4096 against Sigma(Q) on a few
    contractions (Var tr dV, Var tr dU, Cov(tr dV, tr dU), Var dC^{01}); tolerance 4 SE
    of the sample covariance plus 3 / sqrt(n) relative for the chain's O(n^-1/2) terms."""
    blk = shapedsde.block("attention", gamma=0.8, tau0=0.6)
    t = tangent(blk)
    Q = _random_joint(3, 4)
    n, B = 4096, 20000
    Qt = torch.as_tensor(Q).expand(B, 6, 6).clone()
    dQ = (gram_step(t, Qt, n, torch.Generator().manual_seed(0)) - Qt).numpy() * math.sqrt(n)
    S = t.diffusion(Q)
    tv, tu = np.einsum("bii->b", dQ[:, :3, :3]), np.einsum("bii->b", dQ[:, 3:, 3:])
    I3 = np.arange(3)
    cases = {
        "var tr dV": (tv, tv, S[I3[:, None], I3[:, None], I3, I3].sum()),
        "var tr dU": (tu, tu, S[3 + I3[:, None], 3 + I3[:, None], 3 + I3, 3 + I3].sum()),
        "cov": (tv, tu, S[I3[:, None], I3[:, None], 3 + I3, 3 + I3].sum()),
        "var dC01": (dQ[:, 0, 4], dQ[:, 0, 4], S[0, 4, 0, 4]),
    }
    for name, (x, y, want) in cases.items():
        prod = (x - x.mean()) * (y - y.mean())
        se = prod.std() / math.sqrt(B)
        assert abs(prod.mean() - want) < 4 * se + 3 / math.sqrt(n) * abs(want), name


def _stopped(Q: np.ndarray, exit_time: np.ndarray) -> tuple[float, int, np.ndarray]:
    out = np.isfinite(exit_time)
    Qs = Q[~out]
    growth = np.log(np.einsum("bii->b", Qs[:, 3:, 3:]) / 3.0)
    return float(out.mean()), len(out), growth


def test_stopped_law_at_depth_against_the_exact_chain():
    """Attention (gamma 0.8, tau0 0.6), m = 3, T = 0.5, stopped at tr V >= 5 tr V0: the
    SDE's P(exit) and survivors' Jacobian growth log(tr U_T / tr U_0) against the exact
    chain at n = 1024 (within 3.5 SE; KS p > 1e-3); the dA = 0 control is rejected
    (its mean growth differs by over 4 SE: two-sided p < 1e-4)."""
    blk = shapedsde.block("attention", gamma=0.8, tau0=0.6)
    Q0, N = initial_joint(V0), 800
    res = solve(tangent(blk), Q0, 0.5, paths=N, seed=0, exit_trace=5.0)
    net = simulate(tangent(blk), Q0, width=1024, T=0.5, nets=N, seed=1, method="gram",
                   exit_trace=5.0)
    ctl = solve(tangent(blk, frozen_mixing=True), Q0, 0.5, paths=N, seed=2, exit_trace=5.0)
    p1, n1, g1 = _stopped(res.V.numpy(), res.exit_time.numpy())
    p2, n2, g2 = _stopped(net.V.numpy(), net.exit_time.numpy())
    p3, _, g3 = _stopped(ctl.V.numpy(), ctl.exit_time.numpy())
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    assert abs(p1 - p2) < 3.5 * se
    se_g = math.sqrt(g1.var() / len(g1) + g2.var() / len(g2))
    assert abs(g1.mean() - g2.mean()) < 3.5 * se_g
    assert ks_2samp(g1, g2).pvalue > 1e-3
    se_c = math.sqrt(g3.var() / len(g3) + g2.var() / len(g2))
    assert abs(g3.mean() - g2.mean()) > 4 * se_c


def test_bad_input_is_refused_with_a_clear_error():
    t = tangent(shapedsde.block("attention", gamma=0.8, tau0=0.6))
    with pytest.raises(ValueError, match="2m >= 4"):
        t.drift(np.eye(5))
    with pytest.raises(ValueError, match="symmetric"):
        t.drift(np.eye(6) + np.triu(np.ones((6, 6)), 1))
    with pytest.raises(ValueError, match="tangent"):
        tangent("attention")
    with pytest.raises(ValueError, match="even number"):
        t.finite(torch.zeros(1, 5, 8, dtype=torch.float64), torch.Generator())


def test_cli_writes_the_joint_gram(tmp_path):
    from shapedsde.cli import main

    np.save(tmp_path / "V0.npy", V0)
    for cmd in (["sde", "--paths", "20"], ["finite", "--width", "32", "--nets", "10"]):
        out = tmp_path / f"{cmd[0]}.npy"
        rc = main([*cmd, "--block", "attention", "--gamma", "0.8", "--tau0", "0.6",
                   "--tangent", "--V0", str(tmp_path / "V0.npy"), "--T", "0.1", "--seed", "0",
                   "--exit-trace", "5", "--out", str(out), "--quiet"])
        assert rc == 0
        Q = np.load(out)
        assert Q.shape[1:] == (6, 6)
        assert np.isfinite(np.load(tmp_path / f"{cmd[0]}.exit.npy")).sum() >= 0
