"""The verifier's checks of tangents, normalised blocks and the log-spectrum
(`shapedsde.verification.tangent`, `.normalised`, `.spectrum`) at tiny sizes: they run,
say what they measured, and the report carries them. Their power is the quick run's
business (verify/README.md), not these tests'."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from shapedsde.registry import block as make_block
from shapedsde.tangent import initial_joint, tangent
from shapedsde.verification import report as report_mod
from shapedsde.verification.normalised import SETTINGS, normalised_law_check
from shapedsde.verification.report import STAGES, Config, run_verification
from shapedsde.verification.spectrum import spectrum_check
from shapedsde.verification.tangent import (
    _extrapolated,
    generic_joint,
    sample_joint_G,
    tangent_law_check,
    tangent_one_step_check,
    tangent_statistics,
)

GAMMA_TAU = {"gamma": 0.8, "tau0": 0.6}


def test_tangent_statistics_use_survivors_and_the_blocks_of_q() -> None:
    Q0 = initial_joint(np.eye(2))
    Q = np.stack([np.diag([1.0, 1.0, 2.0, 2.0]), np.diag([2.0, 2.0, 1.0, 1.0]),
                  np.diag([9.0, 9.0, 9.0, 9.0])])
    s = tangent_statistics(Q, np.array([np.inf, np.inf, 0.3]), Q0)
    assert s["p_exit"] == pytest.approx(1 / 3) and s["n"] == 3
    np.testing.assert_allclose(s["log_trU"], np.log([2.0, 1.0]))  # tr U_0 = 2
    np.testing.assert_allclose(s["log_trU_over_trV"], np.log([2.0, 0.5]))


def test_extrapolation_in_inverse_sqrt_width() -> None:
    p = {256: 0.5 - 1 / 16, 1024: 0.5 - 1 / 32}  # p(n) = 0.5 - 1 / sqrt(n)
    p_inf, se = _extrapolated(p, {256: 0.01, 1024: 0.01})
    assert p_inf == pytest.approx(0.5) and se == pytest.approx(math.hypot(0.02, 0.01))


def test_joint_g_is_m_q_m_with_a_lower_triangular_mixing() -> None:
    tan = tangent(make_block("attention", **GAMMA_TAU))
    Q = torch.tensor(generic_joint())
    G = sample_joint_G(tan, Q, 64, 5, torch.Generator().manual_seed(0))
    assert G.shape == (5, 1, 2, 6, 6)
    torch.testing.assert_close(G, G.transpose(-1, -2))
    assert sample_joint_G(tangent(make_block("linear", gamma=0.8)), Q, 64, 5,
                          torch.Generator()) is None


def test_tangent_one_step_linear_is_exact() -> None:
    r = tangent_one_step_check("linear", "linear", {"gamma": 0.8}, generic_joint(),
                               widths=[64, 256], pairs=10, seed=0)
    assert r["verdict"] == "PASS" and r["diffusion_rel_error"] < 1e-12
    assert r["line"].startswith("PASS tangent one-step linear")


def test_tangent_one_step_attention_sees_the_control() -> None:
    r = tangent_one_step_check("attention", "attention", GAMMA_TAU, generic_joint(),
                               widths=[128, 512], pairs=1500, seed=0)
    assert r["verdict"] in ("PASS", "FAIL", "NO POWER")
    assert r["line"].startswith(r["verdict"] + " tangent one-step attention")
    # The dA = 0 kernels sit much farther from the chain's moments than the true ones.
    assert (r["control_extrapolated"]["attention"]["max_abs_z"]
            > 2 * r["extrapolated"]["attention"]["max_abs_z"])
    json.dumps(r)  # JSON-ready


def test_tangent_law_check_runs_small() -> None:
    r = tangent_law_check("attention", "attention", GAMMA_TAU, "gram", widths=[16, 32],
                          nets=100, paths=40, T=0.05, R=1.5, seed=1)
    assert r["verdict"] in ("PASS", "FAIL", "NO POWER")
    assert r["line"].startswith(r["verdict"] + " tangent law attention")
    assert set(r["p_exit_finite"]) == {16, 32}
    assert set(r["vs_sde"]["ks"]) == {"log_trU", "log_trU_over_trV"}
    # dA does not act on V: the control's exits are the true SDE's, up to sampling.
    assert 0 <= r["p_exit_control"] <= 1
    json.dumps(r)


@pytest.mark.parametrize("setting", SETTINGS, ids=[s[0] for s in SETTINGS])
def test_normalised_law_check_runs_small(setting) -> None:
    label, at, params, control, V0 = setting
    r = normalised_law_check(label, at, params, control, V0, widths=[16, 32], nets=100,
                             paths=100, T=0.05, seed=2)
    assert r["verdict"] in ("PASS", "FAIL", "NO POWER")
    assert r["line"].startswith(f"{r['verdict']} normalised {label}")
    assert set(r["per_width"][32]) == {"rho01", "lmin_over_tr"}
    assert r["V0"] == V0
    json.dumps(r)


def test_normalised_pre_check_where_the_correction_is_large() -> None:
    """The pre-norm check runs where the averaged correction is large against the noise
    (gamma 0.7, tau0 0.25, rho0 0.5, T = 1: the quick run's naive control KS p ~ 1e-9;
    at the former gamma 0.9, tau0 0.5, rho0 0.3, T = 0.5 it had no power), and the
    pre-norm networks' statistics are those of their correlation matrices."""
    from shapedsde.normalised import normalised
    from shapedsde.verification.normalised import law_statistics, normalised_sizes
    label, at, params, _, V0 = next(s for s in SETTINGS if s[1] == "pre")
    assert normalised_sizes(True)["pre"]["T"] == 1.0
    blk = make_block("attention", **params)
    R = np.array(V0)
    ratio = {}
    for name, b in (("now", blk), ("before", make_block("attention", gamma=0.9, tau0=0.5))):
        V = R if name == "now" else np.array([[1, .3, .1], [.3, 1, .2], [.1, .2, 1]])
        pre, post = normalised(b, at="pre"), normalised(b, at="post")
        corr = pre.drift(V)[0, 1] - post.drift(V)[0, 1]
        ratio[name] = abs(corr) / math.sqrt(post.diffusion(V)[0, 1, 0, 1])
    assert ratio["now"] > 2.5 * ratio["before"]
    D = np.diag([2.0, 1.0, 0.5])
    s = law_statistics(np.stack([D @ R @ D]), correlation=True)
    np.testing.assert_allclose(s["rho01"], [0.5])
    np.testing.assert_allclose(s["lmin_over_tr"], [0.5 / 3])


