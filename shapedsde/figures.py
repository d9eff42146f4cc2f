"""Figures: the paper's Figure 1, SDE-vs-network densities, and rank collapse.

`make_figures(out, quick=..., seed=...)` (CLI: `shapedsde figures`) writes four figures
to `out` (default docs/figures/), each as PNG and PDF with its data (`.npz`) and a
caption (`.md`: the command that made it, the settings, the key numbers), plus a
README.md that embeds them. The figure functions can be called one at a time.

1. `figure1`: the paper's Figure 1 setting (DESIGN.md): m = 2, rho0 = 0.2, n = 200,
   d = 150, gamma = 1/sqrt(8), tau0 = 1, SDE step 0.01, 2^12 samples. Left: mean
   correlation over depth for standard, pre-LN and shaped attention (finite networks),
   with the SDE mean and 10-90% band of shaped attention; right: density of the
   final-layer correlation, shaped networks vs SDE.
2. `figure2`: final-layer rho density of shaped attention at several widths n with
   d / n fixed, against the SDE; KS distance vs n, with a wrong-SDE control.
3. `figure3`: the same for the shaped Transformer block and 4-head attention.
4. `figure4`: rank collapse of the unshaped baselines and ablations vs shaped attention.

Every random stream comes from one root seed through `numpy.random.SeedSequence`
(`seed_for(root, *labels)`), so a figure's numbers depend only on its settings and
the root seed. Finite networks use `shapedsde.finite.simulate`; where a block has the
exact-in-law V chain (`method="auto"`: shaped single-head attention and the baselines)
it is used, since it costs O(m^2) per layer instead of O(n^2); the Transformer block
and multi-head attention draw every weight (`method="full"`).
"""

from __future__ import annotations

import json
import math
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _validation as val
from .baselines import baseline_blocks, pairwise_rho, rank_collapse_summary
from .blocks import (
    AttentionBlock,
    Block,
    LinearBlock,
    MlpBlock,
    SumOfCoefficients,
    TransformerBlock,
)

PAPER_GAMMA = 1 / math.sqrt(8)
PAPER = dict(m=2, rho0=0.2, width=200, depth=150, gamma=PAPER_GAMMA, tau0=1.0, sde_dt=0.01,
             samples=2**12)
FIGURES = ("fig1", "fig2", "fig3", "fig4")
NAMES = {"fig1": "fig1_paper_figure1", "fig2": "fig2_density_vs_width",
         "fig3": "fig3_transformer_multihead", "fig4": "fig4_rank_collapse"}
TITLES = {"fig1": "Paper Figure 1: rank collapse and the SDE density (n = 200, d = 150)",
          "fig2": "Shaped attention: final-layer correlation density vs width, against the SDE",
          "fig3": "Shaped Transformer block and 4-head attention vs their SDEs",
          "fig4": "Rank collapse: unshaped baselines and ablations vs shaped attention"}

#: Sizes of `make_figures` runs: "full" is the paper's 2^12 samples where it matters.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "fig1": dict(nets=4096),
        "fig2": dict(widths=(32, 64, 128, 256), nets=4096, sde_paths=4096),
        "fig3": dict(transformer_widths=(16, 32, 64, 128), transformer_nets=2048,
                     multihead_widths=(16, 32, 64, 128), multihead_nets=2048, sde_paths=4096),
        "fig4": dict(nets=4096),
    },
    "quick": {
        "fig1": dict(nets=1024),
        "fig2": dict(widths=(16, 32, 64, 128), nets=1024, sde_paths=2048),
        "fig3": dict(transformer_widths=(16, 32), transformer_nets=384,
                     multihead_widths=(16, 32), multihead_nets=256, sde_paths=2048),
        "fig4": dict(nets=1024),
    },
}

KS_ALPHA = 0.05
#: SDE step of the density figures 2-3: at gamma = 0.8, tau0 = 0.5, T = 0.3 the solver's
#: default dt = 0.005 is KS ~0.018 from a converged solution (16384 paths), dt = 0.00125
#: is within noise (KS 0.007, p = 0.78).
SDE_DT = 0.00125


@dataclass
class FigureOutput:
    """What one figure function wrote: files, key numbers, README paragraph, runtime."""

    key: str
    name: str
    files: list[Path]
    numbers: dict[str, Any]
    paragraph: str
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------
# Seeds, statistics, small helpers


def seed_for(root: int, *labels: str) -> int:
    """A 63-bit seed for the stream named by `labels`, derived from the root seed with
    numpy's SeedSequence (spawn key = CRC32 of each label)."""
    root = _check_seed(root)
    key = tuple(zlib.crc32(str(lab).encode()) for lab in labels)
    a, b = np.random.SeedSequence(root, spawn_key=key).generate_state(2, dtype=np.uint32)
    return int(((int(a) << 32) | int(b)) & (2**63 - 1))


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63); got {seed!r}")
    return int(seed)


