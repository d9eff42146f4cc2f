"""Verification of tangents (`shapedsde.tangent`): the joint Gram Q = [[V, C], [C^T, U]] of
the tokens and their JVP, finite networks against the tangent SDE.

Two checks, each with the dA = 0 control `tangent(blk, frozen_mixing=True)` (the mixing
matrix held fixed along the tangent: the Softmax's derivative dropped), which must be
rejected on the same samples for a PASS (else NO POWER):

- `tangent_law_check`, the stopped law at T: SDE paths and finite networks (the exact
  joint chain, method="gram", or the block's finite face with `torch.func.jvp`,
  method="full") stopped when tr V >= R tr V0 (the tokens' block). Statistics: P(exit)
  (two-proportion z, the finite proportion extrapolated in n^{-1/2} from the two largest
  widths as in `verification.depth`; the z at the largest width is reported), and the
  survivors' laws of log(tr U_T / tr U_0) (the squared Jacobian norm along a random input
  direction) and log(tr U_T / tr V_T) (two-sample KS at the largest width). The line
  gates on the three statistics, Bonferroni at `LINE_ALPHA`; the control's P(exit) is
  the true one's (dA does not act on V), its power is in the tangent statistics.
- `tangent_one_step_check`, one-step moments at a fixed joint Gram Q with C != 0: n E[dQ]
  and n Cov[dQ] of the exact joint chain against b(Q) and Sigma(Q) of `tangent(blk)`. The
  chain is X' = lam Z + gam M Z W^V / sqrt(n) on Z = [X; T] with M = [[A, 0], [dA, A]]
  independent of W^V, so the one-step estimator of `verification.one_step` applies as it
  is (`estimate_from_G` with G = M Q M^T; the W^V expectation exact, antithetic logits
  Y, -Y), in batches of pairs whose SEs (delta method) are pooled. Parts: drift,
  attention (the logits' fluctuation, against Sigma - Sigma_linear), value, diffusion;
  the verdict uses the 1/n extrapolation of drift, attention part and diffusion, as the
  attention one-step check does. The linear block's tangent (the linear chain on 2m
  rows) is deterministic: exact equality at every width.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from ..finite import gram_logits, psd_factor, simulate
from ..registry import block as make_block
from ..tangent import Tangent, initial_joint, tangent
from .common import LINE_ALPHA, compare, derive_seed, z_crit
from .depth import V_DEPTH
from .engine import compare_law, solve_quiet
from .one_step import PARTS, OneStepEstimate, estimate_from_G, extrapolate

#: (label, block name, parameters, finite method) of the stopped-law check; "full" runs the
#: block's finite face with its JVP (slow: the full verification only, see `tangent_checks`).
LAW_SETTINGS = [
    ("attention", "attention", {"gamma": 0.8, "tau0": 0.6}, "gram"),
    ("transformer", "transformer", {"gamma": 0.8, "tau0": 0.6}, "full"),
]
#: (label, block name, parameters) of the one-step check.
ONE_STEP_SETTINGS = [
    ("attention", "attention", {"gamma": 0.8, "tau0": 0.6}),
    ("linear", "linear", {"gamma": 0.8}),
]
LAW_STATISTICS = ("log_trU", "log_trU_over_trV")
GATED_PARTS = ("drift", "attention", "diffusion")


def generic_joint(V: Any = V_DEPTH) -> np.ndarray:
    """A joint Gram Q (2m x 2m) with a correlated tangent: T = K X + independent noise, so
    C = V K^T != 0 and U = K V K^T + D (K, D fixed, m = 3)."""
    V = np.asarray(V, dtype=np.float64)
    K = np.array([[0.5, 0.0, 0.2], [0.0, -0.4, 0.0], [0.1, 0.0, 0.3]])
    D = np.diag([0.8, 1.0, 0.6])
    return np.block([[V, V @ K.T], [K @ V, K @ V @ K.T + D]])


# ----------------------------------------------------------------------------
# The stopped law at T


def tangent_statistics(Q: np.ndarray, exit_time: np.ndarray, Q0: np.ndarray
                       ) -> dict[str, Any]:
    """P(exit) over all samples and the survivors' log(tr U_T / tr U_0) and
    log(tr U_T / tr V_T) (rows with a non-finite Q dropped from the survivors, counted)."""
    Q = np.asarray(Q, dtype=np.float64)
    m = Q.shape[-1] // 2
    exited = np.isfinite(exit_time)
    ok = np.isfinite(Q).all(axis=(-2, -1))
    surv = ~exited & ok
    trV = np.trace(Q[surv, :m, :m], axis1=1, axis2=2)
    trU = np.trace(Q[surv, m:, m:], axis1=1, axis2=2)
    trU0 = float(np.trace(Q0[m:, m:]))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"log_trU": np.log(trU / trU0), "log_trU_over_trV": np.log(trU / trV)}
    n = len(exit_time)
    p = float(exited.mean())
    return {"n": n, "p_exit": p, "p_exit_se": math.sqrt(p * (1 - p) / n),
            "n_nonfinite": int((~ok).sum()), **out}


def _extrapolated(p: dict[int, float], se: dict[int, float]) -> tuple[float, float]:
    """(p_inf, SE): Richardson in n^{-1/2} from the two largest widths (one width: itself)."""
    widths = sorted(p)[-2:]
    if len(widths) == 1:
        return p[widths[0]], se[widths[0]]
    n1, n2 = widths
    r1, r2 = math.sqrt(n1), math.sqrt(n2)
    return ((r2 * p[n2] - r1 * p[n1]) / (r2 - r1),
            math.hypot(r2 * se[n2], r1 * se[n1]) / (r2 - r1))


def _against(finite: dict[int, dict[str, Any]], ref: dict[str, Any]) -> dict[str, Any]:
    """Finite networks (by width) against one SDE's sample: the z of P(exit) (extrapolated;
    and at the largest width), the KS of each survivors' statistic at the largest width,
    and the line's Bonferroni p-value over the three gated statistics."""
    top = finite[max(finite)]
    p_inf, se_inf = _extrapolated({n: f["p_exit"] for n, f in finite.items()},
                                  {n: f["p_exit_se"] for n, f in finite.items()})
    se = math.hypot(se_inf, ref["p_exit_se"])
    z = (p_inf - ref["p_exit"]) / se if se > 0 else 0.0
    se_top = math.hypot(top["p_exit_se"], ref["p_exit_se"])
    z_top = (top["p_exit"] - ref["p_exit"]) / se_top if se_top > 0 else 0.0
    ks = {}
    for key in LAW_STATISTICS:
        d = compare_law(top[key], ref[key], stat=key, alpha=LINE_ALPHA).true
        ks[key] = {"ks": d["ks"], "p": d["p"], "n_finite": d["n_x"], "n_sde": d["n_y"],
                   "mean_finite": float(np.nanmean(top[key])),
                   "mean_sde": float(np.nanmean(ref[key]))}
    k = 1 + len(ks)
    p_line = min(1.0, k * min([2 * float(norm.sf(abs(z)))] + [v["p"] for v in ks.values()]))
    return {"p_exit_extrapolated": p_inf, "p_exit_extrapolated_se": se_inf, "z_p_exit": z,
            "z_p_exit_at_largest_width": z_top, "ks": ks, "p_line": p_line,
            "rejected": p_line < LINE_ALPHA}


