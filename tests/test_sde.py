"""Tests for the batched SDE solver `shapedsde.sde.solve` (float64, fixed seeds).

The weak-convergence tests use the linear block, whose SDE is solvable in moments.
For X' = lam X + gamma X W / sqrt(n) one finds b = 0 and

    Sigma^{ab,cd}(V) = k (V^ac V^bd + V^ad V^bc),   k = 2 lam^2 gamma^2 + gamma^4
                                                     = gamma^2 (2 - gamma^2)

(checked against the block's kernels below, not assumed). By Ito,
d(V^ab V^cd) = V^ab dV^cd + V^cd dV^ab + Sigma^{ab,cd} dt, so with
M_abcd(t) = E[V_t^ab V_t^cd]:

    dE[V]/dt = 0,      dM_abcd/dt = k (M_acbd + M_adbc),

a closed linear system on the m^4 entries of M: M(T) = expm(T L) M(0).

Euler-Maruyama reproduces these moments with an error that is known exactly:
its increments are conditionally centred with covariance dt Sigma(V_n), and
Sigma is linear in V (x) V, so M_{n+1} = (I + dt L) M_n and the weak error is
(I + dt L)^N M(0) - expm(T L) M(0) = O(dt) (as long as neither the PSD
projection nor the noise cap acts, which the tests assert). That error is the
discretisation allowance of the second-moment test.

Second moments of this SDE are heavy-tailed (V^aa is a geometric Brownian
motion), so the weak *order* is measured on log det V instead, whose law is
exactly Gaussian: Ito on log det with the Sigma above gives
d log det V = -k m (m+1)/2 dt + dM_t, d<M>_t = 2 m k dt, so
E[log det V_T] = log det V_0 - k m (m+1) T / 2. The Euler step is, in law,
V_{n+1} = V_n^{1/2} (I + eps G) V_n^{1/2} with eps^2 = k dt and G symmetric
Gaussian (Cov(G_ij, G_kl) = d_ik d_jl + d_il d_jk), so log det V_N =
log det V_0 + sum of N iid log det(I + eps G): the Euler bias is exactly
-N sum_{j even >= 4} eps^j E[tr G^j] / j = -k^2 T dt E[tr G^4]/4 + O(dt^2),
first order in dt, with E[tr G^j] known in closed form for m = 2.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

import shapedsde
from shapedsde.sde import SDEResult, default_steps, solve

V0_2 = np.array([[1.0, 0.3], [0.3, 0.8]])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Run this module's solves on one intra-op thread, restoring the setting after.

    The solver's work is many tiny batched ops (batched eigh runs serially anyway),
    so a second thread gains nothing here, while on a 2-core machine whose other
    core is busy the spin-waiting thread made these tests 5-10x slower (measured).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

V0_3 = np.array([[1.0, 0.4, 0.2], [0.4, 0.9, 0.3], [0.2, 0.3, 1.1]])


def linear_k(gamma: float) -> float:
    return gamma**2 * (2.0 - gamma**2)


def moment_generator(m: int, k: float) -> np.ndarray:
    """L with d vec(M)/dt = L vec(M), M_abcd = E[V^ab V^cd] (C order), for the linear SDE."""
    idx = np.arange(m**4).reshape(m, m, m, m)
    L = np.zeros((m**4, m**4))
    for a, b, c, d in itertools.product(range(m), repeat=4):
        L[idx[a, b, c, d], idx[a, c, b, d]] += k
        L[idx[a, b, c, d], idx[a, d, b, c]] += k
    return L


def second_moments(V: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo mean of V^ab V^cd over paths and its standard error, flattened (m^4,)."""
    Vn = V.numpy()
    prod = np.einsum("pab,pcd->pabcd", Vn, Vn).reshape(len(Vn), -1)
    return prod.mean(0), prod.std(0, ddof=1) / math.sqrt(len(Vn))


# ---------------------------------------------------------------------------
# The linear block's coefficients: the closed form used by the moment ODE.


