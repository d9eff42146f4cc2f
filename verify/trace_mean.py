"""The step's mean at many tokens (docs/solver.md, "The mean correction").

Linear block, V0 = I, T = 0.5, fixed and default steps: E[tr V_T] / tr V_0 - 1 (exactly 0) with and
without the step's mean correction, beside the closed form of the uncorrected bias,
-(m + 2)(m - 1) k^2 h T / 24 (tests/test_step_map.py derives it). Same seed for both maps.

    python verify/trace_mean.py [--m 8 16] [--steps 25 50 100] [--paths 4000]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import shapedsde
from shapedsde import scheme
from shapedsde.sde import solve


def trace_error(m: int, steps: int | None, paths: int, T: float, gamma: float
                ) -> tuple[float, float]:
    res = solve(shapedsde.block("linear", gamma=gamma), np.eye(m), T, paths=paths, seed=5,
                steps=steps)
    ratio = torch.diagonal(res.V, 0, -2, -1).sum(-1).numpy() / m
    return float(ratio.mean() - 1.0), float(ratio.std() / np.sqrt(paths))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, nargs="+", default=[8, 16])
    p.add_argument("--steps", nargs="+", default=["25", "50", "100", "default"],
                   help="fixed step counts, or 'default' for the adaptive default step")
    p.add_argument("--paths", type=int, default=4000)
    p.add_argument("--T", type=float, default=0.5)
    p.add_argument("--gamma", type=float, default=0.9)
    args = p.parse_args()
    torch.set_num_threads(1)
    k = args.gamma**2 * (2 - args.gamma**2)
    corrected = scheme.mean_excess
    print("| m | steps | corrected | uncorrected | closed form (uncorrected) |")
    print("|---|---|---|---|---|")
    for m in args.m:
        for arg in args.steps:
            steps = None if arg == "default" else int(arg)
            scheme.mean_excess = corrected
            c, c_se = trace_error(m, steps, args.paths, args.T, args.gamma)
            scheme.mean_excess = lambda Dh, W: torch.zeros_like(W)
            u, u_se = trace_error(m, steps, args.paths, args.T, args.gamma)
            closed = "-" if steps is None else \
                f"{-(m + 2) * (m - 1) * k**2 * (args.T / steps) * args.T / 24:+.4f}"
            print(f"| {m} | {arg} | {c:+.4f} +- {c_se:.4f} | {u:+.4f} +- {u_se:.4f} "
                  f"| {closed} |", flush=True)
    scheme.mean_excess = corrected


if __name__ == "__main__":
    main()
