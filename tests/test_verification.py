"""Tests of shapedsde.verification.

Monte Carlo checks use fixed seeds and SE-based tolerances: `Comparison.agrees`
means max |z| < z_crit(k) with the Bonferroni bound at family-wise alpha =
FAMILY_ALPHA = 1% over the k unique entries, so for correct code each such
assertion fails for at most ~1% of seeds (the seeds here are fixed).
"""

from __future__ import annotations

import json

import pytest
import torch

import shapedsde
from shapedsde.verification import Config, run_verification
from shapedsde.verification.common import compare, derive_seed, quad_index, z_crit
from shapedsde.verification.law import HalfDrift, controls, distance, statistics
from shapedsde.verification.one_step import (
    _o2,
    _outer,
    closed_form_check,
    conditional_moments,
    extrapolate,
    one_step_check,
    one_step_estimate,
    outer2,
    raw_consistency_check,
)

V = torch.tensor([[1.0, 0.2, 0.4], [0.2, 1.2, 0.1], [0.4, 0.1, 0.8]], dtype=torch.float64)
ATT = shapedsde.block("attention", gamma=0.8, tau0=0.7)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------
# Pieces


def test_outer_helpers_agree():
    G = torch.randn(3, 3, dtype=torch.float64, generator=_gen(0))
    G = G + G.T
    torch.testing.assert_close(_o2(_outer(G, G)), outer2(G, G))
    S = outer2(G, V) + outer2(V, G)
    for a, b, c, d in quad_index(3):  # symmetric within and between pairs
        assert torch.isclose(S[a, b, c, d], S[b, a, c, d])
        assert torch.isclose(S[a, b, c, d], S[c, d, a, b])


def test_conditional_moments_linear_equals_kernel():
    """With A = I the exact finite-n moments equal the linear kernels at every n."""
    lin = shapedsde.block("linear", gamma=0.7)
    mean, cov = conditional_moments(V, None, 0.7, 50)
    torch.testing.assert_close(mean, V)
    torch.testing.assert_close(50 * cov, lin.diffusion(V))


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "a") == derive_seed(0, "a")
    assert len({derive_seed(0, "a"), derive_seed(0, "b"), derive_seed(1, "a")}) == 3
    assert 0 <= derive_seed(123, "x") < 2**63


def test_compare_deterministic_and_zcrit():
    x = torch.eye(3, dtype=torch.float64)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    assert compare(x, zero, x).agrees
    assert not compare(x + 1e-3, zero, x).agrees
    assert z_crit(1) == pytest.approx(2.5758, abs=1e-3) and z_crit(21) > z_crit(6)


def test_extrapolate_recovers_limit():
    widths = [64, 128, 256, 512]
    theta = torch.tensor([1.0, -2.0], dtype=torch.float64)
    est = [theta + 3.0 / n - 40.0 / n**2 for n in widths]
    se = [torch.full((2,), 1e-3, dtype=torch.float64) for _ in widths]
    got, got_se = extrapolate(widths, est, se)
    torch.testing.assert_close(got, theta)
    assert torch.all(got_se > 0)


def test_controls_and_distance():
    ctrl = controls(ATT)
    assert set(ctrl) == {"no-attention", "half-drift"}
    torch.testing.assert_close(ctrl["half-drift"].drift(V), 0.5 * ATT.drift(V))
    torch.testing.assert_close(HalfDrift(ATT).diffusion(V), ATT.diffusion(V))
    s = statistics(torch.stack([V, 2 * V, torch.full((3, 3), float("nan"))]))
    assert all(len(v) == 2 for v in s.values())  # the NaN row is dropped
    d = distance(s["V00"], s["V00"], "V00")
    assert d["ks"] == 0 and d["w1"] == 0 and d["p"] == 1


# ----------------------------------------------------------------------------
# Monte Carlo checks


@pytest.mark.parametrize("name", ["attention", "linear"])
def test_conditional_closed_form_vs_raw_value_sampling(name):
    """E[V' | A] and Cov[V' | A] (closed form, exact at width n) against V' from
    freshly drawn W^V (n x n) for one fixed logit draw. Family-wise alpha 1% each."""
    b = ATT if name == "attention" else shapedsde.block("linear", gamma=0.8)
    r = closed_form_check(b, V, 16, 20_000, _gen(7))
    assert r["mean"]["agrees"], r["mean"]
    assert r["cov"]["agrees"], r["cov"]


def test_raw_block_finite_matches_variance_reduced_estimator():
    """block.finite with every weight drawn vs the conditional/antithetic estimator at
    the same width (both estimate the same finite-n moments). Alpha 1% each."""
    r = raw_consistency_check(ATT, V, 12, 20_000, 40_000, _gen(3))
    assert r["drift"]["agrees"], r["drift"]
    assert r["diffusion"]["agrees"], r["diffusion"]


def test_one_step_agrees_with_kernels_at_n512():
    """n E[dV], n Cov[dV] at n = 512 (30k antithetic pairs; relative SE ~1%) against
    b(V), Sigma(V): drift and attention part within the Bonferroni bound (alpha 1%).
    The finite-width bias at n = 512 is ~0.3% here, well below the SE."""
    r = one_step_check(ATT, V, [128, 512], 30_000, lambda label: derive_seed(0, label))
    w = r["widths"][512]
    for part in ("drift", "attention"):
        assert w[part]["agrees"], (part, w[part])
        assert w[part]["rel_error"] < 0.05
    assert r["widths"][128]["diffusion"]["rel_error"] > w["diffusion"]["rel_error"]


