"""The stopped process at depth on a grid of strong-attention settings (docs/solver.md).

For each setting: exact finite networks at several widths (the m x m chain "gram" where
the block has one, else the reduced sampler), stopped at tr V >= R tr V0, against SDE
paths at the solver's default (adaptive) step, compared by
`shapedsde.verification.depth.compare_stopped` (proportions extrapolated in n^{-1/2} from
the two largest widths, survivors' laws at the largest width): z of P(exit) and of the
near-singular fraction P(lambda_min / tr V < 1e-3), the largest |z| over the survival
curve, KS of the survivors' tr V / tr V0 and rho^{01}. The same finite sample is compared
with the old default grid (200 fixed steps of the same scheme, timed in the same run: the
cost ratio) and with a wrong SDE (drift scaled) that the statistics must reject.

    python verify/depth_grid.py [--seed 0] [--nets 6000] [--paths 6000] [--only LABEL ...]
    python verify/depth_grid.py --table     # the markdown table from results/depth_grid/
    python verify/depth_grid.py --retime --only 0   # re-time the SDE runs of setting 0
    python verify/depth_grid.py --rtols 0.1,0.03 --only 3   # the SDE's P(exit) against rtol

Results: one JSON per setting in results/depth_grid/, and table.md there. About 35 minutes
on one core at the default sizes (`--quick`: a smoke run of a minute).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shapedsde.blocks import block as make_block
from shapedsde.finite import simulate, supports_gram
from shapedsde.sde import solve
from shapedsde.verification.common import ScaledDrift, derive_seed
from shapedsde.verification.depth import V_DEPTH, Stopped, compare_stopped

V4 = [[1.0, 0.3, 0.1, 0.0], [0.3, 1.0, 0.2, 0.1], [0.1, 0.2, 1.0, 0.3], [0.0, 0.1, 0.3, 1.0]]
#: |z| and the KS p-value equivalent of 3 standard errors (two-sided).
Z_LIMIT = 3.0
P_LIMIT = 2 * 0.0013499
#: Two-sample KS 5% critical value coefficient: c sqrt((n1 + n2) / (n1 n2)).
KS_C05 = 1.358


@dataclass
class Setting:
    label: str
    block: str
    params: dict
    m: int
    T: float
    control: float  # drift factor of the wrong-SDE control
    paths: int | None = None  # SDE paths, if not the common number (slow noise)
    extra: dict = field(default_factory=dict)

    @property
    def V0(self) -> np.ndarray:
        return np.array(V_DEPTH if self.m == 3 else V4)


SETTINGS = [
    Setting("attention main", "attention", {"gamma": 0.9, "tau0": 0.5}, 3, 1.0, 0.25),
    Setting("attention", "attention", {"gamma": 0.8, "tau0": 0.3}, 3, 1.0, 0.25),
    Setting("attention", "attention", {"gamma": 0.95, "tau0": 0.6}, 3, 1.0, 0.25),
    Setting("attention", "attention", {"gamma": 0.8, "tau0": 0.6}, 4, 1.0, 0.25),
    Setting("attention", "attention", {"gamma": 0.95, "tau0": 0.3}, 4, 0.5, 0.25),
    # No structured noise for the causal block: Sigma is eigen-factorised (O(m^6)) per
    # step, about 40 ms per path at m = 3, hence fewer paths.
    Setting("causal", "attention", {"gamma": 0.95, "tau0": 0.6, "causal": True}, 3, 1.0, 0.25,
            paths=2000),
    Setting("heads=2", "attention", {"gamma": 0.9, "tau0": 0.5, "heads": 2}, 3, 0.5, 0.5),
    Setting("transformer", "transformer", {"gamma": 0.9, "tau0": 0.6}, 3, 1.0, 0.0),
]


def slug(s: Setting) -> str:
    p = "_".join(f"{k}{v}" for k, v in s.params.items())
    return f"{s.block}_{p}_m{s.m}_T{s.T:g}".replace("True", "1")


def run_sde(coef: Any, s: Setting, paths: int, seed: int, steps: int | None
            ) -> tuple[Stopped, dict]:
    with warnings.catch_warnings():  # non-finite paths are counted in the metadata
        warnings.simplefilter("ignore", RuntimeWarning)
        res = solve(coef, s.V0, s.T, paths=paths, seed=seed, exit_trace=ARGS.R, steps=steps)
    return Stopped(res.V.numpy(), res.exit_time.numpy(), s.T, float(np.trace(s.V0))), res.meta


def run_finite(s: Setting, widths: list[int], nets: int, seed: int) -> dict[int, Stopped]:
    blk = make_block(s.block, **s.params)
    method = "gram" if supports_gram(blk) else "reduced"
    out = {}
    for i, n in enumerate(widths):
        t = time.perf_counter()
        run = simulate(blk, s.V0, width=n, T=s.T, nets=nets, seed=seed + 10 + i,
                       method=method, exit_trace=ARGS.R)
        out[n] = Stopped(run.V.numpy(), run.exit_time.numpy(), s.T, float(np.trace(s.V0)))
        print(f"  finite n={n} ({method}): P(exit) {out[n].exited.mean():.4f}, "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    return out


def _ks_level(cmp: dict, finite: Stopped, sde: Stopped) -> dict:
    """KS statistics with their 5% critical values (the noise level of two samples)."""
    n1, n2 = int((~finite.exited).sum()), int((~sde.exited).sum())
    crit = KS_C05 * math.sqrt((n1 + n2) / (n1 * n2))
    return {k: {**v, "crit05": crit} for k, v in cmp["ks"].items()}


def summarise(cmp: dict, finite: Stopped, sde: Stopped, T: float) -> dict:
    ks = _ks_level(cmp, finite, sde)
    z = cmp["z"]
    surv = max(abs(v) for k, v in z.items() if k.startswith("survival"))
    ok = (max(abs(v) for v in z.values()) <= Z_LIMIT
          and min(v["pvalue"] for v in ks.values()) >= P_LIMIT)
    return {"z_exit": -z[f"survival(t={T:g})"], "z_near_singular": z["near_singular"],
            "z_survival_max": surv, "z_max": max(abs(v) for v in z.values()),
            "ks_pmin": min(v["pvalue"] for v in ks.values()), "ks": ks, "agrees_3se": bool(ok),
            "values": cmp["values"]}


def check(s: Setting) -> dict:
    seed = derive_seed(ARGS.seed, f"depth_grid/{slug(s)}")
    blk = make_block(s.block, **s.params)
    gram = supports_gram(blk)
    widths = ARGS.gram_widths if gram else ARGS.reduced_widths
    paths = min(ARGS.paths, s.paths or ARGS.paths)
    print(f"{s.label} {s.params} m={s.m} T={s.T:g}: {ARGS.nets} nets at {widths}, "
          f"{paths} SDE paths", flush=True)
    finite = run_finite(s, widths, ARGS.nets, seed)
    top = finite[max(finite)]
    out: dict[str, Any] = {"label": s.label, "block": s.block, "params": s.params, "m": s.m,
                           "T": s.T, "R": ARGS.R, "widths": widths, "nets": ARGS.nets,
                           "paths": paths, "method": "gram" if gram else "reduced",
                           "p_exit_finite": {n: float(f.exited.mean())
                                             for n, f in finite.items()}}
    runs = {"default": (blk, seed, None), f"fixed{ARGS.fixed_steps}":
            (blk, seed + 1, ARGS.fixed_steps), "control": (ScaledDrift(blk, s.control),
                                                          seed + 2, None)}
    for name, (coef, sd, steps) in runs.items():
        sde, meta = run_sde(coef, s, paths, sd, steps)
        res = summarise(compare_stopped(finite, sde), top, sde, s.T)
        res.update(p_exit=meta["p_exit"], p_exit_se=meta["p_exit_se"],
                   steps_mean=meta["steps_mean"], wall_s=meta["wall_s"],
                   n_nonfinite=meta["n_nonfinite"], n_exploded=meta["n_exploded"])
        out[name] = res
        print(f"  SDE {name}: P(exit) {meta['p_exit']:.4f} +- {meta['p_exit_se']:.4f}, "
              f"{meta['steps_mean']:.0f} steps/path, {meta['wall_s']:.0f} s | z exit "
              f"{res['z_exit']:+.2f}, z near-singular {res['z_near_singular']:+.2f}, "
              f"survival max|z| {res['z_survival_max']:.2f}, KS p "
              + ", ".join(f"{k} {v['pvalue']:.3g}" for k, v in res["ks"].items()), flush=True)
    out["cost_ratio"] = out["default"]["wall_s"] / out[f"fixed{ARGS.fixed_steps}"]["wall_s"]
    return out


def retime(s: Setting, path: Path) -> None:
    """Time the default and the fixed-step runs again (same seeds, so the same samples),
    alternating, best of two each, and replace the cost ratio in the saved result: for a
    run whose timing was disturbed by other work on the machine."""
    seed = derive_seed(ARGS.seed, f"depth_grid/{slug(s)}")
    blk = make_block(s.block, **s.params)
    r = json.loads(path.read_text())
    best = {"default": math.inf, "fixed": math.inf}
    for _ in range(2):
        for name, sd, steps in (("default", seed, None), ("fixed", seed + 1, ARGS.fixed_steps)):
            best[name] = min(best[name], run_sde(blk, s, r["paths"], sd, steps)[1]["wall_s"])
    r["cost_ratio"] = best["default"] / best["fixed"]
    r["retimed_s"] = best
    path.write_text(json.dumps(r, indent=1))
    print(f"{s.label} {s.params}: default {best['default']:.1f} s, {ARGS.fixed_steps} fixed "
          f"{best['fixed']:.1f} s, ratio {r['cost_ratio']:.2f}", flush=True)


def rtol_check(s: Setting, rtols: list[float]) -> None:
    """SDE P(exit) of one setting at several step tolerances (no finite networks): is the
    default's P(exit) converged in the step?"""
    blk = make_block(s.block, **s.params)
    for rtol in rtols:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = solve(blk, s.V0, s.T, paths=ARGS.paths, seed=int(7 + 1000 * rtol), rtol=rtol,
                        exit_trace=ARGS.R)
        d = res.meta
        print(f"{s.label} {s.params} m={s.m} T={s.T:g} rtol={rtol:g}: P(exit) {d['p_exit']:.4f}"
              f" +- {d['p_exit_se']:.4f}, {d['steps_mean']:.0f} steps/path, {d['wall_s']:.0f} s",
              flush=True)