def ks(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Two-sample KS statistic and p-value, and the 5% critical value for these sizes."""
    from scipy.stats import ks_2samp

    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    res = ks_2samp(x, y)
    return {"D": float(res.statistic), "p": float(res.pvalue),
            "D_crit": ks_critical(len(x), len(y)), "n_x": int(len(x)), "n_y": int(len(y))}


def ks_critical(n1: int, n2: int, alpha: float = KS_ALPHA) -> float:
    """Asymptotic two-sample KS critical value c(alpha) sqrt((n1 + n2) / (n1 n2))."""
    c = math.sqrt(-0.5 * math.log(alpha / 2))
    return c * math.sqrt((n1 + n2) / (n1 * n2))


def initial_cov(rho0: float, m: int = 2) -> np.ndarray:
    """V0 with unit diagonal and every off-diagonal entry rho0."""
    V0 = np.full((m, m), float(rho0))
    np.fill_diagonal(V0, 1.0)
    val.check_covariance(V0, name="V0 (from rho0)")
    return V0


def _rho(V: torch.Tensor | np.ndarray) -> np.ndarray:
    """rho^{01} per sample (m = 2) or the mean pairwise rho; NaN where V is not finite."""
    return pairwise_rho(V).mean(-1)


def _sde(blk: Any, V0: np.ndarray, T: float, *, paths: int, seed: int, dt: float | None,
         device: str, progress: bool, save_every: int | None = None):
    from .sde import default_steps, solve

    steps = default_steps(T) if dt is None else max(1, int(round(T / dt)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # non-finite paths counted in meta
        return solve(blk, V0, T, paths=paths, seed=seed, steps=steps, save_every=save_every,
                     device=device, progress=progress)


def _simulate(blk: Block, V0: np.ndarray, **kw):
    from .finite import simulate

    return simulate(blk, V0, **kw)


def _cli_command(out: Path, *, quick: bool, seed: int, device: str, only: Sequence[str],
                 method: str) -> str:
    parts = ["shapedsde figures"]
    if quick:
        parts.append("--quick")
    parts += [f"--out {out}", f"--seed {seed}", f"--device {device}"]
    if method != "auto":
        parts.append(f"--method {method}")
    if tuple(only) != FIGURES:
        parts.append("--only " + ",".join(k.removeprefix("fig") for k in only))
    return " ".join(parts)


def _python_command(func: str, kwargs: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"python -c \"from shapedsde.figures import {func}; {func}({args})\""


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _kde(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE of a correlation sample on [-1, 1], reflected at +-1 (no mass leaks
    past the boundary, so a density peaked at rho = 1 is not drawn as falling to zero);
    Scott's bandwidth of the original sample."""
    from scipy.stats import gaussian_kde

    x = x[np.isfinite(x)]
    if len(x) < 3 or np.ptp(x) == 0:
        return np.zeros_like(grid)
    bw = gaussian_kde(x).factor * x.std(ddof=1)
    aug = np.concatenate([x, 2.0 - x, -2.0 - x])
    return 3.0 * gaussian_kde(aug, bw_method=bw / aug.std(ddof=1))(grid)


def _save(fig, out: Path, name: str, arrays: dict[str, Any], caption: str,
          settings: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    png, pdf = out / f"{name}.png", out / f"{name}.pdf"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight")
    _plt().close(fig)
    data = {k: np.asarray(v) for k, v in arrays.items()}
    data["settings_json"] = np.array(json.dumps(settings, default=str))
    npz = out / f"{name}.npz"
    np.savez_compressed(npz, **data)
    md = out / f"{name}.md"
    md.write_text(caption)
    return [png, pdf, npz, md]


def _caption(key: str, command: str, settings: dict[str, Any], body: str,
             seconds: float) -> str:
    name = NAMES[key]
    return (f"# {TITLES[key]}\n\n"
            f"![{name}]({name}.png)\n\n"
            f"Made by:\n\n    {command}\n\n"
            f"{body.strip()}\n\n"
            f"Settings:\n\n```json\n{json.dumps(settings, indent=2, default=str)}\n```\n\n"
            f"Data: `{name}.npz` (arrays named as in the plot; `settings_json` holds the "
            f"settings). Runtime {seconds:.0f} s.\n")


def _fmt_ks(k: dict[str, float]) -> str:
    return f"D = {k['D']:.3f} (p = {k['p']:.2g}; 5% critical value {k['D_crit']:.3f})"


def _agree(k: dict[str, float]) -> str:
    return ("consistent with sampling noise" if k["p"] >= KS_ALPHA
            else "a difference beyond sampling noise")


# ----------------------------------------------------------------------------
# Figure 1


def figure1(out: str | Path = "docs/figures", *, seed: int = 0, nets: int = PAPER["samples"],
            sde_paths: int | None = None, width: int = PAPER["width"],
            depth: int = PAPER["depth"], gamma: float = PAPER["gamma"],
            tau0: float = PAPER["tau0"], rho0: float = PAPER["rho0"],
            sde_dt: float = PAPER["sde_dt"], reference_dt: float | None = SDE_DT,
            reference_paths: int | None = None, device: str = "cpu", method: str = "auto",
            progress: bool = False, command: str | None = None) -> FigureOutput:
    """The paper's Figure 1 (setting in DESIGN.md): mean rho over depth (standard, pre-LN,
    shaped; finite networks, SDE mean and 10-90% band) and the final-layer rho density of
    shaped networks vs the SDE. A reference SDE run at the finer step `reference_dt`
    (`reference_paths`, default 2 nets; None: skipped) separates the Euler error of the
    paper's step from finite-width effects. Returns the files written and the key numbers."""
    t0 = time.perf_counter()
    out = Path(out)
    settings = dict(m=2, rho0=rho0, width=width, depth=depth, T=depth / width, gamma=gamma,
                    tau0=tau0, nk="n", nets=nets, sde_paths=sde_paths or nets, sde_dt=sde_dt,
                    reference_dt=reference_dt, reference_paths=reference_paths or 2 * nets,
                    root_seed=seed, device=device, method=method,
                    blocks={"standard": "A = Softmax(Y/sqrt(nk)), residual lam, gamma",
                            "pre-LN": "prenorm: RMS-normalised tokens into Q, K, V; residual",
                            "shaped": "A = I + Softmax(Y/(tau0 sqrt(n nk))) - 11^T/m"})
    command = command or _python_command("figure1", dict(out=str(out), seed=seed, nets=nets))
    V0 = initial_cov(rho0)
    T = depth / width
    blocks = {"standard": baseline_blocks(gamma, tau0)["standard"],
              "pre-LN": baseline_blocks(gamma, tau0)["prenorm"],
              "shaped": AttentionBlock(gamma, tau0=tau0)}
    summary = rank_collapse_summary(blocks, V0, width=width, depth=depth, nets=nets,
                                    seed=seed_for(seed, "fig1", "finite"), device=device,
                                    method=method, progress=progress)
    res = _sde(blocks["shaped"], V0, T, paths=sde_paths or nets,
               seed=seed_for(seed, "fig1", "sde"), dt=sde_dt, device=device,
               progress=progress, save_every=1)
    sde_rho = _rho(res.trajectory.transpose(0, 1))  # (paths, k)
    sde_ok = np.isfinite(sde_rho).all(1)
    sde_rho = sde_rho[sde_ok]
    sde_depth = res.times.numpy() * width
    sde_mean = sde_rho.mean(0)
    sde_q10, sde_q90 = np.quantile(sde_rho, [0.1, 0.9], axis=0)
    shaped = summary.row("shaped")
    fin_final, sde_final = shaped.rho_final, sde_rho[:, -1]
    k = ks(fin_final, sde_final)
    ref_final, k_ref = None, None
    if reference_dt is not None:
        ref = _sde(blocks["shaped"], V0, T, paths=reference_paths or 2 * nets,
                   seed=seed_for(seed, "fig1", "sde-reference"), dt=reference_dt, device=device,
                   progress=progress)
        ref_final = _rho(ref.V)
        k_ref = ks(fin_final, ref_final)
    # mean curves at the depths the SDE is saved at
    idx = np.clip(np.rint(sde_depth).astype(int), 0, depth)
    gap = np.abs(shaped.mean_rho[idx] - sde_mean)
    gap_se = np.sqrt(shaped.se_rho[idx] ** 2 + sde_rho.std(0, ddof=1) ** 2 / len(sde_rho))
    imax = int(np.argmax(gap / np.maximum(gap_se, 1e-12)))

    plt = _plt()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"standard": "C3", "pre-LN": "C1", "shaped": "C0"}
    d = summary.depths
    for r in summary.rows:
        ax0.plot(d, r.mean_rho, color=colors[r.label], lw=1.8,
                 label=f"{r.label} (finite, {100 * r.collapsed:.0f}% with rho > 0.99 at d)")
    ax0.plot(d, shaped.q10, color="C0", lw=0.8, ls=":")
    ax0.plot(d, shaped.q90, color="C0", lw=0.8, ls=":", label="shaped finite 10-90%")
    ax0.fill_between(sde_depth, sde_q10, sde_q90, color="0.5", alpha=0.25,
                     label="shaped SDE 10-90%")
    ax0.plot(sde_depth, sde_mean, color="k", ls="--", lw=1.4, label="shaped SDE mean")
    ax0.set(xlabel="layer l", ylabel="mean correlation rho_l", ylim=(-0.6, 1.05),
            title=f"mean correlation (n = {width}, d = {depth})")
    ax0.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
               frameon=False)
    ax0.grid(alpha=0.3)
    grid = np.linspace(-1, 1, 401)
    ax1.hist(fin_final, bins=50, range=(-1, 1), density=True, color="C0", alpha=0.35,
             label=f"shaped network, n = {width} ({len(fin_final)})")
    ax1.plot(grid, _kde(fin_final, grid), color="C0", lw=1.6, label="network KDE")
    ax1.plot(grid, _kde(sde_final, grid), color="k", ls="--", lw=1.6,
             label=f"SDE KDE, dt = {sde_dt:g} ({len(sde_final)} paths)")
    if ref_final is not None:
        ax1.plot(grid, _kde(ref_final, grid), color="0.45", ls=":", lw=1.6,
                 label=f"SDE KDE, dt = {reference_dt:g} ({np.isfinite(ref_final).sum()} paths)")
    ax1.set(xlabel=f"rho at layer d = {depth} (t = {T:g})", ylabel="density",
            title=f"final-layer correlation: KS D = {k['D']:.3f}, p = {k['p']:.2g}"
            + ("" if k_ref is None else f"\n(vs dt = {reference_dt:g}: D = {k_ref['D']:.3f}, "
               f"p = {k_ref['p']:.2g})"))
    ax1.legend(fontsize=8, loc="upper left")
    ax1.grid(alpha=0.3)
    fig.tight_layout()

    numbers = {
        "final_mean_rho": {r.label: r.final_mean for r in summary.rows},
        "final_mean_rho_se": {r.label: r.final_se for r in summary.rows},
        "collapsed_fraction": {r.label: r.collapsed for r in summary.rows},
        "sde_final_mean_rho": float(sde_mean[-1]),
        "ks_final_rho": k,
        "ks_final_rho_reference": k_ref,
        "max_mean_gap": {"gap": float(gap[imax]), "se": float(gap_se[imax]),
                         "layer": int(idx[imax])},
        "sde_meta": {key: res.meta[key] for key in ("n_exploded", "n_nonfinite",
                                                     "steps", "dt")},
    }
    seconds = time.perf_counter() - t0
    std, pre = summary.row("standard"), summary.row("pre-LN")
    body = (
        f"Left: mean correlation rho^{{01}}_l over layers l = 0..{depth} of {nets} finite "
        f"networks (m = 2, rho0 = {rho0:g}, n = {width}, gamma = 1/sqrt(8) = {gamma:.4f}, "
        f"tau0 = {tau0:g}) for standard attention with residual, pre-LN attention and shaped "
        f"attention, with the covariance SDE of shaped attention (mean, dashed; 10-90% band, "
        f"grey; Euler step dt = {sde_dt:g}, i.e. every {sde_dt * width:g} layers, "
        f"{len(sde_rho)} paths). Right: histogram and KDE of rho at layer d = {depth} for "
        f"the shaped networks vs the SDE at t = d/n = {T:g}.\n\n"
        f"Key numbers: mean rho at layer {depth}: standard {std.final_mean:.4f} "
        f"({100 * std.collapsed:.1f}% of networks with rho > 0.99), pre-LN "
        f"{pre.final_mean:.4f} ({100 * pre.collapsed:.1f}%), shaped {shaped.final_mean:.3f} "
        f"+- {shaped.final_se:.3f} ({100 * shaped.collapsed:.1f}%); SDE {sde_mean[-1]:.3f}. "
        f"Final-layer rho, shaped network vs SDE: KS {_fmt_ks(k)}"
        + ("" if k_ref is None else f"; vs the reference SDE at dt = {reference_dt:g} "
           f"({k_ref['n_y']} paths): KS {_fmt_ks(k_ref)}")
        + ". Largest gap between the "
        f"finite and SDE mean curves relative to its standard error: {gap[imax]:.3f} at layer "
        f"{idx[imax]} "
        f"({gap[imax] / max(gap_se[imax], 1e-12):.1f} combined SE). SDE: "
        f"{res.meta['n_exploded']} paths blew up, {res.meta['n_nonfinite']} "
        f"non-finite.\n\n"
        "Assumed (DESIGN.md; the figure's settings come from secondary sources, not checked "
        "against the paper's text): a single attention sub-layer per layer (no MLP), with "
        "lam^2 + gamma^2 = 1; nk = n; V0 with unit diagonal; standard attention is "
        "Softmax(Y/sqrt(nk)) at standard initialisation; pre-LN normalises each token to "
        "unit mean square (no gain, bias or mean subtraction) before Q, K and V, the residual "
        "stream is not normalised. The paper's own Figure 1 may use its full Transformer "
        "block (attention + MLP); that block's density is in fig3. Finite networks use the "
        f"exact-in-law V chain (method = {method!r}; see shapedsde.finite).")
    extra = {} if ref_final is None else {"reference_sde_final_rho": ref_final}
    arrays = dict(**extra, depths=d, sde_depths=sde_depth, sde_mean=sde_mean, sde_q10=sde_q10,
                  sde_q90=sde_q90, sde_final_rho=sde_final, shaped_final_rho=fin_final,
                  **{f"mean_rho_{r.label}": r.mean_rho for r in summary.rows},
                  **{f"se_rho_{r.label}": r.se_rho for r in summary.rows},
                  shaped_q10=shaped.q10, shaped_q90=shaped.q90)
    files = _save(fig, out, NAMES["fig1"], arrays,
                  _caption("fig1", command, settings, body, seconds), settings)
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
        f"[{sde_q10[-1]:.2f}, {sde_q90[-1]:.2f}]). Final-layer density, shaped networks vs "
        f"SDE (dt = {sde_dt:g}): KS {_fmt_ks(k)}, {_agree(k)}"
        + ("." if k_ref is None else f"; against a finer-step SDE (dt = {reference_dt:g}, "
           f"{k_ref['n_y']} paths): KS {_fmt_ks(k_ref)}, {_agree(k_ref)}."))
    return FigureOutput("fig1", NAMES["fig1"], files, numbers, paragraph, seconds, settings)


