"""Statistics of the spectrum of V: extreme log-eigenvalues, condition number, the
empirical spectral density, trace moments, and their law comparison.

From a log-spectrum (N, m) (`shapedsde.spectrum.log_spectrum`, ascending):

    log_min  = log lambda_min(V),   log_max = log lambda_max(V),
    log_cond = log_max - log_min     (log condition number),

one value per path, compared between two samples (finite networks against the SDE, or the
SDE against a known law) per quantity with the one law comparison of
`verification.engine` (`compare_laws`: two-sample KS statistic and p-value, Wasserstein-1,
the KS critical value at alpha; a verdict per quantity, FAIL when the reference is
rejected at alpha, PASS when some control is rejected and farther, else NO POWER).

The empirical spectral density is the histogram of the log-eigenvalues pooled over paths
(`spectral_density`). Eigenvalues of one path are dependent (they repel), so a KS test on
the pooled values has no valid p-value; `compare_spectra` reports the L1 distance of the
two pooled densities and the KS distance of the pooled samples as descriptions, not tests.

`trace_moments(V, k)` gives per path the normalised trace moments
(1/m) tr (V / v)^j, j = 1..k, v = tr V0 / m, whose means the large-m limit
(`shapedsde.symbolic.free_limit`) predicts; `moment_table` their means and standard errors.
Rows with a non-finite V (exploded or failed paths) are dropped and counted.

`spectrum_check` is the verifier's check (`shapedsde verify`, stage `spectrum`): the SDE's
log_min, log_max and log_cond at m = 16 (and, in a full run, m = 64) against exact chains,
with the block at another gamma as the negative control (verify/README.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import ks_2samp

from ..finite import simulate
from ..registry import block as make_block
from ..spectrum import eigenvalues, log_spectrum_flags
from .common import LINE_ALPHA, derive_seed
from .engine import LawComparison, compare_laws, solve_quiet, verdict

SPECTRUM_STATISTICS = ("log_min", "log_max", "log_cond")


def finite_spectra(logspec: Any) -> np.ndarray:
    """The rows (paths) of a log-spectrum (N, m) whose entries are all finite."""
    x = np.asarray(logspec, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"a log-spectrum must have shape (N, m); got {x.shape}")
    return x[np.isfinite(x).all(axis=1)]


def spectrum_statistics(logspec: Any) -> dict[str, np.ndarray]:
    """log_min, log_max and log_cond per path of a log-spectrum (N, m) sorted ascending
    (rows with a NaN dropped: count them as N - len(out['log_min']))."""
    x = finite_spectra(logspec)
    lo, hi = x[:, 0], x[:, -1]
    return {"log_min": lo, "log_max": hi, "log_cond": hi - lo}


def spectral_density(logspec: Any, bins: int | np.ndarray = 60,
                     range: tuple[float, float] | None = None  # noqa: A002 (numpy's name)
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(edges, density): the histogram of the log-eigenvalues pooled over the finite rows,
    normalised to integrate to one over its range."""
    x = finite_spectra(logspec).ravel()
    density, edges = np.histogram(x, bins=bins, range=range, density=True)
    return edges, density


def compare_spectra(x: Any, y: Any, controls: Mapping[str, Any] | None = None, *,
                    alpha: float = 0.05, bins: int = 60) -> dict[str, Any]:
    """Log-spectra x (N, m) against y (M, m) (and each control): `compare_laws` on
    SPECTRUM_STATISTICS, and the pooled densities' L1 distance and pooled KS distance
    (descriptive: no p-value, see the module docstring)."""
    sx, sy = spectrum_statistics(x), spectrum_statistics(y)
    sc = {name: spectrum_statistics(c) for name, c in (controls or {}).items()}
    laws: dict[str, LawComparison] = compare_laws(sx, sy, sc, stats=SPECTRUM_STATISTICS,
                                                  alpha=alpha)
    px, py = finite_spectra(x).ravel(), finite_spectra(y).ravel()
    lo, hi = float(min(px.min(), py.min())), float(max(px.max(), py.max()))
    _, dx = spectral_density(x, bins, (lo, hi))
    _, dy = spectral_density(y, bins, (lo, hi))
    return {"laws": laws,
            "density_l1": float(np.abs(dx - dy).sum() * (hi - lo) / bins),
            "pooled_ks": float(ks_2samp(px, py).statistic),
            "n_x": len(sx["log_min"]), "n_y": len(sy["log_min"])}


def trace_moments(V: Any, k: int, scale: float | None = None) -> np.ndarray:
    """(N', k): (1/m) tr (V / scale)^j for j = 1..k per finite state V (N, m, m) (rows with
    a non-finite V dropped); scale: tr V0 / m (default 1)."""
    w = eigenvalues(V).cpu().numpy()
    w = w[np.isfinite(w).all(axis=1)] / (1.0 if scale is None else float(scale))
    return np.stack([np.mean(w**j, axis=1) for j in range(1, k + 1)], axis=1)


def moment_table(V: Any, k: int, scale: float | None = None) -> dict[str, Any]:
    """Means and standard errors over paths of `trace_moments` (j = 1..k), with the
    number of finite paths used and dropped."""
    mu = trace_moments(V, k, scale)
    n = mu.shape[0]
    total = len(V)
    return {"k": list(range(1, k + 1)), "mean": mu.mean(axis=0),
            "se": mu.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full(k, np.nan),
            "n": n, "n_dropped": total - n}


# ----------------------------------------------------------------------------
# The verification check: the SDE's log-spectrum against exact chains at m = 16

