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
# Weak convergence, exact laws and stopping: tests/test_solver_pd.py.


# ---------------------------------------------------------------------------
# Structure of the output.


def test_shapes_symmetry_psd_and_meta() -> None:
    blk = shapedsde.block("attention", gamma=0.8, tau0=1.0)
    steps = default_steps(0.1)
    res = solve(blk, V0_3, 0.1, paths=64, seed=0, save_every=5, steps=steps)
    assert isinstance(res, SDEResult)
    assert res.V.shape == (64, 3, 3) and res.V.dtype == torch.float64
    assert torch.equal(res.V, res.V.transpose(-1, -2))
    assert torch.linalg.cholesky_ex(res.V)[1].eq(0).all()  # positive definite
    assert res.meta["steps"] == steps == 10 and res.meta["dt"] == pytest.approx(0.1 / steps)
    assert res.times is not None and res.trajectory is not None
    assert res.trajectory.shape == (len(res.times), 64, 3, 3)
    assert res.times[0] == 0 and res.times[-1] == pytest.approx(0.1)
    assert torch.allclose(res.trajectory[0], torch.as_tensor(V0_3).expand(64, 3, 3))
    assert torch.equal(res.trajectory[-1], res.V)
    for key in ("steps", "dt", "scheme", "seed", "n_exploded", "n_exits", "p_exit",
                "n_nonfinite", "paths", "weak_order", "step_rule"):
        assert key in res.meta
    json.dumps(res.meta)  # the CLI writes it as JSON
    line = res.summary()
    assert "\n" not in line and "64 paths" in line and "non-finite 0" in line
    assert bool(res.finite.all()) and not bool(res.exploded.any())
    assert bool(torch.isinf(res.exit_time).all())  # no exit_trace: nobody exits


def test_save_every_keeps_final_time_when_not_a_multiple() -> None:
    res = solve(shapedsde.block("linear", gamma=0.5), V0_2, 0.3, paths=4, seed=0, steps=7,
                save_every=3)
    np.testing.assert_allclose(res.times.numpy(), np.array([0, 3, 6, 7]) * 0.3 / 7)
    assert res.trajectory.shape == (4, 4, 2, 2)


def test_default_fixed_grid() -> None:
    assert default_steps(0.0) == 1
    assert default_steps(0.05) == 5
    assert default_steps(1.0) == 100
    assert default_steps(0.5001) == 51


def test_zero_horizon_returns_V0() -> None:
    res = solve(shapedsde.block("attention", gamma=0.5, tau0=1.0), V0_2, 0.0, paths=3, seed=0)
    assert torch.allclose(res.V, torch.as_tensor(V0_2).expand(3, 2, 2))


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


def test_reproducible_with_same_seed() -> None:
    blk = shapedsde.block("attention", gamma=0.8, tau0=1.0)
    a = solve(blk, V0_3, 0.2, paths=50, seed=123)
    b = solve(blk, torch.as_tensor(V0_3), 0.2, paths=50, seed=123)
    c = solve(blk, V0_3, 0.2, paths=50, seed=124)
    assert torch.equal(a.V, b.V)
    assert not torch.equal(a.V, c.V)


def test_chunked_step_gives_the_same_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step's arithmetic runs in chunks of paths, its draws for all paths at once: any
    chunk size gives the same result bit for bit (exits, explosions, saved states). The
    run at the default chunk is one batch here; the control: another seed differs."""
    from shapedsde import sde

    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5)
    V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])

    def run(seed: int = 1) -> SDEResult:
        return solve(blk, V0, 1.0, paths=600, seed=seed, exit_trace=5.0, save_times=4)

    one = run()
    monkeypatch.setattr(sde, "CHUNK_ELEMENTS", 9 * 50)  # 50 paths a chunk, 12 chunks
    chunked = run()
    assert 0 < int(one.exited.sum()) < 600
    for a, b in ((one.V, chunked.V), (one.exit_time, chunked.exit_time),
                 (one.trajectory, chunked.trajectory), (one.steps, chunked.steps)):
        assert torch.equal(torch.nan_to_num(a, nan=-1.0), torch.nan_to_num(b, nan=-1.0))
    assert not torch.equal(run(seed=2).exit_time, one.exit_time)


def test_per_path_initial_states_and_float32() -> None:
    scales = torch.arange(1, 6, dtype=torch.float64)[:, None, None]
    V0 = torch.as_tensor(V0_2).expand(5, 2, 2) * scales
    res = solve(shapedsde.block("linear", gamma=0.5), V0, 0.1, paths=5, seed=0,
                dtype=torch.float32)
    assert bool(res.finite.all())
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

    def ito_contraction(self, V: torch.Tensor, check: bool = False) -> torch.Tensor:
        return self.inner.ito_contraction(V, check=check)

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
    ode = scipy.linalg.expm(T * L) @ M0
    mc, se = second_moments(res.V)
    # The scheme's O(dt) bias (well below 1 SE here, tests/test_solver_pd.py).
    assert np.all(np.abs(mc - ode) <= 5 * se)


class _PoisonPathZero:
    """Linear coefficients whose drift is NaN after the first step on the path that starts
    at 3 V0 (path 0 of `POISON_V0`; recognised by its trace, as the solver passes only the
    paths still running). The solver's first call is its check of the coefficients at V0,
    before any step."""

    def __init__(self) -> None:
        self.inner = shapedsde.block("linear", gamma=0.5)
        self.step = -1

    def drift(self, V: torch.Tensor, check: bool = False) -> torch.Tensor:
        self.step += 1
        b = self.inner.drift(V, check=check).clone()
        if self.step > 1:
            b[torch.diagonal(V, 0, -2, -1).sum(-1) > 2 * np.trace(V0_2)] = math.nan
        return b

    def diffusion(self, V: torch.Tensor, check: bool = False) -> torch.Tensor:
        return self.inner.diffusion(V, check=check)


POISON_V0 = np.stack([3 * V0_2, V0_2, V0_2, V0_2])


def test_nonfinite_paths_are_flagged_not_silent() -> None:
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = solve(_PoisonPathZero(), POISON_V0, 0.1, paths=4, seed=0, save_every=1, steps=10)
    assert res.meta["n_nonfinite"] == 1 and res.meta["first_nonfinite_step"] == 2
    assert res.finite.tolist() == [False, True, True, True]
    assert torch.isnan(res.V[0]).all() and torch.isfinite(res.V[1:]).all()
    assert torch.isfinite(res.trajectory[1, 0]).all() and torch.isnan(res.trajectory[2:, 0]).all()
    assert "WARNING" in res.summary()


def test_nonfinite_raise_policy() -> None:
    with pytest.raises(FloatingPointError, match="non-finite at step 2"):
        solve(_PoisonPathZero(), POISON_V0, 0.1, paths=4, seed=0, nonfinite="raise", steps=10)


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
    (dict(save_every=0, steps=3), "save_every"),
    (dict(save_every=2), "fixed steps"),
    (dict(exit_trace=0.5), "exit_trace"),
    (dict(rtol=0.0), "rtol"),
    # Singular: solved on its range where the block keeps the null space (duplicated
    # tokens, tests/test_hard_corners.py); x2 = -x1 is lifted by the ReLU MLP.
    (dict(V0=np.array([[1.0, -1.0], [-1.0, 1.0]]),
          coefficients=shapedsde.block("mlp", gamma=0.6)), "null space"),
    (dict(V0=np.stack([np.eye(2), np.ones((2, 2))])), "positive definite"),
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