# ----------------------------------------------------------------------------
# Figures 2 and 3: density vs width


def _density_row(axes, label: str, blk_of_n, sde_blk: Any, control: Any, control_label: str,
                 V0: np.ndarray, T: float, widths: Sequence[int], nets: int, sde_paths: int,
                 seed: int, key: str, device: str, method: str, dtype: torch.dtype,
                 progress: bool, color: str, sde_dt: float | None) -> dict[str, Any]:
    """Finite networks at each width vs the SDE (and the control SDE): plots one row."""
    res = _sde(sde_blk, V0, T, paths=sde_paths, seed=seed_for(seed, key, label, "sde"),
               dt=sde_dt, device=device, progress=progress)
    ctrl = _sde(control, V0, T, paths=sde_paths, seed=seed_for(seed, key, label, "control"),
                dt=sde_dt, device=device, progress=progress)
    sde_rho, ctrl_rho = _rho(res.V), _rho(ctrl.V)
    sde_v00 = res.V[:, 0, 0].cpu().numpy()
    grid = np.linspace(-1, 1, 401)
    sde_kde = _kde(sde_rho, grid)
    rows: dict[str, Any] = {"widths": [], "depths": [], "ks": [], "ks_control": [],
                            "ks_V00": [], "finite_rho": {}, "nonfinite": [],
                            "sde_meta": {k: res.meta[k] for k in
                                         ("n_exploded", "n_nonfinite", "steps", "dt")}}
    for ax, n in zip(axes[:-1], widths, strict=True):
        blk = blk_of_n(n)
        V = _simulate(blk, V0, width=n, T=T, nets=nets, seed=seed_for(seed, key, label, str(n)),
                      device=device, dtype=dtype, method=method, progress=progress)
        rho = _rho(V)
        v00 = V[:, 0, 0].double().cpu().numpy()
        rows["widths"].append(n)
        rows["depths"].append(int(round(T * n)))
        rows["ks"].append(ks(rho, sde_rho))
        rows["ks_control"].append(ks(rho, ctrl_rho))
        rows["ks_V00"].append(ks(np.log(v00), np.log(sde_v00)))
        rows["finite_rho"][n] = rho
        rows["nonfinite"].append(int((~np.isfinite(rho)).sum()))
        ax.hist(rho[np.isfinite(rho)], bins=40, range=(-1, 1), density=True, color=color,
                alpha=0.4, label=f"network ({nets})")
        ax.plot(grid, sde_kde, color="k", ls="--", lw=1.4, label="SDE")
        D = rows["ks"][-1]["D"]
        ax.set(title=f"n = {n}, d = {int(round(T * n))}: KS D = {D:.3f}",
               xlabel="rho at depth d", xlim=(-1, 1))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{label}\ndensity", fontsize=9)
    axes[0].legend(fontsize=7.5, loc="upper left")
    ax = axes[-1]
    D = [k["D"] for k in rows["ks"]]
    Dc = [k["D"] for k in rows["ks_control"]]
    ax.plot(widths, D, "o-", color=color, label="vs its SDE")
    ax.plot(widths, Dc, "s:", color="0.4", label=f"vs {control_label} (control)")
    ax.axhline(rows["ks"][0]["D_crit"], color="k", lw=0.8, ls="--", label="5% critical value")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(widths), [str(n) for n in widths])
    ax.minorticks_off()
    ax.set_ylim(0, 1.45 * max(max(D), max(Dc), rows["ks"][0]["D_crit"]))
    ax.set(xlabel="width n (d/n fixed)", ylabel="KS distance, rho", title="KS distance vs n")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    rows["sde_rho"] = sde_rho
    rows["control_rho"] = ctrl_rho
    return rows


