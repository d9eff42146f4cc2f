"""Serial composition (`shapedsde.serial`), the Transformer's heads, and the public
symbolic face (`Block.coefficients`, `Block.latex`, `derive --block`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sympy as sp
import torch
from _shared import assert_one_line_error, run

import shapedsde
from shapedsde import block, serial
from shapedsde.symbolic.entrywise import derive
from shapedsde.symbolic.layers import HEADS, covariance_symbols
from shapedsde.verification.all_blocks import one_step_moments

V3 = np.array([[1.0, 0.3, 0.1], [0.3, 1.2, 0.2], [0.1, 0.2, 0.9]])
FACES = ("drift", "diffusion", "ito_contraction", "trace_variance")


def _pair() -> tuple:
    return (block("attention", gamma=0.9, tau0=0.5, heads=2),
            block("mlp", gamma=0.7, c_plus=0.2, c_minus=-0.8))


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("torch_input", [False, True])
def test_serial_faces_are_the_sums_of_the_parts(face: str, torch_input: bool) -> None:
    at, ml = _pair()
    V = torch.as_tensor(V3) if torch_input else V3
    got = getattr(serial(at, ml), face)(V)
    want = getattr(at, face)(V) + getattr(ml, face)(V)
    assert type(got) is type(want)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_transformer_kernels_carry_the_heads(heads: int) -> None:
    """The generated Transformer kernel (one matrix form) against attention with `heads`
    heads plus the MLP (two other kernels); heads = 1 as a control that differs."""
    tr = block("transformer", gamma=0.8, tau0=0.6, heads=heads, c_plus=0.1)
    at, ml = tr.parts()
    assert at.heads == heads
    for face in FACES:
        np.testing.assert_allclose(getattr(tr, face)(V3),
                                   getattr(at, face)(V3) + getattr(ml, face)(V3),
                                   rtol=1e-12, atol=1e-14)
    if heads > 1:
        one = block("transformer", gamma=0.8, tau0=0.6, heads=1, c_plus=0.1)
        assert not np.allclose(tr.diffusion(V3), one.diffusion(V3))


def test_serial_structured_noise_has_covariance_sigma() -> None:
    """structured_noise is linear in N: its Jacobian J gives the covariance J J^T exactly."""
    sb = serial(*_pair())
    k, m = sb.noise_groups, 3
    assert k == sum(p.noise_groups for p in sb.parts)
    basis = np.eye(k * m * m).reshape(k * m * m, k, m, m)
    J = np.stack([np.asarray(sb.structured_noise(V3, e)).reshape(-1) for e in basis], 1)
    np.testing.assert_allclose(J @ J.T, sb.diffusion(V3).reshape(m * m, m * m),
                               rtol=1e-10, atol=1e-12)


def test_serial_finite_applies_the_parts_in_order() -> None:
    """serial(attention, mlp) draws exactly as the Transformer block does; the reverse
    order gives a different network (the control)."""
    at, ml = block("attention", gamma=0.8, tau0=0.7), block("mlp", gamma=0.8)
    tr = block("transformer", gamma=0.8, tau0=0.7)
    X = shapedsde.finite.initial_hidden(V3, 16, seed=1).expand(4, 3, 16).contiguous()
    out = [f.finite(X, torch.Generator().manual_seed(5)) for f in
           (serial(at, ml), tr, serial(ml, at))]
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    assert not torch.allclose(out[0], out[2])


def test_composed_update_rule_gives_the_summed_coefficients() -> None:
    """Per entry (m = 2): the composed update rule of attention then MLP with different
    gammas, derived by Wick's theorem, equals the sum of the parts' coefficients with
    one gamma symbol per part (so nothing is conflated)."""
    sb = serial(block("attention", gamma=0.9, tau0=0.5), block("mlp", gamma=0.6))
    composed = derive(sb.symbolic(2))
    summed = sb.coefficients(2)
    g1, g2 = sp.Symbol("gamma_1", positive=True), sp.Symbol("gamma_2", positive=True)
    assert {g1, g2} <= composed.drift.free_symbols
    assert summed.params[g1] == 0.9 and summed.params[g2] == 0.6
    single = {HEADS: 1}
    assert (composed.drift - summed.drift.subs(single)).applyfunc(sp.simplify) == sp.zeros(2)
    diff = composed.diffusion - summed.diffusion.subs(single)
    assert all(sp.simplify(x) == 0 for x in sp.flatten(diff.tolist()))


def _at(expr: sp.Expr, V: np.ndarray) -> float:
    """An expression in the symbols V_ab, evaluated at V."""
    Vs = covariance_symbols(V.shape[0])
    return float(expr.xreplace({Vs[a, b]: sp.Float(V[a, b], 17)
                                for a in range(V.shape[0]) for b in range(V.shape[0])}))


def test_coefficients_for_five_tokens_match_the_kernels() -> None:
    """blk.coefficients(m=5) (the matrix form evaluated entry by entry) against the
    generated kernels at a random V: every entry of b, and Sigma at random indices."""
    rng = np.random.default_rng(3)
    G = rng.standard_normal((5, 8))
    V = G @ G.T / 8
    at = block("attention", gamma=0.85, tau0=0.6, heads=3)
    c = at.coefficients(m=5)
    values = {s: sp.nsimplify(v) for s, v in c.params.items()}
    b, S = at.drift(V), at.diffusion(V)
    for a in range(5):
        for d in range(5):
            assert math.isclose(_at(c.drift[a, d].xreplace(values), V), b[a, d],
                                rel_tol=1e-10, abs_tol=1e-12)
    for idx in rng.integers(0, 5, size=(12, 4)):
        got = _at(c.diffusion[tuple(idx)].xreplace(values), V)
        assert math.isclose(got, S[tuple(idx)], rel_tol=1e-10, abs_tol=1e-12), idx


def test_matrix_form_coefficients_and_latex() -> None:
    at, ml = _pair()
    c = serial(at, ml).coefficients()
    assert c.m is None and len(c.diffusion) == (len(at.coefficients().diffusion)
                                                 + len(ml.coefficients().diffusion))
    text = serial(at, ml).latex()
    assert text.count(r"\begin{align}") == 1 and r"\gamma_{1}" in text
    assert r"\gamma_{1}" not in block("transformer", gamma=0.8).latex()


def test_serial_rejects_bad_parts() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        serial()
    with pytest.raises(ValueError, match="part 1 must be a shapedsde Block"):
        serial(block("linear", gamma=0.5), "mlp")
    with pytest.raises(ValueError, match="finite face only"):
        shapedsde.StandardAttentionBlock(gamma=0.5).coefficients()


def test_serial_solves_and_stays_positive_definite() -> None:
    from shapedsde.sde import solve

    res = solve(serial(*_pair()), V3, T=0.2, paths=200, seed=0)
    assert res.V.shape == (200, 3, 3)
    # Paths that blow up (cubic attention drift) are flagged and NaN; the rest stay PD.
    kept = res.finite & ~res.exploded
    assert bool(torch.isnan(res.V[res.exploded]).all()) and int(kept.sum()) > 100
    assert bool((torch.linalg.eigvalsh(res.V[kept]) > 0).all())


@pytest.mark.slow
def test_serial_one_step_moments_match_the_summed_coefficients() -> None:
    """Finite networks of serial(attention with 2 heads, MLP) at n = 256: n E[dV] and
    n Cov[dV] within Bonferroni z of b and Sigma (1000 layers in 20 batch means). The
    MLP alone (attention dropped) is the control, which must be rejected."""
    at, ml = _pair()
    sb = serial(at, ml)
    est = one_step_moments(sb, V3, 256, 2000, seed=11)
    crit = 4.0  # two-sided 1e-3 over 9 entries, plus the O(n^-1/2) bias margin
    for key, th in (("drift", sb.drift(V3).reshape(-1)),
                    ("cov", sb.diffusion(V3).reshape(9, 9))):
        z = np.abs(est[key] - th) / np.maximum(est[f"{key}_se"], 1e-12)
        assert z.max() < crit, (key, z.max())
    z_ctrl = np.abs(est["cov"] - ml.diffusion(V3).reshape(9, 9)) / est["cov_se"]
    assert z_ctrl.max() > 3 * crit


def test_derive_cli_writes_one_block(tmp_path, capsys) -> None:
    out = tmp_path / "tex"
    code, _, err = run(["derive", "--block", "transformer", "--gamma", "0.8", "--heads", "4",
                        "--m", "2", "--out", str(out)], capsys)
    assert code == 0, err
    sym = (out / "transformer_m2.tex").read_text()
    assert "n_{H}" in sym and r"\Sigma^{00,00}" in sym
    assert "n_{H}" not in (out / "transformer_m2_values.tex").read_text()
    assert_one_line_error(*run(["derive", "--out", str(out)], capsys)[::2], "needs --block")
    assert_one_line_error(*run(["derive", "--block", "mlp", "--gamma", "0.5"], capsys)[::2],
                          "needs --out")


def test_transformer_heads_in_the_cli(tmp_path, capsys) -> None:
    V = tmp_path / "V.npy"
    np.save(V, V3)
    code, out, err = run(["coeffs", "--block", "transformer", "--gamma", "0.8", "--heads", "4",
                          "--V", str(V)], capsys)
    assert code == 0, err
    assert json.loads(out)["params"]["heads"] == 4
    code, _, err = run(["finite", "--block", "transformer", "--gamma", "0.8", "--heads", "3",
                        "--V0", str(V), "--width", "16", "--T", "0.1", "--nets", "2",
                        "--seed", "0", "--out", str(tmp_path / "f.npy")], capsys)
    assert_one_line_error(code, err, "multiple of heads")


def test_serial_by_name_from_part_specs() -> None:
    """The (name, params) spec used by seeded tasks builds the same block."""
    at, ml = _pair()
    spec = block("serial", parts=[("attention", {"gamma": 0.9, "tau0": 0.5, "heads": 2}),
                                  ("mlp", {"gamma": 0.7, "c_plus": 0.2, "c_minus": -0.8})])
    assert spec == serial(at, ml)
    with pytest.raises(ValueError, match="unknown block 'attn'"):
        block("serial", parts=[("attn", {"gamma": 0.5})])


def test_sde_cli_saves_a_trajectory_time_first(tmp_path, capsys) -> None:
    """--save-times K: K + 1 states per path, (k, paths, m, m) as finite runs record them;
    --save-every needs fixed steps."""
    V = tmp_path / "V.npy"
    np.save(V, V3)
    out = tmp_path / "VT.npy"
    base = ["sde", "--block", "linear", "--gamma", "0.5", "--V0", str(V), "--T", "0.2",
            "--paths", "16", "--seed", "0", "--out", str(out), "--quiet"]
    code, _, err = run([*base, "--save-times", "4"], capsys)
    assert code == 0, err
    traj, times = np.load(tmp_path / "VT.trajectory.npy"), np.load(tmp_path / "VT.times.npy")
    assert traj.shape == (5, 16, 3, 3)
    np.testing.assert_allclose(times, np.linspace(0, 0.2, 5))
    np.testing.assert_array_equal(traj[-1], np.load(out))
    code, _, err = run([*base, "--steps", "10", "--save-every", "5"], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "VT.trajectory.npy").shape == (3, 16, 3, 3)
    assert_one_line_error(*run([*base, "--save-every", "5"], capsys)[::2], "--steps")


def test_a_users_block_file_runs_from_a_temporary_folder(tmp_path) -> None:
    """docs/examples/my_block.py, copied out of the repository, runs end to end (LaTeX,
    SDE with exits, finite networks) and writes nothing into the package."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = tmp_path / "my_block.py"
    shutil.copy(root / "docs" / "examples" / "my_block.py", script)
    before = sorted(p.name for p in (root / "shapedsde" / "kernels").iterdir())
    res = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert r"\begin{align}" in res.stdout and "P(exit)" in res.stdout
    assert "max |z|" in res.stdout
    assert sorted(p.name for p in (root / "shapedsde" / "kernels").iterdir()) == before


