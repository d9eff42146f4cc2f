"""Structured noise: its covariance equals Sigma exactly, symbolically and numerically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import shapedsde
from shapedsde.symbolic.matrixform import matrix_form
from shapedsde.symbolic.noise import noise_covariance, noise_groups

PARAMS = {"linear": {"gamma": 0.6}, "attention": {"gamma": 0.8, "tau0": 0.7},
          "mlp": {"gamma": 0.7, "c_plus": 0.5, "c_minus": -1.5},
          "transformer": {"gamma": 0.6, "tau0": 0.9, "c_plus": 0.2, "c_minus": -1.0}}


def _key(k):
    return (str(k.X), k.xl, str(k.Y), k.yl, str(k.coef))


@pytest.mark.parametrize("name", ["linear", "attention", "mlp", "transformer"])
def test_noise_covariance_equals_sigma_symbolically(name: str) -> None:
    """For every m: the Wick covariance of the factorised noise is Sigma's pattern list."""
    c = matrix_form(name)
    groups = noise_groups(c)
    assert groups is not None
    assert sorted(map(_key, noise_covariance(groups))) == sorted(map(_key, c.diffusion))


def exact_noise_covariance(blk, V: np.ndarray) -> np.ndarray:
    """Cov of the noise map N -> noise(V, N), exactly: it is linear, so J^T J."""
    m, k = V.shape[-1], blk.noise_groups
    basis = np.eye(k * m * m).reshape(k * m * m, k, m, m)
    jac = blk.structured_noise(V, basis, check=False)  # V broadcasts against the batch
    jac = jac.reshape(k * m * m, m * m)
    return jac.T @ jac


@pytest.mark.parametrize("name", ["linear", "attention", "mlp", "transformer"])
@pytest.mark.parametrize("m", [2, 3, 8, 32])
def test_noise_covariance_equals_sigma_numerically(name: str, m: int) -> None:
    blk = shapedsde.block(name, **PARAMS[name])
    G = np.random.default_rng(m).normal(size=(m, m + 3))
    V = G @ G.T / (m + 3)
    S = blk.diffusion(V).reshape(m * m, m * m)
    np.testing.assert_allclose(exact_noise_covariance(blk, V), S, atol=1e-11 * np.abs(S).max())


def test_noise_handles_singular_V_and_torch_batches() -> None:
    blk = shapedsde.block("attention", **PARAMS["attention"])
    V = np.ones((3, 3))  # rank one: the square root must not fail
    S = blk.diffusion(V).reshape(9, 9)
    np.testing.assert_allclose(exact_noise_covariance(blk, V), S, atol=1e-10)
    Vt = torch.eye(4, dtype=torch.float64).expand(5, 4, 4)
    N = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    out = blk.structured_noise(Vt, N)
    assert out.shape == (5, 4, 4) and torch.allclose(out, out.transpose(-1, -2))


def test_noise_rejects_wrong_shape() -> None:
    blk = shapedsde.block("attention", **PARAMS["attention"])
    with pytest.raises(ValueError, match="N must have shape"):
        blk.structured_noise(np.eye(3), np.zeros((1, 3, 3)))


def test_many_tokens_solver_runs_without_the_diffusion_tensor() -> None:
    """m = 128: drift and structured noise are O(m^2) memory per path; Sigma (m^4 = 268M
    entries) is never built by the solver."""
    from shapedsde.sde import solve

    m = 128
    G = np.random.default_rng(0).normal(size=(m, 2 * m))
    V0 = G @ G.T / (2 * m)
    blk = shapedsde.block("attention", gamma=0.8, tau0=1.0)
    res = solve(blk, V0, 0.01, paths=4, seed=0, steps=2)
    assert res.meta["noise"] == "structured"
    assert res.V.shape == (4, m, m) and torch.isfinite(res.V).all()
    assert torch.allclose(res.V, res.V.transpose(-1, -2))


FACTOR_BLOCKS = [*PARAMS.items(), ("attention", {"gamma": 0.9, "tau0": 0.4, "heads": 2}),
                 ("mlp", {"gamma": 0.8, "activation": "tanh", "scale": 0.6}), ("serial", {})]


@pytest.mark.parametrize(("name", "params"), FACTOR_BLOCKS)
@pytest.mark.parametrize("m", [2, 5])
def test_factor_noise_is_the_sandwiched_structured_noise(name: str, params: dict, m: int
                                                         ) -> None:
    """The solver's noise in factor coordinates, printed with L^{-1} taken inside each
    root, equals L^{-1} dN L^{-T} of the structured draw with R = L, for the same N: a
    wrong simplification (L^{-1} V = L^T) would show here to rounding."""
    blk = (shapedsde.block(name, **params) if name != "serial" else shapedsde.serial(
        shapedsde.block("attention", gamma=0.7), shapedsde.block("mlp", gamma=0.5)))
    g = torch.Generator().manual_seed(m)
    A = torch.randn(6, m, m, generator=g, dtype=torch.float64)
    V = A @ A.mT + 0.1 * torch.eye(m, dtype=torch.float64)
    L = torch.linalg.cholesky(V)
    Linv = torch.linalg.inv(L)
    N = torch.randn(6, blk.noise_groups, m, m, generator=g, dtype=torch.float64)
    want = Linv @ blk.structured_noise(V, N, factor=L) @ Linv.mT
    got = blk.factor_noise(V, N, L, Linv)
    assert torch.allclose(got, got.mT, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