@pytest.mark.parametrize("gamma", [0.3, 0.9, 1.0])
def test_linear_block_coefficients_closed_form(gamma: float) -> None:
    blk = shapedsde.block("linear", gamma=gamma)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 3, 5))
    V = torch.as_tensor(A @ A.transpose(0, 2, 1) / 5)
    k = linear_k(gamma)
    expect = k * (torch.einsum("...ac,...bd->...abcd", V, V)
                  + torch.einsum("...ad,...bc->...abcd", V, V))
    assert torch.allclose(blk.diffusion(V), expect, rtol=1e-12, atol=1e-14)
    assert torch.allclose(blk.drift(V), torch.zeros_like(V), atol=1e-14)
    # The ODE generator at t = 0 is E[Sigma(V0)] (consistency of the derivation).
    M0 = np.einsum("ab,cd->abcd", V0_3, V0_3).ravel()
    Sig = blk.diffusion(torch.as_tensor(V0_3)).numpy().ravel()
    np.testing.assert_allclose(moment_generator(3, k) @ M0, Sig, rtol=1e-12)


# ---------------------------------------------------------------------------
# Weak convergence on the linear block.


def test_linear_weak_first_and_second_moments() -> None:
    """E[V_T], E[V_T^ab V_T^cd] (m = 3) against the Ito moment ODE solved with expm."""
    gamma, T, steps, paths = 0.9, 0.25, 25, 10_000
    k, m = linear_k(gamma), 3
    res = solve(shapedsde.block("linear", gamma=gamma), V0_3, T, paths=paths, seed=11,
                steps=steps)
    # No projection / cap acted, so Euler's moment recursion below is exact.
    assert res.meta["n_psd_projections"] == 0 and res.meta["n_tamed"] == 0

    V = res.V.numpy()
    mean_se = V.std(0, ddof=1) / math.sqrt(paths)
    assert np.all(np.abs(V.mean(0) - V0_3) <= 5 * mean_se)  # dE[V]/dt = 0

    L = moment_generator(m, k)
    M0 = np.einsum("ab,cd->abcd", V0_3, V0_3).ravel()
    ode = scipy.linalg.expm(T * L) @ M0
    euler = np.linalg.matrix_power(np.eye(m**4) + (T / steps) * L, steps) @ M0
    mc, se = second_moments(res.V)
    allowance = np.abs(euler - ode)  # exact weak error of Euler here, O(dt)
    assert np.all(np.abs(mc - euler) <= 5 * se)
    assert np.all(np.abs(mc - ode) <= 5 * se + allowance)
    assert np.all(allowance < 0.5 * se)  # at dt = 0.01 discretisation is below MC noise
    # Power: the same check rejects a diffusion coefficient 25% too small.
    wrong = scipy.linalg.expm(T * moment_generator(m, 0.75 * k)) @ M0
    assert np.max(np.abs(mc - wrong) / se) > 5