def _setting_name(r: dict) -> str:
    p = ", ".join(f"{k} {v:g}" if not isinstance(v, bool) else k for k, v in r["params"].items())
    return f"{r['block']} ({p}), m = {r['m']}, T = {r['T']:g}"


def row(r: dict) -> str:
    d, fixed = r["default"], r[[k for k in r if k.startswith("fixed")][0]]
    fin = (", ".join(f"{p:.3f}" for p in r["p_exit_finite"].values()) + " (n = "
           + ", ".join(str(n) for n in r["p_exit_finite"]) + ")")
    ex = d["values"][f"survival(t={r['T']:g})"]
    ns = d["values"]["near_singular"]
    ks = "; ".join(f"{v['statistic']:.3f} / {v['crit05']:.3f}" for v in d["ks"].values())
    return (f"| {_setting_name(r)} | {fin} | {1 - ex['finite_extrapolated']:.3f} | "
            f"{d['p_exit']:.3f} +- {d['p_exit_se']:.3f} | {d['z_exit']:+.2f} | "
            f"{ns['finite_extrapolated']:.4f} / {ns['sde']:.4f} | {d['z_near_singular']:+.2f} | "
            f"{d['z_survival_max']:.2f} | {ks} | "
            f"{min(v['pvalue'] for v in d['ks'].values()):.2g} | {d['steps_mean']:.0f} | "
            f"{r['cost_ratio']:.2f} | {fixed['z_exit']:+.2f} | "
            f"{r['control']['z_max']:.1f}, {r['control']['ks_pmin']:.1g} | "
            f"{'yes' if d['agrees_3se'] else 'NO'} |")


