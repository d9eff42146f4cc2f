"""Stability and hyperparameters: how gamma and tau0 set the attention terms, and what
the covariance SDE does at a given depth-to-width ratio T over a (gamma, tau0) grid.

Three parts:

1. `coefficient_scales`: the norms of the attention part of the drift and of the
   diffusion at a fixed V, over a (gamma, tau0) grid. The attention part is the block's
   coefficient minus the coefficients of the same block with every attention term
   removed (`attention_free`: the linear block with the same gamma, i.e. the value-matrix
   noise; for the Transformer block also the MLP sub-layer). The derivation
   (docs/derivation.md) gives
       b_att(V)     = gamma^2 / tau0^2 * b_1(V),
       Sigma_att(V) = gamma^4 / (n_H tau0^2) * Sigma_1(V),
   so `fit_exponents` recovers the exponents (2, -2) and (4, -2) by a log-log least-squares
   fit, exactly up to rounding.
2. `stability_map`: for each (gamma, tau0) cell, SDE paths from V0 to time T and the
   statistics a user cares about at T: the spread of rho^{01}_T (std, 10/50/90%
   quantiles, 10-90% range), the probability that V_T is near-degenerate (smallest
   eigenvalue of the correlation matrix below `eig_threshold`; some off-diagonal
   rho above `rho_threshold`), the growth of tr(V_T) / tr(V_0) (99% quantile), and the
   solver's outcomes (`SDEResult.meta`): P(exit by T) of the ball tr V < EXIT_TRACE tr V0
   (the other statistics are those of the surviving paths) and the non-finite fraction.
   Optionally one attention-free reference per gamma (the
   tau0 -> infinity limit). Each statistic carries a standard error (bootstrap for the
   spread and quantiles, binomial for probabilities).
3. `spot_check`: finite networks (width n, depth d = round(T n)) against SDE paths at
   one (gamma, tau0), on the same statistics, with standard errors, z-scores, a
   two-sample KS test on rho^{01}_T and the same KS against the attention-free SDE (a
   negative control: if that is not rejected either, the check has no power).

Seeds: every cell (and every sample of a spot check) gets its own seed, spawned from one
root seed with `numpy.random.SeedSequence.spawn`, so a cell's result depends only on the
root seed and its position in the grid. `python -m shapedsde.stability --help` runs the
whole thing from the command line (`main(argv)`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _validation as val
from .blocks import Block, LinearBlock, MlpBlock, SumOfCoefficients
from .blocks import block as make_block

#: Blocks with attention terms that the map and the spot check cover.
MAP_BLOCKS = ("attention", "transformer")
#: Exponents of gamma and tau0 in the attention part of the coefficients (derivation).
EXPECTED_EXPONENTS = {"drift": {"gamma": 2.0, "tau0": -2.0},
                      "diffusion": {"gamma": 4.0, "tau0": -2.0}}
EIG_THRESHOLD = 0.05
RHO_THRESHOLD = 0.99
BOOTSTRAP = 200

#: Statistics of one sample of V_T, in display order, with labels.
STAT_LABELS = {
    "rho_mean": "mean rho01",
    "rho_std": "std rho01",
    "rho_q10": "10% quantile rho01",
    "rho_q50": "median rho01",
    "rho_q90": "90% quantile rho01",
    "rho_range": "10-90% range rho01",
    "p_degenerate": "P(lambda_min(C) < {eig})",
    "p_collapse": "P(max rho > {rho})",
    "trace_median": "median tr V_T / tr V_0",
    "trace_q99": "99% quantile tr V_T / tr V_0",
}
#: The SDE is stopped at the exit of the ball tr V < EXIT_TRACE tr V0 (finite networks
#: converge to it only up to that time, docs/solver.md); the other statistics of a cell
#: are those of the survivors.
EXIT_TRACE = 5.0
#: Solver outcomes per cell (fractions of paths).
COUNTER_LABELS = {
    "p_exit": f"P(tr V >= {EXIT_TRACE:g} tr V0 by T)",
    "frac_nonfinite": "paths non-finite",
}
#: Panels of `StabilityMap.plot`.
PLOT_STATS = ("rho_std", "rho_range", "p_degenerate", "p_collapse",
              "trace_q99", "p_exit")
#: Statistics compared by `spot_check`.
SPOT_STATS = ("rho_mean", "rho_std", "rho_q10", "rho_q90", "rho_range", "p_degenerate",
              "p_collapse", "trace_median")
_PROBABILITIES = ("p_degenerate", "p_collapse", *COUNTER_LABELS)


# ----------------------------------------------------------------------------
# Blocks, attention parts and seeds


def map_block(block_name: str, gamma: float, tau0: float, **block_params: Any) -> Block:
    """The block at one grid point (ValueError for a block without attention terms)."""
    if block_name not in MAP_BLOCKS:
        raise ValueError(f"block must be one of {MAP_BLOCKS} (blocks with attention terms); "
                         f"got {block_name!r}")
    return make_block(block_name, gamma=gamma, tau0=tau0, **block_params)


def attention_free(blk: Block) -> Any:
    """The coefficients of `blk` with every attention term removed (tau0 -> infinity).

    attention: the linear block with the same gamma (the value-matrix noise);
    transformer: linear + MLP with the same gamma, c_plus, c_minus.
    """
    if blk.name == "attention":
        return LinearBlock(blk.gamma)
    if blk.name == "transformer":
        mlp = MlpBlock(blk.gamma, c_plus=blk.c_plus, c_minus=blk.c_minus)
        return SumOfCoefficients((LinearBlock(blk.gamma), mlp), name="linear+mlp")
    raise ValueError(f"block {blk.name!r} has no attention terms")


def attention_part(blk: Block, V: Any) -> tuple[np.ndarray, np.ndarray]:
    """(b_att(V), Sigma_att(V)) = the block's coefficients minus `attention_free(blk)`'s."""
    V = np.asarray(val.check_covariance(V), dtype=np.float64)
    rest = attention_free(blk)
    return (np.asarray(blk.drift(V)) - np.asarray(rest.drift(V)),
            np.asarray(blk.diffusion(V)) - np.asarray(rest.diffusion(V)))


def spawn_seeds(root: int, k: int) -> list[int]:
    """k torch seeds (< 2^63) from `SeedSequence(root).spawn(k)`, child i for item i."""
    return [_seed_of(c) for c in np.random.SeedSequence(_check_root(root)).spawn(k)]


def _seed_of(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _check_root(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63); got {seed!r}")
    return int(seed)


def equicorrelated(m: int, rho0: float, scale: float = 1.0) -> np.ndarray:
    """V0 = scale ((1 - rho0) I + rho0 11^T): unit variances, every correlation rho0."""
    m = val.check_positive_int("m", m)
    if m < 2:
        raise ValueError(f"m must be >= 2; got {m}")
    if not -1.0 / (m - 1) <= rho0 <= 1.0:
        raise ValueError(f"rho0 must lie in [-1/(m-1), 1] for a PSD V0; got {rho0}")
    return scale * ((1.0 - rho0) * np.eye(m) + rho0 * np.ones((m, m)))


def _grid(name: str, values: Any, upper: float | None = None) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a non-empty 1-d list of positive numbers; got {values!r}")
    if upper is not None and np.any(arr > upper):
        raise ValueError(f"{name} must be <= {upper}; got {values!r}")
    return arr


# ----------------------------------------------------------------------------
# 1. Coefficient scales


def coefficient_scales(block_name: str, gammas: Any, tau0s: Any, V: Any,
                       **block_params: Any) -> dict[str, Any]:
    """Norms of the attention part of b and Sigma at V over the (gamma, tau0) grid.

    Returns a dict of (len(gammas), len(tau0s)) arrays: "drift" = ||b_att(V)||_F,
    "diffusion" = ||Sigma_att(V)||_F (over the m^4 entries), "drift_total",
    "diffusion_total" (the whole block's), "diffusion_value" (the attention-free part's),
    "ratio" = diffusion / diffusion_value; plus "gammas", "tau0s", "block", "V",
    "block_params". See `fit_exponents`.
    """
    gammas = _grid("gammas", gammas, upper=1.0)
    tau0s = _grid("tau0s", tau0s)
    V = np.asarray(val.check_covariance(V), dtype=np.float64)
    if V.ndim != 2:
        raise ValueError(f"V must be one (m, m) matrix; got shape {V.shape}")
    shape = (len(gammas), len(tau0s))
    out = {k: np.zeros(shape) for k in ("drift", "diffusion", "drift_total", "diffusion_total",
                                         "diffusion_value")}
    for i, g in enumerate(gammas):
        for j, t in enumerate(tau0s):
            blk = map_block(block_name, float(g), float(t), **block_params)
            b_att, s_att = attention_part(blk, V)
            out["drift"][i, j] = np.linalg.norm(b_att)
            out["diffusion"][i, j] = np.linalg.norm(s_att)
            out["drift_total"][i, j] = np.linalg.norm(blk.drift(V))
            out["diffusion_total"][i, j] = np.linalg.norm(blk.diffusion(V))
            out["diffusion_value"][i, j] = np.linalg.norm(attention_free(blk).diffusion(V))
    out["ratio"] = out["diffusion"] / out["diffusion_value"]
    out.update(gammas=gammas, tau0s=tau0s, block=block_name, V=V, block_params=block_params)
    return out


def fit_exponents(scales: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Least-squares fit log ||part|| = c + p log gamma + q log tau0 over the grid.

    Returns {"drift": {...}, "diffusion": {...}}, each with "gamma" (p), "tau0" (q),
    "prefactor" (exp c: the norm at gamma = tau0 = 1) and "max_residual" (the largest
    |residual| of the fit in log space; ~1e-15 for an exact power law).
    """
    g, t = np.meshgrid(scales["gammas"], scales["tau0s"], indexing="ij")
    if len(np.unique(scales["gammas"])) < 2 or len(np.unique(scales["tau0s"])) < 2:
        raise ValueError("fit_exponents needs at least two distinct gammas and two tau0s")
    A = np.stack([np.ones(g.size), np.log(g).ravel(), np.log(t).ravel()], axis=1)
    out = {}
    for part in ("drift", "diffusion"):
        y = np.asarray(scales[part], dtype=np.float64).ravel()
        if np.any(y <= 0):
            raise ValueError(f"the attention part of the {part} vanishes at this V "
                             "(e.g. V proportional to 11^T); pick a V with P V P != 0")
        coef, *_ = np.linalg.lstsq(A, np.log(y), rcond=None)
        out[part] = {"gamma": float(coef[1]), "tau0": float(coef[2]),
                     "prefactor": float(np.exp(coef[0])),
                     "max_residual": float(np.max(np.abs(A @ coef - np.log(y))))}
    return out


