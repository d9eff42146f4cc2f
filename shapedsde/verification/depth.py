"""Verification at depth: the stopped process of finite networks against the SDE.

Convergence of finite networks to the covariance SDE is local: it holds up to the exit
time tau_R of the ball tr V < R tr V0 (docs/solver.md). So at depth (T of order one,
strong attention) the check compares, between exact finite networks of growing width and
SDE paths at the solver's default (adaptive) step:

- P(tau_R <= T) and the survival curve P(tau_R > t) at t = T/4, T/2, 3T/4, T
  (two-proportion z-scores);
- the near-singular fraction P(lambda_min / tr V < 1e-3) of V at min(T, tau_R);
- the laws of tr V / tr V0 and rho^{01} of the survivors (two-sample KS).

A negative control (the same SDE with its drift halved) must be rejected by the same
statistics at the largest width, else the verdict is NO POWER. PASS needs every statistic
at the largest width to agree (Bonferroni over all of them at `LINE_ALPHA`) and the
P(exit) gap not to grow with the width. `compare_stopped` is the one comparison both
the verifier and `shapedsde stability`'s spot checks use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import ks_2samp, norm

from ..blocks import block as make_block
from ..finite import simulate, supports_gram
from ..sde import solve
from .common import LINE_ALPHA

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
    d = np.sqrt(np.diagonal(Vs, 0, -2, -1))
    props = {f"survival(t={t:g})": float((s.exit_time > t).mean()) for t in times}
    props["near_singular"] = float((lam[:, 0] / lam.sum(-1) < NEAR_SINGULAR).sum() / n)
    return {"n": n, "proportions": props,
            "trace": np.trace(Vs, axis1=1, axis2=2) / s.trace0,
            "rho01": Vs[:, 0, 1] / (d[:, 0] * d[:, 1])}


def compare_stopped(finite: Stopped, sde: Stopped) -> dict[str, Any]:
    """z-scores of the proportions and KS p-values of the survivors' laws."""
    times = sde.T * np.array([0.25, 0.5, 0.75, 1.0])
    a, b = stopped_statistics(finite, times), stopped_statistics(sde, times)
    out: dict[str, Any] = {"z": {}, "ks": {}, "values": {}}
    for key, p in a["proportions"].items():
        q = b["proportions"][key]
        se = math.sqrt(p * (1 - p) / a["n"] + q * (1 - q) / b["n"])
        out["z"][key] = (p - q) / se if se > 0 else 0.0
        out["values"][key] = {"finite": p, "sde": q, "se": se}
    for key in ("trace", "rho01"):
        r = ks_2samp(a[key], b[key])
        out["ks"][key] = {"statistic": float(r.statistic), "pvalue": float(r.pvalue)}
    k = len(out["z"]) + len(out["ks"])
    z_max = max(abs(z) for z in out["z"].values())
    p_min = min(v["pvalue"] for v in out["ks"].values())
    # Bonferroni over the k statistics at level LINE_ALPHA.
    out["agrees"] = bool(2 * norm.sf(z_max) * k > LINE_ALPHA and p_min * k > LINE_ALPHA)
    out["z_max"], out["ks_pmin"] = z_max, p_min
    return out


class HalfDrift:
    """The control SDE: a block's coefficients with the drift halved (same noise)."""

    def __init__(self, blk: Any) -> None:
        self.blk, self.name = blk, f"{blk.name} with half drift"
        self.noise_groups = blk.noise_groups

    def drift(self, V, *, check: bool = False):
        return 0.5 * self.blk.drift(V, check=check)

    def __getattr__(self, attr: str) -> Any:  # diffusion, contractions, structured noise
        return getattr(self.blk, attr)


#: (label, block name, parameters, finite method) checked at depth by default.
DEPTH_SETTINGS = [
    ("attention", "attention", {"gamma": 0.9, "tau0": 0.5}, "gram"),
    ("attention causal", "attention", {"gamma": 0.9, "tau0": 0.5, "causal": True}, "gram"),
    ("attention heads=2", "attention", {"gamma": 0.9, "tau0": 0.4, "heads": 2}, "reduced"),
    ("transformer", "transformer", {"gamma": 0.8, "tau0": 0.6}, "reduced"),
]