#: (label, block name, parameters) checked at m = 16 from V0 = I; the control is the same
#: block at CONTROL_GAMMA (a wrong noise level: the spectrum spreads at rate ~ gamma^2 m).
SPECTRUM_SETTINGS = [
    ("linear", "linear", {"gamma": 0.5}),
    ("attention", "attention", {"gamma": 0.5, "tau0": 1.0}),
]
CONTROL_GAMMA = 0.55


def spectrum_check(label: str, name: str, params: dict, *, m: int, T: float,
                   widths: list[int], nets: int, paths: int, seed: int,
                   control_gamma: float = CONTROL_GAMMA, device: str = "cpu") -> dict[str, Any]:
    """log_min, log_max, log_cond of V_T: exact chains (method="gram") at `widths` against
    SDE paths from V0 = I_m, with the block at `control_gamma` as the control; the verdict
    at the largest width, Bonferroni over the three statistics at `LINE_ALPHA`."""
    blk = make_block(name, **params)
    control_params = {**params, "gamma": control_gamma}
    V0 = np.eye(m)
    sde = solve_quiet(blk, V0, T, paths=paths, seed=derive_seed(seed, "sde"), device=device)
    ctl = solve_quiet(make_block(name, **control_params), V0, T, paths=paths,
                      seed=derive_seed(seed, "control"), device=device)
    width = max(widths)
    runs = {f"n={n}": simulate(blk, V0, width=n, T=T, nets=nets,
                               seed=derive_seed(seed, "finite" if n == width else f"n={n}"),
                               method="gram", device=device) for n in widths}
    flags = {}
    spectra = {}
    for key, V in (*runs.items(), ("sde", sde.V), ("control", ctl.V)):
        ls, bad, low = log_spectrum_flags(V)
        spectra[key] = ls
        flags[key] = {"nonpositive": int(bad.sum()), "below_rounding": int(low.sum()),
                      "nonfinite": int((~np.isfinite(ls).all(axis=1)).sum())}
    alpha = LINE_ALPHA / len(SPECTRUM_STATISTICS)
    cname = f"gamma={control_gamma:g}"
    spectra["finite"] = spectra[f"n={width}"]
    res = compare_spectra(spectra["finite"], spectra["sde"], {cname: spectra["control"]},
                          alpha=alpha)
    trend = {n: compare_spectra(spectra[f"n={n}"], spectra["sde"], alpha=alpha)["laws"]
             for n in widths}
    laws = res["laws"]
    status = [verdict(laws[k].true, laws[k].controls, alpha) for k in SPECTRUM_STATISTICS]
    v = ("FAIL" if any(s == "FAIL" for s, _ in status) else
         "PASS" if any(powered for _, powered in status) else "NO POWER")
    stats = {key: spectrum_statistics(x) for key, x in spectra.items() if key != "finite"}
    stats["finite"] = stats[f"n={width}"]
    means = {key: {k: float(np.mean(s[k])) for k in SPECTRUM_STATISTICS}
             for key, s in stats.items()}
    parts = [f"{k} mean finite {means['finite'][k]:.3f} SDE {means['sde'][k]:.3f} KS "
             f"{laws[k].true['ks']:.3f} p={laws[k].true['p']:.2g}, control "
             f"{means['control'][k]:.3f} KS {laws[k].controls[cname]['ks']:.3f} "
             f"p={laws[k].controls[cname]['p']:.2g}" for k in SPECTRUM_STATISTICS]
    ks_trend = " -> ".join(f"{trend[n]['log_min'].true['ks']:.3f}" for n in widths)
    line = (f"{v} spectrum {label} {params} m={m} T={T:g} n={width}: " + "; ".join(parts)
            + f"; log_min KS {ks_trend} (n={'->'.join(map(str, widths))}) (control: {cname}; "
            f"pooled density L1 {res['density_l1']:.3f})")
    return {"label": label, "block": name, "params": params, "m": m, "T": T, "widths": widths,
            "nets": nets, "paths": paths, "control_params": control_params,
            "sde_meta": sde.meta, "control_meta": ctl.meta, "flags": flags, "means": means,
            "laws": {k: {"true": laws[k].true, "controls": laws[k].controls}
                     for k in SPECTRUM_STATISTICS},
            "per_width": {n: {k: trend[n][k].true for k in SPECTRUM_STATISTICS}
                          for n in widths},
            "density_l1": res["density_l1"], "pooled_ks": res["pooled_ks"],
            "verdict": v, "line": line}


def spectrum_sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(m=16, T=0.25, widths=[256, 1024], nets=2000, paths=2000)
    return dict(m=16, T=0.25, widths=[256, 1024, 4096], nets=8000, paths=8000)


#: The full run's many-token sizes: m = 64 to T = 0.25, where the exact chains at
#: n <= 2048 still follow the SDE's smallest eigenvalues for attention (beyond t of about
#: 0.4 they sit on a floor that moves slowly with n: docs/spectrum.md).
MANY_TOKEN_SIZES = dict(m=64, T=0.25, widths=[256, 1024, 4096], nets=1000, paths=2000)


def spectrum_checks(*, quick: bool, seed: int, device: str = "cpu") -> list[dict[str, Any]]:
    """`spectrum_check` for each of `SPECTRUM_SETTINGS`, at m = 16 and, unless `quick`,
    at `MANY_TOKEN_SIZES`."""
    sizes = [spectrum_sizes(quick)] + ([] if quick else [MANY_TOKEN_SIZES])
    return [spectrum_check(label, name, params, **size, device=device,
                           seed=derive_seed(seed, f"spectrum/{label}"
                                            + ("" if size["m"] == 16 else f"/m{size['m']}")))
            for size in sizes for label, name, params in SPECTRUM_SETTINGS]