# ----------------------------------------------------------------------------
# Statistics of a sample of V_T


def path_statistics(V: Any, V0: Any) -> dict[str, np.ndarray]:
    """Per-path quantities of a sample V (N, m, m); rows with non-finite V are dropped.

    rho01, lam_min (smallest eigenvalue of the correlation matrix C = D^{-1/2} V D^{-1/2};
    a zero variance gives a zero row of C, hence lam_min = 0), rho_max (largest
    off-diagonal correlation) and trace (tr V / tr V0).
    """
    V = torch.as_tensor(V).detach().to("cpu", torch.float64)
    V = V[torch.isfinite(V).flatten(1).all(1)]
    m = V.shape[-1]
    d = torch.diagonal(V, 0, -2, -1).clamp_min(torch.finfo(torch.float64).tiny)
    C = V / torch.sqrt(d[:, :, None] * d[:, None, :])
    C = 0.5 * (C + C.transpose(-1, -2))
    off = ~torch.eye(m, dtype=torch.bool)
    tr0 = float(np.trace(np.asarray(V0, dtype=np.float64)))
    return {"rho01": C[:, 0, 1].numpy(),
            "lam_min": (torch.linalg.eigvalsh(C)[:, 0].numpy() if len(C) else np.zeros(0)),
            "rho_max": (C[:, off].amax(-1).numpy() if len(C) else np.zeros(0)),
            "trace": (torch.einsum("bii->b", V) / tr0).numpy()}


