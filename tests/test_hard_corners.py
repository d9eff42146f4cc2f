"""The solver's stopped law at the hard corners of the state space, against exact finite
chains (issue 18): nearly singular V0 (a generic dependency between tokens, eigenvalue
ratios 1e-4 ... 1e-12), exactly duplicated tokens (singular V0) and many tokens.

Each comparison states its tolerance from the standard errors of both estimates: the
z-score of SDE minus chain (SEs combined) is within 3. The finite chains carry their own
O(n^-1/2) bias; the widths used are those at which it is below the SE (docs/solver.md,
"Hard corners"). Power: before the fix the solver reported P(exit) = 0.73 (116 of 4000
paths 'exploded') in the first case, where the chains give 0.009, and 0.745 at m = 32,
where they give 0.03-0.05: z-scores in the tens.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import shapedsde
from shapedsde.finite import simulate, supports_gram
from shapedsde.sde import solve

Z = 3.0


def rotated(eps: float, m: int = 3, seed: int = 1) -> np.ndarray:
    """O diag(eps, 0.8 ... 1.5) O^T with a seeded random rotation O: the nearly null
    direction is a generic linear dependency between the tokens."""
    rot, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((m, m)))
    w = np.linspace(0.8, 1.5, m)
    w[0] = eps
    V = rot @ np.diag(w) @ rot.T
    return 0.5 * (V + V.T)


def duplicated(m: int = 3, seed: int = 2) -> np.ndarray:
    """X X^T / n with the first two rows of X equal: V0 singular along e_1 - e_2."""
    X = np.random.default_rng(seed).standard_normal((m, 4 * m))
    X[1] = X[0]
    return X @ X.T / X.shape[1]


def stopped(exit_time: np.ndarray, V: np.ndarray, trace0: float) -> dict[str, float]:
    """P(exit) and the survivors' mean tr V / tr V0, with standard errors."""
    ex = np.isfinite(exit_time)
    p = float(ex.mean())
    tr = np.trace(V[~ex], axis1=-2, axis2=-1) / trace0
    return dict(p=p, p_se=math.sqrt(max(p * (1 - p), 1.0 / ex.size) / ex.size),
                tr=float(tr.mean()), tr_se=float(tr.std(ddof=1) / math.sqrt(tr.size)))


def compare(block, V0: np.ndarray, T: float, R: float, paths: int, width: int
            ) -> tuple[dict, dict]:
    res = solve(block, V0, T, paths=paths, seed=0, exit_trace=R)
    assert res.meta["n_exploded"] == 0 and res.meta["n_nonfinite"] == 0
    trace0 = float(np.trace(V0))
    sde = stopped(res.exit_time.numpy(), res.V.numpy(), trace0)
    # The exact Gram chain where the block has one, else the reduced sampler (the full
    # networks' law with n/m times fewer draws).
    method = "gram" if supports_gram(block) else "reduced"
    fin = simulate(block, V0, width=width, T=T, nets=paths, seed=1, method=method,
                   exit_trace=R)
    return sde, stopped(fin.exit_time.numpy(), fin.V.cpu().numpy(), trace0)


def assert_agree(sde: dict, chain: dict) -> None:
    for key in ("p", "tr"):
        z = (sde[key] - chain[key]) / math.hypot(sde[key + "_se"], chain[key + "_se"])
        assert abs(z) < Z, (key, sde, chain, z)


@pytest.mark.parametrize("eps", [2e-7, 1e-12])
def test_nearly_singular_attention_matches_exact_chains(eps: float) -> None:
    """The issue's case: V0 = O diag(eps, .8, 1.5) O^T, attention gamma .6, tau0 .8,
    T = .25, R = 5, against the m x m Gram chain at n = 1024."""
    blk = shapedsde.block("attention", gamma=0.6, tau0=0.8)
    sde, chain = compare(blk, rotated(eps), 0.25, 5.0, paths=2000, width=1024)
    assert_agree(sde, chain)


@pytest.mark.slow
def test_nearly_singular_mlp_is_lifted_not_exploded() -> None:
    """The ReLU MLP lifts a dependency between tokens at an O(1) absolute rate: its trace
    cannot blow up (the old step reported every path exploded in one step). Against full
    networks at n = 256 (no Gram chain for the MLP)."""
    blk = shapedsde.block("mlp", gamma=0.6)
    sde, chain = compare(blk, rotated(1e-8), 0.25, 5.0, paths=400, width=256)
    assert sde["p"] == 0.0
    assert_agree(sde, chain)


