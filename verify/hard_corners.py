"""The solver's stopped law at the hard corners against exact finite chains (issue 18).

For each case (a block, a V0, T, R): SDE paths at the default step and exact m x m Gram
chains (`finite.simulate`: the m x m Gram chain where the block has one, else the reduced
sampler, which has the full networks' law) at the given widths, both stopped at
tr V >= R tr V0. Reported per case: P(exit) and the survivors' mean tr V_T / tr V0, each
with its standard error, the z-score of SDE minus chain (SEs combined), the SDE's steps a
path, its blown-up and non-finite paths and its wall time. Cases:

- near-singular V0 = O diag(eps, w_2, ..., w_m) O^T (O a seeded random rotation, so the
  nearly null direction is a generic linear dependency between tokens), eps from 1e-4
  to 1e-12, for attention, the ReLU MLP, the smooth (tanh) MLP and the Transformer block;
- duplicate tokens: the first two rows of X0 equal up to a relative eps (a nearly null
  direction e_1 - e_2, kept by every block);
- many tokens: V0 = G G^T / (2m), G (m, 2m) iid N(0, 1), attention gamma 0.5, tau0 1,
  T = 1, m = 16, 32, 64 (the issue's setting).

    python verify/hard_corners.py --cases singular duplicate many --paths 2000 \
        --widths 1024 --out results/hard_corners
writes `hard_corners.json` and `hard_corners.md` (a table) under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import shapedsde
from shapedsde.finite import simulate, supports_gram
from shapedsde.sde import solve

BLOCKS = {
    "attention": dict(gamma=0.6, tau0=0.8),
    "mlp": dict(gamma=0.6),
    "mlp_smooth": dict(gamma=0.6),
    "transformer": dict(gamma=0.6, tau0=0.8),
}


@dataclass
class Case:
    name: str
    block: str
    params: dict
    V0: list
    T: float
    R: float


def make_block(name: str, params: dict):
    if name == "mlp_smooth":
        return shapedsde.block("mlp", activation="tanh", **params)
    return shapedsde.block(name, **params)


def rotated(eps: float, m: int, seed: int = 1) -> np.ndarray:
    """O diag(eps, spread...) O^T, trace about that of the identity."""
    rng = np.random.default_rng(seed)
    rot, _ = np.linalg.qr(rng.standard_normal((m, m)))
    w = np.linspace(0.8, 1.5, m)
    w[0] = eps
    V = rot @ np.diag(w) @ rot.T
    return 0.5 * (V + V.T)


def duplicated(eps: float, m: int, seed: int = 2) -> np.ndarray:
    """X X^T / n for X whose first two rows differ by a relative eps (near-duplicates)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 4 * m))
    X[1] = X[0] + eps * rng.standard_normal(4 * m)
    return X @ X.T / X.shape[1]


def many_tokens(m: int, seed: int = 0) -> np.ndarray:
    G = np.random.default_rng(seed).standard_normal((m, 2 * m))
    return G @ G.T / (2 * m)


def cases(kinds: list[str], eps_grid: list[float], blocks: list[str]) -> list[Case]:
    out = []
    for kind in kinds:
        if kind == "many":
            for m in (16, 32, 64):
                out.append(Case(f"many m={m}", "attention", dict(gamma=0.5, tau0=1.0),
                                many_tokens(m).tolist(), 1.0, 5.0))
            continue
        for name in blocks:
            for eps in eps_grid:
                V0 = rotated(eps, 3) if kind == "singular" else duplicated(eps, 3)
                out.append(Case(f"{kind} eps={eps:g}", name, BLOCKS[name], V0.tolist(),
                                0.25, 5.0))
    return out


def stopped_stats(exit_time: np.ndarray, V: np.ndarray, trace0: float) -> dict:
    """P(exit) and the survivors' mean tr V / tr V0, with their standard errors."""
    ex = np.isfinite(exit_time)
    p = float(ex.mean())
    tr = np.trace(V[~ex], axis1=-2, axis2=-1) / trace0
    return dict(p_exit=p, p_exit_se=math.sqrt(max(p * (1 - p), 1e-12) / ex.size),
                trace=float(tr.mean()), trace_se=float(tr.std(ddof=1) / math.sqrt(tr.size)))


