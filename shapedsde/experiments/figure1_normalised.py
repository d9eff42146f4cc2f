"""Figure 1 extended with normalisation (setting in docs/figures/fig1n_normalised.md): the
paper's comparison (standard, pre-LN, shaped attention) plus shaped attention with RMSNorm
before its branch (pre) and after the residual sum (post), `shapedsde.normalised`. Left:
mean correlation over depth of the five finite networks, with the SDE mean and 10-90%
band of the three shaped variants; right: the final-layer density of rho of the shaped
variants, networks against their SDEs.

The first three rows reuse the paper figure's seeds (`figure1_paper`), so at the same
sizes their finite networks and the shaped SDE are the same draws as in fig1."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..baselines import baseline_blocks, rank_collapse_summary
from ..blocks import AttentionBlock
from ..normalised import normalised
from ..seeds import child_seed
from ..verification.engine import distance, rho01
from . import _common as common
from ._common import KS_ALPHA, NAMES, PAPER, FigureOutput

#: Row labels, in the order the finite networks are run (their seeds are seed + index).
LABELS = ("standard", "pre-LN", "shaped", "shaped pre-RMS", "shaped post-RMS")
#: The rows that have an SDE.
SHAPED = ("shaped", "shaped pre-RMS", "shaped post-RMS")
COLORS = {"standard": "C3", "pre-LN": "C1", "shaped": "C0", "shaped pre-RMS": "C2",
          "shaped post-RMS": "C4"}


def make_blocks(gamma: float, tau0: float) -> dict[str, Any]:
    """The five blocks of the figure, by label."""
    base = baseline_blocks(gamma, tau0)
    shaped = AttentionBlock(gamma, tau0=tau0)
    return {"standard": base["standard"], "pre-LN": base["prenorm"], "shaped": shaped,
            "shaped pre-RMS": normalised(shaped, norm="rms", at="pre"),
            "shaped post-RMS": normalised(shaped, norm="rms", at="post")}


def sde_seed(seed: int, label: str) -> int:
    """The SDE seed of a shaped row: the paper figure's for "shaped"."""
    return (child_seed(seed, "fig1", "sde") if label == "shaped"
            else child_seed(seed, "fig1n", "sde", label))


def compute(*, seed: int, nets: int, sde_paths: int, width: int, depth: int, gamma: float,
            tau0: float, rho0: float, sde_dt: float, device: str, method: str,
            progress: bool) -> dict[str, Any]:
    """Finite networks of the five blocks and the SDEs of the three shaped ones (every
    step saved); per shaped row its SDE's mean and 10-90% band over depth, the KS
    distance of the final-layer rho and the largest gap of the mean curves."""
    V0, T = common.initial_cov(rho0), depth / width
    blocks = make_blocks(gamma, tau0)
    summary = rank_collapse_summary(blocks, V0, width=width, depth=depth, nets=nets,
                                    seed=child_seed(seed, "fig1", "finite"), device=device,
                                    method=method, progress=progress)
    sde = {}
    for label in SHAPED:
        res = common.run_sde(blocks[label], V0, T, paths=sde_paths, seed=sde_seed(seed, label),
                             dt=sde_dt, device=device, progress=progress, save_every=1)
        rho = rho01(res.trajectory.transpose(0, 1))  # (paths, saved times)
        rho = rho[np.isfinite(rho).all(1)]
        row = summary.row(label)
        s = dict(rho=rho, meta=res.meta, depth=res.times.numpy() * width, mean=rho.mean(0),
                 final=rho[:, -1])
        s["q10"], s["q90"] = np.quantile(rho, [0.1, 0.9], axis=0)
        s["k"] = distance(row.rho_final, s["final"], alpha=KS_ALPHA)
        idx = np.clip(np.rint(s["depth"]).astype(int), 0, depth)
        gap = np.abs(row.mean_rho[idx] - s["mean"])
        gap_se = np.sqrt(row.se_rho[idx] ** 2 + rho.std(0, ddof=1) ** 2 / len(rho))
        imax = int(np.argmax(gap / np.maximum(gap_se, 1e-12)))
        s["gap"] = {"gap": float(gap[imax]), "se": float(gap_se[imax]),
                    "layer": int(idx[imax])}
        sde[label] = s
    return dict(summary=summary, sde=sde)


