"""The law of V at time T: finite networks of depth d = round(T n) against SDE paths.

For each width n, `nets` finite networks (the exact-in-law V chain of
`shapedsde.finite`, method "gram") are compared with SDE paths solved from the
same V0 on three statistics:
    rho01    = V^{01} / sqrt(V^{00} V^{11})
    V00      = V^{00}
    centred  = tr(P V P) / tr(V),  P = I - 11^T / m   (moved by the attention terms)
with the two-sample KS statistic / p-value and Wasserstein-1. Wasserstein-1 of
V00 is taken on log V00: near the SDE's finite-time blow-up V00 is heavy-tailed
(finite networks can grow geometrically once Softmax saturates), and raw W1
would measure only those few paths. The statistics, distances and verdicts are
those of `verification.engine`, the comparison every law check shares.

Negative controls ("power"): the same finite samples against deliberately wrong
SDEs, (a) "no-attention": the linear block with the same gamma (every attention
term removed) and (b) "half-drift": the true diffusion with half the drift. A
statistic whose control is not rejected cannot tell the right SDE from a wrong
one, and is reported as NO POWER instead of PASS. A "null" SDE sample (the true
SDE, independent seed, as many paths as finite networks) gives the distance
expected from sampling noise alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..blocks import Block
from ..finite import simulate
from ..registry import block as make_block
from .common import LINE_ALPHA, ScaledDrift
from .engine import (
    STATISTICS,
    compare_laws,
    distance,
    ks_critical,
    ks_null_mean,
    solve_quiet,
    statistics,
)

__all__ = ["STATISTICS", "HalfDrift", "LawSetting", "controls", "distance",
           "gram_vs_full_check", "law_check", "statistics"]


def HalfDrift(base: Any) -> ScaledDrift:  # noqa: N802 (reads as the control's name)
    """Wrong-SDE control: the coefficients of `base` with the drift halved."""
    return ScaledDrift(base, 0.5, name="half-drift")


def controls(block: Block) -> dict[str, Any]:
    """The deliberately wrong SDEs used as negative controls for `block`."""
    out: dict[str, Any] = {}
    if block.name != "linear":
        out["no-attention"] = make_block("linear", gamma=block.gamma)
    out["half-drift"] = HalfDrift(block)
    return out


@dataclass
class LawSetting:
    """One law-at-T comparison: block, V0 (m, m), horizon, widths and sample sizes."""

    block: Block
    V0: torch.Tensor
    T: float
    widths: list[int]
    nets: int
    sde_paths: int
    control_paths: int = 0  # 0: as many as sde_paths
    sde_steps: int | None = None
    method: str = "gram"
    alpha: float = LINE_ALPHA  # per statistic (one verdict line each)
    label: str = field(default="")

    def __post_init__(self) -> None:
        if not self.label:
            p = " ".join(f"{k}={v:g}" for k, v in self.block.kernel_params().items())
            self.label = f"{self.block.name} {p} T={self.T:g}"


def _solve(coef: Any, s: LawSetting, paths: int, seed: int, device) -> tuple[dict, dict]:
    res = solve_quiet(coef, s.V0, s.T, paths=paths, seed=seed, steps=s.sde_steps, device=device)
    return statistics(res.V), res.meta


def law_check(s: LawSetting, seed_of, device: str = "cpu", progress: bool = False) -> dict:
    """Finite networks at each width vs the SDE, the null and the controls.

    seed_of: label -> seed. Returns a JSON-ready dict; the samples used for
    figures are under the key "_samples" (numpy arrays; not for JSON).
    """
    t0 = time.perf_counter()
    sde, sde_meta = _solve(s.block, s, s.sde_paths, seed_of(f"law/{s.label}/sde"), device)
    null, _ = _solve(s.block, s, s.nets, seed_of(f"law/{s.label}/null"), device)
    ctrl, ctrl_meta = {}, {}
    for name, coef in controls(s.block).items():
        ctrl[name], ctrl_meta[name] = _solve(coef, s, s.control_paths or s.sde_paths,
                                             seed_of(f"law/{s.label}/{name}"), device)
    t_sde = time.perf_counter() - t0
    null_dist = {k: distance(null[k], sde[k], k) for k in STATISTICS}
    per_width, finite_last, laws, t_fin = {}, None, {}, 0.0
    for n in s.widths:
        t1 = time.perf_counter()
        V = simulate(s.block, s.V0, width=n, T=s.T, nets=s.nets,
                     seed=seed_of(f"law/{s.label}/n={n}"), device=device, method=s.method,
                     progress=progress)
        t_fin += time.perf_counter() - t1
        fin = statistics(V)
        finite_last = fin
        tr0 = float(torch.trace(s.V0))
        trace = torch.einsum("bii->b", V.double().cpu())
        n_x, n_y = len(fin["V00"]), len(sde["V00"])
        law = compare_laws(fin, sde, ctrl, alpha=s.alpha)
        per_width[n] = {
            "depth": int(round(s.T * n)),
            "nets_finite": int(n_x),
            # KS between two samples of the same law: mean and the alpha-critical value
            "ks_null_mean": ks_null_mean(n_x, n_y),
            "ks_null_crit": ks_critical(n_x, n_y, s.alpha),
            "exploding_fraction": float((~torch.isfinite(trace) | (trace > 100 * tr0))
                                        .double().mean()),
            "true": {k: c.true for k, c in law.items()},
            **{name: {k: c.controls[name] for k, c in law.items()} for name in ctrl},
        }
        laws[n] = law
    verdicts = _verdicts(s, per_width, laws[max(s.widths)])
    return {
        "label": s.label, "block": s.block.name, "params": s.block.kernel_params(),
        "V0": s.V0.tolist(), "T": s.T, "widths": s.widths, "nets": s.nets,
        "sde_paths": s.sde_paths, "sde_meta": sde_meta, "control_meta": ctrl_meta,
        "method": s.method, "alpha": s.alpha, "null": null_dist, "per_width": per_width,
        "control_vs_sde": {name: {k: distance(c[k], sde[k], k) for k in STATISTICS}
                           for name, c in ctrl.items()},
        "verdicts": verdicts, "seconds": {"sde": t_sde, "finite": t_fin},
        "_samples": {"finite": finite_last, "sde": sde, **ctrl},
    }


def _verdicts(s: LawSetting, per_width: dict, law: dict) -> list[dict]:
    """Per statistic at the largest width: PASS / FAIL / NO POWER (`engine.verdict`).

    Each statistic is one verdict line tested at level alpha: FAIL when the true SDE
    is rejected (p < alpha); a control has power when it is rejected at alpha."""
    n_max, n_min = max(s.widths), min(s.widths)
    out = []
    for k in STATISTICS:
        c = law[k]
        status, powered = c.status, c.powered_by
        d_first, d_last = per_width[n_min]["true"][k]["ks"], c.true["ks"]
        line = (f"{status} law-at-T {s.label} {k} n={n_max}: KS D={c.true['ks']:.3f} "
                f"p={c.true['p']:.2g} (alpha={s.alpha:.2g}); controls: {c.controls_text()}; "
                f"KS vs width {d_first:.3f} (n={n_min}) -> {d_last:.3f} (n={n_max})")
        out.append({"status": status, "statistic": k, "line": line, "powered_by": powered})
    return out


def gram_vs_full_check(block: Block, V0: torch.Tensor, T: float, n: int, nets_full: int,
                       nets_gram: int, seed_of, device: str = "cpu",
                       alpha: float = LINE_ALPHA, progress: bool = False) -> dict:
    """The exact-in-law V chain against block.finite with every weight drawn, at width n."""
    kw = dict(width=n, T=T, device=device, progress=progress)
    t0 = time.perf_counter()
    full = statistics(simulate(block, V0, nets=nets_full, seed=seed_of(f"gram-vs-full/full/{n}"),
                               method="full", **kw))
    t_full = time.perf_counter() - t0
    gram = statistics(simulate(block, V0, nets=nets_gram, seed=seed_of(f"gram-vs-full/gram/{n}"),
                               method="gram", **kw))
    dist = {k: distance(full[k], gram[k], k) for k in STATISTICS}
    a = alpha / len(STATISTICS)
    worst = min(dist, key=lambda k: dist[k]["p"])
    status = "PASS" if dist[worst]["p"] >= a else "FAIL"
    line = (f"{status} sampler consistency {block.name} n={n} d={int(round(T * n))}: gram chain vs "
            f"block.finite ({nets_full} nets), min KS p={dist[worst]['p']:.2g} on {worst} "
            f"(alpha={a:.2g})")
    return {"n": n, "T": T, "nets_full": nets_full, "nets_gram": nets_gram, "distances": dist,
            "status": status, "line": line, "seconds_full": t_full,
            "ks_noise_level": math.sqrt(1 / nets_full + 1 / nets_gram)}