def test_spectrum_check_runs_small() -> None:
    r = spectrum_check("linear", "linear", {"gamma": 0.5}, m=4, T=0.05, widths=[16, 32], nets=100,
                       paths=100, seed=3)
    assert r["verdict"] in ("PASS", "FAIL", "NO POWER")
    assert set(r["laws"]) == {"log_min", "log_max", "log_cond"}
    assert r["control_params"] == {"gamma": 0.55}
    json.dumps(r)


def test_report_runs_the_feature_stages_and_records_them(monkeypatch, tmp_path) -> None:
    """The three stages are wired into run_verification (the checks faked: their own
    tests are above), their lines are verdicts, their sizes are settings."""
    calls = []

    def fake(stage):
        def run(*, quick, seed, device):
            calls.append((stage, quick, device))
            return [{"label": stage, "line": f"PASS {stage} fake: numbers"}]
        return run

    for stage in ("tangent", "normalised", "spectrum"):
        monkeypatch.setattr(report_mod, f"{stage}_checks", fake(stage))
    rep = run_verification(quick=True, config=Config.tiny(), every_block=False, depth=False,
                           features=True, out_dir=tmp_path, progress=False)
    assert [c[0] for c in calls] == ["tangent", "normalised", "spectrum"]
    assert all(c[1] is True for c in calls)
    for stage in ("tangent", "normalised", "spectrum"):
        assert rep["checks"][stage] == [{"label": stage, "line": f"PASS {stage} fake: numbers"}]
        assert f"PASS {stage} fake: numbers" in rep["verdicts"]
        assert stage in rep["seconds"] and stage in STAGES
    assert rep["settings"]["features"] is True
    assert set(rep["settings"]["feature_checks"]) == {"tangent", "normalised", "spectrum"}
    assert "features=True" in rep["command"]
    assert "<td>tangent fake</td>" in (tmp_path / "report.html").read_text()
