"""The log-spectrum of V_t against depth at m = 64 tokens: the SDE (default step and the
matched noise map) against finite networks, for the linear block, shaped attention and the
shaped Transformer block. docs/spectrum.md ("Against depth at m = 64") shows the output.

    python -m shapedsde.experiments.spectrum_depth --out docs/figures/spec64_log_spectrum_depth

writes OUT.png (left: 10/50/90% quantiles over paths of the smallest, median and largest
log-eigenvalue against t; right: the pooled log-eigenvalue density at the last depth),
OUT.json (every number) and OUT.md (settings and tables). V_0 = G G^T / k (G m x k iid
N(0, 1), fixed seed). Networks: the exact Gram chain (`finite.simulate(method="gram")`)
for the linear block and attention; the reduced sampler (every weight product drawn in
law, `method="reduced"`) for the Transformer block, which has no Gram chain.

Networks are held to the SDE's explosion rule: a net whose tr V_t reaches
`sde.BLOWUP` tr V_0 at a recorded depth is dropped from that depth on, as the solver
drops (NaN) an exploded path. Statistics are over the remaining (finite) paths.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _io
from ..finite import simulate
from ..registry import block
from ..sde import BLOWUP
from ..seeds import child_seed
from ..spectrum import log_spectrum_flags
from ..verification.engine import solve_quiet
from ..verification.spectrum import SPECTRUM_STATISTICS, compare_spectra, spectral_density

M, K_COLS, V0_SEED = 64, 128, 0
T_END = 1.0
N_GRID = 16  # saved depths t = j / N_GRID
KS_TIMES = (0.125, 0.25, 0.5, 1.0)
QUANTILES = (0.1, 0.5, 0.9)
#: (label, block name, parameters, network sampler or None)
BLOCKS = (("linear", "linear", {"gamma": 0.5}, "gram"),
          ("attention", "attention", {"gamma": 0.5, "tau0": 1.0}, "gram"),
          ("transformer", "transformer", {"gamma": 0.5, "tau0": 1.0}, "reduced"))
#: Run sizes: SDE paths per noise map ("corrected" is the solver's default), and
#: (width, nets) of the networks.
SIZES = {"linear": dict(maps={"corrected": 100, "matched": 200}, widths=((256, 200), (512, 100))),
         "attention": dict(maps={"corrected": 100, "matched": 200},
                           widths=((256, 200), (512, 100))),
         "transformer": dict(maps={"matched": 100}, widths=((64, 100), (128, 100)))}


def wishart_start(m: int = M, k: int = K_COLS, seed: int = V0_SEED) -> np.ndarray:
    """V_0 = G G^T / k with G (m, k) iid N(0, 1) from `numpy.random.default_rng(seed)`."""
    G = np.random.default_rng(seed).standard_normal((m, k))
    return G @ G.T / k


def eigen_index(m: int) -> dict[str, int]:
    """Indices of the selected eigenvalues in an ascending spectrum of size m."""
    return {"smallest": 0, "median": m // 2, "largest": m - 1}


def quantile_bands(logspec: np.ndarray, index: Sequence[int],
                   q: Sequence[float] = QUANTILES) -> np.ndarray:
    """(times, len(index), len(q)): quantiles over the finite paths of the log-eigenvalues
    at `index` of a log-spectrum trajectory (times, paths, m) (ascending); NaN at a time
    with no finite path."""
    x = np.asarray(logspec, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"a log-spectrum trajectory must have shape (times, paths, m); "
                         f"got {x.shape}")
    out = np.full((x.shape[0], len(index), len(q)), np.nan)
    for i, row in enumerate(x):
        ok = row[np.isfinite(row).all(axis=1)]
        if len(ok):
            out[i] = np.quantile(ok[:, list(index)], q, axis=0).T
    return out


def unresolved_counts(logspec: np.ndarray) -> np.ndarray:
    """Per path (...,): how many eigenvalues lie at or below the rounding level
    m eps lambda_max of their row (their logs are upper bounds, not values); -1 for
    rows with a NaN."""
    x = np.asarray(logspec, dtype=np.float64)
    floor = np.log(x.shape[-1] * np.finfo(np.float64).eps) + x[..., -1:]
    n = (x <= floor).sum(axis=-1)
    return np.where(np.isfinite(x).all(axis=-1), n, -1)


def drop_exploded(traj: torch.Tensor, level: float = BLOWUP) -> np.ndarray:
    """A network trajectory (times, nets, m, m) with every net NaN from the first recorded
    depth where tr V >= level tr V_0 (the solver's explosion rule), as NumPy."""
    V = traj.detach().cpu().to(torch.float64).numpy().copy()
    tr = np.trace(V, axis1=-2, axis2=-1)
    gone = np.maximum.accumulate(~(tr < level * tr[:1]), axis=0)
    V[gone] = np.nan
    return V


def floored_log_spectrum(V: Any) -> tuple[np.ndarray, np.ndarray]:
    """(log-spectrum, nonpositive count per row): `log_spectrum_flags`, with each
    eigenvalue <= 0 of a finite V (rounding of a state singular to working precision) set
    to the row's rounding level log(m eps lambda_max) instead of NaN, so the row is kept
    (its smallest eigenvalues are then unresolved, counted by `unresolved_counts`). Rows
    of a non-finite V stay NaN."""
    ls = np.array(log_spectrum_flags(V)[0])
    m = ls.shape[-1]
    floor = np.log(m * np.finfo(np.float64).eps) + ls[..., -1:]
    hole = np.isnan(ls) & np.isfinite(ls[..., -1:])
    ls = np.where(hole, np.broadcast_to(floor, ls.shape), ls)
    return ls, hole.sum(axis=-1)


def _logspec(V: np.ndarray) -> np.ndarray:
    return floored_log_spectrum(V)[0]


def run_block(label: str, name: str, params: dict, method: str, *, V0: np.ndarray,
              maps: dict[str, int], widths: Sequence[tuple[int, int]], seed: int,
              T: float = T_END, n_grid: int = N_GRID) -> dict[str, Any]:
    """Log-spectrum trajectories (times, paths, m) at t = j T / n_grid of the SDE (paths
    per noise map in `maps`) and of the networks ((width, nets) in `widths`), with run
    times and drop counts."""
    blk = block(name, **params)
    times = [j * T / n_grid for j in range(n_grid + 1)]
    out: dict[str, Any] = {"label": label, "block": name, "params": params, "times": times,
                           "runs": {}, "networks": []}
    for nm, paths in maps.items():
        t0 = time.perf_counter()
        res = solve_quiet(blk, V0, T, paths=paths, seed=child_seed(seed, label, "sde", nm),
                          save_times=times, noise_map=nm)
        got = np.asarray(res.times.numpy())
        if len(got) != len(times) or not np.allclose(got, times):
            raise RuntimeError(f"saved times {got} differ from {times}")
        ls = _logspec(res.trajectory.cpu().numpy())
        out["runs"][f"SDE {nm}"] = {
            "logspec": ls, "seconds": time.perf_counter() - t0, "n": paths,
            "steps_mean": float(res.meta["steps_mean"]),
            "n_exploded": int(res.exploded.sum()), "n_nonfinite": int((~res.finite).sum())}
        print(f"  {label} SDE {nm}: {paths} paths, {res.meta['steps_mean']:.0f} steps, "
              f"{int(res.exploded.sum())} exploded, {time.perf_counter() - t0:.0f} s", flush=True)
    for width, nets in widths:
        step = width * T / n_grid
        if abs(step - round(step)) > 1e-9:
            raise ValueError(f"width * T / n_grid = {step} must be an integer (recorded depths)")
        t0 = time.perf_counter()
        run = simulate(blk, V0, width=width, T=T, nets=nets,
                       seed=child_seed(seed, label, "nets", width), method=method,
                       record_every=int(round(step)))
        if not np.allclose(run.times, times):
            raise RuntimeError(f"recorded times {run.times} differ from {times}")
        ls = _logspec(drop_exploded(run.trajectory))
        key = f"networks n={width} ({method})"
        out["runs"][key] = {"logspec": ls, "seconds": time.perf_counter() - t0, "n": nets,
                            "n_exploded": int((~np.isfinite(ls[-1]).all(axis=1)).sum()),
                            "n_nonfinite_V": int((~torch.isfinite(run.V).all(-1).all(-1))
                                                 .sum()), "depth": run.depth}
        out["networks"].append(key)
        print(f"  {label} {key}: {nets} nets, depth {run.depth}, "
              f"{out['runs'][key]['n_exploded']} dropped, {time.perf_counter() - t0:.0f} s",
              flush=True)
    return out


def summarise(block_run: dict[str, Any], ks_times: Sequence[float] = KS_TIMES) -> dict[str, Any]:
    """Quantile bands per run, unresolved-eigenvalue counts, and at each of `ks_times` the
    networks against each SDE run (`compare_spectra`: KS per statistic, pooled density)."""
    times = np.asarray(block_run["times"])
    m = next(iter(block_run["runs"].values()))["logspec"].shape[-1]
    idx = eigen_index(m)
    out: dict[str, Any] = {"bands": {}, "unresolved": {}, "finite_paths": {}, "ks": {}}
    for key, r in block_run["runs"].items():
        ls = r["logspec"]
        out["bands"][key] = quantile_bands(ls, list(idx.values()))
        un = unresolved_counts(ls)
        out["unresolved"][key] = [[int((u > 0).sum()), float(u[u >= 0].mean())
                                   if (u >= 0).any() else float("nan")] for u in un]
        out["finite_paths"][key] = [int((u >= 0).sum()) for u in un]
        # the gap between the two smallest log-eigenvalues, median over paths
        gaps = ls[..., 1] - ls[..., 0]
        out.setdefault("gap12_median", {})[key] = [
            float(np.nanmedian(g)) if np.isfinite(g).any() else float("nan") for g in gaps]
    nets = block_run["networks"]
    for net in nets:
        for key, r in block_run["runs"].items():
            if key in nets:
                continue
            for t in ks_times:
                i = int(np.argmin(np.abs(times - t)))
                res = compare_spectra(block_run["runs"][net]["logspec"][i], r["logspec"][i])
                out["ks"].setdefault(f"{net} vs {key}", []).append({
                    "t": float(times[i]),
                    **{s: {k: float(res["laws"][s].true[k]) for k in ("ks", "p", "ks_crit")}
                       for s in SPECTRUM_STATISTICS},
                    "pooled_ks": res["pooled_ks"], "density_l1": res["density_l1"],
                    "n_net": res["n_x"], "n_sde": res["n_y"]})
    return out


def plot(results: list[dict[str, Any]], summaries: list[dict[str, Any]], path: Path) -> None:
    from ._common import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.4 * len(results)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.5, 1]})
    styles = {"SDE corrected": ("C0", "-"), "SDE matched": ("C2", "--")}
    net_colors = ("C3", "C1", "C4")
    for row, (br, sm) in enumerate(zip(results, summaries, strict=True)):
        t = np.asarray(br["times"])
        a, b = axes[row]
        for key, bands in sm["bands"].items():
            is_net = key in br["networks"]
            color, ls = (styles[key] if not is_net else
                         (net_colors[br["networks"].index(key)], ":"))
            for j in range(bands.shape[1]):
                lab = key if j == 0 else None
                if is_net:
                    dx = 0.006 * (br["networks"].index(key) - 0.5)
                    a.errorbar(t + dx, bands[:, j, 1], yerr=[bands[:, j, 1] - bands[:, j, 0],
                                                        bands[:, j, 2] - bands[:, j, 1]],
                               fmt="o", ms=3, color=color, capsize=2, lw=1, label=lab)
                else:
                    a.plot(t, bands[:, j, 1], color=color, ls=ls, lw=1.3, label=lab)
                    a.fill_between(t, bands[:, j, 0], bands[:, j, 2], color=color, alpha=0.15)
        first = next(iter(sm["bands"].values()))  # median largest + log(m eps)
        m = next(iter(br["runs"].values()))["logspec"].shape[-1]
        floor = first[:, 2, 1] + np.log(m * np.finfo(np.float64).eps)
        a.plot(t, floor, color="k", lw=0.8, ls="-.", label=r"rounding: $m\epsilon\lambda_{max}$")
        a.set(xlabel="t = depth / width", ylabel=r"log eigenvalue of $V_t$",
              title=f"{br['label']} {br['params']}: smallest, median, largest (10/50/90%)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="lower left")
        lo = min(np.nanmin(r["logspec"][-1]) for r in br["runs"].values())
        hi = max(np.nanmax(r["logspec"][-1]) for r in br["runs"].values())
        for key, r in br["runs"].items():
            color, ls = (styles[key] if key not in br["networks"] else
                         (net_colors[br["networks"].index(key)], ":"))
            edges, d = spectral_density(r["logspec"][-1], bins=50, range=(lo, hi))
            b.stairs(d, edges, color=color, ls=ls, lw=1.3, label=key)
        b.set(xlabel=rf"log eigenvalue of $V_{{{t[-1]:g}}}$", ylabel="density (pooled)",
              title=f"spectral density at t = {t[-1]:g}")
        b.grid(alpha=0.3)
        b.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tables(results: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> str:
    """Markdown: quantiles at the KS times, and the KS table."""
    lines = []
    for br, sm in zip(results, summaries, strict=True):
        t = np.asarray(br["times"])
        lines += [f"### {br['label']} {br['params']}", "",
                  "| run | t | smallest (10/50/90%) | median | largest | paths | "
                  "paths with an unresolved eigenvalue | gap log l2 - log l1 (median) |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, bands in sm["bands"].items():
            for tt in (0.0, *KS_TIMES):
                i = int(np.argmin(np.abs(t - tt)))
                q = ["/".join(f"{v:.2f}" for v in bands[i, j]) for j in range(3)]
                un = sm["unresolved"][key][i][0]
                lines.append(f"| {key} | {t[i]:g} | {q[0]} | {q[1]} | {q[2]} | "
                             f"{sm['finite_paths'][key][i]} | {un} | "
                             f"{sm['gap12_median'][key][i]:.2f} |")
        lines += ["", "| networks vs SDE | t | KS log_min (p) | KS log_max (p) | KS log_cond (p) "
                  "| 5% crit | pooled KS | density L1 |", "|---|---|---|---|---|---|---|---|"]
        for key, rows in sm["ks"].items():
            for r in rows:
                ks = [f"{r[s]['ks']:.3f} ({r[s]['p']:.2g})" for s in SPECTRUM_STATISTICS]
                lines.append(f"| {key} | {r['t']:g} | {ks[0]} | {ks[1]} | {ks[2]} | "
                             f"{r['log_min']['ks_crit']:.3f} | {r['pooled_ks']:.3f} | "
                             f"{r['density_l1']:.3f} |")
        runs = "; ".join(f"{k}: {r['n']} paths, {r['seconds']:.0f} s"
                         + (f", {r['steps_mean']:.0f} steps" if "steps_mean" in r else "")
                         + f", {r['n_exploded']} exploded/dropped by t = {t[-1]:g}"
                         for k, r in br["runs"].items())
        lines += ["", f"Runs: {runs}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/spec64_log_spectrum_depth", help="OUT (no suffix)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="linear,attention,transformer",
                    help="comma-separated blocks (default all three)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every path / net count (a quick look: 0.1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    V0 = wishart_start()
    chosen = args.only.split(",")
    t0 = time.perf_counter()
    results, summaries = [], []
    for label, name, params, method in BLOCKS:
        if label not in chosen:
            continue
        size = {"maps": {k: max(4, int(v * args.scale)) for k, v in SIZES[label]["maps"].items()},
                "widths": [(w, max(4, int(k * args.scale))) for w, k in SIZES[label]["widths"]]}
        print(f"{label}: {size}", flush=True)
        br = run_block(label, name, params, method, V0=V0, seed=args.seed, **size)
        results.append(br)
        summaries.append(summarise(br))
    plot(results, summaries, out.with_suffix(".png"))
    seconds = time.perf_counter() - t0
    command = (f"python -m shapedsde.experiments.spectrum_depth --out {out}"
               + (f" --seed {args.seed}" if args.seed else "")
               + (f" --only {args.only}" if args.only != ap.get_default("only") else "")
               + (f" --scale {args.scale:g}" if args.scale != 1 else ""))
    settings = {"m": M, "V0": f"G G^T / {K_COLS}, G ({M} x {K_COLS}) iid N(0,1), "
                              f"numpy default_rng({V0_SEED})",
                "T": T_END, "saved_t": results[0]["times"] if results else [],
                "quantiles": QUANTILES, "eigen_index": eigen_index(M), "sizes": {
                    r["label"]: SIZES[r["label"]] for r in results}, "scale": args.scale,
                "root_seed": args.seed, "blowup": BLOWUP, "sde_step": "adaptive default "
                "(rtol 0.1, dt_max 0.01) for each noise map"}
    body = tables(results, summaries)
    md = (f"# Log-spectrum of V_t against depth, m = {M}: SDE and networks\n\n"
          f"![spec64]({out.name}.png)\n\nMade by:\n\n    {command}\n\n"
          f"({seconds:.0f} s in all on one thread.) Quantiles a/b/c are the 10/50/90% "
          "quantiles over paths; 'unresolved': the path's smallest eigenvalue is at or below "
          "m eps lambda_max (float64 rounding of V), so its log is an upper bound. KS: "
          "`verification.spectrum.compare_spectra` (two-sample KS per statistic; pooled KS "
          "and density L1 descriptive).\n\n" + body
          + f"\n\nSettings:\n\n```json\n{_io.dumps(settings, indent=2)}\n```\n")
    numbers = {"command": command, "settings": settings, "seconds": seconds, "blocks": [
        {"label": br["label"], "params": br["params"], "times": br["times"],
         "runs": {k: {kk: vv for kk, vv in r.items() if kk != "logspec"}
                  for k, r in br["runs"].items()},
         "bands": {k: v.tolist() for k, v in sm["bands"].items()},
         "unresolved": sm["unresolved"], "finite_paths": sm["finite_paths"],
         "gap12_median": sm["gap12_median"], "ks": sm["ks"]}
        for br, sm in zip(results, summaries, strict=True)]}
    _io.write_files({out.with_suffix(".json"): (_io.dumps(numbers) + "\n").encode(),
                     out.with_suffix(".md"): md.encode()})
    print(body)
    print(f"wrote {out}.png/.json/.md ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["drop_exploded", "eigen_index", "floored_log_spectrum", "main", "quantile_bands",
           "run_block", "summarise", "unresolved_counts", "wishart_start"]
