"""Figure 1 of the paper (setting in docs/figures/fig1_paper_figure1.md): mean correlation
over depth of standard, pre-LN and shaped attention (finite networks), with the SDE mean
and 10-90% band of shaped attention; and the final-layer density of rho, shaped networks
against the SDE."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..baselines import baseline_blocks, rank_collapse_summary
from ..blocks import AttentionBlock
from ..seeds import child_seed
from ..verification.engine import distance, rho01
from . import _common as common
from ._common import KS_ALPHA, NAMES, PAPER, SDE_DT, FigureOutput

COLORS = {"standard": "C3", "pre-LN": "C1", "shaped": "C0"}


def compute(*, seed: int, nets: int, sde_paths: int, width: int, depth: int, gamma: float,
            tau0: float, rho0: float, sde_dt: float, reference_dt: float | None,
            reference_paths: int, device: str, method: str, progress: bool) -> dict[str, Any]:
    """Finite networks of the three blocks, the shaped SDE at the paper's step (every
    step saved) and, unless reference_dt is None, at a finer step."""
    V0, T = common.initial_cov(rho0), depth / width
    blocks = {"standard": baseline_blocks(gamma, tau0)["standard"],
              "pre-LN": baseline_blocks(gamma, tau0)["prenorm"],
              "shaped": AttentionBlock(gamma, tau0=tau0)}
    summary = rank_collapse_summary(blocks, V0, width=width, depth=depth, nets=nets,
                                    seed=child_seed(seed, "fig1", "finite"), device=device,
                                    method=method, progress=progress)
    res = common.run_sde(blocks["shaped"], V0, T, paths=sde_paths,
                         seed=child_seed(seed, "fig1", "sde"), dt=sde_dt, device=device,
                         progress=progress, save_every=1)
    sde_rho = rho01(res.trajectory.transpose(0, 1))  # (paths, saved times)
    sde_rho = sde_rho[np.isfinite(sde_rho).all(1)]
    shaped = summary.row("shaped")
    d = dict(summary=summary, shaped=shaped, sde_rho=sde_rho, meta=res.meta,
             sde_depth=res.times.numpy() * width, sde_mean=sde_rho.mean(0),
             fin_final=shaped.rho_final, sde_final=sde_rho[:, -1], ref_final=None, k_ref=None)
    d["sde_q10"], d["sde_q90"] = np.quantile(sde_rho, [0.1, 0.9], axis=0)
    d["k"] = distance(d["fin_final"], d["sde_final"], alpha=KS_ALPHA)
    if reference_dt is not None:
        ref = common.run_sde(blocks["shaped"], V0, T, paths=reference_paths,
                      seed=child_seed(seed, "fig1", "sde-reference"), dt=reference_dt,
                      device=device, progress=progress)
        d["ref_final"] = rho01(ref.V)
        d["k_ref"] = distance(d["fin_final"], d["ref_final"], alpha=KS_ALPHA)
    # the largest gap of the mean curves, in combined SEs, at the depths the SDE is saved at
    idx = np.clip(np.rint(d["sde_depth"]).astype(int), 0, depth)
    gap = np.abs(shaped.mean_rho[idx] - d["sde_mean"])
    gap_se = np.sqrt(shaped.se_rho[idx] ** 2 + sde_rho.std(0, ddof=1) ** 2 / len(sde_rho))
    imax = int(np.argmax(gap / np.maximum(gap_se, 1e-12)))
    d["gap"] = {"gap": float(gap[imax]), "se": float(gap_se[imax]), "layer": int(idx[imax])}
    return d


def plot(d: dict[str, Any], *, width: int, depth: int, sde_dt: float,
         reference_dt: float | None) -> Any:
    """Left: mean rho over depth; right: the final-layer density, networks vs SDE."""
    plt = common.pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.8))
    summary, shaped, k, k_ref = d["summary"], d["shaped"], d["k"], d["k_ref"]
    for r in summary.rows:
        ax0.plot(summary.depths, r.mean_rho, color=COLORS[r.label], lw=1.8,
                 label=rf"{r.label} (finite; {100 * r.collapsed:.0f}% with $\rho > 0.99$ at $d$)")
    ax0.plot(summary.depths, shaped.q10, color="C0", lw=0.8, ls=":")
    ax0.plot(summary.depths, shaped.q90, color="C0", lw=0.8, ls=":",
             label="shaped finite 10-90%")
    ax0.fill_between(d["sde_depth"], d["sde_q10"], d["sde_q90"], color="0.5", alpha=0.25,
                     label="shaped SDE 10-90%")
    ax0.plot(d["sde_depth"], d["sde_mean"], color="k", ls="--", lw=1.4, label="shaped SDE mean")
    ax0.set(xlabel=r"layer $\ell$", ylabel=r"mean correlation $\rho_\ell$", ylim=(-0.6, 1.05),
            title=f"mean correlation ($n = {width}$, $d = {depth}$)")
    ax0.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax0.grid(alpha=0.3)
    grid = np.linspace(-1, 1, 401)
    ax1.hist(d["fin_final"], bins=50, range=(-1, 1), density=True, color="C0", alpha=0.35,
             label=f"shaped network, $n = {width}$ ({len(d['fin_final'])})")
    ax1.plot(grid, common.kde(d["fin_final"], grid), color="C0", lw=1.6, label="network KDE")
    ax1.plot(grid, common.kde(d["sde_final"], grid), color="k", ls="--", lw=1.6,
             label=f"SDE KDE, $dt = {sde_dt:g}$ ({len(d['sde_final'])} paths)")
    if d["ref_final"] is not None:
        ax1.plot(grid, common.kde(d["ref_final"], grid), color="0.45", ls=":", lw=1.6,
                 label=f"SDE KDE, $dt = {reference_dt:g}$ "
                       f"({np.isfinite(d['ref_final']).sum()} paths)")
    T = depth / width
    ax1.set(xlabel=rf"$\rho$ at layer $d = {depth}$ ($t = {T:g}$)", ylabel="density",
            title=f"final-layer correlation: KS $D = {k['ks']:.3f}$, $p = {k['p']:.2g}$"
            + ("" if k_ref is None else f"\n(vs $dt = {reference_dt:g}$: $D = "
               f"{k_ref['ks']:.3f}$, $p = {k_ref['p']:.2g}$)"))
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def describe(d: dict[str, Any], *, nets: int, width: int, depth: int, gamma: float,
             tau0: float, rho0: float, sde_dt: float, reference_dt: float | None,
             method: str) -> tuple[str, str]:
    """(caption body, README paragraph), worded from the numbers."""
    summary, shaped, k, k_ref, gap = d["summary"], d["shaped"], d["k"], d["k_ref"], d["gap"]
    std, pre = summary.row("standard"), summary.row("pre-LN")
    T, meta, sde_mean = depth / width, d["meta"], d["sde_mean"]
    ref_txt = ("" if k_ref is None else f"; vs the reference SDE at dt = {reference_dt:g} "
               f"({k_ref['n_y']} paths): KS {common.fmt_ks(k_ref)}")
    body = (
        f"Left: mean correlation rho^{{01}}_l over layers l = 0..{depth} of {nets} finite "
        f"networks (m = 2, rho0 = {rho0:g}, n = {width}, gamma = 1/sqrt(8) = {gamma:.4f}, "
        f"tau0 = {tau0:g}) for standard attention with residual, pre-LN attention and shaped "
        f"attention, with the covariance SDE of shaped attention (mean, dashed; 10-90% band, "
        f"grey; Euler step dt = {sde_dt:g}, i.e. every {sde_dt * width:g} layers, "
        f"{len(d['sde_rho'])} paths). Right: histogram and KDE of rho at layer d = {depth} for "
        f"the shaped networks vs the SDE at t = d/n = {T:g}.\n\n"
        f"Key numbers: mean rho at layer {depth}: standard {std.final_mean:.4f} "
        f"({100 * std.collapsed:.1f}% of networks with rho > 0.99), pre-LN "
        f"{pre.final_mean:.4f} ({100 * pre.collapsed:.1f}%), shaped {shaped.final_mean:.3f} "
        f"+- {shaped.final_se:.3f} ({100 * shaped.collapsed:.1f}%); SDE {sde_mean[-1]:.3f}. "
        f"Final-layer rho, shaped network vs SDE: KS {common.fmt_ks(k)}{ref_txt}. Largest gap "
        f"between the finite and SDE mean curves relative to its standard error: "
        f"{gap['gap']:.3f} at layer {gap['layer']} "
        f"({gap['gap'] / max(gap['se'], 1e-12):.1f} combined SE). SDE: "
        f"{meta['n_exploded']} paths blew up, {meta['n_nonfinite']} non-finite.\n\n"
        "Assumed (the figure's settings come from secondary sources, not checked against "
        "the paper's text): a single attention sub-layer per layer (no MLP), with "
        "lam^2 + gamma^2 = 1; nk = n; V0 with unit diagonal; standard attention is "
        "Softmax(Y/sqrt(nk)) at standard initialisation; pre-LN normalises each token to "
        "unit mean square (no gain, bias or mean subtraction) before Q, K and V, the residual "
        "stream is not normalised. The paper's own Figure 1 may use its full Transformer "
        "block (attention + MLP); that block's density is in fig3. Finite networks use the "
        f"exact-in-law V chain (method = {method!r}; see shapedsde.finite).")
    collapsed = std.collapsed > 0.5 and pre.collapsed > 0.5
    paragraph = (
        f"The paper's Figure 1 setting (m = 2, rho0 = {rho0:g}, n = {width}, d = {depth}, "
        f"gamma = 1/sqrt(8), tau0 = {tau0:g}, {nets} networks). Standard and pre-LN attention "
        + ("collapse" if collapsed else "move towards rho = 1")
        + f": at layer {depth} their mean correlation is {std.final_mean:.4f} and "
        f"{pre.final_mean:.4f}, with {100 * std.collapsed:.0f}% and {100 * pre.collapsed:.0f}% "
        f"of networks above 0.99, while shaped attention keeps it at {shaped.final_mean:.3f} "
        f"(SDE: {sde_mean[-1]:.3f}; {100 * shaped.collapsed:.1f}% collapsed); its 10-90% range "
        f"at layer {depth} is [{shaped.q10[-1]:.2f}, {shaped.q90[-1]:.2f}] (SDE "
        f"[{d['sde_q10'][-1]:.2f}, {d['sde_q90'][-1]:.2f}]). Final-layer density, shaped "
        f"networks vs SDE (dt = {sde_dt:g}): KS {common.fmt_ks(k)}, {common.agree(k)}"
        + ("." if k_ref is None else f"; against a finer-step SDE (dt = {reference_dt:g}, "
           f"{k_ref['n_y']} paths): KS {common.fmt_ks(k_ref)}, {common.agree(k_ref)}."))
    return body, paragraph


def _numbers_and_arrays(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    summary, shaped = d["summary"], d["shaped"]
    numbers = {
        "final_mean_rho": {r.label: r.final_mean for r in summary.rows},
        "final_mean_rho_se": {r.label: r.final_se for r in summary.rows},
        "collapsed_fraction": {r.label: r.collapsed for r in summary.rows},
        "sde_final_mean_rho": float(d["sde_mean"][-1]),
        "ks_final_rho": d["k"], "ks_final_rho_reference": d["k_ref"], "max_mean_gap": d["gap"],
        "sde_meta": {key: d["meta"][key] for key in ("n_exploded", "n_nonfinite", "steps",
                                                     "dt")},
    }
    extra = {} if d["ref_final"] is None else {"reference_sde_final_rho": d["ref_final"]}
    arrays = dict(**extra, depths=summary.depths, sde_depths=d["sde_depth"],
                  sde_mean=d["sde_mean"], sde_q10=d["sde_q10"], sde_q90=d["sde_q90"],
                  sde_final_rho=d["sde_final"], shaped_final_rho=d["fin_final"],
                  **{f"mean_rho_{r.label}": r.mean_rho for r in summary.rows},
                  **{f"se_rho_{r.label}": r.se_rho for r in summary.rows},
                  shaped_q10=shaped.q10, shaped_q90=shaped.q90)
    return numbers, arrays


def figure1(out: str | Path = "docs/figures", *, seed: int = 0, nets: int = PAPER["samples"],
            sde_paths: int | None = None, width: int = PAPER["width"],
            depth: int = PAPER["depth"], gamma: float = PAPER["gamma"],
            tau0: float = PAPER["tau0"], rho0: float = PAPER["rho0"],
            sde_dt: float = PAPER["sde_dt"], reference_dt: float | None = SDE_DT,
            reference_paths: int | None = None, device: str = "cpu", method: str = "auto",
            progress: bool = False, command: str | None = None) -> FigureOutput:
    """The paper's Figure 1: `compute`, `plot`, `describe`, then write the files. A
    reference SDE run at the finer step `reference_dt` (`reference_paths`, default 2 nets;
    None: skipped) separates the Euler error of the paper's step from finite-width
    effects. Returns the files written and the key numbers."""
    t0 = time.perf_counter()
    out = Path(out)
    sde_paths, reference_paths = sde_paths or nets, reference_paths or 2 * nets
    settings = dict(m=2, rho0=rho0, width=width, depth=depth, T=depth / width, gamma=gamma,
                    tau0=tau0, nk="n", nets=nets, sde_paths=sde_paths, sde_dt=sde_dt,
                    reference_dt=reference_dt, reference_paths=reference_paths,
                    root_seed=seed, device=device, method=method,
                    blocks={"standard": "A = Softmax(Y/sqrt(nk)), residual lam, gamma",
                            "pre-LN": "prenorm: RMS-normalised tokens into Q, K, V; residual",
                            "shaped": "A = I + Softmax(Y/(tau0 sqrt(n nk))) - 11^T/m"})
    command = command or common.python_command("figure1_paper", "figure1",
                                        dict(out=str(out), seed=seed, nets=nets))
    d = compute(seed=seed, nets=nets, sde_paths=sde_paths, width=width, depth=depth,
                gamma=gamma, tau0=tau0, rho0=rho0, sde_dt=sde_dt, reference_dt=reference_dt,
                reference_paths=reference_paths, device=device, method=method,
                progress=progress)
    fig = plot(d, width=width, depth=depth, sde_dt=sde_dt, reference_dt=reference_dt)
    body, paragraph = describe(d, nets=nets, width=width, depth=depth, gamma=gamma, tau0=tau0,
                               rho0=rho0, sde_dt=sde_dt, reference_dt=reference_dt,
                               method=method)
    numbers, arrays = _numbers_and_arrays(d)
    seconds = time.perf_counter() - t0
    files = common.save(fig, out, NAMES["fig1"], arrays,
                 common.caption("fig1", command, settings, body, seconds), settings)
    return FigureOutput("fig1", NAMES["fig1"], files, numbers, paragraph, seconds, settings)
