"""Generated kernels: fresh, equal to the per-entry derivation, batched, on both back ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _shared import PARAMS, random_cov

import shapedsde
from shapedsde.artifacts import regenerate
from shapedsde.symbolic.entrywise import derive_block
from shapedsde.symbolic.layers import C_MINUS, C_PLUS, GAMMA, HEADS, TAU0


def test_generated_artifacts_are_fresh() -> None:
    stale = regenerate(check=True)
    assert not stale, f"stale generated files {stale}: run `shapedsde derive`"


@pytest.mark.parametrize("name", ["linear", "attention", "mlp", "transformer"])
@pytest.mark.parametrize("m", [2, 3, 4])
def test_kernels_match_per_entry_derivation(name: str, m: int) -> None:
    ew = derive_block(name, m)
    p = PARAMS[name]
    Vn = random_cov(m, seed=m)
    subs = {ew.V[a, b]: Vn[a, b] for a in range(m) for b in range(m)}
    subs |= {GAMMA: p["gamma"], TAU0: p.get("tau0", 1.0), HEADS: p.get("heads", 1),
             C_PLUS: p.get("c_plus", 0.0), C_MINUS: p.get("c_minus", 0.0)}
    drift = np.array(ew.drift.subs(subs).evalf().tolist(), dtype=float)
    diffusion = np.array(ew.diffusion.subs(subs).tolist(), dtype=float)
    blk = shapedsde.block(name, **p)
    np.testing.assert_allclose(blk.drift(Vn), drift, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(blk.diffusion(Vn), diffusion, rtol=1e-12, atol=1e-12)
    Vt = torch.tensor(Vn)
    np.testing.assert_allclose(blk.drift(Vt).numpy(), drift, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(blk.diffusion(Vt).numpy(), diffusion, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["linear", "attention", "mlp", "transformer"])
def test_kernels_batch_over_leading_axes(name: str) -> None:
    blk = shapedsde.block(name, **PARAMS[name])
    V = random_cov(5, seed=1, batch=(2, 3))
    b, S = blk.drift(V), blk.diffusion(V)
    assert b.shape == (2, 3, 5, 5) and S.shape == (2, 3, 5, 5, 5, 5)
    np.testing.assert_allclose(b[1, 2], blk.drift(V[1, 2]), rtol=1e-13)
    np.testing.assert_allclose(S[0, 1], blk.diffusion(V[0, 1]), rtol=1e-13)
    Sm = S.reshape(2, 3, 25, 25)
    np.testing.assert_allclose(Sm, np.swapaxes(Sm, -1, -2), atol=1e-12)
    assert np.linalg.eigvalsh(Sm).min() > -1e-10  # a covariance: PSD


def test_torch_kernels_keep_autograd_and_dtype() -> None:
    blk = shapedsde.block("attention", **PARAMS["attention"])
    V = torch.tensor(random_cov(3, seed=2), requires_grad=True)
    blk.drift(V).sum().backward()
    assert V.grad is not None and torch.isfinite(V.grad).all()
    assert blk.diffusion(V.detach().float()).dtype == torch.float32


def test_attention_terms_vanish_as_tau0_grows() -> None:
    """Sanity: tau0 -> inf switches attention off, leaving the linear block."""
    V = random_cov(3, seed=3)
    att = shapedsde.block("attention", gamma=0.8, tau0=1e6)
    lin = shapedsde.block("linear", gamma=0.8)
    np.testing.assert_allclose(att.drift(V), lin.drift(V), atol=1e-10)
    np.testing.assert_allclose(att.diffusion(V), lin.diffusion(V), atol=1e-10)


def test_heads_divide_only_the_attention_diffusion() -> None:
    """Multi-head: same drift; the attention part of Sigma scales as 1/n_H."""
    V = random_cov(3, seed=4)
    lin = shapedsde.block("linear", gamma=0.8).diffusion(V)
    one, four = (shapedsde.block("attention", gamma=0.8, tau0=0.7, heads=h) for h in (1, 4))
    np.testing.assert_allclose(one.drift(V), four.drift(V), rtol=1e-13)
    np.testing.assert_allclose(four.diffusion(V) - lin, (one.diffusion(V) - lin) / 4,
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("name", "params"), [
    ("linear", {}), ("attention", {"heads": 2}), ("mlp", {}), ("transformer", {}),
    ("mlp", {"activation": "tanh"}), ("attention", {"causal": True})])
def test_joint_drift_and_ito_kernel_equals_the_separate_ones(name: str, params: dict) -> None:
    """The solver's `drift_and_ito` (one kernel sharing b's and K's products; causal
    attention falls back to its own faces) gives b and K exactly as `drift` and
    `ito_contraction` do, on every block and a serial composition."""
    blocks = [shapedsde.block(name, gamma=0.8, **params)]
    if name == "attention" and not params.get("causal"):
        blocks.append(shapedsde.serial(blocks[0], shapedsde.block("mlp", gamma=0.6)))
    V = torch.as_tensor(random_cov(4, seed=3))[None].repeat(3, 1, 1)
    for blk in blocks:
        b, K = blk.drift_and_ito(V)
        torch.testing.assert_close(b, blk.drift(V), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(K, blk.ito_contraction(V), rtol=1e-13, atol=1e-13)