def tangent_law_check(label: str, name: str, params: dict, method: str = "gram", *,
                      widths: list[int], nets: int, paths: int, T: float, R: float,
                      seed: int, device: str = "cpu") -> dict[str, Any]:
    """The stopped law at T of tangent(block) from Q0 = initial_joint(V_DEPTH): finite
    networks at `widths` against the SDE, with the dA = 0 control (module docstring)."""
    blk = make_block(name, **params)
    tan, ctl = tangent(blk), tangent(blk, frozen_mixing=True)
    Q0 = initial_joint(np.array(V_DEPTH))
    if method == "gram" and not tan.exact_chain():
        method = "full"

    def sde(coef: Any, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        res = solve_quiet(coef, Q0, T, paths=paths, seed=derive_seed(seed, tag),
                          exit_trace=R, device=device)
        return tangent_statistics(res.V.cpu().numpy(), res.exit_time.numpy(), Q0), res.meta

    ref, meta = sde(tan, "sde")
    control, control_meta = sde(ctl, "control")
    finite = {}
    for n in widths:
        run = simulate(tan, Q0, width=n, T=T, nets=nets, seed=derive_seed(seed, f"n={n}"),
                       method=method, exit_trace=R, device=device)
        finite[n] = tangent_statistics(run.V.cpu().numpy(), run.exit_time.numpy(), Q0)
    vs_sde, vs_control = _against(finite, ref), _against(finite, control)
    verdict = ("FAIL" if vs_sde["rejected"] else
               "PASS" if vs_control["rejected"] else "NO POWER")
    top = max(widths)
    ks_text = ", ".join(f"{k} KS {v['ks']:.3f} p={v['p']:.2g}"
                        for k, v in vs_sde["ks"].items())
    ctl_text = ", ".join(f"{k} KS {v['ks']:.3f} p={v['p']:.2g}"
                         for k, v in vs_control["ks"].items())
    line = (f"{verdict} tangent law {label} {params} T={T:g} R={R:g} ({method}): P(exit) SDE "
            f"{meta['p_exit']:.3f} +- {meta['p_exit_se']:.3f}, finite "
            + ", ".join(f"n={n} {f['p_exit']:.3f}" for n, f in finite.items())
            + f" -> n=inf {vs_sde['p_exit_extrapolated']:.3f} +- "
            f"{vs_sde['p_exit_extrapolated_se']:.3f} (z {vs_sde['z_p_exit']:.2f}; at n={top} "
            f"z {vs_sde['z_p_exit_at_largest_width']:.2f}); survivors n={top}: mean "
            f"log(trU/trU0) finite {vs_sde['ks']['log_trU']['mean_finite']:.3f} SDE "
            f"{vs_sde['ks']['log_trU']['mean_sde']:.3f}; {ks_text}; line p "
            f"{vs_sde['p_line']:.3g}; control (dA = 0): {ctl_text}, line p "
            f"{vs_control['p_line']:.2g}")
    return {"label": label, "block": name, "params": params, "method": method, "T": T,
            "R": R, "widths": widths, "nets": nets, "paths": paths,
            "Q0": Q0.tolist(), "sde_meta": meta, "control_meta": control_meta,
            "p_exit_finite": {n: f["p_exit"] for n, f in finite.items()},
            "p_exit_sde": ref["p_exit"], "p_exit_control": control["p_exit"],
            "nonfinite": {"sde": ref["n_nonfinite"], "control": control["n_nonfinite"],
                          **{f"n={n}": f["n_nonfinite"] for n, f in finite.items()}},
            "vs_sde": vs_sde, "vs_control": vs_control, "verdict": verdict, "line": line}


# ----------------------------------------------------------------------------
# One step


def sample_joint_G(tan: Tangent, Q: torch.Tensor, n: int, pairs: int,
                   gen: torch.Generator) -> torch.Tensor | None:
    """G = M Q M^T for antithetic pairs of joint logits (Y, -Y): (pairs, 1, 2, 2m, 2m),
    M = [[A, 0], [dA, A]] as the exact chain draws it; None for the linear block (M = I)."""
    if not hasattr(tan.block, "logits"):
        return None
    L = psd_factor(Q).expand(pairs, -1, -1)
    Y = gram_logits(tan.block, L, n, gen)
    M = tan.mixing_from_logits(torch.stack([Y, -Y], dim=1))
    return (M @ Q @ M.transpose(-1, -2))[:, None]


def tangent_one_step_estimate(tan: Tangent, Q: torch.Tensor, n: int, pairs: int,
                              gen: torch.Generator, batch: int = 4000) -> OneStepEstimate:
    """n E[dQ] and n Cov[dQ] (by parts) at width n from `pairs` antithetic pairs, in
    batches (memory: (batch, (2m)^4) per tensor); the estimate is the pairs-weighted mean
    of the batches', its SE pools theirs."""
    if not tan.exact_chain():
        raise ValueError(f"{tan.name} has no exact chain: the one-step check needs one")
    gam = tan.gamma
    if not hasattr(tan.block, "logits"):
        return estimate_from_G(Q, None, gam, n)
    sums: dict[str, torch.Tensor] = {}
    var: dict[str, torch.Tensor] = {}
    done = 0
    while done < pairs:
        k = min(batch, pairs - done)
        e = estimate_from_G(Q, sample_joint_G(tan, Q, n, k, gen), gam, n)
        for p in PARTS:
            sums[p] = sums.get(p, 0) + k * getattr(e, p)
            var[p] = var.get(p, 0) + (k * getattr(e, p + "_se")) ** 2
        done += k
    est = {p: sums[p] / pairs for p in PARTS}
    se = {p: var[p].sqrt() / pairs for p in PARTS}
    return OneStepEstimate(n=n, pairs=pairs, drift=est["drift"], drift_se=se["drift"],
                           diffusion=est["diffusion"], diffusion_se=se["diffusion"],
                           attention=est["attention"], attention_se=se["attention"],
                           value=est["value"], value_se=se["value"])


def tangent_theory(tan: Tangent, Q: torch.Tensor) -> dict[str, torch.Tensor]:
    """b(Q), Sigma(Q) of the tangent and Sigma's split: value part (the linear block's
    Sigma on the 2m rows, at the same gamma) and the attention rest."""
    value = make_block("linear", gamma=tan.gamma).diffusion(Q)
    diffusion = tan.diffusion(Q)
    return {"drift": tan.drift(Q), "diffusion": diffusion, "value": value,
            "attention": diffusion - value}


def tangent_one_step_check(label: str, name: str, params: dict, Q: Any, *,
                           widths: list[int], pairs: int, seed: int) -> dict[str, Any]:
    """n E[dQ], n Cov[dQ] of the exact joint chain at `widths` against the tangent's b and
    Sigma, extrapolated in 1/n; the dA = 0 control's kernels against the same estimates."""
    blk = make_block(name, **params)
    tan, ctl = tangent(blk), tangent(blk, frozen_mixing=True)
    Qt = torch.as_tensor(np.asarray(Q), dtype=torch.float64)
    th, th_ctl = tangent_theory(tan, Qt), tangent_theory(ctl, Qt)
    ests, per_width = [], {}
    for n in widths:
        gen = torch.Generator().manual_seed(derive_seed(seed, f"n={n}"))
        e = tangent_one_step_estimate(tan, Qt, n, pairs, gen)
        ests.append(e)
        per_width[n] = {p: compare(getattr(e, p), getattr(e, p + "_se"), th[p]).as_dict()
                        for p in PARTS}
    base = {"label": label, "block": name, "params": params, "Q": Qt.tolist(),
            "widths": widths, "pairs": ests[0].pairs, "per_width": per_width}
    ns = sorted(widths)
    if ests[0].pairs == 0:  # deterministic (linear): exact agreement at every width
        vmax = float(Qt.abs().max())
        drift_err = max(float((e.drift - th["drift"]).abs().max()) / (n * vmax)
                        for n, e in zip(widths, ests, strict=True))
        diff_err = max(per_width[n]["diffusion"]["rel_error"] for n in ns)
        ok = drift_err < 1e-12 and diff_err < 1e-12
        verdict = "PASS" if ok else "FAIL"
        line = (f"{verdict} tangent one-step {label} {params} n={ns[0]}..{ns[-1]}: exact at "
                f"every width (Sigma(Q) rel err {diff_err:.1e}, drift error {drift_err:.1e} "
                "n|Q|; no dA, no control)")
        return {**base, "drift_error": drift_err, "diffusion_rel_error": diff_err,
                "verdict": verdict, "line": line}
    extra, extra_ctl = {}, {}
    for p in PARTS:
        theta, theta_se = extrapolate(widths, [getattr(e, p) for e in ests],
                                      [getattr(e, p + "_se") for e in ests])
        extra[p] = compare(theta, theta_se, th[p]).as_dict()
        extra_ctl[p] = compare(theta, theta_se, th_ctl[p]).as_dict()
    crit = z_crit(sum(extra[p]["entries"] for p in GATED_PARTS), LINE_ALPHA)
    w, w0 = per_width[ns[-1]], per_width[ns[0]]
    falls = all(w[p]["rel_error"] < w0[p]["rel_error"] or w[p]["rel_error"] < 3 * w[p]["rel_se"]
                for p in GATED_PARTS)
    agrees = all(extra[p]["max_abs_z"] < crit for p in GATED_PARTS) and falls
    power = any(extra_ctl[p]["max_abs_z"] > crit for p in GATED_PARTS)
    verdict = "FAIL" if not agrees else ("PASS" if power else "NO POWER")
    per_n = "; ".join(f"{p} rel err {w0[p]['rel_error']:.1e}->{w[p]['rel_error']:.1e}"
                      for p in GATED_PARTS)
    line = (f"{verdict} tangent one-step {label} {params} at Q (2m={Qt.shape[-1]}, C != 0) "
            f"n={ns[0]}..{ns[-1]}, {pairs} pairs each: {per_n}; n->inf extrapolation max|z| "
            + ", ".join(f"{p} {extra[p]['max_abs_z']:.2f}" for p in GATED_PARTS)
            + f" (crit {crit:.2f}); control (dA = 0) max|z| "
            + ", ".join(f"{p} {extra_ctl[p]['max_abs_z']:.1f}" for p in GATED_PARTS)
            + ("" if falls else "; errors do NOT fall with n"))
    return {**base, "extrapolated": extra, "control_extrapolated": extra_ctl,
            "line_z_crit": crit, "falls": falls, "power": power,
            "theory": {p: th[p].tolist() for p in ("drift",)},
            "estimates_drift": {n: e.drift.tolist() for n, e in zip(widths, ests, strict=True)},
            "verdict": verdict, "line": line}


# ----------------------------------------------------------------------------
# The stage


def tangent_sizes(quick: bool) -> dict[str, Any]:
    """Sizes of the tangent checks: quick runs the attention law on the exact chain and the
    one-step checks; full adds the Transformer block's law (finite face with JVP)."""
    if quick:
        return {"law": {"labels": ["attention"], "widths": [256, 1024], "nets": 2000,
                        "paths": 2000, "T": 0.5, "R": 5.0},
                "law_full_face": None,
                "one_step": {"widths": [128, 256, 512, 1024, 2048], "pairs": 8000}}
    return {"law": {"labels": ["attention"], "widths": [256, 1024, 4096], "nets": 8000,
                    "paths": 8000, "T": 0.5, "R": 5.0},
            "law_full_face": {"labels": ["transformer"], "widths": [32, 64], "nets": 2000,
                              "paths": 4000, "T": 0.5, "R": 5.0},
            "one_step": {"widths": [64, 128, 256, 512, 1024, 2048, 4096], "pairs": 100_000}}


def tangent_checks(*, quick: bool, seed: int, device: str = "cpu") -> list[dict[str, Any]]:
    """The tangent's law checks (`LAW_SETTINGS`, by the sizes of `tangent_sizes`) and
    one-step checks (`ONE_STEP_SETTINGS`, at `generic_joint()`)."""
    sizes = tangent_sizes(quick)
    out = []
    for group in ("law", "law_full_face"):
        size = sizes[group]
        if size is None:
            continue
        size = {k: v for k, v in size.items() if k != "labels"}
        for label, name, params, method in LAW_SETTINGS:
            if label in sizes[group]["labels"]:
                out.append(tangent_law_check(label, name, params, method, **size,
                                             seed=derive_seed(seed, f"tangent-law/{label}"),
                                             device=device))
    Q = generic_joint()
    for label, name, params in ONE_STEP_SETTINGS:
        out.append(tangent_one_step_check(label, name, params, Q, **sizes["one_step"],
                                          seed=derive_seed(seed, f"tangent-one-step/{label}")))
    return out
