"""Multi-head attention at one step, with the single head as the negative control.

The attention part of Sigma at n_H heads is the single head's divided by n_H: small
against the value part, so plain sample covariances cannot see it. Here the estimator
of `one_step.one_step_estimate` (one logit draw per head, the value weights' expectation
exact given the logits) measures it, in two comparisons:

1. finite networks (`finite`): `block.finite` at a small width, every weight drawn (no
   variance reduction), against the estimator at the same width and V, with n_H heads
   (must agree) and with one head (the control, which must be rejected);
2. kernels (`kernels`): the estimator at several widths, extrapolated to n -> inf
   (`one_step.extrapolate`), against b(V), Sigma(V) of the n_H-head block (must agree)
   and against the single head's (the control: twice the attention part at n_H = 2).

Each comparison is one z-test (`common.z_test`) over the unique entries of the drift
and the diffusion (the kernels also the attention part) at half the line's false-alarm
level; `engine.verdict` makes it FAIL (the true moments rejected), PASS (the control
rejected and farther) or NO POWER. The line is FAIL if either is, else NO POWER if
either is, else PASS.

Causal attention has entries that are exact for every draw (token 0 sees only itself;
for two keys the antithetic pair cancels the logits), estimated with zero SE up to
rounding: SEs are floored at ROUNDING times the part's largest estimate, the same
relative tolerance `common.compare` grants entries with zero SE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..blocks import AttentionBlock
from ..finite import initial_hidden
from .common import LINE_ALPHA, Comparison, compare, z_test
from .engine import verdict
from .one_step import extrapolate, one_step_estimate, raw_one_step, theory

ROUNDING = 1e-9
KERNEL_PARTS = ("drift", "attention", "diffusion")  # the gated parts of the one-step line
CONTROL = "single head"


def single_head(block: AttentionBlock) -> AttentionBlock:
    """The control: the same attention block with one head."""
    return dataclasses.replace(block, heads=1)


def floored(se: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """SEs floored at ROUNDING * max |est| (entries exact up to rounding)."""
    return se.clamp_min(ROUNDING * float(est.abs().max()))


def finite_comparison(block: AttentionBlock, V: torch.Tensor, n: int, samples: int,
                      pairs: int, seed: int) -> dict:
    """`block.finite` (`samples` layers, every weight drawn) at X with X X^T / n near V,
    against the estimator at that V with n_H heads and with one head."""
    gen = torch.Generator().manual_seed(seed)
    X = initial_hidden(V, n, seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
    raw = raw_one_step(block, X, samples, gen)
    Vx = X @ X.T / n
    tests = {}
    for name, b in (("true", block), (CONTROL, single_head(block))):
        vr = one_step_estimate(b, Vx, n, pairs, gen)
        cmp = [compare(raw.mean, raw.mean_se, vr.drift, floored(vr.drift_se, vr.drift)),
               compare(raw.cov, raw.cov_se, vr.diffusion,
                       floored(vr.diffusion_se, vr.diffusion))]
        tests[name] = {**z_test(cmp), "drift": cmp[0].as_dict(), "diffusion": cmp[1].as_dict()}
    return _judged({"n": n, "samples": samples, "pairs": pairs}, tests)


def kernel_comparison(block: AttentionBlock, V: torch.Tensor, widths: list[int], pairs: int,
                      seed_of: Callable[[str], int]) -> dict:
    """The estimator at each width, extrapolated n -> inf, against the kernels of the
    n_H-head block and of the single head."""
    th, ctrl = theory(block, V), theory(single_head(block), V)
    est: dict[str, list[torch.Tensor]] = {p: [] for p in KERNEL_PARTS}
    se: dict[str, list[torch.Tensor]] = {p: [] for p in KERNEL_PARTS}
    per_width = {}
    for n in widths:
        e = one_step_estimate(block, V, n, pairs,
                              torch.Generator().manual_seed(seed_of(f"n={n}")))
        for p in KERNEL_PARTS:
            est[p].append(getattr(e, p))
            se[p].append(floored(getattr(e, p + "_se"), getattr(e, p)))
        per_width[n] = {p: compare(est[p][-1], se[p][-1], th[p]).as_dict() for p in KERNEL_PARTS}
    theta = {p: extrapolate(widths, est[p], se[p]) for p in KERNEL_PARTS}
    tests = {name: _kernel_test(theta, ref) for name, ref in (("true", th), (CONTROL, ctrl))}
    return _judged({"widths": widths, "pairs": pairs, "per_width": per_width,
                    "extrapolated": {p: theta[p][0].tolist() for p in KERNEL_PARTS},
                    "theory": {p: th[p].tolist() for p in KERNEL_PARTS},
                    "control_theory": {p: ctrl[p].tolist() for p in KERNEL_PARTS}}, tests)


def _kernel_test(theta: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 ref: dict[str, torch.Tensor]) -> dict:
    cmp: dict[str, Comparison] = {p: compare(*theta[p], ref[p]) for p in KERNEL_PARTS}
    return {**z_test(list(cmp.values())), **{p: c.as_dict() for p, c in cmp.items()}}


def _judged(record: dict, tests: dict[str, dict]) -> dict:
    """The record with its true and control tests and their verdict at LINE_ALPHA / 2."""
    alpha = LINE_ALPHA / 2
    status, _ = verdict(tests["true"], {CONTROL: tests[CONTROL]}, alpha, stat="max_abs_z")
    return {**record, "alpha": alpha, "true": tests["true"], "control": tests[CONTROL],
            "status": status}


def heads_check(block: AttentionBlock, V: torch.Tensor, *, widths: list[int], pairs: int,
                raw_n: int, raw_samples: int, seed_of: Callable[[str], int],
                v_name: str = "V") -> dict:
    """Both comparisons for one multi-head block at V (named `v_name` in the line), with
    the verdict line."""
    V = V.to(torch.float64)
    label = _label(block)
    finite = finite_comparison(block, V, raw_n, raw_samples, pairs,
                               seed_of(f"heads/{label}/finite"))
    kernels = kernel_comparison(block, V, widths, pairs,
                                lambda s: seed_of(f"heads/{label}/{s}"))
    statuses = {finite["status"], kernels["status"]}
    status = next(s for s in ("FAIL", "NO POWER", "PASS") if s in statuses)
    r = {"block": block.name, "params": {**block.kernel_params(), "causal": block.causal},
         "V": V.tolist(), "finite": finite, "kernels": kernels, "verdict": status}
    r["line"] = heads_line(f"{label} at {v_name}", r)
    return r


def heads_line(label: str, r: dict) -> str:
    """One verdict line: both comparisons' max |z| and p, true and control."""
    f, k = r["finite"], r["kernels"]
    ns = k["widths"]

    def zs(t: dict) -> str:
        return f"max|z| {t['max_abs_z']:.2f} (p={t['p']:.2g})"

    return (f"{r['verdict']} one-step heads {label}: block.finite n={f['n']} "
            f"({f['samples']} layers) vs estimator {zs(f['true'])}, vs single-head estimator "
            f"{zs(f['control'])}; n={ns[0]}..{ns[-1]} ({k['pairs']} pairs) n->inf drift, "
            f"attention part, Sigma vs kernels {zs(k['true'])}, vs single-head Sigma "
            f"{zs(k['control'])} (alpha={f['alpha']:.2g} each)")


def _label(block: AttentionBlock) -> str:
    causal = " causal" if block.causal else ""
    return (f"attention gamma={block.gamma:g} tau0={block.tau0:g} heads={block.heads}"
            f"{causal}")
