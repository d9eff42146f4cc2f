"""The trainability map: the tangent SDE (`shapedsde.tangent`) over a (gamma, tau0) grid.

At each point the block's tangent is solved from Q0 = [[V0, 0], [0, I_m]] to time T (paths
stopped when tr V reaches `exit_trace` tr V0, `shapedsde.sde.solve`), and the point is
summarised by (`point_statistics`):

- P(exit by T), with its binomial SE: the forward signal leaves the ball (exploding);
- for the survivors, the Jacobian growth g = log(tr U_T / tr U_0) (the squared Jacobian
  norm along a random direction: the law of a backpropagated gradient's squared norm) and
  the relative sensitivity s = log[(tr U_T / tr V_T) / (tr U_0 / tr V_0)] = g - log(tr V_T /
  tr V_0): how much a perturbation grows against the signal itself. s > 0: nearby inputs
  separate (chaotic side), s < 0: they merge (ordered side). Their mean, sd and SE, and
  their rates g / T, s / T (per unit depth-to-width ratio);
- the near-singular fraction of V_T (lambda_min(V) / tr V < `singular_threshold`) and the
  median of V_T's off-diagonal correlations (pooled over survivors and entries);
- the paths that exploded or became non-finite, counted apart (never folded in).

The outcome of every path falls in exactly one class: exited (finite exit time), exploded
without an exit time, non-finite, survivor; the four counts sum to `paths`. P(exit) counts
the first two. The solver's blow-up check reads the whole trace tr Q = tr V + tr U, so an
exploded path without an exit either jumped past both levels in one step or had its
Jacobian (U) blow up with V still inside the ball: an explosion either way.

`predict` reads a point as "exploding" (P(exit) > EXIT_MAX or mean growth rate >
GROWTH_MAX), else "collapsing" (mean growth rate < -GROWTH_MAX, mean sensitivity rate <
SENSITIVITY_MIN, or a near-singular fraction > SINGULAR_MAX), else "healthy".

Seeds (`shapedsde.seeds`): point (i, j) of a G x K grid gets child_seed(seed, 0, i K + j),
so a point's result depends only on the root seed and its position in the grid.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _io
from .. import _validation as val
from ..distributed import run_tasks
from ..progress import progress_bar
from ..sde import default_steps
from ..seeds import check_root, child_seed
from ..tangent import initial_joint, tangent
from ..verification.engine import solve_quiet
from ._common import plot_files, pyplot
from .stability_scales import check_grid, map_block
from .stability_stats import check_v0

#: Default exit level R: a path stops when tr V >= R tr V0 (as the stability map).
EXIT_TRACE = 5.0
#: V is near-singular where lambda_min(V) / tr V is below this.
SINGULAR_THRESHOLD = 1e-2
#: Thresholds of `predict` (rates per unit T; at T = 0.5 a rate of 1 is a factor e^0.5).
EXIT_MAX = 0.1
GROWTH_MAX = 1.0
SENSITIVITY_MIN = -1.0
SINGULAR_MAX = 0.5
#: The default V0 of the command: m = 4 tokens, unit variances, every correlation 0.2.
DEFAULT_M, DEFAULT_RHO0 = 4, 0.2

#: The table's columns, in order (one row per grid point).
COLUMNS = ("gamma", "tau0", "seed", "paths", "n_exit", "n_exploded", "n_nonfinite",
           "n_survivors", "p_exit", "p_exit_se", "growth_mean", "growth_sd", "growth_se",
           "growth_rate", "growth_rate_se", "sens_mean", "sens_sd", "sens_se", "sens_rate",
           "sens_rate_se", "p_singular", "p_singular_se", "corr_median", "prediction",
           "wall_s")
#: Panels of the figure: column -> title (mathtext).
PANELS = {
    "p_exit": r"$P(\tau_R \leq T)$",
    "growth_rate": r"mean $\log(\mathrm{tr}\,U_T/\mathrm{tr}\,U_0)\,/\,T$",
    "sens_rate": r"mean sensitivity $s\,/\,T$",
    "p_singular": r"$P(\lambda_{\min}(V_T)/\mathrm{tr}\,V_T < {sing})$",
    "corr_median": r"median off-diagonal corr. of $V_T$",
    "prediction": "prediction",
}
CLASSES = ("healthy", "exploding", "collapsing")


def default_v0() -> np.ndarray:
    """(1 - 0.2) I_4 + 0.2 11^T."""
    return (1 - DEFAULT_RHO0) * np.eye(DEFAULT_M) + DEFAULT_RHO0 * np.ones((DEFAULT_M,) * 2)


def path_quantities(Q: Any, Q0: Any, singular_threshold: float = SINGULAR_THRESHOLD
                    ) -> dict[str, np.ndarray]:
    """Per-path quantities of survivors' joint Grams Q (N, 2m, 2m) against Q0 (2m, 2m):
    growth g, sensitivity s, near-singular flag of V, and V's off-diagonal correlations
    (N, m (m - 1))."""
    Q = torch.as_tensor(np.asarray(Q, dtype=np.float64))
    Q0 = np.asarray(Q0, dtype=np.float64)
    if Q.ndim != 3 or Q.shape[-1] != Q.shape[-2] or Q.shape[-1] % 2 or Q0.shape != Q.shape[1:]:
        raise ValueError(f"Q must be (N, 2m, 2m) and Q0 (2m, 2m); got {tuple(Q.shape)}, "
                         f"{Q0.shape}")
    m = Q.shape[-1] // 2
    V, U = Q[:, :m, :m], Q[:, m:, m:]
    trV, trU = torch.einsum("bii->b", V).numpy(), torch.einsum("bii->b", U).numpy()
    trV0, trU0 = float(np.trace(Q0[:m, :m])), float(np.trace(Q0[m:, m:]))
    g = np.log(trU / trU0)
    s = g - np.log(trV / trV0)
    lam = torch.linalg.eigvalsh(V)[:, 0].numpy() if len(V) else np.zeros(0)
    d = torch.diagonal(V, 0, -2, -1).clamp_min(torch.finfo(torch.float64).tiny)
    C = V / torch.sqrt(d[:, :, None] * d[:, None, :])
    off = ~torch.eye(m, dtype=torch.bool)
    return {"growth": g, "sens": s, "singular": lam / trV < singular_threshold,
            "corr": C[:, off].numpy()}


def point_statistics(Q: Any, Q0: Any, T: float, counts: dict[str, int],
                     singular_threshold: float = SINGULAR_THRESHOLD) -> dict[str, Any]:
    """One point's row (the statistics of COLUMNS but gamma, tau0, seed, prediction,
    wall_s) from the survivors' Q (N, 2m, 2m) and the path counts {"paths", "n_exit",
    "n_exploded", "n_nonfinite"} (N = survivors)."""
    x = path_quantities(Q, Q0, singular_threshold)
    P, N = counts["paths"], len(x["growth"])
    row: dict[str, Any] = {k: int(counts[k]) for k in ("paths", "n_exit", "n_exploded",
                                                          "n_nonfinite")}
    row["n_survivors"] = N
    if row["n_exit"] + row["n_exploded"] + row["n_nonfinite"] + N != P:
        raise ValueError(f"path counts do not add up: {row} for {P} paths")
    p = (row["n_exit"] + row["n_exploded"]) / P
    row.update(p_exit=p, p_exit_se=math.sqrt(p * (1 - p) / P))
    for name in ("growth", "sens"):
        v = x[name]
        mean = float(v.mean()) if N else math.nan
        sd = float(v.std(ddof=1)) if N > 1 else math.nan
        se = sd / math.sqrt(N) if N > 1 else math.nan
        row.update({f"{name}_mean": mean, f"{name}_sd": sd, f"{name}_se": se,
                    f"{name}_rate": mean / T, f"{name}_rate_se": se / T})
    q = float(x["singular"].mean()) if N else math.nan
    row.update(p_singular=q, p_singular_se=math.sqrt(q * (1 - q) / N) if N else math.nan,
               corr_median=float(np.median(x["corr"])) if N else math.nan)
    return row


def predict(row: dict[str, Any]) -> str:
    """"exploding", "collapsing" or "healthy" (module doc; NaN statistics do not count)."""
    if row["p_exit"] > EXIT_MAX or row["growth_rate"] > GROWTH_MAX:
        return "exploding"
    if (row["growth_rate"] < -GROWTH_MAX or row["sens_rate"] < SENSITIVITY_MIN
            or row["p_singular"] > SINGULAR_MAX):
        return "collapsing"
    return "healthy"


def criteria(row: dict[str, Any]) -> list[str]:
    """Every threshold of `predict` that the row crosses (a point may cross several:
    `predict` reports the first class, exploding before collapsing)."""
    tests = (("P(exit) > {}", row["p_exit"] > EXIT_MAX, EXIT_MAX),
             ("growth/T > {}", row["growth_rate"] > GROWTH_MAX, GROWTH_MAX),
             ("growth/T < -{}", row["growth_rate"] < -GROWTH_MAX, GROWTH_MAX),
             ("sens/T < {}", row["sens_rate"] < SENSITIVITY_MIN, SENSITIVITY_MIN),
             ("P(sing) > {}", row["p_singular"] > SINGULAR_MAX, SINGULAR_MAX))
    return [label.format(f"{v:g}") for label, hit, v in tests if hit]


def solve_point(block_name: str, gamma: float, tau0: float, block_params: dict[str, Any],
                V0: np.ndarray, T: float, paths: int, seed: int, steps: int, device: str,
                exit_trace: float, singular_threshold: float) -> dict[str, Any]:
    """One grid point's row (COLUMNS): the tangent SDE solved, summarised and predicted."""
    t0 = time.perf_counter()
    Q0 = initial_joint(V0)
    res = solve_quiet(tangent(map_block(block_name, gamma, tau0, **block_params)), Q0, T,
                      paths=paths, seed=seed, steps=steps, device=device,
                      exit_trace=exit_trace)
    exited, exploded = res.exited, res.exploded.cpu()
    finite = res.finite.cpu()
    counts = {"paths": paths, "n_exit": int(exited.sum()),
              "n_exploded": int((~exited & exploded).sum()),
              "n_nonfinite": int((~exited & ~exploded & ~finite).sum())}
    Q = res.V[res.survivors.to(res.V.device)].cpu()
    row = {"gamma": gamma, "tau0": tau0, "seed": seed,
           **point_statistics(Q, Q0, T, counts, singular_threshold)}
    row["prediction"] = predict(row)
    row["wall_s"] = time.perf_counter() - t0
    return {k: row[k] for k in COLUMNS}