def _ks_table(label: str, rows: dict[str, Any], control_label: str) -> str:
    lines = [f"{label}:", "",
             f"| n | d | KS D (rho) | p | KS D (log V00) | p | KS D vs {control_label} | p |",
             "|---|---|---|---|---|---|---|---|"]
    for n, d, k, kv, kc in zip(rows["widths"], rows["depths"], rows["ks"], rows["ks_V00"],
                               rows["ks_control"], strict=True):
        lines.append(f"| {n} | {d} | {k['D']:.3f} | {k['p']:.2g} | {kv['D']:.3f} | "
                     f"{kv['p']:.2g} | {kc['D']:.3f} | {kc['p']:.2g} |")
    crit = rows["ks"][0]["D_crit"]
    lines.append("")
    lines.append(f"5% two-sample critical value: {crit:.3f}. SDE: "
                 f"{rows['sde_meta']['n_exploded']} paths blew up, "
                 f"{rows['sde_meta']['n_nonfinite']} non-finite; finite networks with "
                 f"non-finite V: {rows['nonfinite']}.")
    return "\n".join(lines)


def _ks_numbers(rows: dict[str, Any]) -> dict[str, Any]:
    return {"widths": rows["widths"], "depths": rows["depths"], "ks_rho": rows["ks"],
            "ks_logV00": rows["ks_V00"], "ks_control_rho": rows["ks_control"],
            "sde_meta": rows["sde_meta"], "nonfinite": rows["nonfinite"]}


