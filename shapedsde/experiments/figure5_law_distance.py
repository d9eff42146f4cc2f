"""Figure 5: the law distance against width on log-log axes, with a slope guide n^{-1/2}.

The finite-width law approaches the SDE's like n^{-1/2}, so the KS distance between
finite networks and SDE paths falls along the guide until it meets the sampling-noise
floor (the mean KS distance of two samples of one law of these sizes), while the
distance to a wrong SDE levels off at the gap between the two laws. The data are figure
2's (`fig2_density_vs_width.npz`): this figure samples nothing. `plot_law_distance`
draws one such panel from any widths and distances (the verifier's law checks too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..verification.engine import ks_null_mean
from ._common import NAMES, FigureOutput, caption, pyplot, save

GUIDE_SLOPE = -0.5


def plot_law_distance(ax: Any, widths: Sequence[int], ks: Sequence[float], *,
                      control: Sequence[float] | None = None, noise: float | None = None,
                      label: str = "vs its SDE", color: str = "C0") -> None:
    """KS distance against width on log-log axes, the control's distance, the noise
    floor and an n^{-1/2} guide through the first point."""
    n = np.asarray(widths, dtype=float)
    ax.loglog(n, ks, "o-", color=color, label=label)
    if control is not None:
        ax.loglog(n, control, "s:", color="0.4", label="vs the wrong SDE (control)")
    ax.loglog(n, ks[0] * (n / n[0]) ** GUIDE_SLOPE, "k--", lw=1, label=r"$\propto n^{-1/2}$")
    if noise is not None:
        ax.axhline(noise, color="0.5", lw=1, ls="-.", label="sampling noise (mean KS, one law)")
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator

    ax.set_xticks(n, [str(int(v)) for v in n])
    ax.xaxis.set_minor_locator(NullLocator())
    # 1-2-5 ticks, so that a range within one decade is still labelled
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set(xlabel=r"width $n$ ($d/n$ fixed)", ylabel=r"KS distance of $\rho_T$")
    ax.grid(alpha=0.3, which="both")


def fitted_slope(widths: Sequence[int], ks: Sequence[float]) -> float:
    """Least-squares slope of log KS against log n."""
    return float(np.polyfit(np.log(widths), np.log(ks), 1)[0])


def _floor_note(ks: Sequence[float], noise: float) -> str:
    """Says so when every distance is within 1.5 times the noise floor: no rate to read."""
    return "; at the noise floor, no rate to read" if max(ks) < 1.5 * noise else ""


def load_cases(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Figure 2's widths and distances per case, and its settings."""
    if not path.is_file():
        raise ValueError(f"figure 5 plots figure 2's data, and {path} is missing; make figure "
                         "2 first (`shapedsde figures --only 2,5`)")
    data = np.load(path, allow_pickle=False)
    settings = json.loads(str(data["settings_json"]))
    cases = [{"setting": c, "widths": data[f"case{i}_widths"].tolist(),
              "ks": data[f"case{i}_ks_rho"].tolist(),
              "control": data[f"case{i}_ks_control_rho"].tolist()}
             for i, c in enumerate(settings["cases"])]
    return cases, settings


def figure5(out: str | Path = "docs/figures", *, source: str | Path | None = None,
            command: str | None = None, **_ignored: Any) -> FigureOutput:
    """The log-log figure of figure 2's KS distances (read from `source`, default
    `<out>/fig2_density_vs_width.npz`). Keyword arguments of the other figures (seed,
    device, ...) are accepted and ignored: it samples nothing."""
    t0 = time.perf_counter()
    out = Path(out)
    src = Path(source) if source is not None else out / f"{NAMES['fig2']}.npz"
    cases, fig2 = load_cases(src)
    noise = ks_null_mean(fig2["nets"], fig2["sde_paths"])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(cases), figsize=(5.2 * len(cases), 4.4), squeeze=False)
    for i, (ax, c) in enumerate(zip(axes[0], cases, strict=True)):
        plot_law_distance(ax, c["widths"], c["ks"], control=c["control"], noise=noise,
                          color=f"C{i}")
        s = c["setting"]
        ax.set_title(rf"$\gamma = {s['gamma']:.3g}$, $\tau_0 = {s['tau0']:g}$, $T = {s['T']:g}$")
        c["slope"] = fitted_slope(c["widths"], c["ks"])
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    rows = [f"| gamma = {c['setting']['gamma']:.3g}, tau0 = {c['setting']['tau0']:g}, T = "
            f"{c['setting']['T']:g} | {' -> '.join(f'{d:.3f}' for d in c['ks'])} | "
            f"{c['slope']:.2f} | {c['control'][-1]:.3f} |" for c in cases]
    widths = ", ".join(map(str, cases[0]["widths"]))
    body = (f"Figure 2's KS distances of rho^{{01}}_T (finite networks at n = {widths} with "
            f"d = T n, {fig2['nets']} per width, against {fig2['sde_paths']} SDE paths) on "
            "log-log axes, with a guide of slope -1/2 through the first point, the distance "
            "to the wrong SDE (every attention term removed) and the sampling-noise floor "
            f"(mean KS of two samples of one law of these sizes, {noise:.3f}). A distance "
            "at the floor says nothing more about the rate.\n\n"
            "| setting | KS D vs n | fitted slope | KS D vs control at the largest n |\n"
            "|---|---|---|---|\n" + "\n".join(rows))
    settings = {"source": str(src), "fig2_settings": fig2, "guide_slope": GUIDE_SLOPE,
                "noise_floor": noise}
    command = command or f"python -c \"from shapedsde.experiments.figure5_law_distance " \
                         f"import figure5; figure5({str(out)!r})\""
    arrays = {f"case{i}_{k}": np.asarray(c[k]) for i, c in enumerate(cases)
              for k in ("widths", "ks", "control")}
    seconds = time.perf_counter() - t0
    files = save(fig, out, NAMES["fig5"], arrays,
                 caption("fig5", command, settings, body, seconds), settings)
    paragraph = ("Figure 2's distances on log-log axes: fitted slopes of log KS against log n "
                 + ", ".join(f"{c['slope']:.2f} (gamma = {c['setting']['gamma']:.3g}, tau0 = "
                             f"{c['setting']['tau0']:g}{_floor_note(c['ks'], noise)})"
                             for c in cases)
                 + f", against the guide's -1/2; the noise floor is KS {noise:.3f}.")
    numbers = {"slopes": [c["slope"] for c in cases], "noise_floor": noise,
               "ks": [c["ks"] for c in cases], "widths": cases[0]["widths"]}
    return FigureOutput("fig5", NAMES["fig5"], files, numbers, paragraph, seconds, settings)
