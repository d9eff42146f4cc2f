"""Smooth shaped activations: the derived drift against a closed form written by hand and
against quadrature of the finite-width kernel, matrix form = per entry, kernels, the
finite face, validation and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sympy as sp
import torch
from _shared import assert_one_line_error, random_cov, run
from scipy import integrate

import shapedsde
from shapedsde.symbolic import smooth
from shapedsde.symbolic.entrywise import derive_block
from shapedsde.symbolic.evaluate import explicit, explicit_diffusion
from shapedsde.symbolic.layers import GAMMA
from shapedsde.symbolic.matrixform import matrix_form
from shapedsde.symbolic.wick import gaussian_expectation
from shapedsde.symbolic.width_sums import WidthSum, gaussian_vector

ACTIVATIONS = ("tanh", "cubic", "swish")


def lnr_drift(V: np.ndarray, gamma: float, f2: float, f3: float, A: float) -> np.ndarray:
    """b(V) in closed form, in the form of Li, Nica, Roy (2022, arXiv 2206.02768, shaped
    smooth activations), worked out by hand for this block.

    With s = A sqrt(n), phi_s(x) = s F(x / s) = x + F'' x^2 / (2 s) + F''' x^3 / (6 s^2)
    + O(s^-3) (F'' = F''(0), F''' = F'''(0)); odd Gaussian moments vanish, so
        E[phi_s(x) phi_s(y)] = V^ab + s^-2 [F''^2 E[x^2 y^2] / 4 + F''' (E[x^3 y] + E[x y^3]) / 6]
                             = V^ab + s^-2 [F''^2 (V^aa V^bb + 2 (V^ab)^2) / 4
                                            + F''' V^ab (V^aa + V^bb) / 2]  + O(s^-4),
    (Isserlis: E[x^2 y^2] = V^aa V^bb + 2 (V^ab)^2, E[x^3 y] = 3 V^aa V^ab), and
    E[phi_s(g)^2] = 1 + s^-2 (3 F''^2 / 4 + F'''), so c = 1 - s^-2 (3 F''^2 / 4 + F''').
    E over W^post keeps the mean, E[V'] = lam^2 V + gam^2 c E[phi phi^T], hence
        b^ab = gam^2 / A^2 [F''^2 (V^aa V^bb + 2 (V^ab)^2) / 4 + F''' V^ab (V^aa + V^bb) / 2
                            - (3 F''^2 / 4 + F''') V^ab].
    On the diagonal, b^aa = gam^2 (3 F''^2 / 4 + F''') ((V^aa)^2 - V^aa) / A^2: the
    scalar equation whose sign of 3 F''^2 / 4 + F''' decides blow-up.
    """
    d = np.diagonal(V, 0, -2, -1)
    Vaa, Vbb = d[..., :, None], d[..., None, :]
    k = (f2**2 * (Vaa * Vbb + 2 * V**2) / 4 + f3 * V * (Vaa + Vbb) / 2
         - (3 * f2**2 / 4 + f3) * V)
    return gamma**2 * k / A**2


def lnr_diffusion(V: np.ndarray, gamma: float) -> np.ndarray:
    """Sigma = 2 gam^2 (V^ac V^bd + V^ad V^bc): value noise plus the W^pre Wishart noise,
    as for the linear-activation (and ReLU) MLP at leading order."""
    return 2 * gamma**2 * (np.einsum("ac,bd->abcd", V, V) + np.einsum("ad,bc->abcd", V, V))


# ---------------------------------------------------------------------------
# The derivation


def test_activation_series_is_taylors() -> None:
    """The SymPy series of s F(x / s) is x + F'' x^2 / (2s) + F''' x^3 / (6 s^2) + ..."""
    x, eps, A = sp.Symbol("x", real=True), smooth.EPS, smooth.SCALE
    series = smooth.activation_series(3)
    expected = [x, smooth.F2 * x**2 / (2 * A), smooth.F3 * x**3 / (6 * A**2),
                smooth.derivative_symbol(4) * x**4 / (24 * A**3)]
    assert all(sp.expand(a - b) == 0 for a, b in zip(series, expected, strict=True))
    # Numerically for tanh at s = 8 (F'' = 0, F''' = -2): remainder O(s^-4) here.
    s, xv = 8.0, 1.3
    approx = float(sum((eps**k * c).subs({x: xv, eps: 1 / s, A: 1, smooth.F2: 0,
                                          smooth.F3: -2, smooth.derivative_symbol(4): 0})
                       for k, c in enumerate(series)))
    assert abs(approx - s * math.tanh(xv / s)) < 5 * xv**5 / s**4


def test_kernel_series_has_only_even_orders() -> None:
    """eps and eps^3 terms vanish (an odd number of Gaussian factors): the series is in 1/n,
    which is why the quadrature check extrapolates in 1/n."""
    series = smooth.kernel_series(3)
    assert sp.expand(series[0] - smooth.V_AB) == 0
    assert series[1] == 0 and sp.expand(series[3]) == 0


def test_derived_kernel_is_the_closed_form_symbolically() -> None:
    f2, f3, A = smooth.F2, smooth.F3, smooth.SCALE
    Vaa, Vbb, Vab = smooth.V_AA, smooth.V_BB, smooth.V_AB
    closed = (f2**2 * (Vaa * Vbb + 2 * Vab**2) / 4 + f3 * Vab * (Vaa + Vbb) / 2
              - (3 * f2**2 / 4 + f3) * Vab) / A**2
    assert sp.expand(smooth.drift_kernel() - closed) == 0


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("m", [2, 3, 4])
def test_kernels_equal_the_closed_form(name: str, m: int) -> None:
    """The generated kernels (NumPy and Torch) at random V equal the closed form to 1e-10."""
    for A, gamma, seed in ((0.5, 0.9, m), (1.7, 0.4, 10 + m)):
        blk = shapedsde.block("mlp", gamma=gamma, activation=name, scale=A)
        V = random_cov(m, seed=seed, batch=(3,))
        f2, f3 = blk.smooth.f2, blk.smooth.f3
        for Vx in (V, torch.tensor(V)):
            b = np.asarray(blk.drift(Vx))
            S = np.asarray(blk.diffusion(Vx))
            np.testing.assert_allclose(b, lnr_drift(V, gamma, f2, f3, A), rtol=0, atol=1e-10)
            np.testing.assert_allclose(S, np.stack([lnr_diffusion(v, gamma) for v in V]),
                                       rtol=0, atol=1e-10)


def test_f3_terms_rescale_the_tokens() -> None:
    """With F''(0) = 0 (tanh) b = D V + V D, D = gam^2 F'''(0) (Dg(V) - I) / (2 A^2)
    diagonal: a rescaling of the tokens, so no correlation moves (docs/smooth-activations.md)."""
    blk = shapedsde.block("mlp", gamma=0.8, activation="tanh", scale=0.6)
    V = random_cov(4, seed=9)
    D = np.diag(0.8**2 * -2.0 * (np.diag(V) - 1) / (2 * 0.6**2))
    np.testing.assert_allclose(blk.drift(V), D @ V + V @ D, rtol=0, atol=1e-12)


def test_table_derivatives() -> None:
    """F''(0), F'''(0) read off the table's functions (known by hand)."""
    got = {n: (b.smooth.f2, b.smooth.f3) for n in ACTIVATIONS
           for b in [shapedsde.block("mlp", gamma=1.0, activation=n)]}
    assert got == {"tanh": (0.0, -2.0), "cubic": (1.0, -2.0), "swish": (1.0, 0.0)}


def richardson(ns: list[int], values: list[np.ndarray]) -> np.ndarray:
    """Neville extrapolation to h = 1/n -> 0 of values(h) = v0 + v1 h + v2 h^2 + ..."""
    h = [1.0 / n for n in ns]
    T = [v.copy() for v in values]
    for k in range(1, len(ns)):
        for i in range(len(ns) - 1, k - 1, -1):
            T[i] = (h[i - k] * T[i] - h[i] * T[i - 1]) / (h[i - k] - h[i])
    return T[-1]


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("A", [0.5, 1.0])
def test_derived_drift_equals_extrapolated_quadrature(name: str, A: float) -> None:
    """n (c E[phi_s phi_s^T] - V) by 2-d Gauss-Hermite for the actual F, at n = 1600 ...
    25600, extrapolated in 1/n (the series has only even powers of n^{-1/2}), equals the
    derived b(V) / gam^2 to 1e-10. The floor is rounding: n (c E - V) carries ~1e-13
    relative error at these n, and the extrapolation amplifies it by a few."""
    V = np.array([[1.3, 0.4, -0.2], [0.4, 0.8, 0.1], [-0.2, 0.1, 1.1]])
    blk = shapedsde.block("mlp", gamma=1.0, activation=name, scale=A)
    ns = [1600, 3200, 6400, 12800, 25600]
    values = [n * (blk.smooth.kernel(V, n, A) - V) for n in ns]
    limit = richardson(ns, values)
    assert np.abs(limit - blk.drift(V)).max() < 1e-10
    # Not a tautology: at finite n the 1/n correction is far larger than the tolerance.
    assert np.abs(values[0] - blk.drift(V)).max() > 1e-6


# ---------------------------------------------------------------------------
# Matrix form, per entry, diffusion


@pytest.mark.parametrize("m", [2, 3, 4])
def test_matrix_form_equals_per_entry_derivation(m: int) -> None:
    ew = derive_block("mlp_smooth", m)
    mf = matrix_form("mlp_smooth")
    assert (explicit(mf.drift, m, ew.V) - ew.drift).applyfunc(sp.expand) == sp.zeros(m, m)
    diff = explicit_diffusion(mf.diffusion, m, ew.V) - ew.diffusion
    assert all(sp.expand(x) == 0 for x in sp.flatten(diff.tolist()))


@pytest.mark.parametrize("m", [2, 3])
def test_diffusion_is_the_relu_mlps(m: int) -> None:
    """At leading order the activation changes only the drift: Sigma equals the shaped
    ReLU MLP's, 2 gam^2 (V^ac V^bd + V^ad V^bc)."""
    smooth_sigma, relu_sigma = (derive_block(n, m).diffusion for n in ("mlp_smooth", "mlp"))
    assert all(sp.expand(x) == 0 for x in sp.flatten((smooth_sigma - relu_sigma).tolist()))
    V = derive_block("mlp_smooth", m).V
    expected = 2 * GAMMA**2 * (V[0, 0] * V[1, 1] + V[0, 1] ** 2)
    assert sp.expand(smooth_sigma[0, 1, 0, 1] - expected) == 0


def test_activation_noise_corrections_are_second_order() -> None:
    """Cov(phi_s(g) phi_s(g)^T) with the expanded phi_s: its eps^0 term is Cov(g g^T) (the
    noise the layer uses) and its eps^1 term vanishes, so Sigma is unchanged at O(1)."""
    V = sp.Matrix([[smooth.V_AA, smooth.V_AB], [smooth.V_AB, smooth.V_BB]])
    g, Vg = gaussian_vector("g", V)
    u = sp.Matrix([smooth.phi_series(gi, 1) for gi in g])
    _, flat, cov = WidthSum(tuple(g), Vg, {"K": u * u.T}).noise()
    gv = sp.Matrix(g)
    terms = list(gv * gv.T)
    for i, j in [(0, 0), (1, 2), (1, 3), (3, 3)]:
        c = sp.expand(cov[i, j])
        wishart = gaussian_expectation(terms[i] * terms[j], g, Vg) - (
            gaussian_expectation(terms[i], g, Vg) * gaussian_expectation(terms[j], g, Vg))
        assert sp.expand(c.coeff(smooth.EPS, 0) - wishart) == 0
        assert c.coeff(smooth.EPS, 1) == 0


# ---------------------------------------------------------------------------
# The finite face


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_normaliser_makes_the_second_moment_one(name: str) -> None:
    """sqrt(c) phi_s has E[(sqrt(c) phi_s(g))^2] = 1 (adaptive quadrature, not the
    Gauss-Hermite rule that computed c), at a small and a larger width."""
    blk = shapedsde.block("mlp", gamma=1.0, activation=name, scale=0.5)
    F = blk.smooth.numpy_fn
    for n in (4, 100):
        s, c = 0.5 * math.sqrt(n), blk.smooth.normaliser(n, 0.5)
        f = lambda z, s=s: (s * F(z / s)) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        second, _ = integrate.quad(f, -40, 40, epsabs=1e-13, limit=200)
        assert abs(c * second - 1) < 1e-10


def test_finite_activation_is_the_user_function() -> None:
    """The Torch face applies sqrt(c) s F(G / s) with F from the SymPy function."""
    F = lambda x: sp.sin(x) + x**2 / 4  # noqa: E731
    blk = shapedsde.block("mlp", gamma=0.8, activation=F, scale=0.7)
    assert (blk.smooth.f2, blk.smooth.f3) == (0.5, -1.0)
    G = torch.linspace(-3, 3, 7, dtype=torch.float64).reshape(1, 1, 7).expand(1, 2, 7)
    n, s = 7, 0.7 * math.sqrt(7)
    c = blk.smooth.normaliser(n, 0.7)
    expected = [math.sqrt(c) * s * (math.sin(g / s) + (g / s) ** 2 / 4) for g in G[0, 0]]
    np.testing.assert_allclose(blk.activated(G)[0, 0].numpy(), expected, rtol=1e-14)


def test_finite_face_runs_batched_and_seeded() -> None:
    blk = shapedsde.block("mlp", gamma=0.9, activation="tanh", scale=0.5)
    X = shapedsde.finite.initial_hidden(np.eye(2), 32, seed=1).expand(4, 2, 32).contiguous()
    a = blk.finite(X, torch.Generator().manual_seed(3))
    b = blk.finite(X, torch.Generator().manual_seed(3))
    assert a.shape == (4, 2, 32) and torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # independent networks


# ---------------------------------------------------------------------------
# Validation and the CLI


@pytest.mark.parametrize("params,needle", [
    ({"activation": sp.exp}, "F(0) = 0"),
    ({"activation": lambda x: 2 * sp.sin(x)}, "F'(0) = 1"),
    ({"activation": sp.Abs}, "differentiable"),
    ({"activation": lambda x: x + x**2 * sp.Symbol("y")}, "argument only"),
    ({"activation": lambda x: "x"}, "argument only"),
    ({"activation": lambda x: 1 / 0}, "calling it on a Symbol failed"),
    ({"activation": "gelu"}, "unknown activation"),
    ({"activation": 3.0}, "name from the table"),
    ({"activation": "tanh", "scale": 0.0}, "scale must be"),
    ({"activation": "tanh", "scale": float("nan")}, "scale must be"),
    ({"activation": "tanh", "c_minus": 0.5}, "drop them"),
    ({"scale": 0.5}, "pass activation="),
])
def test_bad_activations_are_clear_value_errors(params: dict, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        shapedsde.block("mlp", gamma=0.9, **params)
    assert needle in str(info.value)


def test_table_blocks_pickle_by_name() -> None:
    """Blocks with a table activation travel to worker processes (lambdify's functions do
    not pickle, so the activation is rebuilt from its name)."""
    import pickle

    blk = shapedsde.block("mlp", gamma=0.9, activation="swish", scale=0.5)
    back = pickle.loads(pickle.dumps(blk))
    assert back == blk and back.kernel_params() == blk.kernel_params()
    V = random_cov(2, seed=0)
    np.testing.assert_array_equal(back.drift(V), blk.drift(V))


def test_relu_block_is_unchanged() -> None:
    blk = shapedsde.block("mlp", gamma=0.7, c_plus=0.5, c_minus=-1.5)
    assert blk.kernel_name == "mlp" and blk.activation_name == "relu"
    assert set(blk.kernel_params()) == {"gamma", "c_plus", "c_minus"}


def test_cli_coeffs_smooth(tmp_path, capsys) -> None:
    V = random_cov(3, seed=5)
    path = tmp_path / "V.npy"
    np.save(path, V)
    code, out, err = run(["coeffs", "--block", "mlp", "--gamma", "0.9", "--activation", "cubic",
                          "--scale", "0.5", "--V", str(path)], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["activation"] == "cubic"
    assert res["params"] == {"gamma": 0.9, "f2": 1.0, "f3": -2.0, "scale": 0.5}
    np.testing.assert_allclose(res["drift"], lnr_drift(V, 0.9, 1.0, -2.0, 0.5), atol=1e-10)


@pytest.mark.parametrize("extra,needles", [
    (["--activation", "x+1"], ("--activation", "invalid choice")),
    (["--activation", "tanh", "--c-plus", "1"], ("drop them",)),
    (["--scale", "0.5"], ("pass activation=",)),
    (["--activation", "tanh", "--scale", "-1"], ("scale must be",)),
])
def test_cli_smooth_errors_are_one_line(tmp_path, capsys, extra, needles) -> None:
    path = tmp_path / "V.npy"
    np.save(path, np.eye(2))
    code, _, err = run(["coeffs", "--block", "mlp", "--gamma", "0.9", *extra, "--V", str(path)],
                       capsys)
    assert_one_line_error(code, err, *needles)


def test_cli_activation_is_for_the_mlp_only(tmp_path, capsys) -> None:
    path = tmp_path / "V.npy"
    np.save(path, np.eye(2))
    code, _, err = run(["coeffs", "--block", "attention", "--gamma", "0.9", "--activation",
                        "tanh", "--V", str(path)], capsys)
    assert_one_line_error(code, err, "takes no --activation")


# ---------------------------------------------------------------------------
# Against finite networks (shapedsde.verification.smooth_mlp)

V_CHECK = np.array([[2.0, 0.6], [0.6, 1.0]])


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_one_step_moments_match_with_power(name: str) -> None:
    """n E[dV] sampled at n = 64 ... 512 agrees with the exact finite-width drift, its bias
    against b falls with n, the 1/n extrapolations agree with b and Sigma, and the
    no-activation control (b = 0) is rejected."""
    from shapedsde.verification.smooth_mlp import one_step_check, one_step_verdict

    blk = shapedsde.block("mlp", gamma=0.9, activation=name, scale=0.5)
    res = one_step_check(blk, V_CHECK, [64, 128, 256, 512], draws=4000, seed=11)
    line = one_step_verdict(res)
    assert line.startswith("PASS"), line
    assert res["extrapolated_control"]["max_abs_z"] > 10, line


def test_variance_reduced_one_step_matches_block_finite() -> None:
    """The estimator (pre-activations drawn in law, exact W^post expectation, control
    variate) against block.finite with every weight drawn, at one width; the
    no-activation drift (0) is rejected by the same raw samples."""
    from shapedsde.verification.common import compare
    from shapedsde.verification.one_step import raw_one_step
    from shapedsde.verification.smooth_mlp import one_step_samples

    blk = shapedsde.block("mlp", gamma=0.9, activation="tanh", scale=0.5)
    n = 32
    X = shapedsde.finite.initial_hidden(V_CHECK, n, seed=2)
    Vx = X @ X.T / n
    raw = raw_one_step(blk, X, 3000, torch.Generator().manual_seed(4))
    x = one_step_samples(blk, Vx, n, 20000, torch.Generator().manual_seed(5))
    vr, vr_se = x["drift"].mean(0), x["drift"].std(0) / math.sqrt(20000)
    assert compare(raw.mean, raw.mean_se, vr, vr_se).agrees
    assert not compare(raw.mean, raw.mean_se, torch.zeros_like(vr)).agrees


def test_law_at_T_matches_with_power() -> None:
    """Finite networks (n = 256, depth 64) against SDE paths at T = 0.25: no statistic is
    rejected, and on V00 both controls (identity activation, half drift) are. (At n = 64,
    s = A sqrt(n) = 4, the finite-width bias of rho01 is visible with 1000 nets.)"""
    from shapedsde.verification.smooth_mlp import law_check, law_verdicts

    blk = shapedsde.block("mlp", gamma=0.9, activation="cubic", scale=0.5)
    res = law_check(blk, V_CHECK, 0.25, [256], nets=1000, paths=1000, seed=3)
    lines = law_verdicts(res)
    assert not any(line.startswith("FAIL") for line in lines), lines
    v00 = res["per_width"][256]
    assert v00["identity-activation"]["V00"]["p"] < 1e-6 and v00["half-drift"]["V00"]["p"] < 1e-3
    assert lines[1].startswith("PASS"), lines


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tanh", "cubic"])
def test_law_at_T_full_size(name: str) -> None:
    """The reported setting: n = 64, 256, 1024, 3000 nets and SDE paths; the KS distance
    falls with width and V00 passes with both controls rejected."""
    from shapedsde.verification.smooth_mlp import law_check, law_verdicts

    blk = shapedsde.block("mlp", gamma=0.9, activation=name, scale=0.5)
    res = law_check(blk, V_CHECK, 0.25, [64, 256, 1024], nets=3000, paths=3000, seed=5)
    lines = law_verdicts(res)
    print("\n".join(lines))
    assert not any(line.startswith("FAIL") for line in lines), lines
    assert lines[1].startswith("PASS"), lines
