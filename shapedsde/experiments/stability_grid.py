"""The stability map: for each (gamma, tau0) cell, SDE paths from V0 to time T and the
statistics a user cares about at T (`stability_stats`): the spread of rho^{01}_T, the
probability that V_T is near-degenerate, the growth of tr V_T / tr V_0, and the solver's
outcomes: P(exit by T) of the ball tr V < EXIT_TRACE tr V0 (the other statistics are
those of the surviving paths) and the non-finite fraction. Optionally one attention-free
reference per gamma (the tau0 -> infinity limit).

Seeds (`shapedsde.seeds`): cell (i, j) of a G x K grid gets child_seed(seed, 0, i K + j),
the reference of gamma i child_seed(seed, 1, i), and the bootstraps child_seed(seed, 2, .),
so a cell's result depends only on the root seed and its position in the grid.
"""

from __future__ import annotations

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
from ..progress import progress_bar
from ..sde import default_steps
from ..seeds import check_root, child_seed
from . import stability_stats as vt
from ._common import plot_files, pyplot, stem
from .stability_scales import attention_free, check_grid, is_normalised, map_block
from .stability_stats import BOOTSTRAP, COUNTER_LABELS, EIG_THRESHOLD, RHO_THRESHOLD, STAT_LABELS

#: Panels of `StabilityMap.plot`.
PLOT_STATS = ("rho_std", "rho_range", "p_degenerate", "p_collapse",
              "trace_q99", "p_exit")
#: Panels for a normalised block (`norm` in block_params): its state is a correlation
#: matrix (tr V = m on every path), so tr V_T / tr V_0 = 1 and P(exit) = 0; the mean and
#: median of rho^{01}_T (the drift towards collapse) take their places, and
#: P(lambda_min(C_T) < eig) is the near-singular fraction lambda_min(V_T) / tr V_T < eig / m.
PLOT_STATS_NORMALISED = ("rho_std", "rho_range", "p_degenerate", "p_collapse",
                         "rho_mean", "rho_q50")
_PROBABILITIES = ("p_degenerate", "p_collapse", *COUNTER_LABELS)
#: Panel titles of `StabilityMap.plot` (mathtext).
PLOT_LABELS = {
    "rho_std": r"std $\rho^{01}_T$",
    "rho_range": r"10-90% range of $\rho^{01}_T$",
    "p_degenerate": r"$P(\lambda_{\min}(C_T) < {eig})$",
    "p_collapse": r"$P(\max_{a<b} \rho^{ab}_T > {rho})$",
    "trace_q99": r"99% quantile of $\mathrm{tr}\,V_T / \mathrm{tr}\,V_0$",
    "p_exit": r"$P(\tau_R \leq T)$",
    "rho_mean": r"mean $\rho^{01}_T$",
    "rho_q50": r"median $\rho^{01}_T$",
}


