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
    python verify/depth_grid.py --study --only 3 --widths 1024,4096 --rtols 0.1,0.03

`--study`: the convergence of one setting in both limits, finite networks at `--widths`
(seeds keyed by the width, samples cached in results/depth_grid/samples/, so widths can be
added in later runs) against the SDE at each of `--rtols` (default 0.1): P(exit) by width
with a weighted least-squares fit in n^{-1/2} over all widths (and with a free exponent),
P(exit) by rtol, `compare_stopped` of the finite sample against each SDE run, and the KS
distance and mean of the survivors' tr V / tr V0 at each width against each SDE run.
Results in results/depth_grid/study/.

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

from shapedsde import block as make_block
from shapedsde.finite import simulate, supports_gram
from shapedsde.sde import solve
from shapedsde.verification.common import ScaledDrift, derive_seed
from shapedsde.verification.depth import V_DEPTH, Stopped, compare_stopped
from shapedsde.verification.engine import distance

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


# ----------------------------------------------------------------------------
# Convergence study of one setting (--study)


def _cached(path: Path, make: Any) -> tuple[Stopped, dict]:
    """A stopped sample (and its metadata) from `path` (.npz), made by `make()` if absent."""
    if path.exists():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        return Stopped(z["V"], z["exit_time"], meta["T"], meta["trace0"]), meta
    s, meta = make()
    meta = {**meta, "T": s.T, "trace0": s.trace0}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, V=s.V, exit_time=s.exit_time, meta=json.dumps(meta))
    return s, meta


def study_finite(i: int, s: Setting, n: int, nets: int) -> tuple[Stopped, dict]:
    """`nets` finite networks of setting i at width n (seed keyed by the width; cached)."""
    blk = make_block(s.block, **s.params)
    method = "gram" if supports_gram(blk) else "reduced"
    seed = derive_seed(ARGS.seed, f"depth_grid/{slug(s)}/n={n}")

    def make() -> tuple[Stopped, dict]:
        t = time.perf_counter()
        run = simulate(blk, s.V0, width=n, T=s.T, nets=nets, seed=seed, method=method,
                       exit_trace=ARGS.R)
        st = Stopped(run.V.numpy(), run.exit_time.numpy(), s.T, float(np.trace(s.V0)))
        return st, {"method": method, "seed": seed, "wall_s": time.perf_counter() - t}

    name = f"{i}_{slug(s)}_R{ARGS.R:g}_n{n}_nets{nets}_seed{ARGS.seed}.npz"
    return _cached(Path(ARGS.out) / "samples" / name, make)


def study_sde(i: int, s: Setting, rtol: float, paths: int) -> tuple[Stopped, dict]:
    """`paths` SDE paths of setting i at step tolerance rtol (seed keyed by rtol; cached)."""
    blk = make_block(s.block, **s.params)
    seed = derive_seed(ARGS.seed, f"depth_grid/{slug(s)}/rtol={rtol:g}")

    def make() -> tuple[Stopped, dict]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = solve(blk, s.V0, s.T, paths=paths, seed=seed, rtol=rtol, exit_trace=ARGS.R)
        st = Stopped(res.V.numpy(), res.exit_time.numpy(), s.T, float(np.trace(s.V0)))
        keep = ("p_exit", "p_exit_se", "steps_mean", "wall_s", "n_nonfinite", "n_exploded")
        return st, {"seed": seed, **{k: res.meta[k] for k in keep}}

    name = f"{i}_{slug(s)}_R{ARGS.R:g}_rtol{rtol:g}_paths{paths}_seed{ARGS.seed}.npz"
    return _cached(Path(ARGS.out) / "samples" / name, make)


