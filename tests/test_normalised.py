"""Normalised blocks (shapedsde.normalised, shapedsde.symbolic.normalisation).

(i)   the SymPy-derived gradient and Hessian of N(V)^{ab} = V^{ab} / sqrt(V^{aa} V^{bb})
      against central finite differences of N; the Ito map against the independent
      closed form of `shapedsde.symbolic.correlation.rho_coefficients`;
(ii)  one step of the post-normalised network (exact Gram chain, n = 4096) against the
      derived drift and diffusion, tolerance from the estimator's standard error;
(iii) the law of rho^{01} and lambda_min / tr V at T = 0.5 (shaped attention, m = 3):
      post-norm SDE against finite networks (exact Gram chain, RMS and LayerNorm), the
      unnormalised SDE as a control; tr V = m for ever;
(iv)  the pre-norm averaged drift (paired with post-norm, linear block) -- slow;
(v)   faces, errors and the CLI;
(vi)  the Transformer block normalised sub-layer by sub-layer (pre-LN / post-LN): its
      coefficients are the normalised sub-layers' summed, its finite face theirs in turn,
      and its SDE's law of rho^{01} agrees with finite networks (method "reduced");
      multi-head and causal attention with norm in the API and the CLI.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sympy as sp
import torch
from scipy import stats

import shapedsde
from shapedsde.finite import gram_step, simulate, supports_gram
from shapedsde.normalised import normalised
from shapedsde.sde import solve
from shapedsde.symbolic import normalisation as nz
from shapedsde.symbolic.correlation import rho_coefficients

V_ISSUE = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])
V_OFF = np.array([[1.3, 0.4, -0.2], [0.4, 0.8, 0.25], [-0.2, 0.25, 1.1]])


def attention():
    return shapedsde.block("attention", gamma=0.9, tau0=0.5)


# ----------------------------------------------------------------------------
# (i) derivatives


def test_derivatives_match_finite_differences() -> None:
    g, h = nz.numeric_derivatives(V_OFF)
    m, eps = 3, 1e-4

    def N_coord(V, a, b):  # N^{ab} with the three coordinates as independent inputs
        def f(x, y, z):
            return x / math.sqrt(y * z)
        return f

    for a in range(m):
        for b in range(m):
            if a == b:
                assert np.all(g[a, b] == 0) and np.all(h[a, b] == 0)
                continue
            p = np.array([V_OFF[a, b], V_OFF[a, a], V_OFF[b, b]])
            f = N_coord(V_OFF, a, b)
            for u in range(3):
                e = np.eye(3)[u] * eps
                fd = (f(*(p + e)) - f(*(p - e))) / (2 * eps)
                assert abs(fd - g[a, b, u]) < 1e-7
                for w in range(3):
                    e2 = np.eye(3)[w] * eps
                    fd2 = (f(*(p + e + e2)) - f(*(p + e - e2)) - f(*(p - e + e2))
                           + f(*(p - e - e2))) / (4 * eps**2)
                    assert abs(fd2 - h[a, b, u, w]) < 1e-5


@pytest.mark.parametrize("name", ["attention", "mlp", "linear"])
def test_ito_map_matches_closed_form(name: str) -> None:
    blk = shapedsde.block(name, gamma=0.8)
    mu, C = nz.ito_map(blk.drift(V_OFF), blk.diffusion(V_OFF), V_OFF)
    mu2, C2 = rho_coefficients(blk, V_OFF)
    np.testing.assert_allclose(mu, mu2, atol=1e-13)
    np.testing.assert_allclose(C, C2, atol=1e-13)
    Vt = torch.as_tensor(np.stack([V_OFF, V_ISSUE]))  # Torch, batched
    mut, Ct = nz.ito_map(blk.drift(Vt), blk.diffusion(Vt), Vt)
    np.testing.assert_allclose(mut[0].numpy(), mu2, atol=1e-13)
    np.testing.assert_allclose(Ct[0].numpy(), C2, atol=1e-13)


def test_post_coefficients_latex_form() -> None:
    mu, C = nz.post_coefficients_symbolic()
    rho = sp.Symbol(r"\rho^{ab}", real=True)
    names = {str(s): s for s in mu.free_symbols | C.free_symbols}
    expect = (names["b^{ab}"] - rho * (names["b^{aa}"] + names["b^{bb}"]) / 2
              - (names[r"\Sigma^{aa,ab}"] + names[r"\Sigma^{ab,bb}"]) / 2
              + rho * (3 * names[r"\Sigma^{aa,aa}"] / 8 + 3 * names[r"\Sigma^{bb,bb}"] / 8
                       + names[r"\Sigma^{aa,bb}"] / 4))
    assert sp.expand(mu - expect) == 0
    lam = sp.Symbol("lambda", positive=True)
    assert sp.simplify(nz.prenorm_drift_factor() - lam**2 / (8 * (lam**2 + 1))) == 0


def test_normalised_faces_at_unit_diagonal() -> None:
    blk = attention()
    nb = normalised(blk)
    b = nb.drift(V_ISSUE)
    mu, C = rho_coefficients(blk, V_ISSUE)
    np.testing.assert_allclose(b, mu, atol=1e-13)
    np.testing.assert_allclose(nb.diffusion(V_ISSUE), C, atol=1e-13)
    assert np.all(np.diagonal(b) == 0)
    assert abs(float(nb.trace_variance(V_ISSUE))) < 1e-14
    # coefficients are functions of the correlation: scale invariant
    D = np.diag([1.5, 0.7, 2.0])
    np.testing.assert_allclose(nb.drift(D @ V_ISSUE @ D), b, atol=1e-12)


# ----------------------------------------------------------------------------
# (ii) one step of the network


def test_one_step_against_derived_coefficients() -> None:
    n, nets = 4096, 40000
    nb = normalised(attention())
    gen = torch.Generator().manual_seed(3)
    R = torch.as_tensor(V_ISSUE).expand(nets, 3, 3).contiguous()
    d = (gram_step(nb, R, n, gen) - R) * n  # n dR
    mu = nb.drift(V_ISSUE)
    C = nb.diffusion(V_ISSUE)
    for (a, b) in ((0, 1), (0, 2), (1, 2)):
        x = d[:, a, b].double()
        se = x.std().item() / math.sqrt(nets)
        assert abs(x.mean().item() - mu[a, b]) < 4 * se + 0.05 * abs(mu[a, b]), (a, b)
        var = (x - x.mean()).pow(2) / n
        se_v = var.std().item() / math.sqrt(nets)
        assert abs(var.mean().item() - C[a, b, a, b]) < 4 * se_v + 0.02 * C[a, b, a, b]
    cov = ((d[:, 0, 1] - d[:, 0, 1].mean()) * (d[:, 1, 2] - d[:, 1, 2].mean()) / n)
    assert abs(cov.mean().item() - C[0, 1, 1, 2]) < 4 * cov.std().item() / math.sqrt(nets) \
        + 0.02 * abs(C[0, 1, 1, 2])
    assert torch.allclose(torch.diagonal(d, 0, -2, -1), torch.zeros(1, dtype=d.dtype),
                          atol=1e-9)


# ----------------------------------------------------------------------------
# (iii) the law at T


def _laws(V: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    V = V[torch.isfinite(V).all(-1).all(-1)]
    lmin = torch.linalg.eigvalsh(V)[:, 0] / torch.diagonal(V, 0, -2, -1).sum(-1)
    rho = V[:, 0, 1] / torch.sqrt(V[:, 0, 0] * V[:, 1, 1])
    return rho.numpy(), lmin.numpy()


def _agree(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    se = math.sqrt(a.var() / a.size + b.var() / b.size)
    return (a.mean() - b.mean()) / se, stats.ks_2samp(a, b).pvalue


def law_check(paths: int, n: int, norms: tuple[str, ...], seed: int = 0) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        post = solve(normalised(attention()), V_ISSUE, 0.5, paths=paths, seed=seed)
        plain = solve(attention(), V_ISSUE, 0.5, paths=paths, seed=seed)
    trace = torch.diagonal(post.V, 0, -2, -1).sum(-1)
    assert post.exploded.sum() == 0 and bool(post.finite.all())
    assert torch.allclose(trace, torch.full_like(trace, 3.0), atol=1e-12)  # tr V = m
    sde, unn = _laws(post.V), _laws(plain.V)
    out = {}
    for norm in norms:
        fin = _laws(simulate(normalised(attention(), norm), V_ISSUE, width=n, T=0.5,
                             nets=paths, seed=seed + 1, method="gram"))
        for k, stat in enumerate(("rho01", "lmin/trV")):
            out[(norm, stat, "post")] = _agree(sde[k], fin[k])
            out[(norm, stat, "unnormalised")] = _agree(unn[k], fin[k])
    return out


def test_law_post_norm_fast() -> None:
    out = law_check(paths=1500, n=1024, norms=("rms",))
    for stat in ("rho01", "lmin/trV"):
        z, p = out[("rms", stat, "post")]
        assert abs(z) < 3 and p > 1e-3, (stat, z, p)


@pytest.mark.slow
def test_law_post_norm_slow() -> None:
    for n in (1024, 4096):
        out = law_check(paths=8000, n=n, norms=("rms", "layer"))
        for norm in ("rms", "layer"):
            for stat in ("rho01", "lmin/trV"):
                z, p = out[(norm, stat, "post")]
                assert abs(z) < 3 and p > 1e-3, (n, norm, stat, z, p)
        z, p = out[("rms", "lmin/trV", "unnormalised")]
        assert p < 1e-3, ("control not rejected", n, z, p)


# ----------------------------------------------------------------------------
# (iv) pre-norm: the averaged drift, paired with post-norm


@pytest.mark.slow
def test_prenorm_averaged_drift_linear() -> None:
    """Paired (same seed) pre minus post mean of rho at T = 1: the SDE difference is the
    derived averaged drift; the finite chains agree with it, not with 0 (the naive SDE)."""
    lin = shapedsde.block("linear", gamma=0.7)
    V0 = np.array([[1.0, 0.3], [0.3, 1.0]])
    P = 20000

    def rho(V):
        return (V[:, 0, 1] / torch.sqrt(V[:, 0, 0] * V[:, 1, 1])).numpy()

    sde = [rho(solve(normalised(lin, at=at), V0, 1.0, paths=P, seed=0).V)
           for at in ("post", "pre")]
    fin = [rho(simulate(normalised(lin, at=at), V0, width=1024, T=1.0, nets=P, seed=1,
                        method="gram")) for at in ("post", "pre")]
    ds, df = sde[1] - sde[0], fin[1] - fin[0]
    se = math.sqrt(ds.var() / P + df.var() / P)
    assert abs(ds.mean() - df.mean()) < 3 * se
    assert abs(df.mean()) > 5 * df.std() / math.sqrt(P)  # pre differs from post


# ----------------------------------------------------------------------------
# (v) faces and errors


def test_finite_faces_normalise() -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(4, 3, 64, dtype=torch.float64, generator=gen)
    for norm in ("rms", "layer"):
        Y = normalised(attention(), norm).finite(X, gen)
        assert torch.allclose((Y * Y).mean(-1), torch.ones(4, 3, dtype=Y.dtype))
        if norm == "layer":
            assert Y.mean(-1).abs().max() < 1e-12
        Z = normalised(attention(), norm, at="pre").finite(X, gen)
        assert Z.shape == X.shape
    # pre-norm with gamma = 1 (no residual) is the branch of the normalised input
    lin = shapedsde.block("linear", gamma=1.0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    pre = normalised(lin, at="pre").finite(X, g1)
    Xn = X * torch.rsqrt((X * X).mean(-1, keepdim=True))
    assert torch.allclose(pre, lin.finite(Xn, g2))


def test_supports_gram_and_errors() -> None:
    assert supports_gram(normalised(attention()))
    assert supports_gram(normalised(attention(), "layer"))
    assert supports_gram(normalised(attention(), at="pre"))
    assert not supports_gram(normalised(attention(), "layer", at="pre"))
    with pytest.raises(ValueError, match="unknown norm"):
        normalised(attention(), "batch")
    with pytest.raises(ValueError, match="norm place"):
        normalised(attention(), at="middle")
    assert not supports_gram(normalised(shapedsde.block("transformer", gamma=0.8), at="pre"))
    mixed = shapedsde.serial(attention(), shapedsde.block("mlp", gamma=0.5))
    with pytest.raises(ValueError, match="different gammas"):
        normalised(mixed, at="pre")
    normalised(mixed, at="post")  # post-norm: the Ito maps add for any gammas
    with pytest.raises(ValueError, match="normalised already"):
        normalised(shapedsde.serial(normalised(attention()), attention()))
    with pytest.raises(ValueError, match="Block"):
        normalised("attention")


def test_cli(tmp_path) -> None:
    from shapedsde.cli import main

    V0 = tmp_path / "V0.npy"
    np.save(V0, V_ISSUE)
    common = ["--block", "attention", "--gamma", "0.9", "--tau0", "0.5", "--V0", str(V0),
              "--T", "0.1", "--seed", "0", "--quiet"]
    out = tmp_path / "sde.npy"
    assert main(["sde", *common, "--norm", "rms", "--norm-at", "post", "--paths", "20",
                 "--out", str(out)]) == 0
    V = np.load(out)
    assert V.shape == (20, 3, 3) and np.allclose(np.diagonal(V, 0, 1, 2), 1.0)
    out2 = tmp_path / "fin.npy"
    assert main(["finite", *common, "--norm", "layer", "--width", "64", "--nets", "10",
                 "--method", "gram", "--out", str(out2)]) == 0
    assert np.allclose(np.diagonal(np.load(out2), 0, 1, 2), 1.0)
    for bad in (["--norm-at", "post"], ["--norm", "batch"], ["--norm", "rms", "--norm-at", "x"]):
        assert main(["sde", *common, *bad, "--paths", "5",
                     "--out", str(tmp_path / "bad.npy")]) == 2


# ----------------------------------------------------------------------------
# (vi) the Transformer block, multi-head and causal attention


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("at", ["post", "pre"])
def test_transformer_is_normalised_per_sublayer(at: str, heads: int) -> None:
    tr = shapedsde.block("transformer", gamma=0.7, tau0=0.5, heads=heads)
    att, mlp = tr.parts()
    blk = normalised(tr, "rms", at)
    per_part = shapedsde.serial(normalised(att, "rms", at), normalised(mlp, "rms", at))
    assert [p.inner for p in blk.sublayers] == [att, mlp]
    np.testing.assert_allclose(blk.drift(V_OFF), per_part.drift(V_OFF), atol=1e-15)
    np.testing.assert_allclose(blk.diffusion(V_OFF), per_part.diffusion(V_OFF), atol=1e-15)
    # at leading order the coefficients add: the same as one Ito map (and, pre, one
    # averaged correction with the common lam) of the Transformer's summed b and Sigma
    R = nz.normalise(V_OFF)
    mu, C = nz.ito_map(tr.drift(R), tr.diffusion(R), R)
    if at == "pre":
        mu = mu + nz.prenorm_correction(tr.diffusion(R), R, tr.lam)
    np.testing.assert_allclose(blk.drift(V_OFF), mu, atol=1e-14)
    np.testing.assert_allclose(blk.diffusion(V_OFF), C, atol=1e-14)
    # the finite face: attention with its normalisation, then the MLP with its own
    X = torch.randn(4, 3, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Y = blk.finite(X, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    Y2 = normalised(mlp, "rms", at).finite(normalised(att, "rms", at).finite(X, g), g)
    assert torch.equal(Y, Y2)
    if at == "post":
        assert torch.allclose((Y * Y).mean(-1), torch.ones(4, 3, dtype=Y.dtype))


@pytest.mark.parametrize("at", ["post", "pre"])
def test_transformer_law_fast(at: str) -> None:
    """normalised(transformer) SDE vs finite networks (method "reduced": the network in
    law, no exact chain), rho^{01} and lambda_min of N(V) at T = 0.5, n = 64, 400 each."""
    from shapedsde.verification.normalised import law_statistics
    V0 = np.array([[1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 1.0]])
    blk = normalised(shapedsde.block("transformer", gamma=0.7, tau0=0.5), "rms", at)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sde = solve(blk, V0, 0.5, paths=400, seed=3)
    assert np.allclose(np.diagonal(sde.V.numpy(), 0, 1, 2), 1.0)
    fin = simulate(blk, V0, width=64, T=0.5, nets=400, seed=4, method="reduced")
    s_sde, s_fin = law_statistics(sde.V), law_statistics(fin, correlation=True)
    for k in ("rho01", "lmin_over_tr"):
        assert stats.ks_2samp(s_sde[k], s_fin[k]).pvalue > 1e-3, k


@pytest.mark.parametrize("kw", [{"heads": 2}, {"causal": True}])
def test_multihead_and_causal_attention_with_norm(kw, tmp_path) -> None:
    from shapedsde.cli import main

    att = shapedsde.block("attention", gamma=0.8, tau0=0.5, **kw)
    for at in ("post", "pre"):
        blk = normalised(att, "rms", at)
        mu, C = blk.drift(V_ISSUE), blk.diffusion(V_ISSUE)
        assert np.all(np.diagonal(mu) == 0) and np.isfinite(C).all()
        mu2, C2 = nz.ito_map(att.drift(V_ISSUE), att.diffusion(V_ISSUE), V_ISSUE)
        if at == "pre":
            mu2 = mu2 + nz.prenorm_correction(att.diffusion(V_ISSUE), V_ISSUE, att.lam)
        np.testing.assert_allclose(mu, mu2, atol=1e-14)
        np.testing.assert_allclose(C, C2, atol=1e-14)
        X = torch.randn(2, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        assert blk.finite(X, torch.Generator().manual_seed(1)).shape == X.shape
    assert supports_gram(normalised(att, "rms", "pre")) is ("causal" in kw)
    V0 = tmp_path / "V0.npy"
    np.save(V0, V_ISSUE)
    flags = ["--heads", "2"] if "heads" in kw else ["--causal"]
    common = ["--block", "attention", "--gamma", "0.8", "--tau0", "0.5", *flags, "--V0",
              str(V0), "--T", "0.05", "--seed", "0", "--quiet", "--norm", "rms",
              "--norm-at", "pre"]
    out = tmp_path / "sde.npy"
    assert main(["sde", *common, "--paths", "10", "--out", str(out)]) == 0
    assert np.allclose(np.diagonal(np.load(out), 0, 1, 2), 1.0)
    out2 = tmp_path / "fin.npy"
    assert main(["finite", *common, "--width", "32", "--nets", "5", "--out", str(out2)]) == 0
    assert np.load(out2).shape == (5, 3, 3)


@pytest.mark.parametrize("at", ["post", "pre"])
def test_cli_transformer_norm(at: str, tmp_path) -> None:
    from shapedsde.cli import main

    V0 = tmp_path / "V0.npy"
    np.save(V0, V_ISSUE)
    common = ["--block", "transformer", "--gamma", "0.7", "--tau0", "0.5", "--heads", "2",
              "--V0", str(V0), "--T", "0.05", "--seed", "0", "--quiet", "--norm", "rms",
              "--norm-at", at]
    out = tmp_path / "sde.npy"
    assert main(["sde", *common, "--paths", "10", "--out", str(out)]) == 0
    assert np.allclose(np.diagonal(np.load(out), 0, 1, 2), 1.0)
    out2 = tmp_path / "fin.npy"
    assert main(["finite", *common, "--width", "32", "--nets", "5", "--method", "reduced",
                 "--out", str(out2)]) == 0
    V = np.load(out2)
    assert V.shape == (5, 3, 3)
    if at == "post":
        assert np.allclose(np.diagonal(V, 0, 1, 2), 1.0)


def test_block_takes_norm_and_norm_at():
    """shapedsde.block(NAME, ..., norm=, norm_at=) is normalised(block(NAME, ...), ...)."""
    V = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])
    got = shapedsde.block("attention", gamma=0.7, tau0=0.5, norm="rms", norm_at="pre")
    want = shapedsde.normalised(shapedsde.block("attention", gamma=0.7, tau0=0.5), "rms", "pre")
    np.testing.assert_allclose(got.drift(V), want.drift(V), rtol=1e-12)
    assert shapedsde.block("mlp", gamma=0.5, norm="layer").at == "post"
    with pytest.raises(ValueError, match="norm_at places"):
        shapedsde.block("attention", gamma=0.7, norm_at="pre")
