"""Verification of normalised blocks (`shapedsde.normalised`, docs/normalisation.md):
finite networks (the exact RMS chains, method="gram") against the normalised SDE at T.

Statistics of V_T (as the states come out; the post-norm states are correlation matrices,
the pre-norm networks' diagonal fluctuates around 1): rho^{01} and lambda_min(V) / tr V,
two-sample KS at each width, the verdict at the largest width (Bonferroni over the two
statistics at `LINE_ALPHA`). Negative controls, which must be rejected for a PASS:
- post-norm: the unnormalised SDE of the same block (its exploded paths left out, counted);
- pre-norm: the naive SDE, i.e. the post-norm SDE, without the averaged fast-diagonal
  drift (`shapedsde.symbolic.normalisation.prenorm_correction`) that pre-norm adds.

The pre-norm correction is lam^2 / (8 (1 + lam^2)) rho^{ab} (Sigma^{aa,aa} + Sigma^{bb,bb} -
2 Sigma^{aa,bb}): small at gamma 0.9 (lam^2 = 0.19), where the naive SDE was told apart
only at n ~ 1024 with 8000+ samples (the quick line was NO POWER). The pre-norm check
therefore runs where the correction is largest relative to the noise (the ratio of the
correction to the diffusion's standard deviation of rho^{01}, at rho = 0.5: 0.078 at
gamma 0.7, tau0 0.25, against 0.026 at gamma 0.9, tau0 0.5, rho = 0.3; the ratio peaks at
gamma 0.6-0.7 since the correction is proportional to lam^2 gam^2 / (1 + lam^2)), from
V0 = 0.5 I + 0.5 11^T (m = 3) to T = 1. There the naive SDE moves lambda_min / tr V by
about 0.01 (a pilot of the two SDEs at 2000 paths each: KS p 9e-11). The pre-norm networks'
diagonal fluctuates around 1 (O(n^{-1/2})), and the SDE models the slow correlation, so
the pre-norm networks' statistics are those of N(V) = D^-1/2 V D^-1/2; rho^{01} is the same
either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..finite import simulate
from ..normalised import normalised
from ..registry import block as make_block
from .common import LINE_ALPHA, derive_seed
from .depth import V_DEPTH
from .engine import compare_law, finite_rows, rho01, solve_quiet, verdict

#: V0 of the pre-norm check: m = 3, all correlations 0.5 (module docstring).
V_PRE = [[1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 1.0]]

#: (label, norm place, attention parameters, control name, V0) checked.
SETTINGS = [
    ("post-rms attention", "post", {"gamma": 0.9, "tau0": 0.5}, "unnormalised", V_DEPTH),
    ("pre-rms attention", "pre", {"gamma": 0.7, "tau0": 0.25}, "naive (post-norm SDE)", V_PRE),
]
STATISTICS = ("rho01", "lmin_over_tr")


def law_statistics(V: Any, *, correlation: bool = False) -> dict[str, np.ndarray]:
    """rho^{01} and lambda_min / tr V of the finite rows of V (N, m, m); of N(V), the
    correlation matrices, with `correlation`."""
    V = finite_rows(V).numpy()
    if correlation:
        d = np.sqrt(np.einsum("bii->bi", V))
        V = V / d[:, :, None] / d[:, None, :]
    lam = np.linalg.eigvalsh(V)
    return {"rho01": rho01(V), "lmin_over_tr": lam[:, 0] / lam.sum(-1)}


def normalised_law_check(label: str, at: str, params: dict, control_name: str,
                         V0: Any = V_DEPTH, *, widths: list[int], nets: int, paths: int,
                         T: float, seed: int, device: str = "cpu") -> dict[str, Any]:
    """normalised(attention(**params), "rms", at) from V0: exact chains at `widths`
    against its SDE, with the control of the module docstring."""
    att = make_block("attention", **params)
    blk = normalised(att, norm="rms", at=at)
    control_blk = att if at == "post" else normalised(att, norm="rms", at="post")
    V0 = np.array(V0, dtype=float)
    sde = solve_quiet(blk, V0, T, paths=paths, seed=derive_seed(seed, "sde"), device=device)
    ctl = solve_quiet(control_blk, V0, T, paths=paths, seed=derive_seed(seed, "control"),
                      device=device)
    s_sde, s_ctl = law_statistics(sde.V), law_statistics(ctl.V)
    alpha = LINE_ALPHA / len(STATISTICS)
    per_width = {}
    for n in widths:
        V = simulate(blk, V0, width=n, T=T, nets=nets, seed=derive_seed(seed, f"n={n}"),
                     method="gram", device=device)
        s_fin = law_statistics(V, correlation=at == "pre")
        per_width[n] = {k: compare_law(s_fin[k], s_sde[k], {control_name: s_ctl[k]}, stat=k,
                                       alpha=alpha) for k in STATISTICS}
        per_width[n]["_means"] = {k: float(np.mean(s_fin[k])) for k in STATISTICS}
    top = per_width[max(widths)]
    status = [verdict(top[k].true, top[k].controls, alpha) for k in STATISTICS]
    v = ("FAIL" if any(s == "FAIL" for s, _ in status) else
         "PASS" if any(powered for _, powered in status) else "NO POWER")
    n_blown = {"sde": len(sde.V) - len(s_sde["rho01"]), "control": len(ctl.V) - len(s_ctl["rho01"])}
    means_sde = {k: float(np.mean(s_sde[k])) for k in STATISTICS}
    means_ctl = {k: float(np.mean(s_ctl[k])) for k in STATISTICS}
    parts = []
    for k in STATISTICS:
        ks = " -> ".join(f"{per_width[n][k].true['ks']:.3f}" for n in widths)
        c = top[k].controls[control_name]
        parts.append(f"{k} mean finite {top['_means'][k]:.4f} SDE {means_sde[k]:.4f} control "
                     f"{means_ctl[k]:.4f}, KS {ks} (n={'->'.join(map(str, widths))}) "
                     f"p={top[k].true['p']:.2g}, control KS {c['ks']:.3f} p={c['p']:.2g}")
    line = (f"{v} normalised {label} {params} rho0={_rho0(V0)} T={T:g}: " + "; ".join(parts)
            + f" (control: {control_name}; non-finite SDE paths left out: {n_blown['sde']}, "
            f"control {n_blown['control']} of {paths})")
    return {"label": label, "at": at, "norm": "rms", "params": params, "T": T,
            "V0": V0.tolist(),
            "widths": widths, "nets": nets, "paths": paths, "control": control_name,
            "sde_meta": sde.meta, "control_meta": ctl.meta, "nonfinite": n_blown,
            "means": {"sde": means_sde, "control": means_ctl,
                      **{f"n={n}": per_width[n]["_means"] for n in widths}},
            "per_width": {n: {k: {"true": per_width[n][k].true,
                                  "controls": per_width[n][k].controls}
                              for k in STATISTICS} for n in widths},
            "verdict": v, "line": line}


def _rho0(V0: np.ndarray) -> str:
    """V0's off-diagonal entries (row-major), e.g. '0.3,0.1,0.2'."""
    return ",".join(f"{x:g}" for x in V0[np.triu_indices(len(V0), 1)])


def normalised_sizes(quick: bool) -> dict[str, Any]:
    """Sizes per norm place (pre-norm at T = 1: module docstring)."""
    if quick:
        return {"post": dict(widths=[256, 1024], nets=4000, paths=4000, T=0.5),
                "pre": dict(widths=[256, 1024], nets=4000, paths=4000, T=1.0)}
    return {"post": dict(widths=[256, 1024, 4096], nets=16000, paths=16000, T=0.5),
            "pre": dict(widths=[256, 1024, 4096], nets=16000, paths=16000, T=1.0)}


def normalised_checks(*, quick: bool, seed: int, device: str = "cpu") -> list[dict[str, Any]]:
    """`normalised_law_check` for each of `SETTINGS`."""
    sizes = normalised_sizes(quick)
    return [normalised_law_check(label, at, params, control, V0, **sizes[at],
                                 seed=derive_seed(seed, f"normalised/{label}"), device=device)
            for label, at, params, control, V0 in SETTINGS]