def fit_exit(widths: list[int], p: np.ndarray, se: np.ndarray) -> dict:
    """P(exit)(n) = p_inf - c n^{-1/2} by weighted least squares over all widths (p_inf,
    c with SEs, chi^2 and its p-value), and with a free exponent a (p_inf - c n^{-a})."""
    from scipy.optimize import curve_fit
    from scipy.stats import chi2

    x = np.asarray(widths, np.float64) ** -0.5
    A = np.stack([np.ones_like(x), -x], 1) / se[:, None]
    coef, *_ = np.linalg.lstsq(A, p / se, rcond=None)
    cov = np.linalg.inv(A.T @ A)
    resid = (p - (coef[0] - coef[1] * x)) / se
    dof = len(widths) - 2
    out: dict[str, Any] = {
        "half": {"p_inf": coef[0], "p_inf_se": math.sqrt(cov[0, 0]), "c": coef[1],
                 "c_se": math.sqrt(cov[1, 1]), "chi2": float(resid @ resid), "dof": dof,
                 "chi2_p": float(chi2.sf(resid @ resid, dof)) if dof > 0 else math.nan}}
    if len(widths) >= 4:
        def f(n: np.ndarray, p_inf: float, c: float, a: float) -> np.ndarray:
            return p_inf - c * n ** -a
        try:
            popt, pcov = curve_fit(f, np.asarray(widths, np.float64), p, sigma=se,
                                   absolute_sigma=True, p0=(coef[0], coef[1], 0.5),
                                   maxfev=20000)
            out["free"] = {"p_inf": popt[0], "p_inf_se": math.sqrt(pcov[0, 0]), "c": popt[1],
                           "a": popt[2], "a_se": math.sqrt(pcov[2, 2])}
        except RuntimeError as e:  # no convergence: reported, not fatal
            out["free"] = {"error": str(e)}
    return {k: {kk: float(vv) if not isinstance(vv, str) else vv for kk, vv in v.items()}
            for k, v in out.items()}


def _survivor_trace(s: Stopped) -> np.ndarray:
    keep = ~s.exited & np.isfinite(s.V).all(axis=(-2, -1))
    return np.trace(s.V[keep], axis1=1, axis2=2) / s.trace0