def plot(d: dict[str, Any], *, width: int, depth: int, sde_dt: float) -> Any:
    """Left: mean rho over depth (five finite curves; SDE mean and band per shaped row);
    right: the final-layer density of the shaped rows, networks vs SDEs."""
    plt = common.pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 5.2))
    summary, sde = d["summary"], d["sde"]
    for r in summary.rows:
        ax0.plot(summary.depths, r.mean_rho, color=COLORS[r.label], lw=1.8,
                 label=rf"{r.label} (finite; {100 * r.collapsed:.0f}% with $\rho > 0.99$)")
    for label in SHAPED:
        s, r, c = sde[label], summary.row(label), COLORS[label]
        ax0.fill_between(s["depth"], s["q10"], s["q90"], color=c, alpha=0.12, lw=0)
        ax0.plot(summary.depths, r.q10, color=c, lw=0.8, ls=":")
        ax0.plot(summary.depths, r.q90, color=c, lw=0.8, ls=":")
        ax0.plot(s["depth"], s["mean"], color="k", ls="--", lw=1.0)
    ax0.plot([], [], color="k", ls="--", lw=1.0, label="SDE mean (each shaped row)")
    ax0.fill_between([], [], [], color="0.5", alpha=0.25, label="SDE 10-90% (row's colour)")
    ax0.plot([], [], color="0.3", lw=0.8, ls=":", label="finite 10-90% (row's colour)")
    ax0.set(xlabel=r"layer $\ell$", ylabel=r"mean correlation $\rho_\ell$", ylim=(-0.6, 1.05),
            title=f"mean correlation ($n = {width}$, $d = {depth}$)")
    ax0.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    ax0.grid(alpha=0.3)
    grid = np.linspace(-1, 1, 401)
    for label in SHAPED:
        fin, s, c = summary.row(label).rho_final, sde[label], COLORS[label]
        ax1.plot(grid, common.kde(fin, grid), color=c, lw=1.6,
                 label=f"{label}: network KDE ({len(fin)})")
        ax1.plot(grid, common.kde(s["final"], grid), color=c, ls="--", lw=1.4,
                 label=f"{label}: SDE KDE, KS $D = {s['k']['ks']:.3f}$, "
                       f"$p = {s['k']['p']:.2g}$")
    ax1.set(xlabel=rf"$\rho$ at layer $d = {depth}$ ($t = {depth / width:g}$)",
            ylabel="density", title=f"final-layer correlation, networks vs SDEs "
                                    f"($dt = {sde_dt:g}$)")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def describe(d: dict[str, Any], *, nets: int, width: int, depth: int, gamma: float,
             tau0: float, rho0: float, sde_dt: float, method: str) -> tuple[str, str]:
    """(caption body, README paragraph), worded from the numbers."""
    summary, sde = d["summary"], d["sde"]
    T = depth / width

    def row_txt(label: str) -> str:
        r, s = summary.row(label), sde[label]
        return (f"{label}: finite {r.final_mean:.3f} +- {r.final_se:.3f}, SDE "
                f"{s['mean'][-1]:.3f}; 10-90% finite [{r.q10[-1]:.2f}, {r.q90[-1]:.2f}], SDE "
                f"[{s['q10'][-1]:.2f}, {s['q90'][-1]:.2f}]; KS {common.fmt_ks(s['k'])}; "
                f"largest mean gap {s['gap']['gap']:.3f} at layer {s['gap']['layer']} "
                f"({s['gap']['gap'] / max(s['gap']['se'], 1e-12):.1f} combined SE); SDE "
                f"{s['meta']['n_exploded']} blown up, {s['meta']['n_nonfinite']} non-finite")

    std, pre = summary.row("standard"), summary.row("pre-LN")
    body = (
        f"Left: mean correlation rho^{{01}}_l over layers l = 0..{depth} of {nets} finite "
        f"networks (m = 2, rho0 = {rho0:g}, n = {width}, gamma = {gamma:.4f}, tau0 = "
        f"{tau0:g}) for standard attention with residual, pre-LN attention, shaped attention, "
        f"and shaped attention with RMSNorm before its branch (pre: X' = lam X + gam "
        f"Branch(RMS(X))) or after the residual sum (post: X' = RMS(lam X + gam Branch(X))), "
        f"`shapedsde.normalised`; with each shaped variant's covariance SDE (mean, black "
        f"dashed; 10-90% band in the row's colour, the networks' 10-90% dotted; Euler "
        f"step dt = {sde_dt:g}, every "
        f"{sde_dt * width:g} layers, {len(sde['shaped']['rho'])} paths each). Right: "
        f"network KDE (solid) and SDE KDE (dashed) of rho at layer d = {depth} "
        f"(t = {T:g}) for the three shaped variants.\n\n"
        f"Mean rho at layer {depth}: standard {std.final_mean:.4f} "
        f"({100 * std.collapsed:.1f}% of networks with rho > 0.99), pre-LN "
        f"{pre.final_mean:.4f} ({100 * pre.collapsed:.1f}%).\n\n"
        + "\n\n".join(f"- {row_txt(label)}." for label in SHAPED) + "\n\n"
        "The first three rows use the seeds of fig1 (paper Figure 1), the same draws at the "
        "same sizes. Pre-RMS normalises the branch's input only (the stream's diagonal is "
        "not modelled by its SDE, which is the slow correlation's, docs/normalisation.md); "
        "post-RMS keeps V a correlation matrix (tr V = m, no blow-up). Finite networks use "
        f"the exact-in-law V chain (method = {method!r}; see shapedsde.finite).")
    parts = []
    for label in SHAPED:
        r, s = summary.row(label), sde[label]
        parts.append(f"{label} {r.final_mean:.3f} (SDE {s['mean'][-1]:.3f}; final-layer KS "
                     f"{common.fmt_ks(s['k'])}, {common.agree(s['k'])})")
    paragraph = (
        f"The paper's Figure 1 comparison with shaped pre-RMSNorm and post-RMSNorm attention "
        f"added (m = 2, rho0 = {rho0:g}, n = {width}, d = {depth}, gamma = {gamma:.3f}, "
        f"tau0 = {tau0:g}, {nets} networks, {len(sde['shaped']['rho'])} SDE paths each, "
        f"dt = {sde_dt:g}). Mean rho at layer {depth}: standard {std.final_mean:.4f}, pre-LN "
        f"{pre.final_mean:.4f} ({100 * std.collapsed:.0f}% and {100 * pre.collapsed:.0f}% "
        "above 0.99); " + "; ".join(parts) + ". Normalising shaped attention, before its "
        "branch or after the residual sum, does not bring back rank collapse "
        f"({', '.join(f'{100 * summary.row(x).collapsed:.1f}%' for x in SHAPED)} of "
        "networks above 0.99 for shaped, pre-RMS, post-RMS).")
    return body, paragraph