def test_one_step_estimator_antithetic_pairs_and_linear_block():
    e = one_step_estimate(ATT, V, 64, 1000, _gen(0))
    assert e.pairs == 1000 and e.diffusion.shape == (3, 3, 3, 3)
    torch.testing.assert_close(e.diffusion, e.attention + e.value)
    lin = shapedsde.block("linear", gamma=0.5)
    e = one_step_estimate(lin, V, 64, 1000, _gen(0))
    assert e.pairs == 0
    torch.testing.assert_close(e.diffusion, lin.diffusion(V))
    torch.testing.assert_close(e.drift, torch.zeros(3, 3, dtype=torch.float64))


def test_one_step_rejects_unsupported_block():
    class Custom(type(ATT)):  # its own mixing: the logits' law no longer gives A
        def branch_mixing(self, X, generator):
            return 2 * super().branch_mixing(X, generator)

    with pytest.raises(ValueError, match="does not support"):
        one_step_estimate(Custom(gamma=0.5, tau0=1.0), V, 16, 10, _gen(0))


# ----------------------------------------------------------------------------
# Smoke run of the whole report


def _tiny() -> Config:
    return Config.tiny()


def test_config_modes_are_named():
    assert [c.mode() for c in (Config.tiny(), Config.quick(), Config.full())] == [
        "tiny", "quick", "full"]
    custom = Config.tiny()
    custom.law_nets += 1
    assert custom.mode() == "custom"


def test_run_verification_smoke(tmp_path):
    rep = run_verification(quick=True, out_dir=tmp_path, seed=1, config=_tiny(), progress=False,
                           every_block=False)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["settings"]["seed"] == 1 and "torch" in data["versions"]
    assert set(data["checks"]) >= {"closed_form", "raw_consistency", "one_step", "heads", "law",
                                   "sampler_consistency"}
    assert data["checks"]["heads"][0]["params"]["heads"] == 2
    assert rep["verdicts"] and all(v.split()[0] in ("PASS", "FAIL", "NO") for v in rep["verdicts"])
    assert sum(rep["summary"].values()) == len(rep["verdicts"])
    for name in rep["figures"]:
        assert (tmp_path / name).stat().st_size > 1000
    assert {"one_step_error.png", "law_distance_0.png", "law_ecdf_0.png"} <= set(rep["figures"])


def test_run_verification_rejects_unknown_block(tmp_path):
    with pytest.raises(ValueError, match="cannot verify"):
        run_verification(out_dir=tmp_path, blocks=["mlp"], config=_tiny(), progress=False)


@pytest.mark.parametrize("gamma", [0.3, 0.7, 1.0])
def test_linear_one_step_verdict_is_exact(gamma):
    """The linear block is deterministic after the exact W^V expectation; rounding in
    the zero drift must not turn into a FAIL (regression: gamma = 0.3)."""
    from shapedsde.verification.report import _one_step_line

    lin = shapedsde.block("linear", gamma=gamma)
    r = one_step_check(lin, V, [64, 4096], 10, lambda label: 0)
    assert _one_step_line(lin, r).startswith("PASS")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_run_verification_cuda_unavailable(tmp_path):
    with pytest.raises(ValueError, match="CUDA"):
        run_verification(out_dir=tmp_path, device="cuda", config=_tiny(), progress=False)


def test_every_block_check_runs_and_is_reproducible() -> None:
    """The plain one-step + law check on a non-attention block, at tiny sizes."""
    from shapedsde.verification.all_blocks import check_block

    kw = dict(widths=[32], layers=200, law_widths=[8], nets=60, paths=120, T=0.1, seed=3)
    r = check_block("mlp", "mlp", {"gamma": 0.9, "c_minus": -1.0}, **kw)
    assert r["verdict"] in {"PASS", "FAIL", "NO POWER"} and r["line"].startswith(r["verdict"])
    assert r["one_step"][0]["width"] == 32 and len(r["law"]) == 1
    again = check_block("mlp", "mlp", {"gamma": 0.9, "c_minus": -1.0}, **kw)
    assert again["one_step"] == r["one_step"] and again["law"] == r["law"]


def test_scaled_drift_control_scales_the_solvers_drift() -> None:
    """The wrong-SDE control scales b in every face the solver reads, the joint
    `drift_and_ito` hook included (reached through delegation it would be the block's
    own, unscaled: the control would silently be the true SDE)."""
    import shapedsde
    from shapedsde.scheme import drift_and_ito
    from shapedsde.verification.common import ScaledDrift

    V = torch.tensor([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]],
                     dtype=torch.float64)[None]
    for blk in (shapedsde.block("attention", gamma=0.9, tau0=0.5),
                shapedsde.serial(shapedsde.block("attention", gamma=0.8),
                                 shapedsde.block("mlp", gamma=0.6))):
        b, K = blk.drift(V), blk.ito_contraction(V)
        b2, K2 = drift_and_ito(ScaledDrift(blk, 0.5), V)
        torch.testing.assert_close(K2, K)
        torch.testing.assert_close(b2, 0.5 * b)