def _ks_arrays(prefix: str, rows: dict[str, Any]) -> dict[str, Any]:
    arr = {f"{prefix}widths": np.array(rows["widths"]),
           f"{prefix}ks_rho": np.array([k["D"] for k in rows["ks"]]),
           f"{prefix}ks_rho_p": np.array([k["p"] for k in rows["ks"]]),
           f"{prefix}ks_logV00": np.array([k["D"] for k in rows["ks_V00"]]),
           f"{prefix}ks_control_rho": np.array([k["D"] for k in rows["ks_control"]]),
           f"{prefix}sde_rho": rows["sde_rho"], f"{prefix}control_rho": rows["control_rho"]}
    for n, rho in rows["finite_rho"].items():
        arr[f"{prefix}finite_rho_n{n}"] = rho
    return arr


def _v00_sentence(rows: dict[str, Any]) -> str:
    kv = rows["ks_V00"]
    return (f"log V^00: KS D {kv[0]['D']:.3f} -> {kv[-1]['D']:.3f} (p = {kv[-1]['p']:.2g} at "
            f"n = {rows['widths'][-1]})")


def _trend(rows: dict[str, Any]) -> str:
    D = [k["D"] for k in rows["ks"]]
    ws = rows["widths"]
    crit = rows["ks"][0]["D_crit"]
    below = [n for n, k in zip(ws, rows["ks"], strict=True) if k["p"] >= KS_ALPHA]
    txt = f"KS D {D[0]:.3f} at n = {ws[0]} -> {D[-1]:.3f} at n = {ws[-1]}"
    if len(below) == len(ws):
        txt += f" (p >= {KS_ALPHA:g} at every width; 5% critical value {crit:.3f})"
    elif below:
        txt += (f" (p >= {KS_ALPHA:g} at n = {', '.join(map(str, below))}; 5% critical "
                f"value {crit:.3f})")
    else:
        txt += f" (p < {KS_ALPHA:g} at every width; 5% critical value {crit:.3f})"
    return txt


#: Settings where the law of rho at T sees the attention terms (the no-attention SDE is
#: KS ~0.1 away with 4096 paths); the paper's setting (gamma = 1/sqrt(8), tau0 = 1,
#: T = 0.75) is ~0.02 away, below the 5% critical value of 4096-vs-4096 samples.
POWERED = dict(gamma=0.8, tau0=0.5, T=0.3)


def _power_sentence(rows: dict[str, Any], control: str) -> str:
    k, kc = rows["ks"][-1], rows["ks_control"][-1]
    n = rows["widths"][-1]
    txt = f"vs {control} KS D = {kc['D']:.3f} (p = {kc['p']:.2g}) at n = {n}"
    if kc["p"] < KS_ALPHA and kc["D"] > k["D"]:
        return txt + ": the test has power against the wrong SDE"
    return txt + ": no power (the wrong SDE fits about as well)"


def figure2(out: str | Path = "docs/figures", *, seed: int = 0,
            widths: Sequence[int] = (32, 64, 128, 256), nets: int = 4096,
            sde_paths: int = 4096, cases: Sequence[dict[str, float]] | None = None,
            rho0: float = PAPER["rho0"], sde_dt: float = SDE_DT, device: str = "cpu",
            method: str = "auto", progress: bool = False,
            command: str | None = None) -> FigureOutput:
    """Final-layer rho density of shaped attention at several widths (d = T n) vs the SDE,
    with KS distances vs n and a wrong-SDE control (the linear block: no attention).

    cases: one row each, dicts with gamma, tau0, T; default the paper's setting
    (gamma = 1/sqrt(8), tau0 = 1, T = d/n = 0.75) and `POWERED` (gamma = 0.8,
    tau0 = 0.5, T = 0.3), where the law of rho sees the attention terms.
    """
    t0 = time.perf_counter()
    out = Path(out)
    widths = [val.check_positive_int("width", n) for n in widths]
    if cases is None:
        cases = (dict(gamma=PAPER["gamma"], tau0=PAPER["tau0"],
                      T=PAPER["depth"] / PAPER["width"]), POWERED)
    cases = [dict(c) for c in cases]
    settings = dict(m=2, rho0=rho0, widths=widths, cases=cases, nk="n", nets=nets,
                    sde_paths=sde_paths, sde_dt=sde_dt, root_seed=seed,
                    device=device, method=method,
                    control="linear block SDE (every attention term removed)")
    command = command or _python_command("figure2", dict(out=str(out), seed=seed,
                                                         widths=tuple(widths), nets=nets))
    V0 = initial_cov(rho0)
    plt = _plt()
    ncol = len(widths) + 1
    fig, axes = plt.subplots(len(cases), ncol, figsize=(3.1 * ncol, 3.3 * len(cases)),
                             squeeze=False)
    all_rows, tables, arrays, para = [], [], {}, []
    for i, c in enumerate(cases):
        blk = AttentionBlock(c["gamma"], tau0=c["tau0"])
        label = f"gamma={c['gamma']:.3g}, tau0={c['tau0']:g}, T={c['T']:g}"
        rows = _density_row(axes[i], label, lambda n, blk=blk: blk, blk, LinearBlock(c["gamma"]),
                            "no-attention SDE", V0, c["T"], widths, nets, sde_paths, seed, "fig2",
                            device, method, torch.float64, progress, f"C{i}", sde_dt)
        all_rows.append(rows)
        tables.append(_ks_table(f"shaped attention, {label}", rows, "no-attention SDE"))
        arrays.update(_ks_arrays(f"case{i}_", rows))
        para.append(f"at {label}: {_trend(rows)}; {_power_sentence(rows, 'the no-attention SDE')}"
                    f"; {_v00_sentence(rows)}")
    fig.tight_layout()
    seconds = time.perf_counter() - t0
    body = (f"Density of rho^{{01}} at depth d = T n of {nets} finite shaped-attention networks "
            f"(m = 2, rho0 = {rho0:g}, nk = n) at widths n = {', '.join(map(str, widths))}, "
            f"against {sde_paths} paths of the SDE at t = T (Euler step {sde_dt:g}), one row per "
            "setting: the paper's Figure 1 setting, and a setting where the attention terms "
            "move the law of rho. Last panel of a row: KS distance vs n, and the same networks "
            "against a deliberately wrong SDE (the linear block: every attention term removed), "
            "a negative control of the test's power. Finite networks: exact-in-law V chain "
            f"(method = {method!r}).\n\n" + "\n\n".join(tables))
    files = _save(fig, out, NAMES["fig2"], arrays,
                  _caption("fig2", command, settings, body, seconds), settings)
    paragraph = (f"Final-layer correlation of shaped attention at n = "
                 f"{', '.join(map(str, widths))} with d/n fixed, against the SDE ({nets} "
                 f"networks, {sde_paths} SDE paths per width), " + "; ".join(para) + ".")
    numbers = {f"case{i}": {"setting": c, **_ks_numbers(r)}
               for i, (c, r) in enumerate(zip(cases, all_rows, strict=True))}
    return FigureOutput("fig2", NAMES["fig2"], files, numbers, paragraph, seconds, settings)


