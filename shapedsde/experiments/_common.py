"""What the experiments share: settings of the paper's Figure 1, the figure style
(mathtext labels, readable sizes), SDE runs at a given step, a boundary-reflected KDE of
correlations, and writing a figure with its data and caption."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import _io
from .. import _validation as val
from ..sde import default_steps
from ..verification.engine import solve_quiet

PAPER_GAMMA = 1 / math.sqrt(8)
PAPER = dict(m=2, rho0=0.2, width=200, depth=150, gamma=PAPER_GAMMA, tau0=1.0, sde_dt=0.01,
             samples=2**12)
FIGURES = ("fig1", "fig1n", "fig2", "fig3", "fig4", "fig5")
NAMES = {"fig1": "fig1_paper_figure1", "fig1n": "fig1n_normalised",
         "fig2": "fig2_density_vs_width",
         "fig3": "fig3_transformer_multihead", "fig4": "fig4_rank_collapse",
         "fig5": "fig5_law_distance_vs_width"}
TITLES = {"fig1": "Paper Figure 1: rank collapse and the SDE density (n = 200, d = 150)",
          "fig1n": "Figure 1 with normalisation: shaped pre-RMSNorm and post-RMSNorm "
                   "attention, networks and SDEs",
          "fig2": "Shaped attention: final-layer correlation density vs width, against the SDE",
          "fig3": "Shaped Transformer block and 4-head attention vs their SDEs",
          "fig4": "Rank collapse: unshaped baselines and ablations vs shaped attention",
          "fig5": "Law distance against width (log-log), with an n^(-1/2) guide"}
#: Level of the figures' KS statements ("consistent with sampling noise" when p >= it).
KS_ALPHA = 0.05
#: SDE step of the density figures 2-3: at gamma = 0.8, tau0 = 0.5, T = 0.3 the solver's
#: default dt = 0.005 is KS ~0.018 from a converged solution (16384 paths), dt = 0.00125
#: is within noise (KS 0.007, p = 0.78).
SDE_DT = 0.00125
#: Sizes that stay readable when a figure is shrunk to a column of a paper.
STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 12, "legend.fontsize": 9,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 12,
         "mathtext.fontset": "cm"}


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


def initial_cov(rho0: float, m: int = 2) -> np.ndarray:
    """V0 with unit diagonal and every off-diagonal entry rho0."""
    V0 = np.full((m, m), float(rho0))
    np.fill_diagonal(V0, 1.0)
    val.check_covariance(V0, name="V0 (from rho0)")
    return V0


def run_sde(coef: Any, V0: np.ndarray, T: float, *, paths: int, seed: int, dt: float | None,
            device: str, progress: bool, save_every: int | None = None) -> Any:
    """SDE paths at the fixed step `dt` (None: the solver's default steps)."""
    steps = default_steps(T) if dt is None else max(1, int(round(T / dt)))
    return solve_quiet(coef, V0, T, paths=paths, seed=seed, steps=steps,
                       save_every=save_every, device=device, progress=progress)


def pyplot():
    """matplotlib.pyplot on the Agg backend, in the figures' style."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def kde(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
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


def stem(path: str | Path) -> Path:
    """`path` without a .json/.npz/.png/.pdf suffix."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".npz", ".png", ".pdf") else p


def plot_files(fig: Any, base: Path, dpi: int = 150) -> dict[Path, bytes]:
    """The bytes of `<base>.png` and `<base>.pdf`, rendered in memory (for a result set
    written at once by `_io.write_files`); closes the figure."""
    import io

    out = {}
    for suffix, kw in ((".png", {"dpi": dpi}), (".pdf", {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=suffix[1:], bbox_inches="tight", **kw)
        out[base.with_suffix(suffix)] = buf.getvalue()
    pyplot().close(fig)
    return out


def save_plot(fig: Any, base: Path, dpi: int = 150) -> list[Path]:
    """`<base>.png` and `<base>.pdf`; closes the figure."""
    base.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = base.with_suffix(".png"), base.with_suffix(".pdf")
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight")
    pyplot().close(fig)
    return [png, pdf]


def save(fig: Any, out: Path, name: str, arrays: dict[str, Any], caption: str,
         settings: dict[str, Any]) -> list[Path]:
    """The figure (PNG, PDF), its data (.npz, with `settings_json`) and caption (.md)."""
    files = save_plot(fig, out / name)
    data = {k: np.asarray(v) for k, v in arrays.items()}
    data["settings_json"] = np.array(_io.dumps(settings, indent=None))
    npz = out / f"{name}.npz"
    np.savez_compressed(npz, **data)
    md = out / f"{name}.md"
    md.write_text(caption)
    return [*files, npz, md]


def caption(key: str, command: str, settings: dict[str, Any], body: str,
            seconds: float) -> str:
    """A figure's Markdown caption: title, image, command, body, settings, data."""
    name = NAMES[key]
    return (f"# {TITLES[key]}\n\n"
            f"![{name}]({name}.png)\n\n"
            f"Made by:\n\n    {command}\n\n"
            f"{body.strip()}\n\n"
            f"Settings:\n\n```json\n{_io.dumps(settings, indent=2)}\n```\n\n"
            f"Data: `{name}.npz` (arrays named as in the plot; `settings_json` holds the "
            f"settings). Runtime {seconds:.0f} s.\n")


def python_command(module: str, func: str, kwargs: dict[str, Any]) -> str:
    """The one-line Python call that remakes a figure."""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return (f"python -c \"from shapedsde.experiments.{module} import {func}; "
            f"{func}({args})\"")


def fmt_ks(k: dict[str, float]) -> str:
    return (f"D = {k['ks']:.3f} (p = {k['p']:.2g}; {100 * KS_ALPHA:g}% critical value "
            f"{k['ks_crit']:.3f})")


def agree(k: dict[str, float]) -> str:
    return ("consistent with sampling noise" if k["p"] >= KS_ALPHA
            else "a difference beyond sampling noise")