def _numbers_and_arrays(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    summary, sde = d["summary"], d["sde"]
    numbers = {
        "final_mean_rho": {r.label: r.final_mean for r in summary.rows},
        "final_mean_rho_se": {r.label: r.final_se for r in summary.rows},
        "collapsed_fraction": {r.label: r.collapsed for r in summary.rows},
        "final_q10_q90": {r.label: [float(r.q10[-1]), float(r.q90[-1])] for r in summary.rows},
        "sde_final_mean_rho": {k: float(s["mean"][-1]) for k, s in sde.items()},
        "sde_final_q10_q90": {k: [float(s["q10"][-1]), float(s["q90"][-1])]
                              for k, s in sde.items()},
        "ks_final_rho": {k: s["k"] for k, s in sde.items()},
        "max_mean_gap": {k: s["gap"] for k, s in sde.items()},
        "sde_meta": {k: {key: s["meta"][key] for key in ("n_exploded", "n_nonfinite", "steps",
                                                         "dt")} for k, s in sde.items()},
    }
    arrays: dict[str, Any] = {"depths": summary.depths}
    for r in summary.rows:
        key = r.label.replace(" ", "_")
        arrays |= {f"mean_rho_{key}": r.mean_rho, f"se_rho_{key}": r.se_rho,
                   f"q10_{key}": r.q10, f"q90_{key}": r.q90}
    for label, s in sde.items():
        key = label.replace(" ", "_")
        arrays |= {f"sde_depths_{key}": s["depth"], f"sde_mean_{key}": s["mean"],
                   f"sde_q10_{key}": s["q10"], f"sde_q90_{key}": s["q90"],
                   f"sde_final_rho_{key}": s["final"],
                   f"final_rho_{key}": summary.row(label).rho_final}
    return numbers, arrays


def figure1_normalised(out: str | Path = "docs/figures", *, seed: int = 0,
                       nets: int = PAPER["samples"], sde_paths: int | None = None,
                       width: int = PAPER["width"], depth: int = PAPER["depth"],
                       gamma: float = PAPER["gamma"], tau0: float = PAPER["tau0"],
                       rho0: float = PAPER["rho0"], sde_dt: float = PAPER["sde_dt"],
                       device: str = "cpu", method: str = "auto", progress: bool = False,
                       command: str | None = None) -> FigureOutput:
    """Figure 1 with shaped pre- and post-RMSNorm attention: `compute`, `plot`,
    `describe`, then write the files. Returns the files written and the key numbers."""
    t0 = time.perf_counter()
    out = Path(out)
    sde_paths = sde_paths or nets
    settings = dict(m=2, rho0=rho0, width=width, depth=depth, T=depth / width, gamma=gamma,
                    tau0=tau0, nk="n", nets=nets, sde_paths=sde_paths, sde_dt=sde_dt,
                    root_seed=seed, device=device, method=method,
                    blocks={"standard": "A = Softmax(Y/sqrt(nk)), residual lam, gamma",
                            "pre-LN": "prenorm: RMS-normalised tokens into Q, K, V; residual",
                            "shaped": "A = I + Softmax(Y/(tau0 sqrt(n nk))) - 11^T/m",
                            "shaped pre-RMS": "normalised(shaped, norm='rms', at='pre')",
                            "shaped post-RMS": "normalised(shaped, norm='rms', at='post')"})
    command = command or common.python_command("figure1_normalised", "figure1_normalised",
                                               dict(out=str(out), seed=seed, nets=nets))
    d = compute(seed=seed, nets=nets, sde_paths=sde_paths, width=width, depth=depth,
                gamma=gamma, tau0=tau0, rho0=rho0, sde_dt=sde_dt, device=device,
                method=method, progress=progress)
    fig = plot(d, width=width, depth=depth, sde_dt=sde_dt)
    body, paragraph = describe(d, nets=nets, width=width, depth=depth, gamma=gamma, tau0=tau0,
                               rho0=rho0, sde_dt=sde_dt, method=method)
    numbers, arrays = _numbers_and_arrays(d)
    seconds = time.perf_counter() - t0
    files = common.save(fig, out, NAMES["fig1n"], arrays,
                        common.caption("fig1n", command, settings, body, seconds), settings)
    return FigureOutput("fig1n", NAMES["fig1n"], files, numbers, paragraph, seconds, settings)
