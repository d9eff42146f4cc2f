"""Verification at depth: the stopped process of finite networks against the SDE.

Convergence of finite networks to the covariance SDE is local: it holds up to the exit
time tau_R of the ball tr V < R tr V0 (docs/solver.md). So at depth (T of order one,
strong attention) the check compares, between exact finite networks of growing width and
SDE paths at the solver's default (adaptive) step:

- P(tau_R <= T) and the survival curve P(tau_R > t) at t = T/4, T/2, 3T/4, T
  (two-proportion z-scores);
- the near-singular fraction P(lambda_min / tr V < 1e-3) of V at min(T, tau_R);
- the laws of tr V / tr V0 and rho^{01} of the survivors (two-sample KS).

Finite networks approach the SDE like n^{-1/2} (they check the exit once per layer, a
discrete monitoring that misses crossings between layers, and their law carries
O(n^{-1/2}) corrections), so the proportions are compared after a Richardson
extrapolation in n^{-1/2} from the two largest widths, p_inf = (sqrt(n2) p2 -
sqrt(n1) p1) / (sqrt(n2) - sqrt(n1)), whose standard error is propagated; the survivors'
laws are compared at the largest width. A negative control (the same SDE with its drift
scaled by 0.25 or 0.5, or removed for the Transformer block, whose MLP and attention
drifts partly cancel) must be rejected by the same statistics, else the verdict is NO
POWER. PASS needs every statistic to agree (Bonferroni over all of them at
`LINE_ALPHA`) and the P(exit) gap at the largest width to be no larger than at the
smallest. `compare_stopped` is the
one comparison of stopped samples: proportions, plus the law comparison of
`verification.engine` restricted to the survivors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from ..finite import simulate, supports_gram
from ..registry import block as make_block
from .common import LINE_ALPHA, ScaledDrift, derive_seed
from .engine import compare_law, rho01, solve_quiet

#: Near-singular threshold on lambda_min / tr V (the statistic of docs/solver.md).
NEAR_SINGULAR = 1e-3
V_DEPTH = [[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]]


@dataclass
class Stopped:
    """A sample of the stopped process: V at min(T, tau) (n, m, m), exit times (n,)."""

    V: np.ndarray
    exit_time: np.ndarray
    T: float
    trace0: float

    @property
    def exited(self) -> np.ndarray:
        return np.isfinite(self.exit_time)


def stopped_statistics(s: Stopped, times: np.ndarray) -> dict[str, Any]:
    """Proportions (with SEs) and survivor samples of one stopped sample."""
    n = len(s.exit_time)
    ok = np.isfinite(s.V).all(axis=(-2, -1))
    lam = np.linalg.eigvalsh(s.V[ok])
    surv = ~s.exited & ok
    Vs = s.V[surv]
    props = {f"survival(t={t:g})": float((s.exit_time > t).mean()) for t in times}
    props["near_singular"] = float((lam[:, 0] / lam.sum(-1) < NEAR_SINGULAR).sum() / n)
    return {"n": n, "proportions": props,
            "trace": np.trace(Vs, axis1=1, axis2=2) / s.trace0,
            "rho01": rho01(Vs)}


def _proportion(stats: dict[str, Any], key: str) -> tuple[float, float]:
    p = stats["proportions"][key]
    return p, math.sqrt(p * (1 - p) / stats["n"])


def extrapolated(samples: dict[int, dict[str, Any]], key: str) -> tuple[float, float]:
    """(p_inf, SE) of a proportion by Richardson extrapolation in n^{-1/2} from the two
    largest widths (the proportion itself when there is one width)."""
    widths = sorted(samples)[-2:]
    if len(widths) == 1:
        return _proportion(samples[widths[0]], key)
    (p1, s1), (p2, s2) = (_proportion(samples[n], key) for n in widths)
    r1, r2 = (math.sqrt(n) for n in widths)
    return (r2 * p2 - r1 * p1) / (r2 - r1), math.hypot(r2 * s2, r1 * s1) / (r2 - r1)


def compare_stopped(finite: dict[int, Stopped], sde: Stopped) -> dict[str, Any]:
    """Finite nets (by width) against SDE paths: z-scores of the extrapolated proportions
    and KS p-values of the survivors' laws at the largest width."""
    times = sde.T * np.array([0.25, 0.5, 0.75, 1.0])
    stats = {n: stopped_statistics(f, times) for n, f in finite.items()}
    a, b = stats[max(stats)], stopped_statistics(sde, times)
    out: dict[str, Any] = {"z": {}, "ks": {}, "values": {}}
    for key in a["proportions"]:
        p, sp = extrapolated(stats, key)
        q, sq = _proportion(b, key)
        se = math.hypot(sp, sq)
        out["z"][key] = (p - q) / se if se > 0 else 0.0
        out["values"][key] = {"finite_extrapolated": p, "sde": q, "se": se,
                              "finite": {n: s["proportions"][key] for n, s in stats.items()}}
    for key in ("trace", "rho01"):  # the survivors' laws, by the one law comparison
        d = compare_law(a[key], b[key], stat=key, alpha=LINE_ALPHA).true
        out["ks"][key] = {"statistic": d["ks"], "pvalue": d["p"]}
    k = len(out["z"]) + len(out["ks"])
    z_max = max(abs(z) for z in out["z"].values())
    p_min = min(v["pvalue"] for v in out["ks"].values())
    # Bonferroni over the k statistics at level LINE_ALPHA.
    out["agrees"] = bool(2 * norm.sf(z_max) * k > LINE_ALPHA and p_min * k > LINE_ALPHA)
    out["z_max"], out["ks_pmin"] = z_max, p_min
    return out