def study(i: int) -> dict:
    s = SETTINGS[i]
    widths = ARGS.widths or (ARGS.gram_widths if supports_gram(make_block(s.block, **s.params))
                             else ARGS.reduced_widths)
    rtols = ARGS.rtols or [0.1]
    print(f"study {i}: {s.label} {s.params} m={s.m} T={s.T:g}: {ARGS.nets} nets at {widths}, "
          f"{ARGS.paths} SDE paths at rtol {rtols}", flush=True)
    finite, fmeta = {}, {}
    for n in widths:
        finite[n], fmeta[n] = study_finite(i, s, n, ARGS.nets)
        pe = finite[n].exited.mean()
        print(f"  finite n={n} ({fmeta[n]['method']}, seed {fmeta[n]['seed']}): P(exit) "
              f"{pe:.4f} +- {math.sqrt(pe * (1 - pe) / ARGS.nets):.4f}, "
              f"{fmeta[n]['wall_s']:.0f} s", flush=True)
    p = np.array([finite[n].exited.mean() for n in widths])
    se = np.sqrt(p * (1 - p) / ARGS.nets)
    fit = fit_exit(widths, p, se)
    h = fit["half"]
    print(f"  fit p_inf - c n^-1/2 over {widths}: p_inf {h['p_inf']:.4f} +- {h['p_inf_se']:.4f},"
          f" c {h['c']:.3f} +- {h['c_se']:.3f}, chi2 {h['chi2']:.2f} / {h['dof']} "
          f"(p {h['chi2_p']:.2g})", flush=True)
    if "free" in fit:
        f = fit["free"]
        print("  fit p_inf - c n^-a: " + (f"p_inf {f['p_inf']:.4f} +- {f['p_inf_se']:.4f}, "
                                          f"a {f['a']:.2f} +- {f['a_se']:.2f}" if "a" in f
                                          else f"no fit ({f['error']})"), flush=True)
    out: dict[str, Any] = {"setting": i, "label": s.label, "block": s.block, "params": s.params,
                           "m": s.m, "T": s.T, "R": ARGS.R, "nets": ARGS.nets,
                           "paths": ARGS.paths, "widths": widths, "finite": {}, "fit": fit,
                           "sde": {}}
    for n in widths:
        out["finite"][n] = {**fmeta[n], "p_exit": float(finite[n].exited.mean())}
    for rtol in rtols:
        sde, meta = study_sde(i, s, rtol, ARGS.paths)
        res = summarise(compare_stopped(finite, sde), finite[max(finite)], sde, s.T)
        q, sq = meta["p_exit"], meta["p_exit_se"]
        res.update(meta)
        res["z_exit_fit"] = (h["p_inf"] - q) / math.hypot(h["p_inf_se"], sq)
        res["z_exit_top"] = (p[-1] - q) / math.hypot(se[-1], sq)
        tr_sde = _survivor_trace(sde)
        res["trace_by_width"] = {}
        print(f"  SDE rtol={rtol:g} (seed {meta['seed']}): P(exit) {q:.4f} +- {sq:.4f}, "
              f"{meta['steps_mean']:.0f} steps/path, {meta['wall_s']:.0f} s | z exit: "
              f"extrapolated (two largest) {res['z_exit']:+.2f}, fit {res['z_exit_fit']:+.2f}, "
              f"n={widths[-1]} {res['z_exit_top']:+.2f}; z near-singular "
              f"{res['z_near_singular']:+.2f}; KS p (n={widths[-1]}) "
              + ", ".join(f"{k} {v['pvalue']:.3g}" for k, v in res["ks"].items()), flush=True)
        for n in widths:
            tr = _survivor_trace(finite[n])
            d = distance(tr, tr_sde)
            dm = tr.mean() - tr_sde.mean()
            dm_se = math.hypot(tr.std() / math.sqrt(len(tr)), tr_sde.std() / math.sqrt(len(tr_sde)))
            res["trace_by_width"][n] = {"ks": d["ks"], "p": d["p"], "crit05": d["ks_crit"],
                                        "mean_diff": float(dm), "mean_diff_se": dm_se}
            print(f"    survivors' tr V / tr V0, n={n}: KS {d['ks']:.4f} (5% crit "
                  f"{d['ks_crit']:.4f}, p {d['p']:.2g}); mean finite - SDE {dm:+.4f} +- "
                  f"{dm_se:.4f}", flush=True)
        out["sde"][rtol] = res
    ref = rtols[0]
    for rtol in rtols[1:]:
        a, b = out["sde"][ref], out["sde"][rtol]
        z = (b["p_exit"] - a["p_exit"]) / math.hypot(a["p_exit_se"], b["p_exit_se"])
        d = distance(_survivor_trace(study_sde(i, s, ref, ARGS.paths)[0]),
                     _survivor_trace(study_sde(i, s, rtol, ARGS.paths)[0]))
        b["vs_first_rtol"] = {"z_exit": z, "ks_trace": d["ks"], "ks_trace_p": d["p"],
                              "crit05": d["ks_crit"]}
        print(f"  SDE rtol {rtol:g} - {ref:g}: P(exit) {b['p_exit'] - a['p_exit']:+.4f} "
              f"(z {z:+.2f}); survivors' tr V KS {d['ks']:.4f} (5% crit {d['ks_crit']:.4f}, "
              f"p {d['p']:.2g})", flush=True)
    return out


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
    p.add_argument("--study", action="store_true",
                   help="convergence study of the --only settings (finite at --widths against "
                   "the SDE at each of --rtols)")
    p.add_argument("--widths", type=lambda s: [int(x) for x in s.split(",")],
                   help="finite widths of --study (default: --gram-widths or --reduced-widths)")
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
    if ARGS.study:
        (out / "study").mkdir(exist_ok=True)
        for i in chosen:
            r = study(i)
            (out / "study" / f"{i}_{slug(SETTINGS[i])}.json").write_text(
                json.dumps(r, indent=1, default=float))
        return
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