def depth_check(label: str, name: str, params: dict, method: str, *, widths: list[int],
                nets: int, paths: int, T: float, R: float, seed: int,
                device: str = "cpu") -> dict[str, Any]:
    """One stopped-process check: finite nets at `widths` against the SDE, with control."""
    blk = make_block(name, **params)
    V0 = np.array(V_DEPTH)
    tr0 = float(np.trace(V0))
    if method == "gram" and not supports_gram(blk):
        method = "reduced"

    def sde(coef: Any, s: int) -> tuple[Stopped, dict[str, Any]]:
        res = solve(coef, V0, T, paths=paths, seed=s, exit_trace=R, device=device)
        return Stopped(res.V.cpu().numpy(), res.exit_time.numpy(), T, tr0), res.meta

    reference, meta = sde(blk, seed)
    control, _ = sde(HalfDrift(blk), seed + 1)
    rows = []
    for i, n in enumerate(widths):
        run = simulate(blk, V0, width=n, T=T, nets=nets, seed=seed + 2 + i, method=method,
                       exit_trace=R, device=device)
        fin = Stopped(run.V.cpu().numpy(), run.exit_time.numpy(), T, tr0)
        rows.append({"width": n, "vs_sde": compare_stopped(fin, reference),
                     "vs_control": compare_stopped(fin, control)})
    top = rows[-1]
    gaps = [abs(r["vs_sde"]["values"][f"survival(t={T:g})"]["finite"]
                - r["vs_sde"]["values"][f"survival(t={T:g})"]["sde"]) for r in rows]
    gap_se = rows[-1]["vs_sde"]["values"][f"survival(t={T:g})"]["se"]
    shrinking = gaps[-1] <= gaps[0] + 2 * gap_se
    power = not top["vs_control"]["agrees"]
    ok = top["vs_sde"]["agrees"] and shrinking
    verdict = "NO POWER" if not power else ("PASS" if ok else "FAIL")
    p_sde = meta["p_exit"]
    fin_p = [1 - r["vs_sde"]["values"][f"survival(t={T:g})"]["finite"] for r in rows]
    line = (f"{verdict} depth {label} {params} T={T:g} R={R:g}: P(exit) SDE {p_sde:.3f} "
            f"+- {meta['p_exit_se']:.3f} ({meta['steps_mean']:.0f} steps/path), finite "
            + ", ".join(f"n={n} {p:.3f}" for n, p in zip(widths, fin_p, strict=True))
            + f" | largest n: max|z| {top['vs_sde']['z_max']:.2f}, KS p_min "
            f"{top['vs_sde']['ks_pmin']:.3g}; control (half drift) max|z| "
            f"{top['vs_control']['z_max']:.1f}")
    return {"label": label, "block": name, "params": params, "method": method, "T": T,
            "R": R, "widths": widths, "nets": nets, "paths": paths, "sde_meta": meta,
            "rows": rows, "gaps": gaps, "shrinking": shrinking, "power": power,
            "verdict": verdict, "line": line}


def depth_checks(*, quick: bool, seed: int, device: str = "cpu") -> list[dict[str, Any]]:
    """Every setting of `DEPTH_SETTINGS` at T = 1 (quick) or T = 0.5 and 1 (full)."""
    from .common import derive_seed

    sizes = (dict(widths=[128, 512, 2048], nets=4000, paths=8000) if quick else
             dict(widths=[256, 1024, 4096], nets=16000, paths=32000))
    horizons = [1.0] if quick else [0.5, 1.0]
    out = []
    for label, name, params, method in DEPTH_SETTINGS:
        widths = sizes["widths"] if method == "gram" else [w // 4 for w in sizes["widths"][:2]]
        for T in horizons:
            out.append(depth_check(label, name, params, method, widths=widths,
                                   nets=sizes["nets"], paths=sizes["paths"], T=T, R=5.0,
                                   seed=derive_seed(seed, f"depth/{label}/T={T:g}"),
                                   device=device))
    return out
