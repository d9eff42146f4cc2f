"""The solver's accuracy at depth (docs/solver.md, table "Strong attention").

Exact finite networks (the m x m chain, n = 2048, 8000 nets) against SDE paths at several
step tolerances, gamma = 0.9, tau0 = 0.5, m = 3, T = 1, stopped at tr V >= 5 tr V0:
P(exit), the near-singular fraction P(lambda_min / tr V < 1e-3) and the KS distances of
the survivors' tr V and rho^{01}. About 15 minutes on 2 cores:

    python verify/solver_accuracy.py [--width 2048] [--nets 8000] [--paths 8000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.stats import ks_2samp

import shapedsde
from shapedsde.finite import simulate
from shapedsde.sde import solve

V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])


def summary(V: np.ndarray, exited: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    ok = np.isfinite(V).all(axis=(-2, -1))
    lam = np.linalg.eigvalsh(V[ok])
    Vs = V[~exited & ok]
    rho = Vs[:, 0, 1] / np.sqrt(Vs[:, 0, 0] * Vs[:, 1, 1])
    stats = {"p_exit": float(exited.mean()),
             "near_singular": float((lam[:, 0] / lam.sum(-1) < 1e-3).sum() / len(V))}
    return stats, np.trace(Vs, axis1=1, axis2=2), rho


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--nets", type=int, default=8000)
    p.add_argument("--paths", type=int, default=8000)
    args = p.parse_args()
    torch.set_num_threads(1)
    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5)
    run = simulate(blk, V0, width=args.width, T=1.0, nets=args.nets, seed=args.width,
                   method="gram", exit_trace=5.0, progress=True)
    ref, tr_ref, rho_ref = summary(run.V.numpy(), run.exited.numpy())
    print(f"finite n={args.width}: {json.dumps(ref)}", flush=True)
    for rtol in (0.02, 0.05, 0.1, 0.2):
        t = time.perf_counter()
        res = solve(blk, V0, 1.0, paths=args.paths, seed=int(1000 * rtol), rtol=rtol,
                    exit_trace=5.0)
        s, tr, rho = summary(res.V.numpy(), res.exited.numpy())
        s.update(ks_trace=float(ks_2samp(tr, tr_ref).statistic),
                 ks_rho=float(ks_2samp(rho, rho_ref).statistic),
                 steps_per_path=res.meta["steps_mean"], seconds=time.perf_counter() - t)
        print(f"SDE rtol={rtol}: {json.dumps(s)}", flush=True)


if __name__ == "__main__":
    main()
