"""Statistics of a sample of V_T for the stability map and its spot checks: the spread
of rho^{01}_T, the probability of a near-degenerate V_T, the growth of tr V, and the
solver's outcomes, each with a standard error (scipy's bootstrap for the spread and the
quantiles, binomial for the probabilities)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import bootstrap as _scipy_bootstrap

from .. import _validation as val
from ..scheme import has_fixed_trace
from ..verification.engine import finite_rows, solve_quiet

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
def path_statistics(V: Any, V0: Any) -> dict[str, np.ndarray]:
    """Per-path quantities of a sample V (N, m, m); rows with non-finite V are dropped.

    rho01, lam_min (smallest eigenvalue of the correlation matrix C = D^{-1/2} V D^{-1/2};
    a zero variance gives a zero row of C, hence lam_min = 0), rho_max (largest
    off-diagonal correlation) and trace (tr V / tr V0).
    """
    V = finite_rows(V)
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


def _bootstrapped(r: np.ndarray, tr: np.ndarray, axis: int = -1) -> np.ndarray:
    """The bootstrapped statistics of (rho01, trace), in the order of `_BOOTSTRAPPED`."""
    q = np.quantile(r, [0.1, 0.5, 0.9], axis=axis)
    return np.stack([r.std(axis=axis, ddof=1), q[0], q[1], q[2], q[2] - q[0],
                     np.median(tr, axis=axis), np.quantile(tr, 0.99, axis=axis)])


_BOOTSTRAPPED = ("rho_std", "rho_q10", "rho_q50", "rho_q90", "rho_range", "trace_median",
                 "trace_q99")


def summarize(x: dict[str, np.ndarray], *, eig_threshold: float = EIG_THRESHOLD,
              rho_threshold: float = RHO_THRESHOLD, bootstrap: int = BOOTSTRAP,
              seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(statistics, standard errors) of `path_statistics` output.

    SEs: binomial sqrt(p (1 - p) / N) for the probabilities, s / sqrt(N) for the mean,
    `scipy.stats.bootstrap` (`bootstrap` resamples of the paths, numpy generator seeded
    with `seed`) for the std, the quantiles and their range. N = number of finite paths
    ("n" in the statistics).
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
        res = _scipy_bootstrap((x["rho01"], x["trace"]), _bootstrapped, n_resamples=bootstrap,
                               paired=True, vectorized=True, method="percentile",
                               rng=np.random.default_rng(seed))
        se.update({k: float(v) for k, v in zip(_BOOTSTRAPPED, res.standard_error, strict=True)})
    return est, se


def counter_stats(meta: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """P(exit by T) and the non-finite fraction of paths, with binomial standard errors."""
    P = meta["paths"]
    est = {"p_exit": meta["n_exits"] / P, "frac_nonfinite": meta["n_nonfinite"] / P}
    se = {k: math.sqrt(v * (1 - v) / P) for k, v in est.items()}
    return est, se


def solve_survivors(coef: Any, V0: np.ndarray, T: float, paths: int, seed: int,
                    steps: int | None, device: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """The survivors' V_T (paths inside the exit ball up to T) and the run's metadata."""
    res = solve_quiet(coef, V0, T, paths=paths, seed=seed, steps=steps, device=device,
                      exit_trace=exit_trace_for(coef))
    return res.V[res.survivors.to(res.V.device)], res.meta


def exit_trace_for(coef: Any) -> float | None:
    """EXIT_TRACE, or None for a block whose SDE state has tr V = m at every depth (a
    normalised block: no path ever exits, and the solver refuses the level). The finite
    spot checks use the same, so that both faces' survivors are the same population."""
    return None if has_fixed_trace(coef, "sde") else EXIT_TRACE


def check_v0(V0: Any) -> np.ndarray:
    """V0 as one float64 (m, m) covariance with a positive trace (ValueError otherwise)."""
    V0 = val.check_covariance(V0, name="V0")
    V0 = np.asarray(V0.detach().cpu().double() if val.is_torch(V0) else V0, dtype=np.float64)
    if V0.ndim != 2:
        raise ValueError(f"V0 must be one (m, m) matrix; got shape {V0.shape}")
    if np.trace(V0) <= 0:
        raise ValueError("V0 must have a positive trace")
    return V0