def figure3(out: str | Path = "docs/figures", *, seed: int = 0,
            transformer_widths: Sequence[int] = (16, 32, 64, 128), transformer_nets: int = 2048,
            multihead_widths: Sequence[int] = (16, 32, 64), multihead_nets: int = 1024,
            heads: int = 4, T: float = POWERED["T"], sde_paths: int = 4096,
            gamma: float = POWERED["gamma"], tau0: float = POWERED["tau0"],
            rho0: float = PAPER["rho0"], c_plus: float = 0.0, c_minus: float = -1.0,
            sde_dt: float = SDE_DT, dtype: torch.dtype = torch.float32, device: str = "cpu",
            progress: bool = False, command: str | None = None) -> FigureOutput:
    """The density comparison of figure 2 for the shaped Transformer block (attention then
    MLP; d = T n blocks) and for `heads`-head shaped attention (nk = n / heads per head).
    Finite networks draw every weight (method "full", in `dtype`)."""
    t0 = time.perf_counter()
    out = Path(out)
    tw = [val.check_positive_int("width", n) for n in transformer_widths]
    mw = [val.check_positive_int("width", n) for n in multihead_widths]
    heads = val.check_positive_int("heads", heads)
    bad = [n for n in mw if n % heads]
    if bad:
        raise ValueError(f"multi-head widths must be multiples of heads = {heads}; got {bad}")
    settings = dict(m=2, rho0=rho0, T=T, gamma=gamma, tau0=tau0, c_plus=c_plus,
                    c_minus=c_minus, transformer_widths=tw, transformer_nets=transformer_nets,
                    heads=heads, multihead_nk="n / heads", multihead_widths=mw,
                    multihead_nets=multihead_nets, sde_paths=sde_paths,
                    sde_dt=sde_dt, finite_method="full",
                    finite_dtype=str(dtype).removeprefix("torch."), root_seed=seed,
                    device=device)
    command = command or _python_command("figure3", dict(out=str(out), seed=seed))
    V0 = initial_cov(rho0)
    plt = _plt()
    ncol = max(len(tw), len(mw)) + 1
    fig, axes = plt.subplots(2, ncol, figsize=(3.1 * ncol, 6.6), squeeze=False)
    tblk = TransformerBlock(gamma, tau0=tau0, c_plus=c_plus, c_minus=c_minus)
    tctrl = SumOfCoefficients((LinearBlock(gamma), MlpBlock(gamma, c_plus=c_plus, c_minus=c_minus)))
    tax = [*axes[0, :len(tw)], axes[0, -1]]
    trows = _density_row(tax, "transformer", lambda n: tblk, tblk, tctrl, "MLP-only SDE", V0, T,
                         tw, transformer_nets, sde_paths, seed, "fig3", device, "full", dtype,
                         progress, "C2", sde_dt)
    mblk = AttentionBlock(gamma, tau0=tau0, heads=heads)
    max_ = [*axes[1, :len(mw)], axes[1, -1]]
    mrows = _density_row(max_, f"{heads}-head attention",
                         lambda n: AttentionBlock(gamma, tau0=tau0, heads=heads, nk=n // heads),
                         mblk, LinearBlock(gamma), "no-attention SDE", V0, T, mw,
                         multihead_nets, sde_paths, seed, "fig3", device, "full", dtype,
                         progress, "C4", sde_dt)
    for row, used in ((0, len(tw)), (1, len(mw))):
        for ax in axes[row, used:-1]:
            ax.axis("off")
    fig.tight_layout()
    seconds = time.perf_counter() - t0
    body = (f"Density of rho^{{01}} at depth d = {T:g} n (m = 2, rho0 = {rho0:g}, gamma = "
            f"{gamma:.4f}, tau0 = {tau0:g}) against the SDE at t = {T:g} ({sde_paths} paths, "
            f"Euler step {sde_dt:g}), at a setting where the law of rho sees the attention terms "
            "(at the paper's setting gamma = 1/sqrt(8), tau0 = 1, T = 0.75 these SDEs are within "
            "KS ~0.02 of their no-attention controls with 8192 paths, so such a test has no "
            "power). Top: the shaped Transformer block (shaped attention "
            f"sub-layer then shaped ReLU MLP sub-layer, c+ = {c_plus:g}, c- = {c_minus:g}, "
            f"nk = n; d counts blocks), {transformer_nets} networks per width; control: the "
            "SDE of the same block with the attention terms removed (linear + MLP "
            f"sub-layers). Bottom: {heads}-head shaped attention (nk = n/{heads} per head, "
            f"value blocks of width n/{heads}), {multihead_nets} networks per width; control: "
            "the linear block's SDE. Every weight is drawn (method 'full'), in "
            f"{settings['finite_dtype']}.\n\n"
            + _ks_table("Transformer block", trows, "MLP-only SDE") + "\n\n"
            + _ks_table(f"{heads}-head attention", mrows, "no-attention SDE"))
    arrays = {**_ks_arrays("transformer_", trows), **_ks_arrays("multihead_", mrows)}
    files = _save(fig, out, NAMES["fig3"], arrays,
                  _caption("fig3", command, settings, body, seconds), settings)
    paragraph = (f"The same comparison, at gamma = {gamma:g}, tau0 = {tau0:g}, T = {T:g}, with "
                 "every weight drawn, for the shaped Transformer block (attention then MLP; "
                 f"{transformer_nets} networks per width; {_trend(trows)}; "
                 f"{_power_sentence(trows, 'the MLP-only SDE')}; {_v00_sentence(trows)}) and for "
                 f"{heads}-head shaped attention (nk = n/{heads}; {multihead_nets} networks per "
                 f"width; {_trend(mrows)}; {_power_sentence(mrows, 'the no-attention SDE')}; "
                 f"{_v00_sentence(mrows)}).")
    numbers = {"transformer": _ks_numbers(trows), "multihead": _ks_numbers(mrows)}
    return FigureOutput("fig3", NAMES["fig3"], files, numbers, paragraph, seconds, settings)


# ----------------------------------------------------------------------------
# Figure 4: rank collapse


def figure4(out: str | Path = "docs/figures", *, seed: int = 0, nets: int = PAPER["samples"],
            width: int = PAPER["width"], depth: int = PAPER["depth"],
            gamma: float = PAPER["gamma"], tau0: float = PAPER["tau0"],
            rho0: float = PAPER["rho0"], threshold: float = 0.99, device: str = "cpu",
            method: str = "auto", progress: bool = False,
            command: str | None = None) -> FigureOutput:
    """Rank collapse: mean rho over depth, fraction collapsed (rho > threshold) and the
    growth of tr(V) for the baselines and ablations vs shaped attention (finite nets)."""
    t0 = time.perf_counter()
    out = Path(out)
    settings = dict(m=2, rho0=rho0, width=width, depth=depth, gamma=gamma, tau0=tau0,
                    nk="n", nets=nets, threshold=threshold, root_seed=seed, device=device,
                    method=method,
                    blocks={"standard": "Softmax(Y/sqrt(nk)), residual lam, gamma",
                            "standard-noresidual": "Softmax(Y/sqrt(nk)), gamma = 1, lam = 0",
                            "prenorm": "pre-LN (RMS) standard attention, residual",
                            "centering-only": "I + Softmax(Y/sqrt(nk)) - 11^T/m, residual",
                            "temperature-only": "Softmax(Y/(tau0 sqrt(n nk))), residual",
                            "shaped": "I + Softmax(Y/(tau0 sqrt(n nk))) - 11^T/m, residual"})
    command = command or _python_command("figure4", dict(out=str(out), seed=seed, nets=nets))
    V0 = initial_cov(rho0)
    summary = rank_collapse_summary(baseline_blocks(gamma, tau0), V0, width=width, depth=depth,
                                    nets=nets, seed=seed_for(seed, "fig4", "finite"),
                                    threshold=threshold, device=device, method=method,
                                    progress=progress)
    colors = {"standard": "C3", "standard-noresidual": "C5", "prenorm": "C1",
              "centering-only": "C2", "temperature-only": "C4", "shaped": "C0"}
    plt = _plt()
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 4.2),
                                        gridspec_kw=dict(width_ratios=[1.3, 1, 1]))
    d = summary.depths
    for r in summary.rows:
        ax0.plot(d, r.mean_rho, color=colors[r.label], lw=1.6, label=r.label)
        if r.label in ("shaped", "centering-only"):
            ax0.fill_between(d, r.q10, r.q90, color=colors[r.label], alpha=0.15)
    ax0.set(xlabel="layer l", ylabel="mean correlation rho_l", ylim=(-0.6, 1.05),
            title=f"mean rho (n = {width}; bands: 10-90% for shaped, centering-only)")
    ax0.title.set_fontsize(9)
    ax0.legend(fontsize=8)
    ax0.grid(alpha=0.3)
    labels = [r.label for r in summary.rows]
    frac = np.array([r.collapsed for r in summary.rows])
    lo = np.array([r.collapsed_ci[0] for r in summary.rows])
    hi = np.array([r.collapsed_ci[1] for r in summary.rows])
    x = np.arange(len(labels))
    ax1.bar(x, 100 * frac, color=[colors[k] for k in labels],
            yerr=100 * np.clip(np.vstack([frac - lo, hi - frac]), 0, None), capsize=3)
    for xi, f in zip(x, frac, strict=True):
        ax1.text(xi, 100 * f + 2, f"{100 * f:.1f}%", ha="center", fontsize=8)
    ax1.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax1.set(ylabel=f"% networks with rho > {threshold:g} at layer {depth}", ylim=(0, 110),
            title=f"collapsed at layer {depth} ({nets} networks, 95% Wilson)")
    ax1.title.set_fontsize(9)
    ax1.grid(alpha=0.3, axis="y")
    for r in summary.rows:
        ax2.plot(d, r.trace_ratio, color=colors[r.label], lw=1.6, label=r.label)
    ax2.set_yscale("log")
    ax2.set(xlabel="layer l", ylabel="median tr(V_l) / tr(V_0)", title="scale of the tokens")
    ax2.title.set_fontsize(9)
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    seconds = time.perf_counter() - t0
    table = ["| block | mean rho at layer d (SE) | % collapsed [95% CI] | median tr(V_d)/tr(V_0) |",
             "|---|---|---|---|"]
    for r in summary.rows:
        table.append(f"| {r.label} | {r.final_mean:.4f} ({r.final_se:.4f}) | "
                     f"{100 * r.collapsed:.1f} [{100 * r.collapsed_ci[0]:.1f}, "
                     f"{100 * r.collapsed_ci[1]:.1f}] | {r.trace_ratio[-1]:.3g} |")
    body = (f"{nets} finite networks per block (m = 2, rho0 = {rho0:g}, n = {width}, d = "
            f"{depth}, gamma = {gamma:.4f} for the residual blocks, tau0 = {tau0:g}, nk = n), "
            f"all from the same X0. A network has collapsed when rho > {threshold:g} at layer "
            f"{depth}. Left: mean rho over depth; middle: fraction collapsed; right: median "
            "growth of tr(V). Finite networks use the exact-in-law V chain "
            f"(method = {method!r}).\n\n" + "\n".join(table) + "\n\n```\n" + summary.table()
            + "\n```")
    arrays = dict(depths=d, labels=np.array(labels), collapsed=frac, collapsed_lo=lo,
                  collapsed_hi=hi,
                  **{f"mean_rho_{r.label}": r.mean_rho for r in summary.rows},
                  **{f"se_rho_{r.label}": r.se_rho for r in summary.rows},
                  **{f"trace_ratio_{r.label}": r.trace_ratio for r in summary.rows},
                  **{f"final_rho_{r.label}": r.rho_final for r in summary.rows})
    files = _save(fig, out, NAMES["fig4"], arrays,
                  _caption("fig4", command, settings, body, seconds), settings)
    R = {r.label: r for r in summary.rows}
    paragraph = (
        f"Rank collapse at n = {width}, d = {depth} ({nets} networks each, rho0 = {rho0:g}). "
        "Fraction of networks with rho > 0.99 at the last layer: "
        + ", ".join(f"{k} {100 * r.collapsed:.1f}%" for k, r in R.items())
        + ". Mean rho at the last layer: "
        + ", ".join(f"{k} {r.final_mean:.3f}" for k, r in R.items()) + ". "
        + _ablation_sentence(R))
    numbers = {"final_mean_rho": {k: r.final_mean for k, r in R.items()},
               "final_se": {k: r.final_se for k, r in R.items()},
               "collapsed_fraction": {k: r.collapsed for k, r in R.items()},
               "collapsed_ci": {k: r.collapsed_ci for k, r in R.items()},
               "trace_ratio_final": {k: float(r.trace_ratio[-1]) for k, r in R.items()},
               "n_nonfinite": {k: r.n_nonfinite for k, r in R.items()}}
    return FigureOutput("fig4", NAMES["fig4"], files, numbers, paragraph, seconds, settings)


