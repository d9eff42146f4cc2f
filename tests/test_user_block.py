"""A block defined outside the package (docs/examples/new_block.py, damped shaped
attention A = I + beta (Softmax(Z) - 11^T/m)) goes through derive -> kernels -> solve ->
verify from a temporary folder, with kernels built in memory and nothing written into
the package; the registry finds it by its definition alone."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from _shared import random_cov, run
from scipy.stats import norm

import shapedsde
from shapedsde.blocks import Block, LinearBlock
from shapedsde.cli import load_block_file
from shapedsde.registry import block_classes
from shapedsde.sde import solve
from shapedsde.symbolic.derivation import Derivation
from shapedsde.symbolic.layers import covariance_symbols
from shapedsde.symbolic.matrixform import linear_update
from shapedsde.tangent import tangent
from shapedsde.verification.all_blocks import one_step_moments

ROOT = Path(__file__).resolve().parent.parent
V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.2, 0.2], [0.1, 0.2, 0.9]])


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "new_block.py"
    shutil.copy(ROOT / "docs" / "examples" / "new_block.py", path)
    return path


@pytest.fixture(scope="module")
def damped(user_file) -> Block:
    return load_block_file(f"{user_file}:damped")  # gamma 0.9, tau0 0.4, beta 0.5


def test_the_definition_registers_it(damped) -> None:
    assert block_classes()["damped-attention"] is type(damped)
    again = shapedsde.block("damped-attention", gamma=0.5, tau0=0.7, beta=0.3)
    assert again.kernel_params() == {"gamma": 0.5, "tau0": 0.7, "beta": 0.3}
    with pytest.raises(ValueError, match="beta must lie in"):
        shapedsde.block("damped-attention", gamma=0.5, beta=1.5)


def test_beta_one_is_shaped_attention(damped) -> None:
    """At beta = 1 the user's derivation and in-memory kernels give the package's
    attention coefficients (NumPy and Torch), and at beta = 0.5 they do not."""
    V = random_cov(4, 0, batch=(3,))
    att = shapedsde.block("attention", gamma=0.9, tau0=0.4)
    one = type(damped)(gamma=0.9, tau0=0.4, beta=1.0)
    for face in ("drift", "diffusion", "ito_contraction", "trace_variance"):
        np.testing.assert_allclose(getattr(one, face)(V), getattr(att, face)(V), rtol=1e-12,
                                   atol=1e-12)
        Vt = torch.as_tensor(V)
        np.testing.assert_allclose(getattr(one, face)(Vt).numpy(), getattr(att, face)(V),
                                   rtol=1e-12, atol=1e-12)
    assert np.abs(damped.drift(V) - att.drift(V)).max() > 0.1


def test_in_memory_kernels_equal_the_derived_entries(damped) -> None:
    """The printed kernels against the matrix form's explicit entries at m = 3, evaluated
    by SymPy at the block's values (an independent path); nothing lands in the package."""
    before = sorted((p.name, p.stat().st_mtime) for p in (ROOT / "shapedsde").rglob("*.py"))
    c = damped.coefficients(m=3).with_values()
    subs = {covariance_symbols(3)[a, b]: V0[a, b] for a in range(3) for b in range(3)}
    drift = np.array(c.drift.xreplace(subs).evalf(), dtype=float)
    np.testing.assert_allclose(damped.drift(V0), drift, rtol=1e-12)
    sigma = np.array(c.diffusion.applyfunc(lambda e: e.xreplace(subs).evalf()).tolist(),
                     dtype=float)
    np.testing.assert_allclose(damped.diffusion(V0), sigma, rtol=1e-12, atol=1e-14)
    N = np.random.default_rng(1).standard_normal((20000, damped.noise_groups, 3, 3))
    draws = damped.structured_noise(V0, N).reshape(-1, 9)
    np.testing.assert_allclose(np.cov(draws.T), sigma.reshape(9, 9), atol=0.15 * sigma.max())
    after = sorted((p.name, p.stat().st_mtime) for p in (ROOT / "shapedsde").rglob("*.py"))
    assert after == before


