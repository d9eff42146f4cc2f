"""Multi-head attention at one step (shapedsde.verification.multihead): the finite moments
agree with the n_H-head kernels, and the single head's Sigma is rejected on the same
samples (the test has power)."""

from __future__ import annotations

import pytest
import torch

import shapedsde
from shapedsde.verification.common import LINE_ALPHA, compare, derive_seed, z_crit, z_test
from shapedsde.verification.multihead import heads_check, single_head
from shapedsde.verification.one_step import _o2, _outer, one_step_estimate, outer2, sample_G

V = torch.tensor([[1.0, 0.2, 0.4], [0.2, 1.2, 0.1], [0.4, 0.1, 0.8]], dtype=torch.float64)
# gamma near 1 and small tau0: the attention part of Sigma (gam^4 / tau0^2 / n_H) is large.
PARAMS = {"gamma": 0.9, "tau0": 0.4}
SIZES = {"widths": [128, 256, 512, 1024], "pairs": 20_000, "raw_n": 16, "raw_samples": 20_000}


@pytest.mark.parametrize("causal", [False, True])
def test_two_heads_agree_with_kernels_and_reject_the_single_head(causal):
    """heads = 2: block.finite (every weight drawn, n = 16) against the estimator, and the
    estimator's n -> inf extrapolation against b and Sigma at heads = 2, each within the
    Bonferroni bound at LINE_ALPHA / 2 over its entries (27: drift and Sigma; 48: drift,
    attention part and Sigma). The single head's moments must be rejected on the same
    samples: measured control max|z| ~13 (finite) and ~63 (kernels); true ones <= 3.3."""
    blk = shapedsde.block("attention", heads=2, causal=causal, **PARAMS)
    r = heads_check(blk, V, seed_of=lambda label: derive_seed(0, label), **SIZES)
    for part, k, power in (("finite", 27, 8.0), ("kernels", 48, 30.0)):
        crit = z_crit(k, LINE_ALPHA / 2)
        true, control = r[part]["true"], r[part]["control"]
        assert true["entries"] == control["entries"] == k
        assert true["max_abs_z"] < crit, (part, true)
        assert control["max_abs_z"] > max(power, crit), (part, control)
        assert r[part]["status"] == "PASS"
    kern = r["kernels"]
    assert kern["control"]["attention"]["max_abs_z"] > 30.0  # the 1 / n_H of the attention part
    assert kern["control"]["drift"]["max_abs_z"] < z_crit(6, LINE_ALPHA)  # b has no n_H
    assert r["verdict"] == "PASS" and r["line"].startswith("PASS one-step heads")


def test_two_heads_halve_the_measured_attention_part():
    """The attention part n gam^4 Cov[Gbar] measured with two heads is half the one
    measured with one head (same width, independent draws), within their SEs."""
    blk = shapedsde.block("attention", heads=2, **PARAMS)
    e2 = one_step_estimate(blk, V, 256, 20_000, torch.Generator().manual_seed(1))
    e1 = one_step_estimate(single_head(blk), V, 256, 20_000, torch.Generator().manual_seed(2))
    z = (2 * e2.attention - e1.attention) / torch.sqrt(4 * e2.attention_se**2
                                                        + e1.attention_se**2)
    assert float(z.abs().max()) < z_crit(81)
    torch.testing.assert_close(e2.value, e1.value, rtol=0.02, atol=0.0)


def test_one_head_is_the_single_head_formula_bit_for_bit():
    """heads = 1: the estimate is exactly the single-head formulas on the same draws."""
    blk = shapedsde.block("attention", **PARAMS)
    n, K, gam = 128, 500, PARAMS["gamma"]
    e = one_step_estimate(blk, V, n, K, torch.Generator().manual_seed(3))
    G = sample_G(blk, V, n, K, torch.Generator().manual_seed(3))[:, 0]  # (K, 2, m, m)
    g1, g2 = G.mean(1), torch.einsum("kiab,kicd->kabcd", G, G) / 2
    mu1, mu2 = g1.mean(0), g2.mean(0)
    d1 = g1 - mu1
    cov_g1 = torch.einsum("kab,kcd->abcd", d1, d1) / (K - 1)
    att = n * gam**4 * (mu2 - _outer(mu1, mu1) + cov_g1 / K)
    val = (1 - gam**2) * gam**2 * (outer2(mu1, V) + outer2(V, mu1)) + gam**4 * _o2(mu2)
    assert torch.equal(e.drift, n * gam**2 * (mu1 - V))
    assert torch.equal(e.attention, att) and torch.equal(e.value, val)
    assert torch.equal(e.diffusion, att + val)


def test_sample_G_draws_one_logit_per_head():
    blk = shapedsde.block("attention", heads=3, **PARAMS)
    G = sample_G(blk, V, 64, 10, torch.Generator().manual_seed(0))
    assert G.shape == (10, 3, 2, 3, 3)
    assert not torch.allclose(G[:, 0], G[:, 1])  # independent heads


@pytest.mark.parametrize("scale", [0.999, 1.001])
def test_z_test_p_value_is_the_bonferroni_bound(scale):
    """p < alpha exactly when max |z| > z_crit(k, alpha)."""
    est = torch.zeros(3, 3, dtype=torch.float64)
    ref = est.clone()
    ref[0, 1] = ref[1, 0] = scale * z_crit(6, 0.01)
    t = z_test([compare(est, torch.ones(3, 3, dtype=torch.float64), ref)])
    assert t["entries"] == 6 and (t["p"] < 0.01) is (scale > 1)