def test_mlp_with_huge_slopes_does_not_explode() -> None:
    """c_pm = +-1e4 from a nearly singular V0: no made-up explosion, no NaN."""
    blk = shapedsde.block("mlp", gamma=0.6, c_plus=1e4, c_minus=-1e4)
    res = solve(blk, rotated(1e-8), 0.02, paths=50, seed=0)
    assert res.meta["n_exploded"] == 0 and res.meta["n_nonfinite"] == 0
    assert bool(torch.isfinite(res.V).all())


def test_duplicated_tokens_stay_duplicated_and_match_exact_chains() -> None:
    """A singular V0 (two equal tokens) is solved on its range: the tokens stay equal to
    rounding on every path, and the stopped law matches the Gram chain (n = 1024)."""
    V0 = duplicated()
    blk = shapedsde.block("attention", gamma=0.6, tau0=0.8)
    res = solve(blk, V0, 0.25, paths=2000, seed=0, exit_trace=5.0)
    assert res.meta["range_rank"] == 2 and res.V.shape == (2000, 3, 3)
    gap = (res.V[:, 0] - res.V[:, 1]).abs().amax()
    assert float(gap) < 1e-12 * float(res.V.abs().amax())
    fin = simulate(blk, V0, width=1024, T=0.25, nets=2000, seed=1, method="gram",
                   exit_trace=5.0)
    trace0 = float(np.trace(V0))
    assert_agree(stopped(res.exit_time.numpy(), res.V.numpy(), trace0),
                 stopped(fin.exit_time.numpy(), fin.V.numpy(), trace0))


@pytest.mark.parametrize("name", ["linear", "mlp", "transformer"])
def test_duplicated_tokens_every_block(name: str) -> None:
    params = {"gamma": 0.6} | ({"tau0": 0.8} if name == "transformer" else {})
    res = solve(shapedsde.block(name, **params), duplicated(), 0.1, paths=50, seed=0)
    assert res.meta["n_nonfinite"] == 0 and res.meta["n_exploded"] == 0
    assert float((res.V[:, 0] - res.V[:, 1]).abs().amax()) < 1e-12 * float(res.V.abs().amax())


@pytest.mark.parametrize("name", ["linear", "mlp", "attention"])
def test_eigenvalue_ratio_below_the_null_threshold_is_solved_not_refused(name: str) -> None:
    """lambda_min / lambda_max = 1e-14 (a generic dependency, below on_range.NULL_RTOL =
    1e-13 but positive definite in float64): the block lifts it, so it is no kept null
    space, and it was refused with "leaves its null space" even for the linear block,
    which keeps every dependency. Now it is solved as a positive-definite V0 and agrees
    with exact networks (n = 256: linear tr V_T / tr V0 0.974 +- 0.026, MLP 1.009 +-
    0.030, attention 1.069 +- 0.038 at 200 nets; the solver, 200 paths: 1.000, 1.000,
    1.060)."""
    params = {"gamma": 0.6} | ({"tau0": 0.8} if name == "attention" else {})
    blk = shapedsde.block(name, **params)
    sde, chain = compare(blk, rotated(1e-14), 0.15, 5.0, paths=200, width=256)
    assert_agree(sde, chain)


def test_float32_refusal_of_a_nearly_singular_V0_names_the_precision() -> None:
    """lambda ratio 1e-9 is positive definite in float64 but singular to float32 rounding:
    the refusal says so (it read as if V0 itself were singular)."""
    blk = shapedsde.block("attention", gamma=0.6, tau0=0.8)
    with pytest.raises(ValueError, match="float32 rounding.*solve in float64"):
        solve(blk, rotated(1e-9, m=2, seed=4), 0.1, paths=4, seed=0,
              dtype=torch.float32)
    res = solve(blk, rotated(1e-9, m=2, seed=4), 0.1, paths=4, seed=0)
    assert res.meta["n_nonfinite"] == 0 and res.meta["n_exploded"] == 0


def test_a_dependency_the_block_lifts_is_refused_with_the_reason() -> None:
    """x_3 = x_1 + x_2 exactly: the MLP lifts it (phi is not linear), so the SDE leaves
    the singular set, where the factor step cannot start: a clear error, not a NaN."""
    X = np.random.default_rng(3).standard_normal((3, 12))
    X[2] = X[0] + X[1]
    with pytest.raises(ValueError, match="leaves its null space"):
        solve(shapedsde.block("mlp", gamma=0.6), X @ X.T / 12, 0.1, paths=10, seed=0)