def _ablation_sentence(R: dict[str, Any]) -> str:
    """What the two ablations show, worded from the numbers."""
    t, c, sh = R["temperature-only"], R["centering-only"], R["shaped"]
    parts = []
    if t.collapsed > 0.5:
        parts.append(f"the temperature alone does not prevent collapse ({100 * t.collapsed:.0f}%)")
    else:
        parts.append(f"the temperature alone leaves {100 * t.collapsed:.0f}% collapsed")
    grow = c.trace_ratio[-1] / max(sh.trace_ratio[-1], 1e-300)
    if c.collapsed < 0.5 and grow > 10:
        parts.append("centring alone avoids collapse, but its O(1) updates make the scale "
                     f"explode (median tr(V_d)/tr(V_0) = {c.trace_ratio[-1]:.3g}, vs "
                     f"{sh.trace_ratio[-1]:.3g} for shaped attention)")
    else:
        parts.append(f"centring alone leaves {100 * c.collapsed:.0f}% collapsed (median "
                     f"tr(V_d)/tr(V_0) = {c.trace_ratio[-1]:.3g}, shaped "
                     f"{sh.trace_ratio[-1]:.3g})")
    return "Ablations: " + "; ".join(parts) + "."


# ----------------------------------------------------------------------------
# All figures