@dataclass
class StabilityMap:
    """Statistics of the SDE at time T over a (gamma, tau0) grid.

    stats / se: name -> (len(gammas), len(tau0s)) arrays (names in STAT_LABELS and
    COUNTER_LABELS, plus "n" = finite paths); reference / reference_se: name ->
    (len(gammas),) arrays for the attention-free SDE (tau0 -> infinity), or None.
    cell_seeds (G, K) and reference_seeds (G,) are the solver seeds used.
    """

    block: str
    block_params: dict[str, Any]
    gammas: np.ndarray
    tau0s: np.ndarray
    T: float
    V0: np.ndarray
    paths: int
    seed: int
    steps: int
    eig_threshold: float
    rho_threshold: float
    stats: dict[str, np.ndarray]
    se: dict[str, np.ndarray]
    cell_seeds: np.ndarray
    wall_s: np.ndarray
    reference: dict[str, np.ndarray] | None = None
    reference_se: dict[str, np.ndarray] | None = None
    reference_seeds: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # -- serialisation ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict holding everything (arrays as nested lists, NaN as null)."""
        def arr(x):
            return None if x is None else _io.jsonable(np.asarray(x))
        return {
            "kind": "shapedsde.stability_map", "block": self.block,
            "block_params": self.block_params, "gammas": arr(self.gammas),
            "tau0s": arr(self.tau0s), "T": self.T, "V0": arr(self.V0), "paths": self.paths,
            "seed": self.seed, "steps": self.steps, "eig_threshold": self.eig_threshold,
            "rho_threshold": self.rho_threshold,
            "stats": {k: arr(v) for k, v in self.stats.items()},
            "se": {k: arr(v) for k, v in self.se.items()},
            "cell_seeds": arr(self.cell_seeds), "wall_s": arr(self.wall_s),
            "reference": (None if self.reference is None
                          else {k: arr(v) for k, v in self.reference.items()}),
            "reference_se": (None if self.reference_se is None
                             else {k: arr(v) for k, v in self.reference_se.items()}),
            "reference_seeds": arr(self.reference_seeds), "meta": _io.jsonable(self.meta),
        }

    def to_json(self, indent: int | None = 1) -> str:
        return _io.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StabilityMap:
        def arr(x, dtype=np.float64):
            return None if x is None else np.array(_nan(x), dtype=dtype)
        ref = d.get("reference")
        ref_se = d.get("reference_se")
        return cls(block=d["block"], block_params=d["block_params"], gammas=arr(d["gammas"]),
                   tau0s=arr(d["tau0s"]), T=d["T"], V0=arr(d["V0"]), paths=d["paths"],
                   seed=d["seed"], steps=d["steps"], eig_threshold=d["eig_threshold"],
                   rho_threshold=d["rho_threshold"],
                   stats={k: arr(v) for k, v in d["stats"].items()},
                   se={k: arr(v) for k, v in d["se"].items()},
                   cell_seeds=arr(d["cell_seeds"], np.int64), wall_s=arr(d["wall_s"]),
                   reference=None if ref is None else {k: arr(v) for k, v in ref.items()},
                   reference_se=None if ref_se is None else {k: arr(v)
                                                             for k, v in ref_se.items()},
                   reference_seeds=arr(d.get("reference_seeds"), np.int64),
                   meta=d.get("meta", {}))

    def save(self, path: str | Path) -> list[Path]:
        """Write `<path>.json` (everything) and `<path>.npz` (the arrays) at once; a suffix
        on `path` is dropped. Returns the two paths."""
        files = self.files(path)
        _io.write_files(files)
        return list(files)

    def files(self, path: str | Path) -> dict[Path, bytes]:
        """The bytes of `<path>.json` and `<path>.npz` (see `save`)."""
        import io

        base = stem(path)
        js, npz = base.with_suffix(".json"), base.with_suffix(".npz")
        arrays = {"gammas": self.gammas, "tau0s": self.tau0s, "V0": self.V0,
                  "cell_seeds": self.cell_seeds, "wall_s": self.wall_s}
        arrays |= {f"stat_{k}": v for k, v in self.stats.items()}
        arrays |= {f"se_{k}": v for k, v in self.se.items()}
        if self.reference is not None:
            arrays |= {f"ref_{k}": v for k, v in self.reference.items()}
            arrays |= {f"refse_{k}": v for k, v in (self.reference_se or {}).items()}
            arrays["reference_seeds"] = self.reference_seeds
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        return {js: (self.to_json() + "\n").encode(), npz: buf.getvalue()}

    @classmethod
    def load(cls, path: str | Path) -> StabilityMap:
        """Read a map written by `save` (from its JSON file)."""
        return cls.from_dict(json.loads(stem(path).with_suffix(".json").read_text()))

    # -- reading the map -------------------------------------------------------

    def label(self, name: str) -> str:
        lab = {**STAT_LABELS, **COUNTER_LABELS}[name]
        return lab.format(eig=f"{self.eig_threshold:g}", rho=f"{self.rho_threshold:g}")

    def plot_label(self, name: str) -> str:
        lab = PLOT_LABELS.get(name, self.label(name))
        return lab.replace("{eig}", f"{self.eig_threshold:g}").replace(
            "{rho}", f"{self.rho_threshold:g}")

    def argmax(self, name: str) -> tuple[float, float, float]:
        """(gamma, tau0, value) of the grid cell where statistic `name` is largest."""
        a = self.stats[name]
        i, j = np.unravel_index(np.nanargmax(a), a.shape)
        return float(self.gammas[i]), float(self.tau0s[j]), float(a[i, j])

    def region(self, name: str, threshold: float) -> list[tuple[float, float]]:
        """The (gamma, tau0) cells where statistic `name` exceeds `threshold`."""
        i, j = np.nonzero(self.stats[name] > threshold)
        return [(float(self.gammas[a]), float(self.tau0s[b])) for a, b in zip(i, j, strict=True)]

    @property
    def plot_stats(self) -> tuple[str, ...]:
        """The figure's panels: PLOT_STATS, or PLOT_STATS_NORMALISED for a normalised block."""
        return PLOT_STATS_NORMALISED if is_normalised(self.block_params) else PLOT_STATS

    def summary(self) -> str:
        """A few lines of key numbers."""
        lines = [f"stability map: {self.block} {self.block_params} m={self.V0.shape[0]} "
                 f"T={self.T:g} paths={self.paths} steps={self.steps} seed={self.seed} "
                 f"({len(self.gammas)} x {len(self.tau0s)} cells, "
                 f"{float(np.sum(self.wall_s)):.1f} s of solver time)"]
        for name in self.plot_stats:
            g, t, v = self.argmax(name)
            lo = float(np.nanmin(self.stats[name]))
            lines.append(f"  {self.label(name)}: range [{lo:.3g}, {v:.3g}], "
                         f"max at gamma={g:g}, tau0={t:g}")
        if is_normalised(self.block_params):
            tr = np.concatenate([self.stats[k].ravel() for k in ("trace_median", "trace_q99")])
            lines.append(f"  normalised: tr V_T / tr V_0 in [{np.nanmin(tr):.6g}, "
                         f"{np.nanmax(tr):.6g}] (medians and 99% quantiles), max P(exit) "
                         f"{np.nanmax(self.stats['p_exit']):g}, max non-finite "
                         f"{np.nanmax(self.stats['frac_nonfinite']):g}")
        if self.reference is not None:
            ref = ", ".join(f"gamma={g:g}: std {s:.3f}, P(deg) {p:.3f}" for g, s, p in
                            zip(self.gammas, self.reference["rho_std"],
                                self.reference["p_degenerate"], strict=True))
            lines.append(f"  attention-free reference (tau0 = inf): {ref}")
        return "\n".join(lines)

    # -- figure ----------------------------------------------------------------

    def plot(self, path: str | Path, stats: Sequence[str] | None = None,
             ncols: int = 4) -> list[Path]:
        """Heatmaps (rows gamma, columns tau0, plus a tau0 = inf column for the reference
        when there is one), one panel per statistic (default `plot_stats`), values
        annotated. Writes
        `<path>.png` and `<path>.pdf` (a suffix on `path` is dropped)."""
        files = self.plot_files(path, stats, ncols)
        _io.write_files(files)
        return list(files)

    def plot_files(self, path: str | Path, stats: Sequence[str] | None = None,
                   ncols: int = 4) -> dict[Path, bytes]:
        """The bytes of `plot`'s `<path>.png` and `<path>.pdf`."""
        plt = pyplot()
        base = stem(path)
        stats = list(self.plot_stats if stats is None else stats)
        nrows = math.ceil(len(stats) / ncols)
        K = len(self.tau0s) + (self.reference is not None)
        fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                                 figsize=(ncols * (0.65 * K + 1.9),
                                          nrows * (0.48 * len(self.gammas) + 1.8)))
        xt = [f"{t:g}" for t in self.tau0s] + ([r"$\infty$"] if self.reference is not None else [])
        for ax, name in zip(axes.flat, stats, strict=False):
            a = np.asarray(self.stats[name], dtype=float)
            if self.reference is not None:
                a = np.concatenate([a, np.asarray(self.reference[name], float)[:, None]], axis=1)
            prob = name in _PROBABILITIES
            vmin, vmax = (0.0, 1.0) if prob else (np.nanmin(a), np.nanmax(a))
            im = ax.imshow(a, origin="lower", aspect="auto", cmap="viridis",
                           vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-12)
            for (i, j), v in np.ndenumerate(a):
                if np.isfinite(v):
                    frac = (v - vmin) / (vmax - vmin) if vmax > vmin else 0.0
                    ax.text(j, i, _fmt(v), ha="center", va="center", fontsize=8,
                            color="black" if frac > 0.6 else "white")
            if self.reference is not None:
                ax.axvline(K - 1.5, color="white", lw=2)
            ax.set_xticks(range(K), xt, fontsize=9)
            ax.set_yticks(range(len(self.gammas)), [f"{g:g}" for g in self.gammas], fontsize=9)
            ax.set_xlabel(r"$\tau_0$")
            ax.set_ylabel(r"$\gamma$")
            ax.set_title(self.plot_label(name))
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=8)
        for ax in list(axes.flat)[len(stats):]:
            ax.axis("off")
        v0 = np.array2string(self.V0, precision=2, separator=",").replace("\n", "")
        params = "".join(f" {k}={v}" for k, v in self.block_params.items())
        fig.suptitle(f"{self.block}{params}: SDE at $T = {self.T:g}$, $m = {self.V0.shape[0]}$, "
                     f"$V_0$ = {v0}, {self.paths} paths/cell, $dt = {self.T / self.steps:.3g}$"
                     + ("; last column: attention terms removed" if self.reference is not None
                        else ""))
        fig.tight_layout()
        return plot_files(fig, base, dpi=130)