def _expected_trace_power_m2(j: int) -> int:
    """E[tr G^j] for G = [[x, z], [z, y]], x, y ~ N(0, 2), z ~ N(0, 1), j even.

    The eigenvalues are s +- r with s = (x + y)/2 ~ N(0, 1) independent of
    r^2 = ((x - y)/2)^2 + z^2 ~ chi^2_2, E[s^2a] = (2a - 1)!!, E[r^2b] = 2^b b!.
    """
    def dfact(n: int) -> int:
        return 1 if n <= 0 else n * dfact(n - 2)

    return 2 * sum(math.comb(j, i) * dfact(j - i - 1) * 2 ** (i // 2) * math.factorial(i // 2)
                   for i in range(0, j + 1, 2))


def euler_logdet_bias_m2(k: float, T: float, steps: int) -> float:
    """Exact weak error of Euler on E[log det V_T] for the linear SDE, m = 2 (series in eps^2)."""
    eps2 = k * T / steps
    return -steps * sum(eps2 ** (j // 2) * _expected_trace_power_m2(j) / j for j in (4, 6, 8, 10))


def test_expected_trace_powers() -> None:
    assert _expected_trace_power_m2(2) == 6  # = m (m + 1): the Ito drift of log det
    assert _expected_trace_power_m2(4) == 46
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, math.sqrt(2), (2, 400_000))
    z = rng.normal(0, 1, 400_000)
    s, r = (x + y) / 2, np.sqrt(((x - y) / 2) ** 2 + z**2)
    mc = np.mean((s + r) ** 6 + (s - r) ** 6)
    assert abs(mc / _expected_trace_power_m2(6) - 1) < 0.03


def logdet_error(gamma: float, T: float, paths: int, steps: int, seed: int
                 ) -> tuple[float, float, float]:
    """Weak error of E[log det V_T] (m = 2, linear block): (error, its SE, Euler's exact bias).

    Asserts the measured error equals Euler's O(dt) bias within 5 SE.
    """
    k = linear_k(gamma)
    exact = math.log(np.linalg.det(V0_2)) - k * 3 * T  # log det drifts by -k m(m+1)/2 per unit t
    res = solve(shapedsde.block("linear", gamma=gamma), V0_2, T, paths=paths, seed=seed,
                steps=steps)
    # k dt <= 0.012: P(I + eps G not PD) ~ exp(-1/(4 k dt)) ~ 1e-9 per step, so the
    # projection never acts and the Euler law is exact.
    assert res.meta["n_psd_projections"] == 0 and res.meta["n_tamed"] == 0
    logdet = torch.logdet(res.V).numpy()
    err, se = logdet.mean() - exact, logdet.std(ddof=1) / math.sqrt(paths)
    bias = euler_logdet_bias_m2(k, T, steps)
    print(f"steps={steps}: error {err:+.4f} +- {se:.4f} (Euler bias {bias:+.4f})")
    assert abs(err - bias) <= 5 * se  # the measured error is Euler's O(dt) bias
    return float(err), float(se), float(bias)


def test_linear_weak_order_one_on_logdet() -> None:
    """Weak error of E[log det V_T] halves when the step halves, and equals Euler's exact bias."""
    errors = {steps: logdet_error(0.9, 0.5, 25_000, steps, seed)
              for steps, seed in ((40, 21), (80, 22))}
    err40, se40, bias40 = errors[40]
    err80, _, bias80 = errors[80]
    assert err40 < -3 * se40  # the bias is resolved at the coarse step ...
    assert abs(err80) < abs(err40)  # ... and falls when the step is halved
    assert 1.9 < bias40 / bias80 < 2.2  # first order: the exact bias halves


@pytest.mark.slow
def test_linear_weak_order_fit_on_logdet_slow() -> None:
    """Three step sizes, 100k paths each: the fitted weak order on E[log det V_T] is ~1."""
    steps_list = (40, 80, 160)
    errs = [logdet_error(0.9, 0.5, 100_000, steps, 31 + i)[0]
            for i, steps in enumerate(steps_list)]
    order = -np.polyfit(np.log(steps_list), np.log(np.abs(errs)), 1)[0]
    print(f"fitted weak order {order:.2f}")
    assert 0.6 < order < 1.4


def test_linear_weak_error_falls_with_steps_coarse() -> None:
    """At coarse steps (projection and cap active) the error on E[|V_T|_F^2] still falls."""
    gamma, T, paths = 0.9, 0.5, 20_000
    k, m = linear_k(gamma), 2
    idx = [((a * m + b) * m + a) * m + b for a in range(m) for b in range(m)]
    M0 = np.einsum("ab,cd->abcd", V0_2, V0_2).ravel()
    exact = (scipy.linalg.expm(T * moment_generator(m, k)) @ M0)[idx].sum()
    errs = []
    for steps in (1, 2, 4):
        res = solve(shapedsde.block("linear", gamma=gamma), V0_2, T, paths=paths, seed=5,
                    steps=steps)
        errs.append(abs(float((res.V**2).sum((-2, -1)).mean()) - exact))
    assert errs[0] > errs[1] > errs[2]


# ---------------------------------------------------------------------------
# Structure of the output.


def test_shapes_symmetry_psd_and_meta() -> None:
    blk = shapedsde.block("attention", gamma=0.8, tau0=1.0)
    res = solve(blk, V0_3, 0.1, paths=64, seed=0, save_every=5)
    assert isinstance(res, SDEResult)
    assert res.V.shape == (64, 3, 3) and res.V.dtype == torch.float64
    assert torch.equal(res.V, res.V.transpose(-1, -2))
    assert torch.linalg.eigvalsh(res.V).min() >= -1e-12
    steps = default_steps(0.1)
    assert res.meta["steps"] == steps == 20 and res.meta["dt"] == pytest.approx(0.1 / steps)
    assert res.times is not None and res.trajectory is not None
    assert res.trajectory.shape == (len(res.times), 64, 3, 3)
    assert res.times[0] == 0 and res.times[-1] == pytest.approx(0.1)
    assert torch.allclose(res.trajectory[0], torch.as_tensor(V0_3).expand(64, 3, 3))
    assert torch.equal(res.trajectory[-1], res.V)
    for key in ("steps", "dt", "scheme", "seed", "n_tamed", "n_psd_projections",
                "n_nonfinite", "paths"):
        assert key in res.meta
    json.dumps(res.meta)  # the CLI writes it as JSON
    line = res.summary()
    assert "\n" not in line and "64 paths" in line and "non-finite paths 0" in line
    assert bool(res.finite.all())


def test_save_every_keeps_final_time_when_not_a_multiple() -> None:
    res = solve(shapedsde.block("linear", gamma=0.5), V0_2, 0.3, paths=4, seed=0, steps=7,
                save_every=3)
    np.testing.assert_allclose(res.times.numpy(), np.array([0, 3, 6, 7]) * 0.3 / 7)
    assert res.trajectory.shape == (4, 4, 2, 2)


def test_default_step_rule() -> None:
    assert default_steps(0.0) == 20
    assert default_steps(0.05) == 20
    assert default_steps(0.5) == 100
    assert default_steps(1.0) == 200
    assert default_steps(0.5001) == 101


def test_zero_horizon_returns_V0() -> None:
    res = solve(shapedsde.block("attention", gamma=0.5, tau0=1.0), V0_2, 0.0, paths=3, seed=0)
    assert torch.allclose(res.V, torch.as_tensor(V0_2).expand(3, 2, 2))


def test_attention_hazard_setting_is_tamed_and_finite() -> None:
    """gamma = 0.7, tau0 = 0.8, T = 0.5: plain Euler explodes on some paths; tamed stays finite."""
    blk = shapedsde.block("attention", gamma=0.7, tau0=0.8)
    V0 = np.full((3, 3), 0.2) + 0.8 * np.eye(3)
    res = solve(blk, V0, 0.5, paths=1000, seed=0)
    assert torch.isfinite(res.V).all() and bool(res.finite.all())
    assert res.meta["n_nonfinite"] == 0
    assert res.meta["n_tamed"] > 0  # the paths near the blow-up were tamed (and counted)
    assert res.meta["n_paths_tamed"] <= 1000
    assert "NOTE" not in res.summary()  # 336 of 1000 paths tamed: below the note's 50%
    stiff = solve(shapedsde.block("attention", gamma=0.9, tau0=0.5), V0, 1.0, paths=200, seed=0)
    assert stiff.meta["n_paths_tamed"] > 100 and "NOTE" in stiff.summary()
    assert torch.equal(res.V, res.V.transpose(-1, -2))
    lam = torch.linalg.eigvalsh(res.V)
    assert lam.min() >= -1e-8 * lam.max()


def test_psd_projection_is_counted_and_applied() -> None:
    # One huge step of the linear SDE leaves the PSD cone on a good share of paths.
    res = solve(shapedsde.block("linear", gamma=1.0), V0_2, 2.0, paths=2000, seed=3, steps=2)
    assert res.meta["n_psd_projections"] > 0
    assert 0 < res.meta["n_paths_projected"] <= 2000
    assert res.meta["n_tamed"] > 0  # the noise cap acts at such a step too
    lam = torch.linalg.eigvalsh(res.V)
    assert lam.min() >= -1e-8 * lam.abs().max()


def test_rank_deficient_V0_does_not_count_round_off() -> None:
    # rho = 1: the linear SDE keeps V rank one; round-off is clipped but not counted.
    V0 = np.ones((2, 2))
    res = solve(shapedsde.block("linear", gamma=0.5), V0, 0.2, paths=200, seed=0)
    assert res.meta["n_psd_projections"] == 0
    assert torch.linalg.eigvalsh(res.V).min() >= -1e-8


def _psd_cases() -> torch.Tensor:
    """A positive definite, a singular (round-off negatives) and an indefinite 6 x 6."""
    g = torch.Generator().manual_seed(0)
    G = torch.randn(6, 6, generator=g, dtype=torch.float64)
    pd = G @ G.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    low = G[:, :2] @ G[:, :2].T  # rank 2: Cholesky fails, eigenvalues ~ +-1e-16
    Q, _ = torch.linalg.qr(G)
    indef = Q @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5, -0.2, -1e-3],
                                        dtype=torch.float64)) @ Q.T
    return torch.stack([pd, low, 0.5 * (indef + indef.T)])


