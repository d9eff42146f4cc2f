"""PNG figures of a verification report (matplotlib, Agg backend), rendered to bytes.

The PNGs carry no metadata (no software version or date), so the same numbers give
the same bytes and a checked-in figure can be compared with a re-rendered one.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .law import STATISTICS  # noqa: E402

_PARTS = {"drift": "drift b", "attention": "attention part of Sigma", "diffusion": "total Sigma"}


#: What each figure shows, by file name prefix (the HTML report's captions).
CAPTIONS = {
    "one_step_error": "One-step check: relative error of n E[dV] and n Cov[dV] against b(V) "
                      "and Sigma(V) vs width, with the Monte Carlo noise floor (dotted).",
    "law_distance": "Law at T: KS and Wasserstein-1 distance of finite networks to the true "
                    "SDE and to the negative controls vs width; grey: the same-law noise level.",
    "law_ecdf": "Law at T, largest width: histograms and ECDFs of finite networks, the SDE "
                "and the controls.",
}


def render_figures(report: dict, samples: list[dict], dpi: int = 110) -> dict[str, bytes]:
    """The figures of `report` as PNG bytes, by file name (in report order)."""
    figs = {}
    if report["checks"].get("one_step"):
        figs["one_step_error.png"] = _one_step_figure(report["checks"]["one_step"])
    for i, (law, smp) in enumerate(zip(report["checks"].get("law", []), samples, strict=True)):
        figs[f"law_distance_{i}.png"] = _law_distance_figure(law)
        figs[f"law_ecdf_{i}.png"] = _law_ecdf_figure(law, smp)
    return {name: _png(fig, dpi) for name, fig in figs.items()}


def caption(name: str) -> str:
    """The caption of figure file `name` (empty when unknown)."""
    return CAPTIONS.get(name.rsplit(".", 1)[0].rstrip("0123456789").rstrip("_"), "")


def _png(fig: plt.Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _one_step_figure(results: list[dict]) -> plt.Figure:
    """Relative error vs width per part, with the noise floor and n^{-1/2}, n^{-1} guides."""
    results = [r for r in results if r["pairs"] > 0]
    fig, axes = plt.subplots(1, len(_PARTS), figsize=(5 * len(_PARTS), 4), squeeze=False)
    for ax, (part, title) in zip(axes[0], _PARTS.items(), strict=True):
        for r in results:
            ns = sorted(r["widths"])
            err = [r["widths"][n][part]["rel_error"] for n in ns]
            se = [r["widths"][n][part]["rel_se"] for n in ns]
            lab = ", ".join(f"{k}={v:g}" for k, v in r["params"].items() if k != "heads")
            lab += f" at {r.get('V_name', 'V0')}"
            line, = ax.loglog(ns, err, "o-", label=lab)
            ax.loglog(ns, se, ":", color=line.get_color(), alpha=0.7)
        if results:
            ns = np.array(sorted(results[0]["widths"]), dtype=float)
            top = max(r["widths"][int(ns[0])][part]["rel_error"] for r in results)
            ax.loglog(ns, top * (ns / ns[0]) ** -0.5, "k--", lw=1, label=r"$n^{-1/2}$ guide")
            ax.loglog(ns, top * (ns / ns[0]) ** -1.0, "k-.", lw=1, label=r"$n^{-1}$ guide")
        ax.set_xlabel("width n")
        ax.set_ylabel("||estimate - kernel|| / ||kernel||")
        ax.set_title(f"one-step {title}\n(dotted: Monte Carlo SE level)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _law_distance_figure(law: dict) -> plt.Figure:
    """KS and W1 vs width: true SDE, the controls, and the sampling-noise level."""
    ns = sorted(law["per_width"])
    refs = [k for k in law["per_width"][ns[0]] if isinstance(law["per_width"][ns[0]][k], dict)]
    null_mean = [law["per_width"][n]["ks_null_mean"] for n in ns]
    null_crit = [law["per_width"][n]["ks_null_crit"] for n in ns]
    fig, axes = plt.subplots(2, len(STATISTICS), figsize=(5 * len(STATISTICS), 7), squeeze=False)
    for j, stat in enumerate(STATISTICS):
        for i, metric in enumerate(("ks", "w1")):
            ax = axes[i][j]
            for ref in refs:
                y = [law["per_width"][n][ref][stat][metric] for n in ns]
                style = "o-" if ref == "true" else "s--"
                ax.loglog(ns, y, style, label="true SDE" if ref == "true" else f"control: {ref}")
            if metric == "ks":
                ax.loglog(ns, null_mean, color="gray", ls=":", label="same law: mean KS")
                ax.loglog(ns, null_crit, color="gray", ls="-.",
                          label=f"same law: critical KS (alpha={law['alpha']:g})")
            else:
                ax.axhline(law["null"][stat][metric], color="gray", ls=":",
                           label="SDE vs SDE, one draw (noise)")
            ax.set_xlabel("width n")
            name = "KS statistic" if metric == "ks" else "Wasserstein-1"
            if stat == "V00" and metric == "w1":
                name += " (of log V00)"
            ax.set_ylabel(name)
            ax.set_title(f"{stat}: finite (d = T n) vs SDE")
            ax.legend(fontsize=7)
    fig.suptitle(f"law at T: {law['label']}, {law['nets']} networks per width, "
                 f"{law['sde_paths']} SDE paths")
    fig.tight_layout()
    return fig


def _law_ecdf_figure(law: dict, smp: dict) -> plt.Figure:
    """Histograms and ECDFs at the largest width: finite vs SDE vs controls."""
    fig, axes = plt.subplots(2, len(STATISTICS), figsize=(5 * len(STATISTICS), 7), squeeze=False)
    n = max(law["widths"])
    for j, stat in enumerate(STATISTICS):
        data = {_legend(k, n): v[stat] for k, v in smp.items()}
        pooled = np.concatenate(list(data.values()))
        lo, hi = np.quantile(pooled, [0.005, 0.995])
        bins = np.linspace(lo, hi, 60)
        for lab, x in data.items():
            axes[0][j].hist(x, bins=bins, density=True, histtype="step", label=lab)
            xs = np.sort(x)
            axes[1][j].plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=lab)
        axes[1][j].set_xlim(lo, hi)
        axes[0][j].set_title(stat)
        axes[0][j].set_ylabel("density")
        axes[1][j].set_ylabel("ECDF")
        axes[0][j].legend(fontsize=7)
    fig.suptitle(f"law at T: {law['label']} (largest width)")
    fig.tight_layout()
    return fig


def _legend(key: str, n: int) -> str:
    return {"finite": f"finite n={n}", "sde": "SDE"}.get(key, f"control: {key}")