FUNCS = {"fig1": figure1, "fig2": figure2, "fig3": figure3, "fig4": figure4}


def parse_only(only: str | Sequence[str] | None) -> tuple[str, ...]:
    """'1,3' / ['fig1', 'fig3'] -> ('fig1', 'fig3'); None -> all figures."""
    if only is None:
        return FIGURES
    items = only.split(",") if isinstance(only, str) else list(only)
    keys = []
    for item in items:
        s = str(item).strip().lower()
        k = s if s.startswith("fig") else f"fig{s}"
        if k not in FIGURES:
            raise ValueError(f"unknown figure {item!r}; choose from 1, 2, 3, 4")
        if k not in keys:
            keys.append(k)
    if not keys:
        raise ValueError("--only names no figure; choose from 1, 2, 3, 4")
    return tuple(sorted(keys))


def make_figures(out: str | Path = "docs/figures", *, quick: bool = False, seed: int = 0,
                 device: str = "cpu", only: str | Sequence[str] | None = None,
                 method: str = "auto", progress: bool = True,
                 sizes: dict[str, dict[str, Any]] | None = None,
                 readme: bool = True) -> list[FigureOutput]:
    """Write the figures (all, or `only`) to `out`, and README.md + summary.json there.

    `quick`: fewer samples and smaller widths (a few minutes on 2 CPU cores). `sizes`
    overrides per-figure keyword arguments (e.g. {"fig2": {"nets": 64}}).
    """
    from .sde import check_device

    out = Path(out)
    seed = _check_seed(seed)
    dev = str(check_device(device))
    if method not in ("auto", "full", "gram"):
        raise ValueError(f"method must be 'auto', 'full' or 'gram'; got {method!r}")
    keys = parse_only(only)
    command = _cli_command(out, quick=quick, seed=seed, device=dev, only=keys, method=method)
    plan = {k: dict(SIZES["quick" if quick else "full"][k]) for k in keys}
    for k, over in (sizes or {}).items():
        if k in plan:
            plan[k].update(over)
    results = []
    for k in keys:
        kw = dict(seed=seed, device=dev, progress=progress, command=command, **plan[k])
        if k != "fig3":
            kw["method"] = method
        res = FUNCS[k](out, **kw)
        print(f"{k}: wrote {', '.join(str(p) for p in res.files)} ({res.seconds:.0f} s)")
        results.append(res)
    if readme:
        write_readme(out, results, command, quick=quick)
    return results


def write_readme(out: Path, results: list[FigureOutput], command: str, *, quick: bool) -> Path:
    """Update summary.json (numbers, paragraph, command per figure) in `out` and rebuild
    README.md from it, embedding every figure recorded there (earlier runs included)."""
    out = Path(out)
    spath = out / "summary.json"
    entries: dict[str, Any] = {}
    if spath.is_file():
        try:
            entries = json.loads(spath.read_text()).get("figures", {})
        except (ValueError, AttributeError):
            entries = {}
    for r in results:
        entries[r.key] = {"name": r.name, "title": TITLES[r.key], "command": command,
                          "quick": quick, "seconds": r.seconds, "paragraph": r.paragraph,
                          "numbers": r.numbers, "settings": r.settings}
    entries = {k: entries[k] for k in FIGURES if k in entries}
    spath.write_text(json.dumps({"figures": entries}, indent=2, default=_json_default) + "\n")
    commands = sorted({e["command"] for e in entries.values()})
    total = sum(e["seconds"] for e in entries.values())
    made = (f"`{commands[0]}`" if len(commands) == 1
            else "; ".join(f"`{c}`" for c in commands) + " (see each caption)")
    lines = ["# Figures", "",
             f"Made by {made}, {total / 60:.1f} min of computing on the machine that ran it. "
             "Each figure has its data (`.npz`) and a caption with the exact command, settings "
             "and numbers (`.md`) beside it; the PDF versions have the same names. Notation "
             "and conventions: [docs/conventions.md](../conventions.md).", ""]
    for e in entries.values():
        size = " (quick settings)" if e["quick"] else ""
        lines += [f"## {e['title']}{size}", "", f"![{e['name']}]({e['name']}.png)", "",
                  e["paragraph"], "",
                  f"Caption, settings and all numbers: [{e['name']}.md]({e['name']}.md).", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
