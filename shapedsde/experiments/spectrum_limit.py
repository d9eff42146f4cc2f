"""The spectrum of V at many tokens: the linear block against its large-m limit (free
positive multiplicative Brownian motion, `shapedsde.symbolic.free_limit`), and what shaped
attention does to the log-spectrum (no known answer). docs/spectrum.md shows the output.

    python -m shapedsde.experiments.spectrum_limit --out docs/figures/spectrum_limit

writes OUT.json (the moment table: Monte-Carlo mean and SE, the exact finite-m value, the
limit and its 1/m correction; the density distances; the attention summary) and OUT.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _io
from ..registry import block
from ..spectrum import eigenvalues, log_spectrum_flags
from ..symbolic import free_limit as fl
from ..verification.engine import solve_quiet
from ..verification.spectrum import moment_table, spectral_density, spectrum_statistics

#: (m, paths) of the linear-block runs, gamma = 1 (c = 1) and s = m t = 1.
RUNS = ((64, 800), (128, 200), (256, 40))
GAMMA, S, K = 1.0, 1.0, 4


def linear_rows(runs: tuple[tuple[int, int], ...] = RUNS, seed: int = 0, s: float = S,
                gamma: float = GAMMA) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    """Per m: the trace moments of V_{s/m} / 1 (V_0 = I) from the SDE (default step), with
    the exact finite-m value, the limit and its first 1/m correction; and the pooled
    eigenvalues."""
    blk = block("linear", gamma=gamma)
    c = gamma**2 * (2 - gamma**2)
    rows, eig = [], {}
    for m, paths in runs:
        t0 = time.perf_counter()
        res = solve_quiet(blk, np.eye(m), s / m, paths=paths, seed=seed + m)
        tab = moment_table(res.V, K)
        for k in range(2, K + 1):
            lim = fl.limit_moment_value(k, c, s)
            corr = float(fl.first_correction(k).subs({fl.c: c, fl.s: s})) / m
            rows.append({"m": m, "paths": tab["n"], "k": k, "mc": float(tab["mean"][k - 1]),
                         "se": float(tab["se"][k - 1]),
                         "exact_m": fl.exact_normalised_moment(k, c, m, s),
                         "limit": lim, "limit_plus_1_over_m": lim + corr,
                         "steps_mean": res.meta["steps_mean"],
                         "seconds": time.perf_counter() - t0})
        w = eigenvalues(res.V).numpy()
        eig[m] = w[np.isfinite(w).all(axis=1)].ravel()
    return rows, eig


def density_distance(eig: np.ndarray, time_cs: float, bins: int = 40) -> dict[str, float]:
    """L1 distance between the pooled eigenvalue histogram and the limit density on the
    histogram's bins (bin averages of the density), and the limit's mass outside."""
    hi = float(np.quantile(eig, 0.999))
    edges = np.linspace(0.0, hi, bins + 1)
    hist, _ = np.histogram(eig, bins=edges, density=False)
    hist = hist / len(eig) / np.diff(edges)
    fine = np.linspace(1e-4, hi, 40 * bins + 1)
    dens = fl.limit_density(fine, time_cs)
    avg = np.array([dens[(fine >= a) & (fine < b)].mean() for a, b in zip(edges[:-1], edges[1:],
                                                                             strict=True)])
    return {"l1": float(np.abs(hist - avg).sum() * (edges[1] - edges[0])), "bins": bins}


def attention_summary(m: int = 64, paths: int = 100, depths: tuple[float, ...] = (1.0, 4.0),
                      seed: int = 1) -> dict[str, Any]:
    """Shaped attention (gamma 0.5, tau0 1) and the linear block with the same gamma, from
    V_0 = I at t = s / m for s in `depths`: log-spectrum statistics."""
    out: dict[str, Any] = {"m": m, "paths": paths, "s": list(depths)}
    for name, blk in (("attention", block("attention", gamma=0.5, tau0=1.0)),
                      ("linear", block("linear", gamma=0.5))):
        t0 = time.perf_counter()
        times = [d / m for d in depths]
        res = solve_quiet(blk, np.eye(m), times[-1], paths=paths, seed=seed, save_times=times)
        rows = []
        for i, tt in enumerate(res.times.numpy()):
            if tt not in times:
                continue
            logw, bad, low = log_spectrum_flags(res.trajectory[i].cpu().numpy())
            st = spectrum_statistics(logw)
            rows.append({"t": float(tt), "s": float(tt * m),
                         **{k: [float(np.mean(v)), float(np.std(v))] for k, v in st.items()},
                         "mean_log_eig": float(np.nanmean(logw)),
                         "n_nonpositive": int(bad.sum()), "n_unresolved": int(low.sum()),
                         "n_exploded": int(res.exploded.sum())})
        out[name] = {"rows": rows, "seconds": time.perf_counter() - t0,
                     "steps_mean": res.meta["steps_mean"],
                     "_logw": log_spectrum_flags(res.V.cpu().numpy())[0]}
    return out


def plot(eig: dict[int, np.ndarray], att: dict[str, Any], path: Path, time_cs: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.linspace(1e-3, max(np.quantile(e, 0.999) for e in eig.values()), 600)
    for m, e in eig.items():
        a.hist(e, bins=60, density=True, histtype="step", label=f"SDE m = {m}")
    a.plot(x, fl.limit_density(x, time_cs), "k", lw=1.5, label="limit (free mult. BM)")
    a.set(xlabel=r"eigenvalue of $V_{s/m}$", ylabel="density",
          title=f"linear block, c s = {time_cs:g}, V0 = I")
    a.legend()
    for name in ("linear", "attention"):
        edges, d = spectral_density(att[name]["_logw"], bins=50)
        b.stairs(d, edges, label=f"{name} (gamma 0.5)")
    b.set(xlabel=r"log eigenvalue of $V_t$", ylabel="density",
          title=f"m = {att['m']}, t = {att['s'][-1]:g} / m")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/spectrum_limit", help="OUT (no suffix)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-attention", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    rows, eig = linear_rows(seed=args.seed)
    c = GAMMA**2 * (2 - GAMMA**2)
    dens = {m: density_distance(e, c * S) for m, e in eig.items()}
    att = None if args.no_attention else attention_summary()
    print("  m  k   MC mean +- SE      exact(m)   limit    limit+delta/m   (MC-exact)/SE")
    for r in rows:
        print(f"{r['m']:4d} {r['k']:2d} {r['mc']:9.4f} +- {r['se']:.4f}  {r['exact_m']:9.4f} "
              f"{r['limit']:8.4f}  {r['limit_plus_1_over_m']:9.4f}   "
              f"{(r['mc'] - r['exact_m']) / r['se']:6.1f}")
    for m, d in dens.items():
        print(f"density m = {m}: L1 to the limit {d['l1']:.3f}")
    if att is not None:
        for name in ("attention", "linear"):
            for r in att[name]["rows"]:
                print(f"{name} s={r['s']:g}: log_min {r['log_min'][0]:.3f} log_max "
                      f"{r['log_max'][0]:.3f} log_cond {r['log_cond'][0]:.3f} "
                      f"mean log eig {r['mean_log_eig']:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(eig, att or {"linear": {"_logw": np.zeros((1, 1))}, "attention": {
        "_logw": np.zeros((1, 1))}, "m": 0, "s": [0]}, out.with_suffix(".png"), c * S)
    summary = {"command": "python -m shapedsde.experiments.spectrum_limit --out " + str(out),
               "gamma": GAMMA, "c": c, "s": S, "moments": rows,
               "density_l1": {str(m): d for m, d in dens.items()},
               "attention": None if att is None else {
                   k: ({kk: vv for kk, vv in v.items() if kk != "_logw"}
                       if isinstance(v, dict) else v) for k, v in att.items()}}
    _io.write_files({out.with_suffix(".json"): (_io.dumps(summary) + "\n").encode()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["attention_summary", "density_distance", "linear_rows", "main"]