def test_project_psd_tiers() -> None:
    from shapedsde.sde import _project_psd

    V = _psd_cases()
    tol = torch.full((3,), 1e-8, dtype=torch.float64)
    out, projected, R = _project_psd(V.clone(), tol)
    assert projected.tolist() == [False, False, True]
    # A negative eigenvalue beyond the tolerance is never kept, however large m eps tr(V).
    _, projected_tight, _ = _project_psd(V.clone(), torch.full((3,), 1e-4, dtype=torch.float64))
    assert projected_tight[2] and torch.equal(_project_psd(V[2:] * 1e13, tol * 1e13)[1],
                                              torch.tensor([True]))
    # PD and round-off-singular states are kept as they are.
    assert torch.equal(out[:2], V[:2])
    # The projection is the nearest PSD matrix: V = V+ - V-, both PSD, V+ V- = 0.
    plus, minus = out[2], out[2] - V[2]
    assert torch.linalg.eigvalsh(plus).min() >= -1e-12
    assert torch.linalg.eigvalsh(minus).min() >= -1e-12
    assert torch.allclose(plus @ minus, torch.zeros_like(plus), atol=1e-12)
    # Every factor reproduces its state (the singular one up to the tiny jitter).
    RRt = R @ R.transpose(-1, -2)
    assert torch.allclose(RRt, out, atol=1e-12)