def z(a: dict, b: dict, key: str) -> float:
    return (a[key] - b[key]) / math.hypot(a[key + "_se"], b[key + "_se"])


def run_case(case: Case, paths: int, widths: list[int], seed: int) -> dict:
    blk = make_block(case.block, case.params)
    V0 = np.array(case.V0)
    trace0 = float(np.trace(V0))
    start = time.perf_counter()
    res = solve(blk, V0, case.T, paths=paths, seed=seed, exit_trace=case.R)
    wall = time.perf_counter() - start
    # Blown-up or non-finite paths have no state: they count as exits (they left the ball).
    gone = ~res.finite.cpu().numpy() | res.exploded.numpy()
    exit_time = np.where(gone, 0.0, res.exit_time.numpy())
    V = np.nan_to_num(res.V.cpu().numpy())
    row = dict(case=asdict(case), sde=stopped_stats(exit_time, V, trace0),
               steps_per_path=float(res.steps.double().mean()), wall_s=wall,
               n_exploded=res.meta["n_exploded"], n_nonfinite=res.meta["n_nonfinite"],
               chains={})
    # The exact m x m chain where the block has one; else the reduced sampler (the full
    # networks' law, m c numbers a product instead of n c): full networks at n = 1024 would
    # draw about 1e12 Gaussians per case.
    method = "gram" if supports_gram(blk) else "reduced"
    row["finite_method"] = method
    for n in widths:
        fin = simulate(blk, V0, width=n, T=case.T, nets=paths, seed=seed + 1, method=method,
                       exit_trace=case.R)
        chain = stopped_stats(fin.exit_time.numpy(), fin.V.cpu().numpy(), trace0)
        chain.update(z_p_exit=z(row["sde"], chain, "p_exit"), z_trace=z(row["sde"], chain,
                                                                          "trace"))
        row["chains"][str(n)] = chain
    return row


def table(rows: list[dict]) -> str:
    head = ("| case | block | SDE P(exit) | chain P(exit) (n) | z | SDE surv tr V/tr V0 | "
            "chain | z | steps/path | blown up | non-finite | s |\n" + "|---" * 12 + "|\n")
    lines = []
    for r in rows:
        s = r["sde"]
        for n, c in r["chains"].items():
            lines.append(
                f"| {r['case']['name']} | {r['case']['block']} | {s['p_exit']:.4f} "
                f"+- {s['p_exit_se']:.4f} | {c['p_exit']:.4f} +- {c['p_exit_se']:.4f} ({n}) "
                f"| {c['z_p_exit']:+.1f} | {s['trace']:.4f} +- {s['trace_se']:.4f} | "
                f"{c['trace']:.4f} +- {c['trace_se']:.4f} | {c['z_trace']:+.1f} | "
                f"{r['steps_per_path']:.0f} | {r['n_exploded']} | {r['n_nonfinite']} | "
                f"{r['wall_s']:.1f} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["singular", "duplicate", "many"],
                   choices=["singular", "duplicate", "many"])
    p.add_argument("--eps", type=float, nargs="+", default=[1e-4, 1e-8, 1e-12])
    p.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=list(BLOCKS))
    p.add_argument("--paths", type=int, default=2000)
    p.add_argument("--widths", type=int, nargs="+", default=[1024])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/hard_corners"))
    args = p.parse_args()
    rows = []
    for case in cases(args.cases, args.eps, args.blocks):
        rows.append(run_case(case, args.paths, args.widths, args.seed))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        args.out.mkdir(parents=True, exist_ok=True)  # written after every case
        (args.out / "hard_corners.json").write_text(json.dumps(rows, indent=1))
        (args.out / "hard_corners.md").write_text(table(rows))
    print(f"wrote {args.out / 'hard_corners.md'}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