HEADER = ("| setting | finite P(exit) by width | n -> inf | SDE P(exit) | z | "
          "near-singular finite / SDE | z | survival max abs z | KS tr V; KS rho (stat / 5% "
          "crit) | KS p min | steps/path | time / 200 fixed | z exit, 200 fixed | "
          "control max abs z, KS p | within 3 SE |\n" + "|---" * 15 + "|")


def table(results: list[dict]) -> str:
    return "\n".join([HEADER, *(row(r) for r in results)])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nets", type=int, default=6000, help="finite networks per width")
    p.add_argument("--paths", type=int, default=6000, help="SDE paths per run")
    p.add_argument("--gram-widths", type=lambda s: [int(x) for x in s.split(",")],
                   default=[256, 1024, 4096])
    p.add_argument("--reduced-widths", type=lambda s: [int(x) for x in s.split(",")],
                   default=[32, 128])
    p.add_argument("--fixed-steps", type=int, default=200, help="the old default grid")
    p.add_argument("--R", type=float, default=5.0, help="exit at tr V >= R tr V0")
    p.add_argument("--only", nargs="*", type=int, help="indices of SETTINGS to run")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    p.add_argument("--table", action="store_true", help="print the table of saved results")
    p.add_argument("--rtols", type=lambda s: [float(x) for x in s.split(",")],
                   help="only the SDE's P(exit) of the --only settings at these rtol")
    p.add_argument("--retime", action="store_true",
                   help="re-time the SDE runs of the --only settings (saved results)")
    p.add_argument("--out", default="results/depth_grid")
    args = p.parse_args(argv)
    if args.quick:
        args.nets, args.paths = 300, 300
        args.gram_widths, args.reduced_widths = [16, 64], [8, 16]
    return args


def main(argv: list[str] | None = None) -> None:
    global ARGS
    ARGS = parse(argv)
    torch.set_num_threads(1)
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = ARGS.only if ARGS.only is not None else range(len(SETTINGS))
    if ARGS.rtols:
        for i in chosen:
            rtol_check(SETTINGS[i], ARGS.rtols)
        return
    if ARGS.retime:
        for i in chosen:
            retime(SETTINGS[i], out / f"{i}_{slug(SETTINGS[i])}.json")
    elif not ARGS.table:
        for i in chosen:
            r = check(SETTINGS[i])
            (out / f"{i}_{slug(SETTINGS[i])}.json").write_text(json.dumps(r, indent=1))
    results = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    print(text)


ARGS = parse([])

if __name__ == "__main__":
    main()