def test_threaded_eigh_matches_torch() -> None:
    from shapedsde import _linalg

    g = torch.Generator().manual_seed(1)
    G = torch.randn(130, 5, 5, generator=g, dtype=torch.float64)
    X = G + G.transpose(-1, -2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the split path runs only with >= 2 threads
    try:
        w, Q = _linalg.eigh(X)
    finally:
        torch.set_num_threads(threads)
    # Same decomposition up to round-off (LAPACK's threading differs between the calls).
    assert torch.allclose(w, torch.linalg.eigvalsh(X), rtol=0, atol=1e-12)
    assert torch.allclose(Q @ torch.diag_embed(w) @ Q.transpose(-1, -2), X, rtol=0, atol=1e-12)
    assert torch.allclose(Q.transpose(-1, -2) @ Q, torch.eye(5, dtype=X.dtype).expand(130, 5, 5),
                          rtol=0, atol=1e-12)


def test_states_handed_out_are_psd_at_many_tokens() -> None:
    # At m = 24 the spectrum spreads like exp(-c m t): V is numerically singular
    # within the run, the running state keeps round-off negatives, the output not.
    V0 = np.eye(24) * 0.5 + 0.5
    res = solve(shapedsde.block("attention", gamma=0.8, tau0=1.0), V0, 1.0, paths=50,
                seed=0, save_every=100)
    for V in (res.V, *res.trajectory):
        lam = torch.linalg.eigvalsh(V)
        assert (lam[:, 0] >= -1e-13 * lam[:, -1]).all()


def test_reproducible_with_same_seed() -> None:
    blk = shapedsde.block("attention", gamma=0.8, tau0=1.0)
    a = solve(blk, V0_3, 0.2, paths=50, seed=123)
    b = solve(blk, torch.as_tensor(V0_3), 0.2, paths=50, seed=123)
    c = solve(blk, V0_3, 0.2, paths=50, seed=124)
    assert torch.equal(a.V, b.V)
    assert not torch.equal(a.V, c.V)


def test_per_path_initial_states_and_float32() -> None:
    scales = torch.arange(1, 6, dtype=torch.float64)[:, None, None]
    V0 = torch.as_tensor(V0_2).expand(5, 2, 2) * scales
    res = solve(shapedsde.block("linear", gamma=0.5), V0, 0.1, paths=5, seed=0,
                dtype=torch.float32)
    assert res.V.dtype == torch.float32 and res.V.shape == (5, 2, 2)
    assert res.meta["dtype"] == "float32"


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    solve(shapedsde.block("linear", gamma=0.5), V0_2, 0.1, paths=2, seed=0, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "sde" in err


# ---------------------------------------------------------------------------
# The structured-noise hook and non-finite paths.


class _LinearWithProduct:
    """Linear block with diffusion_prod: sqrt(k) V^{1/2} S V^{1/2}, S = (dB + dB^T)/sqrt(2)."""

    def __init__(self, gamma: float) -> None:
        self.inner = shapedsde.block("linear", gamma=gamma)
        self.k = linear_k(gamma)
        self.calls = 0

    def drift(self, V: torch.Tensor, check: bool = False) -> torch.Tensor:
        return self.inner.drift(V, check=check)

    def diffusion(self, V: torch.Tensor, check: bool = False) -> torch.Tensor:
        raise AssertionError("diffusion_prod should be used instead")

    def diffusion_prod(self, V: torch.Tensor, dB: torch.Tensor,
                       check: bool = False) -> torch.Tensor:
        self.calls += 1
        w, Q = torch.linalg.eigh(V)
        R = (Q * w.clamp_min(0).sqrt()[..., None, :]) @ Q.transpose(-1, -2)
        S = (dB + dB.transpose(-1, -2)) / math.sqrt(2.0)
        return math.sqrt(self.k) * R @ S @ R


def test_diffusion_prod_hook_is_used_and_has_the_right_law() -> None:
    gamma, T, steps, paths = 0.9, 0.25, 25, 20_000
    coef = _LinearWithProduct(gamma)
    res = solve(coef, V0_2, T, paths=paths, seed=7, steps=steps)
    assert coef.calls == steps
    L = moment_generator(2, linear_k(gamma))
    M0 = np.einsum("ab,cd->abcd", V0_2, V0_2).ravel()
    euler = np.linalg.matrix_power(np.eye(16) + (T / steps) * L, steps) @ M0
    mc, se = second_moments(res.V)
    assert np.all(np.abs(mc - euler) <= 5 * se)


class _PoisonPathZero:
    """Linear coefficients whose drift is NaN on path 0 after the first step."""

    def __init__(self) -> None:
        self.inner = shapedsde.block("linear", gamma=0.5)
        self.step = 0

    def drift(self, V: torch.Tensor, check: bool = False) -> torch.Tensor:
        self.step += 1
        b = self.inner.drift(V, check=check).clone()
        if self.step > 1:
            b[0] = math.nan
        return b

    def diffusion(self, V: torch.Tensor, check: bool = False) -> torch.Tensor:
        return self.inner.diffusion(V, check=check)


def test_nonfinite_paths_are_flagged_not_silent() -> None:
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = solve(_PoisonPathZero(), V0_2, 0.1, paths=4, seed=0, save_every=1)
    assert res.meta["n_nonfinite"] == 1 and res.meta["first_nonfinite_step"] == 2
    assert res.finite.tolist() == [False, True, True, True]
    assert torch.isnan(res.V[0]).all() and torch.isfinite(res.V[1:]).all()
    assert torch.isfinite(res.trajectory[1, 0]).all() and torch.isnan(res.trajectory[2:, 0]).all()
    assert "WARNING" in res.summary()


def test_nonfinite_raise_policy() -> None:
    with pytest.raises(FloatingPointError, match="non-finite at step 2"):
        solve(_PoisonPathZero(), V0_2, 0.1, paths=4, seed=0, nonfinite="raise")


# ---------------------------------------------------------------------------
# Bad inputs.

_LIN = shapedsde.block("linear", gamma=0.5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(V0=np.array([[1.0, 0.5], [0.2, 1.0]])), "symmetric"),
    (dict(V0=np.array([[1.0, np.nan], [np.nan, 1.0]])), "NaN"),
    (dict(V0=np.array([[1.0, 2.0], [2.0, 1.0]])), "semi-definite"),
    (dict(V0=np.eye(1)), "m >= 2"),
    (dict(V0=np.ones(3)), "shape"),
    (dict(V0=np.ones((2, 2, 2, 2))), "shape"),
    (dict(T=-0.1), "T"),
    (dict(T=math.inf), "T"),
    (dict(paths=0), "paths"),
    (dict(paths=2.5), "paths"),
    (dict(steps=0), "steps"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(save_every=0), "save_every"),
    (dict(nonfinite="ignore"), "nonfinite"),
    (dict(dtype=torch.int64), "dtype"),
    (dict(device="tpu"), "device"),
    (dict(coefficients=object()), "drift"),
])
def test_bad_inputs_raise_value_error(kwargs: dict, match: str) -> None:
    args = dict(coefficients=_LIN, V0=V0_2, T=0.1, paths=2, seed=0)
    args.update(kwargs)
    coefficients, V0, T = args.pop("coefficients"), args.pop("V0"), args.pop("T")
    with pytest.raises(ValueError, match=match):
        solve(coefficients, V0, T, **args)


def test_batched_V0_must_match_paths() -> None:
    with pytest.raises(ValueError, match="paths"):
        solve(_LIN, np.stack([V0_2] * 3), 0.1, paths=2, seed=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_unavailable_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        solve(_LIN, V0_2, 0.1, paths=2, seed=0, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu_in_law() -> None:
    res = solve(_LIN, V0_2, 0.25, paths=20_000, seed=0, device="cuda")
    assert res.V.device.type == "cuda"
    V = res.V.cpu().numpy()
    assert np.all(np.abs(V.mean(0) - V0_2) <= 5 * V.std(0) / math.sqrt(len(V)))