def test_cli_takes_a_block_from_the_users_file(tmp_path, capsys) -> None:
    """--block FILE.py:NAME: derive writes the user block's LaTeX and coeffs gives its
    numbers, equal to the API's; options beside it, a missing name and a non-block are
    one-line errors."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    user = tmp_path / "my_block.py"
    shutil.copy(root / "docs" / "examples" / "my_block.py", user)
    spec = f"{user}:my_block"
    code, out, err = run(["derive", "--block", spec, "--out", str(tmp_path / "tex")], capsys)
    assert code == 0, err
    assert r"\label{eq:attention-mlp-drift}" in (tmp_path / "tex" / "serial.tex").read_text()
    V = tmp_path / "V.npy"
    np.save(V, V3)
    code, out, err = run(["coeffs", "--block", spec, "--V", str(V)], capsys)
    assert code == 0, err
    blk = serial(block("attention", gamma=0.9, tau0=0.5, heads=2),
                 block("mlp", gamma=0.8, activation=lambda x: sp.sin(x) + x**2 / 4, scale=0.7))
    np.testing.assert_allclose(json.loads(out)["drift"], blk.drift(V3), rtol=1e-12)
    for argv, needle in [(["coeffs", "--block", spec, "--gamma", "0.5", "--V", str(V)],
                          "drop --gamma"),
                         (["coeffs", "--block", f"{user}:nothing", "--V", str(V)],
                          "defines no 'nothing'"),
                         (["coeffs", "--block", f"{user}:__doc__", "--V", str(V)],
                          "not a shapedsde Block"),
                         (["coeffs", "--block", "attention", "--V", str(V)], "needs --gamma")]:
        assert_one_line_error(*run(argv, capsys)[::2], needle)
