"""Causal shaped attention: the row-stacked closed form equals the per-entry derivation,
and the finite face masks the future."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import shapedsde
from shapedsde.causal import causal_diffusion, causal_drift
from shapedsde.symbolic.entrywise import derive_block
from shapedsde.symbolic.layers import GAMMA, HEADS, TAU0


@pytest.mark.parametrize("m", [2, 3, 4])
def test_closed_form_equals_per_entry_derivation(m: int) -> None:
    ew = derive_block("causal", m)
    drift = (causal_drift(ew.V, GAMMA, TAU0) - ew.drift).applyfunc(sp.expand)
    assert drift == sp.zeros(m, m)
    diff = causal_diffusion(ew.V, GAMMA, TAU0, HEADS) - ew.diffusion
    assert all(sp.expand(x) == 0 for x in sp.flatten(diff.tolist()))


def test_first_token_is_not_mixed() -> None:
    """Token 0 sees only itself, so its variance has no attention drift."""
    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5, causal=True)
    V = np.array([[1.0, 0.4, 0.1], [0.4, 1.2, 0.3], [0.1, 0.3, 0.8]])
    assert blk.drift(V)[0, 0] == pytest.approx(0.0, abs=1e-15)
    assert blk.drift(V)[2, 2] > 0


def test_torch_and_numpy_agree_and_batch() -> None:
    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5, causal=True, heads=2)
    G = np.random.default_rng(0).normal(size=(2, 5, 7))
    V = G @ np.swapaxes(G, -1, -2) / 7
    np.testing.assert_allclose(blk.drift(torch.tensor(V)).numpy(), blk.drift(V), rtol=1e-12)
    S = blk.diffusion(V)
    assert S.shape == (2, 5, 5, 5, 5)
    np.testing.assert_allclose(S[1], blk.diffusion(V[1]), rtol=1e-12)
    Sm = S.reshape(2, 25, 25)
    assert np.linalg.eigvalsh(Sm).min() > -1e-10


def test_finite_mixing_is_lower_triangular_plus_identity() -> None:
    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5, causal=True)
    X = torch.randn(4, 3, 32, dtype=torch.float64)
    A = blk.branch_mixing(X, torch.Generator().manual_seed(0))
    upper = torch.triu(A - torch.eye(3, dtype=A.dtype), diagonal=1)
    assert torch.all(upper == 0)
    assert torch.allclose(A[:, 0], torch.tensor([1.0, 0, 0], dtype=A.dtype))
    assert torch.allclose(A.sum(-1), torch.ones(4, 3, dtype=A.dtype))