def test_solve_and_one_step_against_finite_networks(damped) -> None:
    """Finite networks of the user's finite face against the derived b and Sigma, one step
    at n = 64 (4000 layers, batch-mean SEs): max |z| under the Bonferroni bound at level
    1e-3 over the 9 + 81 entries; shaped attention (beta = 1) as the control is rejected
    on the same samples (measured: 1.2 and 2.8 against 6.5 and 21)."""
    res = solve(damped, V0, T=0.3, paths=100, seed=0, exit_trace=5.0)
    assert np.isfinite(np.asarray(res.V)).all() and res.V.shape == (100, 3, 3)
    est = one_step_moments(damped, V0, 64, 4000, seed=1)
    bound = norm.isf(1e-3 / 2 / 90)
    control = type(damped)(gamma=0.9, tau0=0.4, beta=1.0)

    def max_z(blk: Block) -> float:
        zd = np.abs(est["drift"] - blk.drift(V0).reshape(-1)) / est["drift_se"]
        zc = np.abs(est["cov"] - blk.diffusion(V0).reshape(9, 9)) / est["cov_se"]
        return float(max(zd.max(), zc.max()))

    assert max_z(damped) < bound
    assert max_z(control) > bound


def test_cli_runs_the_users_block(user_file, tmp_path, capsys) -> None:
    V = tmp_path / "V0.npy"
    np.save(V, V0)
    spec = f"{user_file}:damped"
    code, out, err = run(["derive", "--block", spec, "--m", "3", "--out",
                          str(tmp_path / "tex")], capsys)
    assert code == 0, err
    assert list((tmp_path / "tex").glob("*.tex"))
    code, out, err = run(["sde", "--block", spec, "--V0", str(V), "--T", "0.2", "--paths", "8",
                          "--seed", "0", "--out", str(tmp_path / "VT.npy"), "--quiet"], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "VT.npy").shape == (8, 3, 3)


def test_registry_refuses_clashes() -> None:
    """A user class may not take a package block's name; a derivation's name must name
    kernels; a class that only inherits a name is not a second block of it."""

    @dataclass(frozen=True)
    class Impostor(LinearBlock):
        name: ClassVar[str] = "linear"

    with pytest.raises(ValueError, match="reuses the name 'linear'"):
        block_classes()
    del Impostor
    import gc

    gc.collect()

    @dataclass(frozen=True)
    class Variant(LinearBlock):
        pass

    assert block_classes()["linear"] is LinearBlock
    with pytest.raises(ValueError, match="Python identifier"):
        Derivation("my-block", update=linear_update)
    with pytest.raises(ValueError, match="needs an update rule"):
        Derivation("nothing")


def test_tangent_of_the_users_block(damped) -> None:
    """The user's block has a tangent with no code of its own: derived from its update rule
    and printed in memory; at beta = 1 it is shaped attention's tangent, at beta = 0.5 not;
    its finite face's JVP is the directional derivative of the user's finite face."""
    G = np.random.default_rng(3).standard_normal((6, 9))
    Q = G @ G.T / 9
    one = tangent(type(damped)(gamma=0.9, tau0=0.4, beta=1.0))
    att = tangent(shapedsde.block("attention", gamma=0.9, tau0=0.4))
    np.testing.assert_allclose(one.drift(Q), att.drift(Q), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(one.diffusion(Q), att.diffusion(Q), rtol=1e-12, atol=1e-12)
    assert np.abs(tangent(damped).drift(Q) - att.drift(Q))[3:, 3:].max() > 1e-3
    X = torch.randn(2, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    T = torch.randn(2, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = tangent(damped).finite(torch.cat([X, T], 1), torch.Generator().manual_seed(2))

    def f(x):
        return damped.finite(x, torch.Generator().manual_seed(2))

    h = 1e-6
    torch.testing.assert_close(out[:, 3:], (f(X + h * T) - f(X - h * T)) / (2 * h), rtol=1e-6,
                               atol=1e-6)