#: (label, block name, parameters, finite method, control drift factor) checked at depth.
DEPTH_SETTINGS = [
    ("attention", "attention", {"gamma": 0.9, "tau0": 0.5}, "gram", 0.25),
    ("attention causal", "attention", {"gamma": 0.9, "tau0": 0.5, "causal": True}, "gram", 0.25),
    ("attention heads=2", "attention", {"gamma": 0.9, "tau0": 0.4, "heads": 2}, "reduced", 0.5),
    ("transformer", "transformer", {"gamma": 0.8, "tau0": 0.6}, "reduced", 0.0),
]


def depth_check(label: str, name: str, params: dict, method: str, control_factor: float = 0.5,
                *, widths: list[int],
                nets: int, paths: int, T: float, R: float, seed: int,
                device: str = "cpu") -> dict[str, Any]:
    """One stopped-process check: finite nets at `widths` against the SDE, with control."""
    blk = make_block(name, **params)
    V0 = np.array(V_DEPTH)
    tr0 = float(np.trace(V0))
    if method == "gram" and not supports_gram(blk):
        method = "reduced"

    def sde(coef: Any, s: int) -> tuple[Stopped, dict[str, Any]]:
        # non-finite paths are counted in the metadata
        res = solve_quiet(coef, V0, T, paths=paths, seed=s, exit_trace=R, device=device)
        return Stopped(res.V.cpu().numpy(), res.exit_time.numpy(), T, tr0), res.meta

    reference, meta = sde(blk, seed)
    # The control is not a network's SDE: with its drift scaled some of its paths may
    # approach the singular set and fail; they are counted (control_meta), not hidden.
    control, control_meta = sde(ScaledDrift(blk, control_factor), seed + 1)
    finite = {}
    for i, n in enumerate(widths):
        run = simulate(blk, V0, width=n, T=T, nets=nets, seed=seed + 2 + i, method=method,
                       exit_trace=R, device=device)
        finite[n] = Stopped(run.V.cpu().numpy(), run.exit_time.numpy(), T, tr0)
    vs_sde, vs_control = compare_stopped(finite, reference), compare_stopped(finite, control)
    p_fin = {n: float(f.exited.mean()) for n, f in finite.items()}
    gaps = [abs(p_fin[n] - meta["p_exit"]) for n in widths]
    se_top = math.sqrt(p_fin[widths[-1]] * (1 - p_fin[widths[-1]]) / nets)
    shrinking = gaps[-1] <= gaps[0] + 2 * se_top
    power = not vs_control["agrees"]
    ok = vs_sde["agrees"] and shrinking
    verdict = "NO POWER" if not power else ("PASS" if ok else "FAIL")
    p_inf = 1 - vs_sde["values"][f"survival(t={T:g})"]["finite_extrapolated"]
    line = (f"{verdict} depth {label} {params} T={T:g} R={R:g}: P(exit) SDE "
            f"{meta['p_exit']:.3f} +- {meta['p_exit_se']:.3f} ({meta['steps_mean']:.0f} "
            "steps/path), finite " + ", ".join(f"n={n} {p:.3f}" for n, p in p_fin.items())
            + f" -> n=inf {p_inf:.3f} | max|z| {vs_sde['z_max']:.2f}, KS p_min "
            f"{vs_sde['ks_pmin']:.3g}; control (drift x {control_factor:g}) max|z| "
            f"{vs_control['z_max']:.1f}")
    return {"label": label, "block": name, "params": params, "method": method, "T": T,
            "R": R, "widths": widths, "nets": nets, "paths": paths, "sde_meta": meta,
            "control_meta": control_meta,
            "p_exit_finite": p_fin, "vs_sde": vs_sde, "vs_control": vs_control,
            "gaps": gaps, "shrinking": shrinking, "power": power, "verdict": verdict,
            "line": line}


def depth_checks(*, quick: bool, seed: int, device: str = "cpu") -> list[dict[str, Any]]:
    """Every setting of `DEPTH_SETTINGS` at T = 1 (quick) or T = 0.5 and 1 (full)."""
    # The exact m x m chain ("gram") costs O(m^2) per layer whatever n; the reduced
    # sampler O(m n) per layer, so its widths are smaller.
    sizes = {"gram": dict(widths=[64, 256, 1024], nets=4000),
             "reduced": dict(widths=[32, 128], nets=3000)}
    paths = 8000
    if not quick:
        sizes = {"gram": dict(widths=[256, 1024, 4096], nets=16000),
                 "reduced": dict(widths=[64, 256], nets=8000)}
        paths = 32000
    horizons = [1.0] if quick else [0.5, 1.0]
    out = []
    for label, name, params, method, factor in DEPTH_SETTINGS:
        for T in horizons:
            out.append(depth_check(label, name, params, method, factor, **sizes[method],
                                   paths=paths,
                                   T=T, R=5.0, seed=derive_seed(seed, f"depth/{label}/T={T:g}"),
                                   device=device))
    return out