@dataclass
class TrainabilityMap:
    """The rows (one per (gamma, tau0), COLUMNS) of a map and its settings."""

    block: str
    block_params: dict[str, Any]
    gammas: np.ndarray
    tau0s: np.ndarray
    T: float
    V0: np.ndarray
    paths: int
    seed: int
    steps: int
    exit_trace: float
    singular_threshold: float
    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def grid(self, column: str) -> np.ndarray:
        """(G, K) array of a numeric column (rows gamma, columns tau0)."""
        out = np.full((len(self.gammas), len(self.tau0s)), np.nan)
        for r in self.rows:
            i = int(np.argmin(np.abs(self.gammas - r["gamma"])))
            j = int(np.argmin(np.abs(self.tau0s - r["tau0"])))
            out[i, j] = (CLASSES.index(r[column]) if column == "prediction" else r[column])
        return out

    def row(self, gamma: float, tau0: float) -> dict[str, Any] | None:
        """The row at (gamma, tau0) (to 1e-9), or None where the grid has no such point."""
        for r in self.rows:
            if abs(r["gamma"] - gamma) < 1e-9 and abs(r["tau0"] - tau0) < 1e-9:
                return r
        return None

    # -- files -----------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        return {"kind": "shapedsde.trainability_map", "block": self.block,
                "block_params": self.block_params, "tangent": True,
                "gammas": self.gammas.tolist(), "tau0s": self.tau0s.tolist(), "T": self.T,
                "m": int(self.V0.shape[0]), "V0": self.V0.tolist(), "paths": self.paths,
                "seed": self.seed, "steps": self.steps, "dt": self.T / self.steps,
                "exit_trace": self.exit_trace, "singular_threshold": self.singular_threshold,
                "thresholds": {"exit_max": EXIT_MAX, "growth_max": GROWTH_MAX,
                               "sensitivity_min": SENSITIVITY_MIN,
                               "singular_max": SINGULAR_MAX},
                "meta": self.meta}

    def to_json(self) -> str:
        return _io.dumps({**self.settings(), "columns": list(COLUMNS), "rows": self.rows})

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> TrainabilityMap:
        """Read the JSON file written by `files` (a folder: its one trainability_*.json)."""
        p = Path(path)
        if p.is_dir():
            found = sorted(p.glob("trainability_*.json"))
            if len(found) != 1:
                raise ValueError(f"expected one trainability_*.json in {p}; found {found}")
            p = found[0]
        d = json.loads(p.read_text())
        rows = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in d["rows"]]
        return cls(block=d["block"], block_params=d["block_params"],
                   gammas=np.array(d["gammas"]), tau0s=np.array(d["tau0s"]), T=d["T"],
                   V0=np.array(d["V0"]), paths=d["paths"], seed=d["seed"], steps=d["steps"],
                   exit_trace=d["exit_trace"], singular_threshold=d["singular_threshold"],
                   rows=rows, meta=d.get("meta", {}))

    def files(self, base: Path) -> dict[Path, bytes]:
        """`<base>.json`, `<base>.csv`, `<base>.png`."""
        out = {base.with_suffix(".json"): (self.to_json() + "\n").encode(),
               base.with_suffix(".csv"): self.to_csv().encode()}
        figs = self.plot_files(base)
        out[base.with_suffix(".png")] = figs[base.with_suffix(".png")]
        return out

    def summary(self) -> str:
        lines = [f"trainability map: tangent({self.block}) {self.block_params} "
                 f"m={self.V0.shape[0]} T={self.T:g} paths={self.paths} steps={self.steps} "
                 f"seed={self.seed} R={self.exit_trace:g} ({len(self.gammas)} x "
                 f"{len(self.tau0s)} points, {self.meta.get('total_wall_s', 0):.0f} s)"]
        lines.append("  gamma  tau0  P(exit)  growth/T  sens/T  P(sing)  corr  exploded "
                     "nonfinite  prediction")
        for r in self.rows:
            lines.append(f"  {r['gamma']:5g} {r['tau0']:5g}  {r['p_exit']:.3f}  "
                         f"{r['growth_rate']:+8.3f}  {r['sens_rate']:+6.3f}  "
                         f"{r['p_singular']:.3f}  {r['corr_median']:+.2f}  "
                         f"{r['n_exploded']:8d} {r['n_nonfinite']:9d}  {r['prediction']}")
        return "\n".join(lines)

    # -- figure ----------------------------------------------------------------------------

    def plot_files(self, base: Path) -> dict[Path, bytes]:
        """Heat maps of PANELS (rows gamma, columns tau0), each with the contours of
        P(exit) (white: EXIT_MAX, 0.5) and of the mean growth rate (black: -GROWTH_MAX, 0,
        GROWTH_MAX)."""
        plt = pyplot()
        from matplotlib.colors import ListedColormap

        G, K = len(self.gammas), len(self.tau0s)
        fig, axes = plt.subplots(2, 3, figsize=(3 * (0.7 * K + 2.2), 2 * (0.5 * G + 1.9)))
        pe, gr = self.grid("p_exit"), self.grid("growth_rate")
        for ax, (name, title) in zip(axes.flat, PANELS.items(), strict=True):
            a = self.grid(name)
            if name == "prediction":
                cmap = ListedColormap(["#4daf4a", "#e41a1c", "#377eb8"])
                im = ax.imshow(a, origin="lower", aspect="auto", cmap=cmap, vmin=-0.5,
                               vmax=2.5)
                for (i, j), v in np.ndenumerate(a):
                    ax.text(j, i, CLASSES[int(v)][:4] if np.isfinite(v) else "", ha="center",
                            va="center", fontsize=7, color="white")
            else:
                fin = a[np.isfinite(a)]
                lo, hi = ((0.0, 1.0) if name in ("p_exit", "p_singular")
                          else ((-1.0, 1.0) if name == "corr_median"
                                else (fin.min() if fin.size else 0.0,
                                      fin.max() if fin.size else 1.0)))
                if name in ("growth_rate", "sens_rate"):
                    top = max(abs(lo), abs(hi), 1e-12)
                    lo, hi = -top, top
                im = ax.imshow(a, origin="lower", aspect="auto",
                               cmap="coolwarm" if name in ("growth_rate", "sens_rate",
                                                           "corr_median") else "viridis",
                               vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
                for (i, j), v in np.ndenumerate(a):
                    if np.isfinite(v):
                        ax.text(j, i, _fmt(v), ha="center", va="center", fontsize=7)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
            if G > 1 and K > 1:
                _contour(ax, pe, (EXIT_MAX, 0.5), "white", "-")
                _contour(ax, gr, (-GROWTH_MAX, 0.0, GROWTH_MAX), "black", "--")
            ax.set_xticks(range(K), [f"{t:.3g}" for t in self.tau0s], fontsize=8)
            ax.set_yticks(range(G), [f"{g:g}" for g in self.gammas], fontsize=8)
            ax.set_xlabel(r"$\tau_0$")
            ax.set_ylabel(r"$\gamma$")
            ax.set_title(title.replace("{sing}", f"{self.singular_threshold:g}"), fontsize=9)
        params = "".join(f" {k}={v}" for k, v in self.block_params.items())
        fig.suptitle(f"tangent({self.block}{params}): $T = {self.T:g}$, "
                     f"$m = {self.V0.shape[0]}$, {self.paths} paths/point, "
                     f"exit at tr $V \\geq {self.exit_trace:g}$ tr $V_0$. Contours: "
                     f"$P$(exit) = {EXIT_MAX:g}, 0.5 (white); growth rate = "
                     f"$\\pm${GROWTH_MAX:g}, 0 (black dashed)", fontsize=9)
        fig.tight_layout()
        return plot_files(fig, base, dpi=72)


def _contour(ax: Any, a: np.ndarray, levels: Sequence[float], color: str, ls: str) -> None:
    fin = a[np.isfinite(a)]
    lv = [v for v in levels if fin.size and fin.min() < v < fin.max()]
    if lv:
        cs = ax.contour(np.ma.masked_invalid(a), levels=lv, colors=color, linestyles=ls,
                        linewidths=1.2)
        ax.clabel(cs, fontsize=6, fmt="%g")


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else (f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}")


def trainability_map(block_name: str, gammas: Any, tau0s: Any, *, T: float, V0: Any = None,
                     paths: int, seed: int, exit_trace: float = EXIT_TRACE,
                     steps: int | None = None, device: str = "cpu", progress: bool = False,
                     singular_threshold: float = SINGULAR_THRESHOLD, workers: int = 1,
                     scheduler: str | None = None, **block_params: Any) -> TrainabilityMap:
    """Solve the tangent SDE of `block_name` at every (gamma, tau0) and summarise it.

    V0: (m, m) covariance (default `default_v0()`); steps: equal solver steps (default
    dt <= 0.01, `default_steps(T)`); workers / scheduler: `shapedsde.distributed.run_tasks`
    (1 and None: in this process). Seeds: module doc. ValueError for bad inputs, before any
    solving.
    """
    gammas, tau0s = check_grid("gammas", gammas, upper=1.0), check_grid("tau0s", tau0s)
    for name, arr in (("gammas", gammas), ("tau0s", tau0s)):
        if len(np.unique(arr)) != len(arr):
            raise ValueError(f"{name} has repeated values: {arr.tolist()}")
    T = val.check_time(T)
    if T <= 0:
        raise ValueError(f"T must be > 0; got {T}")
    paths = val.check_positive_int("paths", paths)
    if paths < 2:
        raise ValueError(f"paths must be >= 2 (standard errors); got {paths}")
    V0 = check_v0(default_v0() if V0 is None else V0)
    if not np.linalg.eigvalsh(V0)[0] > 0:
        raise ValueError("V0 must be positive definite")
    if not (isinstance(exit_trace, (int, float)) and math.isfinite(exit_trace)
            and exit_trace > 1):
        raise ValueError(f"exit_trace must be a finite number > 1; got {exit_trace!r}")
    if not 0 < singular_threshold < 1:
        raise ValueError(f"singular_threshold must lie in (0, 1); got {singular_threshold}")
    steps = default_steps(T) if steps is None else val.check_positive_int("steps", steps)
    for g in gammas:  # every block checked before any work
        for t in tau0s:
            map_block(block_name, float(g), float(t), **block_params)
    seed = check_root(seed)
    K = len(tau0s)
    tasks = [dict(block_name=block_name, gamma=float(g), tau0=float(t),
                  block_params=dict(block_params), V0=V0, T=T, paths=paths,
                  seed=child_seed(seed, 0, i * K + j), steps=steps, device=str(device),
                  exit_trace=float(exit_trace), singular_threshold=singular_threshold)
             for i, g in enumerate(gammas) for j, t in enumerate(tau0s)]
    start = time.perf_counter()
    if workers == 1 and scheduler is None:
        rows = [solve_point(**t) for t in progress_bar_of(tasks, progress, block_name)]
    else:
        rows = run_tasks(solve_point, tasks, workers=workers, scheduler=scheduler,
                         progress=progress)
    return TrainabilityMap(
        block=block_name, block_params=dict(block_params), gammas=gammas, tau0s=tau0s, T=T,
        V0=V0, paths=paths, seed=seed, steps=steps, exit_trace=float(exit_trace),
        singular_threshold=singular_threshold, rows=rows,
        meta={"device": str(device), "dtype": "float64", "total_wall_s":
              time.perf_counter() - start, "torch": torch.__version__,
              "numpy": np.__version__, "seeds": "child_seed(seed, 0, i * len(tau0s) + j)"})


def progress_bar_of(tasks: list[dict[str, Any]], enabled: bool, block_name: str) -> Any:
    return progress_bar(tasks, enabled=enabled, desc=f"trainability {block_name}",
                        unit="point")


def run_trainability(out: str | Path, *, name: str | None = None, **kwargs: Any
                     ) -> tuple[TrainabilityMap, list[Path]]:
    """`trainability_map(**kwargs)` written to `<out>/<name>.{json,csv,png}` (default name
    trainability_<block>_m<m>) and `<name>_summary.txt`; returns the map and the paths."""
    tm = trainability_map(**kwargs)
    base = Path(out) / (name or f"trainability_{tm.block}_m{tm.V0.shape[0]}")
    files = tm.files(base)
    files[base.parent / f"{base.name}_summary.txt"] = (tm.summary() + "\n").encode()
    Path(out).mkdir(parents=True, exist_ok=True)
    _io.write_files(files)
    return tm, list(files)


# -- the join with training ----------------------------------------------------------------

def join_training(tm: TrainabilityMap, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per shaped training point at its best learning rate (`best_lr_table`) with
    the map's prediction there (None where the grid has no such point).

    trained: "yes" when no seed diverged or ended worse than a uniform guess (final excess
    > 1) at that rate, "no" when the median final excess is >= 1 (or NaN), "partly"
    otherwise. agree: "yes" for healthy/yes or exploding-collapsing/no, "partly" for a
    "partly" trained point, "no" otherwise, None where the map has no prediction.
    """
    from .training import best_lr_table

    out = []
    for r in best_lr_table(results["summary"]):
        if r["kind"] != "shaped":
            continue
        m = tm.row(float(r["gamma"]), float(r["tau0"]))
        med = r["final_excess_median"]
        if not (math.isfinite(med) and med < 1):
            trained = "no"
        elif r["diverged"] == 0 and r["worse_than_uniform"] == 0:
            trained = "yes"
        else:
            trained = "partly"
        pred = None if m is None else m["prediction"]
        if pred is None:
            agree = None
        elif trained == "partly":
            agree = "partly"
        else:
            agree = "yes" if (pred == "healthy") == (trained == "yes") else "no"
        out.append({"gamma": r["gamma"], "tau0": r["tau0"], "prediction": pred,
                    "p_exit": math.nan if m is None else m["p_exit"],
                    "p_exit_se": math.nan if m is None else m["p_exit_se"],
                    "growth_rate": math.nan if m is None else m["growth_rate"],
                    "growth_rate_se": math.nan if m is None else m["growth_rate_se"],
                    "sens_rate": math.nan if m is None else m["sens_rate"],
                    "p_singular": math.nan if m is None else m["p_singular"],
                    "criteria": [] if m is None else criteria(m),
                    "lr": r["lr"], "excess_mean": r["final_excess_mean"],
                    "excess_median": med, "worse_than_uniform": r["worse_than_uniform"],
                    "diverged": r["diverged"], "seeds": r["seeds"], "trained": trained,
                    "agree": agree})
    return out


def join_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """`join_training`'s rows as the Markdown table of docs/trainability.md."""
    lines = ["| point (gamma, tau0) | predicted | P(exit) | mean growth / T | mean sens. / T | "
             "P(sing.) | thresholds crossed | trained (best lr: median excess, > uniform, "
             "diverged) | agreement |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| ({r['gamma']:g}, {r['tau0']:g}) | {r['prediction'] or 'not on grid'} | "
            f"{r['p_exit']:.3f} ± {r['p_exit_se']:.3f} | {r['growth_rate']:+.2f} ± "
            f"{r['growth_rate_se']:.2f} | {r['sens_rate']:+.2f} | {r['p_singular']:.2f} | "
            f"{', '.join(r['criteria']) or 'none'} | "
            f"{r['trained']} (lr {r['lr']:g}: {r['excess_median']:.2f}, "
            f"{r['worse_than_uniform']}/{r['seeds']}, {r['diverged']}/{r['seeds']}) | "
            f"{r['agree'] or '-'} |")
    return "\n".join(lines)
