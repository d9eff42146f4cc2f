"""A new block defined outside the package: damped shaped attention.

    X' = lam X + gamma A X W^V / sqrt(n),   A = I + beta (Softmax(Z) - 11^T / m),

Z the shaped-attention logits (temperature tau0 sqrt(n nk)). beta in (0, 1] weighs the
centred Softmax; beta = 1 is the package's shaped attention. The block is declared once,
here: its parameters (tau0 and nk reused from shapedsde.parameters, beta its own), its
update rule in matrix form (from which shapedsde derives b and Sigma and prints kernels in
memory), and its finite face. docs/adding-a-block.md explains each piece.

Run it from any folder (`python new_block.py [--quick]`): it prints the derived b and
Sigma, solves the SDE, and compares one step of finite networks with the derived drift,
against shaped attention (beta = 1) as a control.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import sympy as sp
import torch

from shapedsde.blocks import Block, attention_logits
from shapedsde.parameters import NK, TAU0, Parameter, parameter
from shapedsde.sde import solve
from shapedsde.symbolic.derivation import Derivation
from shapedsde.symbolic.matrixform import M_TOKENS, attention_expansion, residual_update
from shapedsde.verification.all_blocks import one_step_moments

BETA_SYMBOL = sp.Symbol("beta", positive=True)


def check_beta(beta: float) -> float:
    b = float(beta)
    if not 0.0 < b <= 1.0:
        raise ValueError(f"beta must lie in (0, 1]; got {beta!r}")
    return b


BETA = Parameter("beta", "weight beta in (0, 1] of the centred Softmax", check_beta,
                 BETA_SYMBOL, cli=None)


def damped_update(src: dict, heads: sp.Expr) -> sp.MatrixExpr:
    """V' of one copy: the residual update with A = I + beta (A_shaped - I) to O(eps^2)."""
    eye = sp.Identity(M_TOKENS)
    return residual_update(src, heads,
                           mixing=eye + BETA_SYMBOL * (attention_expansion(src["z"]) - eye))


@dataclass(frozen=True)
class DampedAttention(Block):
    """Damped shaped attention (module docstring)."""

    tau0: float = parameter(TAU0, 1.0)
    nk: int | None = parameter(NK, None)
    beta: float = parameter(BETA, 0.5)
    name: ClassVar[str] = "damped-attention"
    derivations: ClassVar[tuple[Derivation, ...]] = (
        Derivation("damped_attention", update=damped_update),)

    def branch_mixing(self, X: torch.Tensor, generator) -> torch.Tensor:
        Z = attention_logits(X, generator, self.tau0, self.nk)
        m = Z.shape[-1]
        eye = torch.eye(m, dtype=Z.dtype, device=Z.device)
        return eye + self.beta * (torch.softmax(Z, dim=-1) - 1.0 / m)


def damped() -> DampedAttention:
    """The setting used below (and by `--block new_block.py:damped` in the CLI)."""
    return DampedAttention(gamma=0.9, tau0=0.4, beta=0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    blk = damped()
    V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.2, 0.2], [0.1, 0.2, 0.9]])
    print(blk.latex())
    print(solve(blk, V0, T=0.5, paths=200 if args.quick else 4000, seed=args.seed,
                exit_trace=5.0).summary())
    width, layers = (64, 400) if args.quick else (128, 8000)
    est = one_step_moments(blk, V0, width, layers, seed=args.seed + 1)
    for label, b in (("damped (beta = 0.5)", blk.drift(V0)),
                     ("control, beta = 1", DampedAttention(0.9, tau0=0.4, beta=1.0).drift(V0))):
        z = np.abs(est["drift"] - b.reshape(-1)) / est["drift_se"]
        print(f"one step at n = {width} ({layers} layers): max |z| of n E[dV] against "
              f"{label}: {z.max():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