def _point_stats(x: dict[str, np.ndarray], eig: float, rho: float) -> dict[str, float]:
    r = x["rho01"]
    if len(r) == 0:
        return {k: math.nan for k in STAT_LABELS}
    q10, q50, q90 = np.quantile(r, [0.1, 0.5, 0.9])
    return {"rho_mean": float(r.mean()), "rho_std": float(r.std(ddof=1)) if len(r) > 1 else 0.0,
            "rho_q10": float(q10), "rho_q50": float(q50), "rho_q90": float(q90),
            "rho_range": float(q90 - q10),
            "p_degenerate": float(np.mean(x["lam_min"] < eig)),
            "p_collapse": float(np.mean(x["rho_max"] > rho)),
            "trace_median": float(np.median(x["trace"])),
            "trace_q99": float(np.quantile(x["trace"], 0.99))}


def summarize(x: dict[str, np.ndarray], *, eig_threshold: float = EIG_THRESHOLD,
              rho_threshold: float = RHO_THRESHOLD, bootstrap: int = BOOTSTRAP,
              seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(statistics, standard errors) of `path_statistics` output.

    SEs: binomial sqrt(p (1 - p) / N) for the probabilities, s / sqrt(N) for the mean,
    bootstrap (`bootstrap` resamples, numpy generator seeded with `seed`) for the std,
    the quantiles and their range. N = number of finite paths ("n" in the statistics).
    """
    est = _point_stats(x, eig_threshold, rho_threshold)
    N = len(x["rho01"])
    est["n"] = float(N)
    se = {k: math.nan for k in STAT_LABELS}
    if N < 2:
        return est, se
    for k in ("p_degenerate", "p_collapse"):
        se[k] = math.sqrt(est[k] * (1 - est[k]) / N)
    se["rho_mean"] = est["rho_std"] / math.sqrt(N)
    if bootstrap > 1:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, N, size=(bootstrap, N))
        r, tr = x["rho01"][idx], x["trace"][idx]
        q = np.quantile(r, [0.1, 0.5, 0.9], axis=1)
        boot = {"rho_std": r.std(axis=1, ddof=1), "rho_q10": q[0], "rho_q50": q[1],
                "rho_q90": q[2], "rho_range": q[2] - q[0],
                "trace_median": np.median(tr, axis=1),
                "trace_q99": np.quantile(tr, 0.99, axis=1)}
        for k, v in boot.items():
            se[k] = float(v.std(ddof=1))
    return est, se


def counter_stats(meta: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """P(exit by T) and the non-finite fraction of paths, with binomial standard errors."""
    P = meta["paths"]
    est = {"p_exit": meta["n_exits"] / P, "frac_nonfinite": meta["n_nonfinite"] / P}
    se = {k: math.sqrt(v * (1 - v) / P) for k, v in est.items()}
    return est, se


def _solve(coef: Any, V0: np.ndarray, T: float, paths: int, seed: int, steps: int | None,
           device: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """The survivors' V_T (paths inside the exit ball up to T) and the run's metadata."""
    from .sde import solve

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # counted in meta and reported
        res = solve(coef, V0, T, paths=paths, seed=seed, steps=steps, device=device,
                    exit_trace=EXIT_TRACE)
    return res.V[res.survivors.to(res.V.device)], res.meta


# ----------------------------------------------------------------------------
# 2. The map


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
            return None if x is None else _jsonable(np.asarray(x))
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
            "reference_seeds": arr(self.reference_seeds), "meta": _jsonable(self.meta),
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

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
        """Write `<path>.json` (everything) and `<path>.npz` (the arrays); a suffix on
        `path` is dropped. Returns the two paths."""
        base = _stem(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        js, npz = base.with_suffix(".json"), base.with_suffix(".npz")
        js.write_text(self.to_json() + "\n")
        arrays = {"gammas": self.gammas, "tau0s": self.tau0s, "V0": self.V0,
                  "cell_seeds": self.cell_seeds, "wall_s": self.wall_s}
        arrays |= {f"stat_{k}": v for k, v in self.stats.items()}
        arrays |= {f"se_{k}": v for k, v in self.se.items()}
        if self.reference is not None:
            arrays |= {f"ref_{k}": v for k, v in self.reference.items()}
            arrays |= {f"refse_{k}": v for k, v in (self.reference_se or {}).items()}
            arrays["reference_seeds"] = self.reference_seeds
        np.savez_compressed(npz, **{k: np.asarray(v) for k, v in arrays.items()})
        return [js, npz]

    @classmethod
    def load(cls, path: str | Path) -> StabilityMap:
        """Read a map written by `save` (from its JSON file)."""
        return cls.from_dict(json.loads(_stem(path).with_suffix(".json").read_text()))

    # -- reading the map -------------------------------------------------------

    def label(self, name: str) -> str:
        lab = {**STAT_LABELS, **COUNTER_LABELS}[name]
        return lab.format(eig=f"{self.eig_threshold:g}", rho=f"{self.rho_threshold:g}")

    def argmax(self, name: str) -> tuple[float, float, float]:
        """(gamma, tau0, value) of the grid cell where statistic `name` is largest."""
        a = self.stats[name]
        i, j = np.unravel_index(np.nanargmax(a), a.shape)
        return float(self.gammas[i]), float(self.tau0s[j]), float(a[i, j])

    def region(self, name: str, threshold: float) -> list[tuple[float, float]]:
        """The (gamma, tau0) cells where statistic `name` exceeds `threshold`."""
        i, j = np.nonzero(self.stats[name] > threshold)
        return [(float(self.gammas[a]), float(self.tau0s[b])) for a, b in zip(i, j, strict=True)]

    def summary(self) -> str:
        """A few lines of key numbers."""
        lines = [f"stability map: {self.block} {self.block_params} m={self.V0.shape[0]} "
                 f"T={self.T:g} paths={self.paths} steps={self.steps} seed={self.seed} "
                 f"({len(self.gammas)} x {len(self.tau0s)} cells, "
                 f"{float(np.sum(self.wall_s)):.1f} s of solver time)"]
        for name in PLOT_STATS:
            g, t, v = self.argmax(name)
            lo = float(np.nanmin(self.stats[name]))
            lines.append(f"  {self.label(name)}: range [{lo:.3g}, {v:.3g}], "
                         f"max at gamma={g:g}, tau0={t:g}")
        if self.reference is not None:
            ref = ", ".join(f"gamma={g:g}: std {s:.3f}, P(deg) {p:.3f}" for g, s, p in
                            zip(self.gammas, self.reference["rho_std"],
                                self.reference["p_degenerate"], strict=True))
            lines.append(f"  attention-free reference (tau0 = inf): {ref}")
        return "\n".join(lines)

    # -- figure ----------------------------------------------------------------

    def plot(self, path: str | Path, stats: Sequence[str] = PLOT_STATS,
             ncols: int = 4) -> list[Path]:
        """Heatmaps (rows gamma, columns tau0, plus a tau0 = inf column for the reference
        when there is one), one panel per statistic, values annotated. Writes
        `<path>.png` and `<path>.pdf` (a suffix on `path` is dropped)."""
        plt = _plt()
        base = _stem(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        stats = list(stats)
        nrows = math.ceil(len(stats) / ncols)
        K = len(self.tau0s) + (self.reference is not None)
        fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                                 figsize=(ncols * (0.55 * K + 1.6), nrows * (0.4 * len(self.gammas)
                                                                           + 1.5)))
        xt = [f"{t:g}" for t in self.tau0s] + (["inf"] if self.reference is not None else [])
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
                    ax.text(j, i, _fmt(v), ha="center", va="center", fontsize=7,
                            color="black" if frac > 0.6 else "white")
            if self.reference is not None:
                ax.axvline(K - 1.5, color="white", lw=2)
            ax.set_xticks(range(K), xt, fontsize=7)
            ax.set_yticks(range(len(self.gammas)), [f"{g:g}" for g in self.gammas], fontsize=7)
            ax.set_xlabel("tau0", fontsize=8)
            ax.set_ylabel("gamma", fontsize=8)
            ax.set_title(self.label(name), fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[len(stats):]:
            ax.axis("off")
        v0 = np.array2string(self.V0, precision=2, separator=",").replace("\n", "")
        params = "".join(f" {k}={v}" for k, v in self.block_params.items())
        fig.suptitle(f"{self.block}{params}: SDE at T = {self.T:g}, m = {self.V0.shape[0]}, "
                     f"V0 = {v0}, {self.paths} paths/cell, dt = {self.T / self.steps:.3g}"
                     + ("; last column: attention terms removed" if self.reference is not None
                        else ""), fontsize=10)
        fig.tight_layout()
        png, pdf = base.with_suffix(".png"), base.with_suffix(".pdf")
        fig.savefig(png, dpi=130)
        fig.savefig(pdf)
        plt.close(fig)
        return [png, pdf]


def stability_map(block_name: str, gammas: Any, tau0s: Any, *, T: float, V0: Any, paths: int,
                  seed: int, device: str = "cpu", progress: bool = False,
                  steps: int | None = None, reference: bool = True,
                  eig_threshold: float = EIG_THRESHOLD, rho_threshold: float = RHO_THRESHOLD,
                  bootstrap: int = BOOTSTRAP, **block_params: Any) -> StabilityMap:
    """Solve the SDE of `block_name` at every (gamma, tau0) and summarise V_T.

    V0: (m, m) initial covariance; paths per cell; steps: solver steps (default: the
    solver's rule, dt <= 0.005); reference: also solve the attention-free SDE once per
    gamma (the tau0 -> infinity column); block_params: e.g. heads=2 (attention) or
    c_plus/c_minus (transformer). Cell (i, j) uses the solver seed
    `spawn_seeds(child 0 of seed, G K)[i K + j]`, the reference of gamma i
    `spawn_seeds(child 1 of seed, G)[i]` (children of `SeedSequence(seed).spawn(3)`;
    child 2 seeds the bootstraps).
    """
    from tqdm.auto import tqdm

    from .sde import default_steps

    gammas, tau0s = _grid("gammas", gammas, upper=1.0), _grid("tau0s", tau0s)
    T = val.check_time(T)
    paths = val.check_positive_int("paths", paths)
    V0 = _v0(V0)
    for name, thr in (("eig_threshold", eig_threshold), ("rho_threshold", rho_threshold)):
        if not 0 < thr <= 1:
            raise ValueError(f"{name} must lie in (0, 1]; got {thr}")
    steps = default_steps(T) if steps is None else val.check_positive_int("steps", steps)
    # validate every block before any work
    blocks = [[map_block(block_name, float(g), float(t), **block_params) for t in tau0s]
              for g in gammas]
    G, K = len(gammas), len(tau0s)
    cells_ss, ref_ss, boot_ss = np.random.SeedSequence(_check_root(seed)).spawn(3)
    cell_seeds = np.array([_seed_of(c) for c in cells_ss.spawn(G * K)], np.int64).reshape(G, K)
    ref_seeds = np.array([_seed_of(c) for c in ref_ss.spawn(G)], np.int64)
    boot_seeds = [_seed_of(c) for c in boot_ss.spawn(G * K + G)]

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
    for i, j in tqdm(jobs, disable=not progress, desc=f"stability {block_name}", unit="cell"):
        coef = attention_free(blocks[i][0]) if j is None else blocks[i][j]
        s = int(ref_seeds[i]) if j is None else int(cell_seeds[i, j])
        t0 = time.perf_counter()
        V, meta = _solve(coef, V0, T, paths, s, steps, device)
        est, err = summarize(path_statistics(V, V0),
                             seed=boot_seeds[G * K + i if j is None else i * K + j], **kw)
        c_est, c_err = counter_stats(meta)
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


# ----------------------------------------------------------------------------
# 3. Spot check: finite networks against the SDE


@dataclass
class SpotCheck:
    """Finite networks against SDE paths at one (gamma, tau0); see `spot_check`."""

    block: str
    block_params: dict[str, Any]
    gamma: float
    tau0: float
    T: float
    V0: np.ndarray
    width: int
    depth: int
    nets: int
    paths: int
    seed: int
    method: str
    eig_threshold: float
    rho_threshold: float
    finite: dict[str, float]
    finite_se: dict[str, float]
    sde: dict[str, float]
    sde_se: dict[str, float]
    z: dict[str, float]
    ks: dict[str, float]
    control_ks: dict[str, float]
    sde_counters: dict[str, float]
    seeds: dict[str, int]
    wall_s: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["V0"] = self.V0.tolist()
        return _jsonable(d)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        p = _stem(path).with_suffix(".json")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_json() + "\n")
        return p

    @property
    def max_abs_z(self) -> float:
        return max((abs(v) for v in self.z.values() if np.isfinite(v)), default=0.0)

    def summary(self) -> str:
        """A table: statistic, finite +- SE, SDE +- SE, z; then the KS lines."""
        head = (f"spot check {self.block} gamma={self.gamma:g} tau0={self.tau0:g} T={self.T:g}: "
                f"{self.nets} finite nets (n={self.width}, d={self.depth}, {self.method}) vs "
                f"{self.paths} SDE paths")
        rows = [head, f"  {'statistic':<32}{'finite':>18}{'SDE':>18}{'z':>8}"]
        for k in SPOT_STATS:
            lab = STAT_LABELS[k].format(eig=f"{self.eig_threshold:g}",
                                        rho=f"{self.rho_threshold:g}")
            rows.append(f"  {lab:<32}{_pm(self.finite[k], self.finite_se[k]):>18}"
                        f"{_pm(self.sde[k], self.sde_se[k]):>18}{self.z[k]:>8.2f}")
        rows.append(f"  KS rho01 finite vs SDE: D={self.ks['statistic']:.4f} "
                    f"p={self.ks['pvalue']:.3g}; control (attention terms removed): "
                    f"D={self.control_ks['statistic']:.4f} p={self.control_ks['pvalue']:.3g}")
        c = self.sde_counters
        rows.append(f"  SDE P(exit by T) {c['p_exit']:.3f} (statistics of the survivors), "
                    f"non-finite {c['frac_nonfinite']:.3f} | finite {self.wall_s['finite']:.1f}"
                    f" s, SDE {self.wall_s['sde']:.1f} s")
        return "\n".join(rows)


def spot_check(block_name: str, gamma: float, tau0: float, *, T: float, V0: Any, width: int,
               nets: int, paths: int, seed: int, device: str = "cpu", progress: bool = False,
               steps: int | None = None, method: str = "auto",
               eig_threshold: float = EIG_THRESHOLD, rho_threshold: float = RHO_THRESHOLD,
               bootstrap: int = BOOTSTRAP, **block_params: Any) -> SpotCheck:
    """`nets` finite networks of width n = `width` and depth d = round(T n) against
    `paths` SDE paths from the same V0, on the statistics of the map.

    z = (finite - SDE) / sqrt(SE_finite^2 + SE_SDE^2) per statistic; KS: two-sample
    Kolmogorov-Smirnov on rho^{01}_T, finite vs SDE, and finite vs the attention-free
    SDE (negative control). method: the finite sampler ("auto": the exact-in-law
    m x m chain where the block has one, else every weight drawn; see
    `shapedsde.finite.simulate`). Seeds: children of `SeedSequence(seed).spawn(5)` for
    the finite nets, the SDE, the control SDE and the two bootstraps.
    """
    from scipy.stats import ks_2samp

    from .finite import simulate, supports_gram
    from .sde import default_steps

    blk = map_block(block_name, float(gamma), float(tau0), **block_params)
    T = val.check_time(T)
    V0 = _v0(V0)
    width = val.check_positive_int("width", width)
    nets = val.check_positive_int("nets", nets)
    paths = val.check_positive_int("paths", paths)
    steps = default_steps(T) if steps is None else val.check_positive_int("steps", steps)
    names = ("finite", "sde", "control", "boot_finite", "boot_sde")
    seeds = dict(zip(names, spawn_seeds(seed, len(names)), strict=True))
    kw = dict(eig_threshold=eig_threshold, rho_threshold=rho_threshold, bootstrap=bootstrap)
    used = ("gram" if supports_gram(blk) else "full") if method == "auto" else method

    t0 = time.perf_counter()
    run = simulate(blk, V0, width=width, T=T, nets=nets, seed=seeds["finite"], device=device,
                   progress=progress, method=method, exit_trace=EXIT_TRACE)
    Vf = run.V[~run.exited.to(run.V.device)]  # the stopped networks' survivors, as for the SDE
    t_fin = time.perf_counter() - t0
    t0 = time.perf_counter()
    Vs, meta = _solve(blk, V0, T, paths, seeds["sde"], steps, device)
    Vc, _ = _solve(attention_free(blk), V0, T, paths, seeds["control"], steps, device)
    t_sde = time.perf_counter() - t0

    xf, xs, xc = (path_statistics(v, V0) for v in (Vf, Vs, Vc))
    f, f_se = summarize(xf, seed=seeds["boot_finite"], **kw)
    s, s_se = summarize(xs, seed=seeds["boot_sde"], **kw)
    z = {k: _z(f[k] - s[k], f_se[k], s_se[k]) for k in SPOT_STATS}
    ks = ks_2samp(xf["rho01"], xs["rho01"])
    ctrl = ks_2samp(xf["rho01"], xc["rho01"])
    return SpotCheck(
        block=block_name, block_params=dict(block_params), gamma=float(gamma), tau0=float(tau0),
        T=T, V0=V0, width=width, depth=int(round(T * width)), nets=nets, paths=paths,
        seed=int(seed), method=used, eig_threshold=eig_threshold,
        rho_threshold=rho_threshold, finite=f, finite_se=f_se, sde=s,
        sde_se=s_se, z=z, ks={"statistic": float(ks.statistic), "pvalue": float(ks.pvalue)},
        control_ks={"statistic": float(ctrl.statistic), "pvalue": float(ctrl.pvalue)},
        sde_counters=counter_stats(meta)[0], seeds=seeds,
        wall_s={"finite": t_fin, "sde": t_sde})


def _z(diff: float, se1: float, se2: float) -> float:
    den = math.sqrt(se1**2 + se2**2) if np.isfinite(se1) and np.isfinite(se2) else math.nan
    if not np.isfinite(diff):
        return math.nan
    if den == 0 or not np.isfinite(den):
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / den


# ----------------------------------------------------------------------------
# Helpers


def _v0(V0: Any) -> np.ndarray:
    V0 = val.check_covariance(V0, name="V0")
    V0 = np.asarray(V0.detach().cpu().double() if val.is_torch(V0) else V0, dtype=np.float64)
    if V0.ndim != 2:
        raise ValueError(f"V0 must be one (m, m) matrix; got shape {V0.shape}")
    if np.trace(V0) <= 0:
        raise ValueError("V0 must have a positive trace")
    return V0


def _stem(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".npz", ".png", ".pdf") else p


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if abs(v) >= 0.01 else f"{v:.3f}"


def _pm(v: float, se: float) -> str:
    return f"{v:.4f} +- {se:.4f}" if np.isfinite(se) else f"{v:.4f}"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def _nan(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan(v) for v in x]
    return math.nan if x is None else x


# ----------------------------------------------------------------------------
# Command line


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {text!r}") \
            from None


def _point(text: str) -> tuple[float, float]:
    v = _floats(text)
    if len(v) != 2:
        raise argparse.ArgumentTypeError(f"expected GAMMA,TAU0; got {text!r}")
    return v[0], v[1]


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser(prog: str = "python -m shapedsde.stability") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=(
        "Stability map over (gamma, tau0): spread of rho_T, probability of a near-degenerate "
        "V_T and the solver's taming counters, from the covariance SDE; plus finite-network "
        "spot checks. Writes <out>/<name>.{json,npz,png,pdf}, spot-check JSON and "
        "<out>/summary.txt."))
    p.add_argument("--block", default="attention", choices=MAP_BLOCKS)
    p.add_argument("--gammas", type=_floats, default=None,
                   help="comma-separated gammas in (0, 1] (default 0.2,0.35,0.5,0.7,1)")
    p.add_argument("--tau0s", type=_floats, default=None,
                   help="comma-separated tau0 > 0 (default 0.25,0.35,0.5,0.7,1,1.4,2)")
    p.add_argument("--T", type=float, default=1.0, help="depth-to-width ratio (default 1)")
    p.add_argument("--m", type=int, default=3, help="tokens (default 3)")
    p.add_argument("--rho0", type=float, default=0.2,
                   help="V0 = (1 - rho0) I + rho0 11^T (default 0.2)")
    p.add_argument("--paths", type=int, default=None, help="SDE paths per cell (default 4000)")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default dt <= 0.005)")
    p.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--heads", type=int, default=None, help="attention heads n_H (attention)")
    p.add_argument("--c-plus", type=float, default=None, help="MLP c_+ (transformer)")
    p.add_argument("--c-minus", type=float, default=None, help="MLP c_- (transformer)")
    p.add_argument("--eig-threshold", type=float, default=EIG_THRESHOLD,
                   help=f"near-degenerate: lambda_min(corr) below this (default {EIG_THRESHOLD})")
    p.add_argument("--rho-threshold", type=float, default=RHO_THRESHOLD,
                   help=f"collapse: some rho above this (default {RHO_THRESHOLD})")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the attention-free (tau0 = inf) column")
    p.add_argument("--spot", type=_point, action="append", default=None, metavar="GAMMA,TAU0",
                   help="finite-network spot check at this point (repeatable)")
    p.add_argument("--widths", type=lambda s: [int(v) for v in _floats(s)], default=None,
                   help="spot-check widths (default 64,128)")
    p.add_argument("--nets", type=int, default=None,
                   help="finite nets per spot check (default 2000)")
    p.add_argument("--spot-paths", type=int, default=None,
                   help="SDE paths per spot check (default: --paths)")
    p.add_argument("--out", default="docs/figures/stability", help="output folder")
    p.add_argument("--name", default=None, help="file stem (default stability_<block>_m<m>)")
    p.add_argument("--quick", action="store_true",
                   help="small run: defaults become a 3 x 3 grid, 300 paths, one spot check "
                        "at (0.7, 0.7), width 32, 300 nets (explicit options still win)")
    p.add_argument("--progress", action="store_true", help="tqdm progress bars")
    return p


_DEFAULTS = {"gammas": [0.2, 0.35, 0.5, 0.7, 1.0], "tau0s": [0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0],
             "paths": 4000, "widths": [64, 128], "nets": 2000}
_QUICK = {"gammas": [0.35, 0.7, 1.0], "tau0s": [0.35, 0.7, 1.4], "paths": 300, "widths": [32],
          "nets": 300, "spot": [(0.7, 0.7)]}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the map (and spot checks); returns the exit status (2 on invalid input)."""
    try:
        args = build_parser().parse_args(argv)
        return _run(args)
    except (_UsageError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.heads is not None:
        params["heads"] = args.heads
    if args.c_plus is not None:
        params["c_plus"] = args.c_plus
    if args.c_minus is not None:
        params["c_minus"] = args.c_minus
    for key, value in (_QUICK if args.quick else _DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    V0 = equicorrelated(args.m, args.rho0)
    out = Path(args.out)
    name = args.name or f"stability_{args.block}_m{args.m}"
    smap = stability_map(args.block, args.gammas, args.tau0s, T=args.T, V0=V0, paths=args.paths,
                         seed=args.seed, device=args.device, progress=args.progress,
                         steps=args.steps, reference=not args.no_reference,
                         eig_threshold=args.eig_threshold, rho_threshold=args.rho_threshold,
                         **params)
    written = smap.save(out / name) + smap.plot(out / name)
    lines = [smap.summary()]
    spots = []
    for k, (g, t) in enumerate(args.spot or []):
        for n in args.widths:
            sc = spot_check(args.block, g, t, T=args.T, V0=V0, width=n, nets=args.nets,
                            paths=args.spot_paths or args.paths,
                            seed=spawn_seeds(args.seed, 4 + k)[3 + k],
                            device=args.device, progress=args.progress, steps=args.steps,
                            eig_threshold=args.eig_threshold, rho_threshold=args.rho_threshold,
                            **params)
            spots.append(sc.to_dict())
            lines.append(sc.summary())
    if spots:
        p = out / f"{name}_spot.json"
        p.write_text(json.dumps(spots, indent=1, allow_nan=False) + "\n")
        written.append(p)
    (out / f"{name}_summary.txt").write_text("\n".join(lines) + "\n")
    written.append(out / f"{name}_summary.txt")
    print("\n".join(lines))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