def stability_map(block_name: str, gammas: Any, tau0s: Any, *, T: float, V0: Any, paths: int,
                  seed: int, device: str = "cpu", progress: bool = False,
                  steps: int | None = None, reference: bool = True,
                  eig_threshold: float = EIG_THRESHOLD, rho_threshold: float = RHO_THRESHOLD,
                  bootstrap: int = BOOTSTRAP, **block_params: Any) -> StabilityMap:
    """Solve the SDE of `block_name` at every (gamma, tau0) and summarise V_T.

    V0: (m, m) initial covariance; paths per cell; steps: solver steps (default: the
    solver's rule, dt <= 0.005); reference: also solve the attention-free SDE once per
    gamma (the tau0 -> infinity column); block_params: e.g. heads=2 (attention) or
    c_plus/c_minus (transformer). Seeds: see the module doc.
    """
    gammas, tau0s = check_grid("gammas", gammas, upper=1.0), check_grid("tau0s", tau0s)
    T = val.check_time(T)
    paths = val.check_positive_int("paths", paths)
    V0 = vt.check_v0(V0)
    for name, thr in (("eig_threshold", eig_threshold), ("rho_threshold", rho_threshold)):
        if not 0 < thr <= 1:
            raise ValueError(f"{name} must lie in (0, 1]; got {thr}")
    steps = default_steps(T) if steps is None else val.check_positive_int("steps", steps)
    # validate every block before any work
    blocks = [[map_block(block_name, float(g), float(t), **block_params) for t in tau0s]
              for g in gammas]
    G, K = len(gammas), len(tau0s)
    seed = check_root(seed)
    cell_seeds = np.array([child_seed(seed, 0, c) for c in range(G * K)], np.int64).reshape(G, K)
    ref_seeds = np.array([child_seed(seed, 1, i) for i in range(G)], np.int64)
    boot_seeds = [child_seed(seed, 2, c) for c in range(G * K + G)]

    names = [*STAT_LABELS, "n", *COUNTER_LABELS]
    stats = {k: np.full((G, K), np.nan) for k in names}
    se = {k: np.full((G, K), np.nan) for k in names}
    ref = {k: np.full(G, np.nan) for k in names} if reference else None
    ref_se = {k: np.full(G, np.nan) for k in names} if reference else None
    wall = np.zeros((G, K))
    jobs = [(i, j) for i in range(G) for j in range(K)] + ([(i, None) for i in range(G)]
                                                          if reference else [])
    kw = dict(eig_threshold=eig_threshold, rho_threshold=rho_threshold, bootstrap=bootstrap)
    start = time.perf_counter()
    for i, j in progress_bar(jobs, enabled=progress, desc=f"stability {block_name}",
                             unit="cell"):
        coef = attention_free(blocks[i][0]) if j is None else blocks[i][j]
        s = int(ref_seeds[i]) if j is None else int(cell_seeds[i, j])
        t0 = time.perf_counter()
        V, meta = vt.solve_survivors(coef, V0, T, paths, s, steps, device)
        est, err = vt.summarize(vt.path_statistics(V, V0),
                             seed=boot_seeds[G * K + i if j is None else i * K + j], **kw)
        c_est, c_err = vt.counter_stats(meta)
        est |= c_est
        err |= c_err
        err["n"] = 0.0
        for k in names:
            if j is None:
                ref[k][i], ref_se[k][i] = est[k], err[k]
            else:
                stats[k][i, j], se[k][i, j] = est[k], err[k]
        if j is not None:
            wall[i, j] = time.perf_counter() - t0
    return StabilityMap(
        block=block_name, block_params=dict(block_params), gammas=gammas, tau0s=tau0s, T=T,
        V0=V0, paths=paths, seed=int(seed), steps=steps, eig_threshold=eig_threshold,
        rho_threshold=rho_threshold, stats=stats, se=se, cell_seeds=cell_seeds, wall_s=wall,
        reference=ref, reference_se=ref_se, reference_seeds=ref_seeds if reference else None,
        meta={"device": str(device), "dtype": "float64", "dt": T / steps, "bootstrap": bootstrap,
              "total_wall_s": time.perf_counter() - start, "torch": torch.__version__,
              "numpy": np.__version__,
              "reference": "attention-free SDE (tau0 -> inf)" if reference else None})


def _nan(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan(v) for v in x]
    return math.nan if x is None else x


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if abs(v) >= 0.01 else f"{v:.3f}"