def test_many_tokens_no_made_up_exits() -> None:
    """m = 32, attention gamma .5, tau0 1, T = 1, R = 5, V0 = G G^T / 64: exact Gram
    chains give P(exit) = 0.033 +- 0.009 (n = 512, 400 nets; the issue: 0.050 / 0.027 at
    n = 256 / 1024); the old solver gave 0.745. Here 100 SDE paths: P(exit) < 0.15 (a
    binomial 0.04 exceeds it with probability < 1e-4), none blown up or non-finite."""
    m = 32
    G = np.random.default_rng(0).standard_normal((m, 2 * m))
    res = solve(shapedsde.block("attention", gamma=0.5, tau0=1.0), G @ G.T / (2 * m), 1.0,
                paths=100, seed=0, exit_trace=5.0)
    assert res.meta["n_exploded"] == 0 and res.meta["n_nonfinite"] == 0
    assert res.meta["p_exit"] < 0.15


@pytest.mark.slow
@pytest.mark.parametrize("m", [16, 32, 64])
def test_many_tokens_match_exact_chains(m: int) -> None:
    """The issue's many-token setting against Gram chains at n = 512 (300 each)."""
    G = np.random.default_rng(0).standard_normal((m, 2 * m))
    blk = shapedsde.block("attention", gamma=0.5, tau0=1.0)
    sde, chain = compare(blk, G @ G.T / (2 * m), 1.0, 5.0, paths=300, width=512)
    assert_agree(sde, chain)


@pytest.mark.slow
@pytest.mark.parametrize("eps", [1e-4, 1e-8, 1e-12])
@pytest.mark.parametrize("name", ["attention", "transformer"])
def test_nearly_singular_grid(name: str, eps: float) -> None:
    params = {"gamma": 0.6, "tau0": 0.8}
    blk = shapedsde.block(name, **params)
    width = 1024 if name == "attention" else 256
    sde, chain = compare(blk, rotated(eps), 0.25, 5.0, paths=1000, width=width)
    assert_agree(sde, chain)


class DriftOnly:
    """A block's drift with no noise: the solver is then an ODE integrator, whose error
    can be measured path by path."""

    def __init__(self, block) -> None:
        self.block, self.name = block, "drift-only"

    def drift(self, V: torch.Tensor, check: bool = False) -> torch.Tensor:
        return self.block.drift(V, check=False)

    def diffusion(self, V: torch.Tensor, check: bool = False) -> torch.Tensor:
        return torch.zeros(*V.shape, V.shape[-1], V.shape[-1], dtype=V.dtype)


def test_drift_step_is_first_order_uniformly_near_singular() -> None:
    """The drift's step in Cholesky coordinates (scheme.drift_factor) converges at order 1
    (successive differences halve as the steps double) with the same constant from
    lambda_min / tr V = 0.04 and 4e-11: attention turns the nearly null direction at an
    O(1) rate, which the old exp-step made a growth factor of size h eps^-1/2."""
    blk = DriftOnly(shapedsde.block("attention", gamma=0.6, tau0=0.8))
    last = {}
    for eps in (1e-1, 1e-10):
        V = [solve(blk, rotated(eps), 0.25, paths=1, seed=0, steps=n).V[0]
             for n in (16, 32, 64, 128)]
        d = [float((a - b).norm() / b.norm()) for a, b in zip(V, V[1:], strict=False)]
        assert all(1.7 < x / y < 2.3 for x, y in zip(d, d[1:], strict=False)), d
        last[eps] = d[-1]
    assert last[1e-10] < 3 * last[1e-1], last


def test_coarse_fixed_steps_are_counted_per_path_and_warned_of() -> None:
    """Causal attention from lambda_min / tr V = 1e-4 at 20 fixed steps to T = 0.15 (a step
    far above the state's rate): every path that took such a step is counted in
    `coarse_steps`, with a warning; the adaptive default from the same V0 takes none and,
    stopped at R = 5 (the SDE itself explodes on a few paths in a thousand after that),
    none explodes."""
    rot, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((3, 3)))
    V0 = rot @ np.diag([1e-4, 1.3, 1.9]) @ rot.T
    blk = shapedsde.block("attention", gamma=0.6, tau0=0.7, causal=True)
    with pytest.warns(RuntimeWarning, match="too coarse"):
        res = solve(blk, 0.5 * (V0 + V0.T), 0.15, paths=100, seed=0, steps=20)
    assert res.meta["n_coarse_paths"] == int((res.coarse_steps > 0).sum()) > 0
    assert "too coarse" in res.summary()
    good = solve(blk, 0.5 * (V0 + V0.T), 0.15, paths=100, seed=0, exit_trace=5.0)
    assert int(good.coarse_steps.sum()) == 0 and good.meta["n_exploded"] == 0
