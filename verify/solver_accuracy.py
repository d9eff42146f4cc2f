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

import shapedsde
from shapedsde.finite import simulate
from shapedsde.sde import solve
from shapedsde.verification.depth import Stopped, stopped_statistics
from shapedsde.verification.engine import distance

V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])


def summary(run) -> tuple[dict, np.ndarray, np.ndarray]:
    """P(exit), the near-singular fraction, and the survivors' tr V / tr V0 and rho^{01}
    of a stopped run (finite or SDE), by the depth checks' own statistics."""
    st = stopped_statistics(Stopped(run.V.cpu().numpy(), run.exit_time.numpy(), 1.0,
                                    float(np.trace(V0))), np.array([]))
    stats = {"p_exit": float(np.isfinite(run.exit_time.numpy()).mean()),
             "near_singular": st["proportions"]["near_singular"]}
    return stats, st["trace"], st["rho01"]


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
    ref, tr_ref, rho_ref = summary(run)
    print(f"finite n={args.width}: {json.dumps(ref)}", flush=True)
    for rtol in (0.02, 0.05, 0.1, 0.2):
        t = time.perf_counter()
        res = solve(blk, V0, 1.0, paths=args.paths, seed=int(1000 * rtol), rtol=rtol,
                    exit_trace=5.0)
        s, tr, rho = summary(res)
        s.update(ks_trace=distance(tr, tr_ref)["ks"], ks_rho=distance(rho, rho_ref)["ks"],
                 steps_per_path=res.meta["steps_mean"], seconds=time.perf_counter() - t)
        print(f"SDE rtol={rtol}: {json.dumps(s)}", flush=True)


if __name__ == "__main__":
    main()
