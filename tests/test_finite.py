"""Tests of shapedsde.finite: initial hidden states and batched finite-width simulation.

Monte Carlo tests use fixed seeds and tolerances from standard errors: a check of
k entries passes when max |z| < z_crit(k, alpha) (Bonferroni), so with a correct
implementation each such test would fail for at most a fraction alpha of seeds;
alpha is stated per test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import shapedsde
from shapedsde.finite import (
    FiniteRun,
    bartlett_factor,
    gaussian_product,
    gram_step,
    initial_hidden,
    simulate,
    supports_gram,
    wishart_identity,
)
from shapedsde.verification.common import pair_index, z_crit

V0 = np.array([[1.0, 0.2, 0.4], [0.2, 1.2, 0.1], [0.4, 0.1, 0.8]])
ATT = shapedsde.block("attention", gamma=0.8, tau0=0.7)
LIN = shapedsde.block("linear", gamma=0.6)


def _max_z(samples: torch.Tensor, expected: torch.Tensor) -> float:
    """max |z| over the unique entries of the mean of samples (N, m, m) vs expected."""
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    return max(abs(float((mean[i] - expected[i]) / se[i])) for i in pair_index(mean.shape[-1]))


# ----------------------------------------------------------------------------
# initial_hidden


@pytest.mark.parametrize("n", [3, 4, 17, 256])
def test_initial_hidden_gram_is_exact(n):
    X0 = initial_hidden(V0, n, seed=3)
    assert X0.shape == (3, n) and X0.dtype == torch.float64
    torch.testing.assert_close(X0 @ X0.T / n, torch.tensor(V0), rtol=0, atol=1e-13)


def test_initial_hidden_singular_psd_and_torch_input():
    v = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    Vs = torch.outer(v, v)  # rank one
    X0 = initial_hidden(Vs, 8, seed=0)
    torch.testing.assert_close(X0 @ X0.T / 8, Vs, rtol=0, atol=1e-12)


def test_initial_hidden_seeded_and_dtype():
    a, b = initial_hidden(V0, 10, seed=1), initial_hidden(V0, 10, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, initial_hidden(V0, 10, seed=2))
    assert initial_hidden(V0, 10, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("bad, match", [
    (dict(V0=V0, n=2), "must be >= m"),
    (dict(V0=V0, n=0), "positive integer"),
    (dict(V0=-np.eye(3), n=5), "positive semi-definite"),
    (dict(V0=np.stack([V0, V0]), n=5), "single"),
    (dict(V0=np.ones((3, 2)), n=5), "shape"),
])
def test_initial_hidden_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        initial_hidden(bad["V0"], bad["n"])


# ----------------------------------------------------------------------------
# simulate


@pytest.mark.parametrize("method", ["full", "gram"])
def test_simulate_shape_and_reproducible(method):
    kw = dict(width=16, T=0.25, nets=7, method=method)
    a = simulate(ATT, V0, seed=5, **kw)
    assert a.shape == (7, 3, 3) and a.dtype == torch.float64
    assert torch.equal(a, simulate(ATT, V0, seed=5, **kw))
    assert not torch.equal(a, simulate(ATT, V0, seed=6, **kw))
    torch.testing.assert_close(a, a.transpose(-1, -2))
    assert torch.all(torch.linalg.eigvalsh(a) > 0)


def test_simulate_batching_and_progress_do_not_change_shapes():
    a = simulate(LIN, V0, width=8, T=0.5, nets=5, seed=0, batch_size=2, progress=True)
    assert a.shape == (5, 3, 3)


def test_simulate_T0_returns_V0():
    V = simulate(ATT, V0, width=8, T=0.0, nets=4, seed=0)
    torch.testing.assert_close(V, torch.tensor(V0).expand(4, 3, 3), rtol=0, atol=1e-13)


def test_simulate_trajectory():
    run = simulate(ATT, V0, width=20, T=0.5, nets=3, seed=0, record_every=4, method="auto")
    assert isinstance(run, FiniteRun) and run.method == "gram"
    assert run.depth == 10 and run.depths == [0, 4, 8, 10]
    assert run.trajectory.shape == (4, 3, 3, 3)  # (k, nets, m, m): time first, as the SDE's
    torch.testing.assert_close(run.trajectory[0], torch.tensor(V0).expand(3, 3, 3))
    assert torch.equal(run.trajectory[-1], run.V)
    np.testing.assert_allclose(run.times, np.asarray(run.depths) / 20)


@pytest.mark.parametrize("kw, match", [
    (dict(width=0), "positive integer"),
    (dict(width=2), ">= m"),
    (dict(nets=0), "positive integer"),
    (dict(T=-0.1), "T"),
    (dict(method="euler"), "method"),
    (dict(record_every=0), "positive integer"),
    (dict(batch_size=0), "positive integer"),
    (dict(dtype=torch.float16), "dtype"),
])
def test_simulate_errors(kw, match):
    args = dict(width=8, T=0.25, nets=2, seed=0) | kw
    with pytest.raises(ValueError, match=match):
        simulate(ATT, V0, **args)


def test_simulate_rejects_non_block_and_gram_for_unknown_block():
    with pytest.raises(ValueError, match="Block"):
        simulate(object(), V0, width=8, T=0.25, nets=2, seed=0)

    class Custom(type(LIN)):  # a finite face of its own: the linear chain no longer holds
        def finite(self, X, generator, *, check=True):
            return super().finite(X, generator, check=check)

    custom = Custom(gamma=0.5)
    assert not supports_gram(custom)
    with pytest.raises(ValueError, match="gram"):
        simulate(custom, V0, width=8, T=0.25, nets=2, seed=0, method="gram")
    assert simulate(custom, V0, width=8, T=0.25, nets=2, seed=0, method="auto").shape == (2, 3, 3)


# ----------------------------------------------------------------------------
# Moments (standard-error tolerances)


def test_linear_layer_mean_is_V():
    """One finite linear layer: E[V'] = V exactly at every width (drift 0).

    Bonferroni over the 6 entries at alpha = 1e-3: false-alarm rate <= 0.1%.
    """
    n, N = 32, 20_000
    X = initial_hidden(V0, n, seed=0).expand(N, 3, n).contiguous()
    Xn = LIN.finite(X, torch.Generator().manual_seed(11))
    Vn = Xn @ Xn.transpose(-1, -2) / n
    assert _max_z(Vn, torch.tensor(V0)) < z_crit(6, 1e-3)


def test_float32_networks_accumulate_V_in_float64():
    """float32 networks return float64 V; the linear block keeps E[V] = V0 at depth d
    (drift 0 at every width), so the float32 sampler is checked against an exact mean.
    Bonferroni over 6 entries, alpha = 1e-3."""
    from shapedsde.finite import gram_matrix

    X = initial_hidden(V0, 4096, dtype=torch.float32, seed=0)
    V64 = gram_matrix(X)
    assert V64.dtype == torch.float64
    # The float64 Gram of the float32 state is the exact Gram of those numbers, up
    # to float64 rounding; the float32 one is off by ~ sqrt(n) eps_32 relative.
    Xd = X.double()
    exact = (Xd @ Xd.T) / 4096
    assert (V64 - exact).abs().max() < 1e-13
    V = simulate(LIN, V0, width=64, T=0.25, nets=4000, seed=5, dtype=torch.float32)
    assert V.dtype == torch.float64
    assert _max_z(V, torch.tensor(V0)) < z_crit(6, 1e-3)


REDUCED_CASES = [
    shapedsde.block("attention", gamma=0.8, tau0=0.7, heads=2),
    shapedsde.block("attention", gamma=0.8, tau0=0.7, causal=True),
    shapedsde.block("mlp", gamma=0.8, c_plus=0.5, c_minus=-1.0),
    shapedsde.block("transformer", gamma=0.7, tau0=1.0),
]


@pytest.mark.parametrize("blk", REDUCED_CASES, ids=lambda b: f"{b.name}-{b.kernel_params()}")
def test_reduced_weights_have_the_law_of_drawn_weights(blk):
    """Networks with weight products drawn in law (L G) vs all weights drawn: the
    first and second moments of V at depth 8 (n = 16, T = 0.5) agree. Independent
    samples, z from both standard errors; Bonferroni over 6 + 6 entries, alpha = 1e-3.
    A control with the wrong gamma is rejected at the same threshold."""
    N = 6000
    kw = dict(width=16, T=0.5, nets=N)
    full = simulate(blk, V0, seed=1, method="full", **kw)
    red = simulate(blk, V0, seed=2, method="reduced", **kw)
    wrong = simulate(type(blk)(**{**_fields(blk), "gamma": blk.gamma * 0.5}), V0, seed=3,
                     method="reduced", **kw)
    crit = z_crit(12, 1e-3)
    assert _two_sample_z(full, red) < crit
    assert _two_sample_z(full, wrong) > crit


def _fields(blk) -> dict:
    import dataclasses

    return {f.name: getattr(blk, f.name) for f in dataclasses.fields(blk) if f.init}


def _two_sample_z(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |z| of the difference of the means of V and of V o V over unique entries."""
    zs = []
    for f in (lambda V: V, lambda V: V * V):
        x, y = f(a), f(b)
        z = (x.mean(0) - y.mean(0)) / torch.sqrt(x.var(0) / len(x) + y.var(0) / len(y))
        zs += [abs(float(z[i])) for i in pair_index(a.shape[-1])]
    return max(zs)


@pytest.mark.parametrize("reduced", [False, True])
def test_weight_products_have_the_matrix_normal_law(reduced):
    """Given X, the columns of X W are iid N(0, X X^T), independent across heads and
    calls: the sample covariance of (column of head 0, column of head 1, column of a
    second call) against [[S, 0, 0], [0, S, 0], [0, 0, S]], S = X X^T. z from the
    normal-theory standard error of a covariance, Bonferroni over the 9 x 9 entries'
    unique pairs, alpha = 1e-3."""
    from shapedsde.weights import WeightSource

    N, m, n = 40_000, 3, 8
    X = torch.randn(1, m, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    src = WeightSource(torch.Generator().manual_seed(4), reduced=reduced)
    Xb = X.expand(N, m, n)
    a = src.times(Xb, 2, heads=2)  # (N, 2, m, 2)
    b = src.times(Xb, 1)  # (N, m, 1)
    Z = torch.cat([a[:, 0, :, 0], a[:, 1, :, 1], b[..., 0]], dim=1)  # (N, 9)
    S = (X @ X.transpose(-1, -2))[0]
    expected = torch.block_diag(S, S, S)
    emp = Z.T @ Z / N  # mean zero is known
    se = torch.sqrt((expected**2 + torch.outer(expected.diagonal(), expected.diagonal())) / N)
    iu = torch.triu_indices(9, 9)
    z = ((emp - expected) / se)[iu[0], iu[1]].abs().max()
    assert z < z_crit(45, 1e-3)


def test_reduced_weights_keep_small_directions_in_float32():
    """A nearly singular X (singular values 1 ... 1e-5) in float32: L L^T keeps the
    smallest eigenvalue of X X^T (1e-10 relative), which a Gram-then-Cholesky factor in
    float32 would lose (its error is ~ eps_32 ~ 1e-7 relative)."""
    from shapedsde.weights import WeightSource

    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    W, _ = torch.linalg.qr(torch.randn(64, 3, generator=g, dtype=torch.float64))
    X = (U @ torch.diag(torch.tensor([1.0, 1e-2, 1e-5], dtype=torch.float64)) @ W.T)
    X = X.float()[None]
    out = WeightSource(g, reduced=True).times(X, 100_000).double()  # columns N(0, L L^T)
    Xd = X.double()[0]
    lam = torch.linalg.eigvalsh(Xd @ Xd.T)[0]
    # The sample covariance of 1e5 columns has relative error ~ sqrt(2 / 1e5) = 0.5%.
    lam_hat = torch.linalg.eigvalsh((out @ out.transpose(-1, -2))[0] / 100_000)[0]
    assert abs(float(lam_hat / lam) - 1) < 0.03


def test_reduced_sampler_is_seeded_and_cheap_in_random_numbers():
    a = simulate(ATT, V0, width=32, T=0.25, nets=5, seed=4, method="reduced")
    b = simulate(ATT, V0, width=32, T=0.25, nets=5, seed=4, method="reduced")
    assert torch.equal(a, b)
    # One weight product X W (m x n times n x c) draws m c numbers, not n c.
    from shapedsde.weights import WeightSource

    gen = torch.Generator().manual_seed(0)
    X = initial_hidden(V0, 32, seed=0)[None]
    out = WeightSource(gen, reduced=True).times(X, 7, heads=2)
    assert out.shape == (1, 2, 3, 7)
    ref = torch.Generator().manual_seed(0)
    torch.randn(1, 2, 3, 7, generator=ref, dtype=torch.float64)
    assert torch.equal(gen.get_state(), ref.get_state())


def test_gram_step_mean_matches_full_layer():
    """One gram step has E[V' | V] = lam^2 V + gam^2 E[A V A^T] like the full layer; for
    the linear block E[V'] = V. Bonferroni over 6 entries, alpha = 1e-3."""
    N, n = 100_000, 12
    V = torch.tensor(V0).expand(N, 3, 3).contiguous()
    Vn = gram_step(LIN, V, n, torch.Generator().manual_seed(2))
    assert _max_z(Vn, torch.tensor(V0)) < z_crit(6, 1e-3)


@pytest.mark.parametrize("df", [5, 200])  # direct draw and Bartlett
def test_wishart_and_gaussian_product_moments(df):
    """E[S] = df I, Var[S_ab] = df (1 + delta_ab); E[G1 G2^T] = 0, Var = df.
    Bonferroni over 6 entries per check, alpha = 1e-3."""
    N, like = 40_000, torch.zeros(1, dtype=torch.float64)
    g = torch.Generator().manual_seed(df)
    S = wishart_identity(N, 3, df, g, like)
    assert _max_z(S, df * torch.eye(3, dtype=torch.float64)) < z_crit(6, 1e-3)
    var_expected = df * (1 + torch.eye(3, dtype=torch.float64))
    var_se = S.var(0) * math.sqrt(2 / N) * 3  # generous: 3x the Gaussian-case SE of a variance
    assert torch.all((S.var(0) - var_expected).abs() < z_crit(6, 1e-3) * var_se)
    P = gaussian_product(N, 3, df, g, like)
    assert _max_z(P, torch.zeros(3, 3, dtype=torch.float64)) < z_crit(6, 1e-3)
    assert torch.all((P.var(0) / df - 1).abs() < 0.1)


def test_bartlett_factor_shape_and_errors():
    g, like = torch.Generator().manual_seed(0), torch.zeros(1, dtype=torch.float64)
    T = bartlett_factor(4, 3, 10, g, like)
    assert T.shape == (4, 3, 3) and torch.all(T.triu(1) == 0)
    assert torch.all(T.diagonal(0, -2, -1) > 0)
    with pytest.raises(ValueError, match="df >= m"):
        bartlett_factor(4, 3, 2, g, like)


# ----------------------------------------------------------------------------
# The gram chain against block.finite


@pytest.mark.parametrize("causal", [False, True])
def test_gram_chain_matches_full_networks_in_law(causal):
    """KS on rho01, V00, tr(PVP)/tr(V) after 8 layers at n = 32: the exact-in-law V
    chain vs networks with every weight drawn. Each p-value > 1e-3 / 3 (Bonferroni):
    false-alarm rate <= 0.1%. Power: for causal attention the non-causal chain must be
    rejected on the same full-weight sample (p < 1e-3 on some statistic; at fixed seed
    it is ~1e-8 on V00)."""
    from scipy.stats import ks_2samp

    from shapedsde.verification.law import statistics

    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5, causal=causal)
    kw = dict(width=32, T=0.25)
    full = statistics(simulate(blk, V0, nets=4000, seed=1, method="full", **kw))
    gram = statistics(simulate(blk, V0, nets=16000, seed=2, method="gram", **kw))
    for k in full:
        assert ks_2samp(full[k], gram[k]).pvalue > 1e-3 / 3, k
    if causal:
        wrong = shapedsde.block("attention", gamma=0.9, tau0=0.5, causal=False)
        other = statistics(simulate(wrong, V0, nets=16000, seed=3, method="gram", **kw))
        assert min(ks_2samp(full[k], other[k]).pvalue for k in full) < 1e-3


def test_multi_head_attention_has_no_gram_sampler():
    blk = shapedsde.block("attention", gamma=0.8, tau0=0.7, heads=2)
    assert not supports_gram(blk)
    with pytest.raises(ValueError, match="gram"):
        simulate(blk, V0, width=8, T=0.25, nets=2, seed=0, method="gram")
    assert simulate(blk, V0, width=8, T=0.25, nets=2, seed=0, method="auto").shape == (2, 3, 3)
