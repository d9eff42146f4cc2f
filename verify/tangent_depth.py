"""The tangent's stopped law at depth against finite networks with their JVP (issue 19).

For each case (a block, m, T), from Q0 = [[V0, 0], [0, I]]: SDE paths of `tangent(block)`
at the default step, and finite networks of width n at depth T n carrying their JVP (the
exact Q chain where the block has one: single-head attention, causal or not; else the
block's finite face with `torch.func.jvp`), both stopped at tr V >= R tr V0. Reported:
P(exit), and for the survivors the Jacobian growth g = log(tr U_T / tr U_0) and the
relative sensitivity s = log[(tr U_T / tr V_T) / (tr U_0 / tr V_0)]: means with standard
errors, the z-score of SDE minus networks, the two-sample KS p-value, and the same for the
control with the Softmax derivative dropped (dA = 0; exact chain only), which should be
rejected.

    python verify/tangent_depth.py --cases attention causal heads2 transformer \
        --paths 1000 --out results/tangent_depth
writes `tangent_depth.json` and `tangent_depth.md` under --out (results/ is ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp

import shapedsde
from shapedsde.finite import simulate, supports_gram
from shapedsde.sde import solve
from shapedsde.tangent import initial_joint, tangent

V0S = {3: np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]]),
       4: np.array([[1.0, 0.3, 0.1, 0.0], [0.3, 1.0, 0.2, 0.1], [0.1, 0.2, 1.0, 0.3],
                    [0.0, 0.1, 0.3, 1.0]])}
CASES = {
    "attention": ("attention", dict(gamma=0.8, tau0=0.6), 3, 0.5, 1024),
    "attention_m4_T1": ("attention", dict(gamma=0.6, tau0=0.8), 4, 1.0, 1024),
    "causal": ("attention", dict(gamma=0.8, tau0=0.6, causal=True), 3, 0.5, 1024),
    "heads2": ("attention", dict(gamma=0.8, tau0=0.6, heads=2), 3, 0.5, 128),
    "transformer": ("transformer", dict(gamma=0.6, tau0=0.8), 3, 0.5, 128),
}


def statistics(Q: np.ndarray, exit_time: np.ndarray) -> dict:
    """P(exit) and the survivors' g and s samples from Q (N, 2m, 2m) at T."""
    m = Q.shape[-1] // 2
    out = np.isfinite(exit_time)
    keep = ~out & np.isfinite(Q).all(axis=(1, 2))
    S = Q[keep]
    trV, trU = np.einsum("bii->b", S[:, :m, :m]), np.einsum("bii->b", S[:, m:, m:])
    return {"p_exit": float(out.mean()), "n": int(len(out)), "g": np.log(trU / m),
            "s": np.log((trU / trV) / (m / m))}


def compare(a: dict, b: dict) -> dict:
    """z-scores of a - b (P(exit), mean g, mean s) and KS p-values of g and s."""
    se_p = math.sqrt(a["p_exit"] * (1 - a["p_exit"]) / a["n"]
                     + b["p_exit"] * (1 - b["p_exit"]) / b["n"])
    out = {"z_p_exit": (a["p_exit"] - b["p_exit"]) / max(se_p, 1e-12)}
    for k in ("g", "s"):
        se = math.sqrt(a[k].var() / len(a[k]) + b[k].var() / len(b[k]))
        out[f"z_{k}"] = float((a[k].mean() - b[k].mean()) / se)
        out[f"ks_p_{k}"] = float(ks_2samp(a[k], b[k]).pvalue)
    return out


def summary(s: dict) -> dict:
    return {"p_exit": s["p_exit"], "p_exit_se": math.sqrt(s["p_exit"] * (1 - s["p_exit"]) / s["n"]),
            **{f"{k}_mean": float(s[k].mean()) for k in ("g", "s")},
            **{f"{k}_se": float(s[k].std() / math.sqrt(len(s[k]))) for k in ("g", "s")},
            **{f"{k}_sd": float(s[k].std()) for k in ("g", "s")}}


def run_case(name: str, paths: int, seed: int, R: float) -> dict:
    block_name, params, m, T, n = CASES[name]
    blk = shapedsde.block(block_name, **params)
    Q0 = initial_joint(V0S[m])
    t0 = time.perf_counter()
    sde = solve(tangent(blk), Q0, T, paths=paths, seed=seed, exit_trace=R)
    t1 = time.perf_counter()
    method = "gram" if supports_gram(tangent(blk)) else "full"
    net = simulate(tangent(blk), Q0, width=n, T=T, nets=paths, seed=seed + 1, method=method,
                   exit_trace=R)
    t2 = time.perf_counter()
    a = statistics(sde.V.numpy(), sde.exit_time.numpy())
    b = statistics(net.V.numpy(), net.exit_time.numpy())
    row = {"case": name, "block": blk.name, "params": params, "m": m, "T": T, "R": R,
           "width": n, "method": method, "paths": paths, "sde": summary(a),
           "networks": summary(b), "sde_vs_networks": compare(a, b),
           "sde_steps_mean": sde.meta["steps_mean"], "sde_exploded": sde.meta["n_exploded"],
           "sde_nonfinite": sde.meta["n_nonfinite"], "wall_sde_s": t1 - t0,
           "wall_networks_s": t2 - t1}
    if method == "gram":
        ctl = solve(tangent(blk, frozen_mixing=True), Q0, T, paths=paths, seed=seed + 2,
                    exit_trace=R)
        row["control_dA0_vs_networks"] = compare(
            statistics(ctl.V.numpy(), ctl.exit_time.numpy()), b)
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| case | n | P(exit) SDE | P(exit) nets | z | mean g SDE | mean g nets | z | KS p (g) "
            "| z s | KS p (s) | control dA = 0: z g, KS p (g) |\n|---" + "|---" * 11 + "|")
    lines = [head]
    for r in rows:
        a, b, c = r["sde"], r["networks"], r["sde_vs_networks"]
        ctl = r.get("control_dA0_vs_networks")
        ctl_txt = "no chain" if ctl is None else f"{ctl['z_g']:+.1f}, {ctl['ks_p_g']:.1e}"
        lines.append(
            f"| {r['case']} | {r['width']} ({r['method']}) | {a['p_exit']:.3f} +- "
            f"{a['p_exit_se']:.3f} | {b['p_exit']:.3f} +- {b['p_exit_se']:.3f} | "
            f"{c['z_p_exit']:+.1f} | {a['g_mean']:.3f} +- {a['g_se']:.3f} | {b['g_mean']:.3f} "
            f"+- {b['g_se']:.3f} | {c['z_g']:+.1f} | {c['ks_p_g']:.2f} | {c['z_s']:+.1f} | "
            f"{c['ks_p_s']:.2f} | {ctl_txt} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--paths", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exit-trace", type=float, default=5.0, dest="R")
    p.add_argument("--out", default="results/tangent_depth")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.cases:
        rows.append(run_case(name, args.paths, args.seed, args.R))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tangent_depth.json").write_text(json.dumps(rows, indent=1))
    (out / "tangent_depth.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
