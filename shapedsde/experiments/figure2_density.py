"""Figure 2: the final-layer density of rho for shaped attention at several widths n
(d / n fixed) against the SDE, and the KS distance against n with a wrong-SDE control
(the linear block: every attention term removed). The row machinery (`density_row`,
`plot_density_row`, the tables and sentences) serves figure 3 too."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _validation as val
from ..blocks import AttentionBlock, Block, LinearBlock
from ..finite import simulate
from ..seeds import child_seed
from ..verification.engine import compare_law, rho01
from . import _common as common
from ._common import KS_ALPHA, NAMES, PAPER, SDE_DT, FigureOutput

#: Settings where the law of rho at T sees the attention terms (the no-attention SDE is
#: KS ~0.1 away with 4096 paths); the paper's setting (gamma = 1/sqrt(8), tau0 = 1,
#: T = 0.75) is ~0.02 away, below the 5% critical value of 4096-vs-4096 samples.
POWERED = dict(gamma=0.8, tau0=0.5, T=0.3)
GRID = np.linspace(-1, 1, 401)


def density_row(label: str, blk_of_n: Callable[[int], Block], sde_blk: Any, control: Any,
                V0: np.ndarray, T: float, widths: Sequence[int], nets: int, sde_paths: int,
                seed: int, key: str, device: str, method: str, dtype: torch.dtype,
                progress: bool, sde_dt: float | None) -> dict[str, Any]:
    """Finite networks at each width against the SDE and the control SDE, by
    `verification.engine.compare_law` on rho (and on log V00 against the SDE)."""
    res = common.run_sde(sde_blk, V0, T, paths=sde_paths, seed=child_seed(seed, key, label, "sde"),
                  dt=sde_dt, device=device, progress=progress)
    ctrl = common.run_sde(control, V0, T, paths=sde_paths,
                   seed=child_seed(seed, key, label, "control"), dt=sde_dt, device=device,
                   progress=progress)
    sde_rho, ctrl_rho = rho01(res.V), rho01(ctrl.V)
    sde_v00 = res.V[:, 0, 0].cpu().numpy()
    rows: dict[str, Any] = {"widths": [], "depths": [], "ks": [], "ks_control": [],
                            "ks_V00": [], "finite_rho": {}, "nonfinite": [], "nets": nets,
                            "sde_rho": sde_rho, "control_rho": ctrl_rho,
                            "sde_meta": {k: res.meta[k] for k in
                                         ("n_exploded", "n_nonfinite", "steps", "dt")}}
    for n in widths:
        V = simulate(blk_of_n(n), V0, width=n, T=T, nets=nets,
                     seed=child_seed(seed, key, label, str(n)), device=device, dtype=dtype,
                     method=method, progress=progress)
        rho = rho01(V)
        law = compare_law(rho, sde_rho, {"control": ctrl_rho}, stat="rho01", alpha=KS_ALPHA)
        v00 = V[:, 0, 0].double().cpu().numpy()
        rows["widths"].append(n)
        rows["depths"].append(int(round(T * n)))
        rows["ks"].append(law.true)
        rows["ks_control"].append(law.controls["control"])
        rows["ks_V00"].append(compare_law(v00, sde_v00, stat="V00", alpha=KS_ALPHA).true)
        rows["finite_rho"][n] = rho
        rows["nonfinite"].append(int((~np.isfinite(rho)).sum()))
    return rows


def plot_density_row(axes: Sequence[Any], rows: dict[str, Any], label: str,
                     control_label: str, color: str) -> None:
    """One histogram per width with the SDE's KDE, and the KS distance against n."""
    sde_kde = common.kde(rows["sde_rho"], GRID)
    for ax, n, d, k in zip(axes[:-1], rows["widths"], rows["depths"], rows["ks"], strict=False):
        rho = rows["finite_rho"][n]
        ax.hist(rho[np.isfinite(rho)], bins=40, range=(-1, 1), density=True, color=color,
                alpha=0.4, label=f"network ({rows['nets']})")
        ax.plot(GRID, sde_kde, color="k", ls="--", lw=1.4, label="SDE")
        ax.set(title=f"$n = {n}$, $d = {d}$: KS $D = {k['ks']:.3f}$",
               xlabel=r"$\rho$ at depth $d$", xlim=(-1, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{label}\ndensity")
    axes[0].legend(loc="upper left")
    ax, widths = axes[-1], rows["widths"]
    D = [k["ks"] for k in rows["ks"]]
    Dc = [k["ks"] for k in rows["ks_control"]]
    crit = rows["ks"][0]["ks_crit"]
    ax.plot(widths, D, "o-", color=color, label="vs its SDE")
    ax.plot(widths, Dc, "s:", color="0.4", label=f"vs {control_label} (control)")
    ax.axhline(crit, color="k", lw=0.8, ls="--", label=f"{100 * KS_ALPHA:g}% critical value")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(widths), [str(n) for n in widths])
    ax.minorticks_off()
    ax.set_ylim(0, 1.45 * max(max(D), max(Dc), crit))
    ax.set(xlabel=r"width $n$ ($d/n$ fixed)", ylabel=r"KS distance, $\rho$",
           title=r"KS distance vs $n$")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)


def ks_table(label: str, rows: dict[str, Any], control_label: str) -> str:
    lines = [f"{label}:", "",
             f"| n | d | KS D (rho) | p | KS D (log V00) | p | KS D vs {control_label} | p |",
             "|---|---|---|---|---|---|---|---|"]
    for n, d, k, kv, kc in zip(rows["widths"], rows["depths"], rows["ks"], rows["ks_V00"],
                               rows["ks_control"], strict=True):
        lines.append(f"| {n} | {d} | {k['ks']:.3f} | {k['p']:.2g} | {kv['ks']:.3f} | "
                     f"{kv['p']:.2g} | {kc['ks']:.3f} | {kc['p']:.2g} |")
    lines += ["", f"{100 * KS_ALPHA:g}% two-sample critical value: {rows['ks'][0]['ks_crit']:.3f}"
              f". SDE: {rows['sde_meta']['n_exploded']} paths blew up, "
              f"{rows['sde_meta']['n_nonfinite']} non-finite; finite networks with "
              f"non-finite V: {rows['nonfinite']}."]
    return "\n".join(lines)


def ks_numbers(rows: dict[str, Any]) -> dict[str, Any]:
    return {"widths": rows["widths"], "depths": rows["depths"], "ks_rho": rows["ks"],
            "ks_logV00": rows["ks_V00"], "ks_control_rho": rows["ks_control"],
            "sde_meta": rows["sde_meta"], "nonfinite": rows["nonfinite"]}


def ks_arrays(prefix: str, rows: dict[str, Any]) -> dict[str, Any]:
    arr = {f"{prefix}widths": np.array(rows["widths"]),
           f"{prefix}ks_rho": np.array([k["ks"] for k in rows["ks"]]),
           f"{prefix}ks_rho_p": np.array([k["p"] for k in rows["ks"]]),
           f"{prefix}ks_rho_crit": np.array([k["ks_crit"] for k in rows["ks"]]),
           f"{prefix}ks_logV00": np.array([k["ks"] for k in rows["ks_V00"]]),
           f"{prefix}ks_control_rho": np.array([k["ks"] for k in rows["ks_control"]]),
           f"{prefix}sde_rho": rows["sde_rho"], f"{prefix}control_rho": rows["control_rho"]}
    for n, rho in rows["finite_rho"].items():
        arr[f"{prefix}finite_rho_n{n}"] = rho
    return arr


def v00_sentence(rows: dict[str, Any]) -> str:
    kv = rows["ks_V00"]
    return (f"log V^00: KS D {kv[0]['ks']:.3f} -> {kv[-1]['ks']:.3f} (p = {kv[-1]['p']:.2g} "
            f"at n = {rows['widths'][-1]})")


def trend(rows: dict[str, Any]) -> str:
    D, ws = [k["ks"] for k in rows["ks"]], rows["widths"]
    crit = rows["ks"][0]["ks_crit"]
    below = [n for n, k in zip(ws, rows["ks"], strict=True) if k["p"] >= KS_ALPHA]
    txt = f"KS D {D[0]:.3f} at n = {ws[0]} -> {D[-1]:.3f} at n = {ws[-1]}"
    where = ("every width" if len(below) == len(ws) else
             f"n = {', '.join(map(str, below))}" if below else None)
    if where is None:
        return txt + f" (p < {KS_ALPHA:g} at every width; 5% critical value {crit:.3f})"
    return txt + f" (p >= {KS_ALPHA:g} at {where}; 5% critical value {crit:.3f})"


def power_sentence(rows: dict[str, Any], control: str) -> str:
    k, kc = rows["ks"][-1], rows["ks_control"][-1]
    txt = f"vs {control} KS D = {kc['ks']:.3f} (p = {kc['p']:.2g}) at n = {rows['widths'][-1]}"
    if kc["p"] < KS_ALPHA and kc["ks"] > k["ks"]:  # the engine's power rule
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
    command = command or common.python_command("figure2_density", "figure2",
                                        dict(out=str(out), seed=seed, widths=tuple(widths),
                                             nets=nets))
    V0 = common.initial_cov(rho0)
    all_rows, labels = [], []
    for c in cases:
        blk = AttentionBlock(c["gamma"], tau0=c["tau0"])
        labels.append(f"gamma={c['gamma']:.3g}, tau0={c['tau0']:g}, T={c['T']:g}")
        all_rows.append(density_row(labels[-1], lambda n, blk=blk: blk, blk,
                                    LinearBlock(c["gamma"]), V0, c["T"], widths, nets,
                                    sde_paths, seed, "fig2", device, method, torch.float64,
                                    progress, sde_dt))
    plt = common.pyplot()
    ncol = len(widths) + 1
    fig, axes = plt.subplots(len(cases), ncol, figsize=(3.4 * ncol, 3.6 * len(cases)),
                             squeeze=False)
    for i, (c, rows) in enumerate(zip(cases, all_rows, strict=True)):
        label = rf"$\gamma={c['gamma']:.3g}$, $\tau_0={c['tau0']:g}$, $T={c['T']:g}$"
        plot_density_row(axes[i], rows, label, "no-attention SDE", f"C{i}")
    fig.tight_layout()
    seconds = time.perf_counter() - t0
    tables = [ks_table(f"shaped attention, {lab}", r, "no-attention SDE")
              for lab, r in zip(labels, all_rows, strict=True)]
    body = (f"Density of rho^{{01}} at depth d = T n of {nets} finite shaped-attention networks "
            f"(m = 2, rho0 = {rho0:g}, nk = n) at widths n = {', '.join(map(str, widths))}, "
            f"against {sde_paths} paths of the SDE at t = T (Euler step {sde_dt:g}), one row per "
            "setting: the paper's Figure 1 setting, and a setting where the attention terms "
            "move the law of rho. Last panel of a row: KS distance vs n, and the same networks "
            "against a deliberately wrong SDE (the linear block: every attention term removed), "
            "a negative control of the test's power. Finite networks: exact-in-law V chain "
            f"(method = {method!r}). Figure 5 shows the same distances on log-log axes.\n\n"
            + "\n\n".join(tables))
    arrays: dict[str, Any] = {}
    for i, rows in enumerate(all_rows):
        arrays.update(ks_arrays(f"case{i}_", rows))
    files = common.save(fig, out, NAMES["fig2"], arrays,
                 common.caption("fig2", command, settings, body, seconds), settings)
    para = [f"at {lab}: {trend(r)}; {power_sentence(r, 'the no-attention SDE')}; "
            f"{v00_sentence(r)}" for lab, r in zip(labels, all_rows, strict=True)]
    paragraph = (f"Final-layer correlation of shaped attention at n = "
                 f"{', '.join(map(str, widths))} with d/n fixed, against the SDE ({nets} "
                 f"networks, {sde_paths} SDE paths per width), " + "; ".join(para) + ".")
    numbers = {f"case{i}": {"setting": c, **ks_numbers(r)}
               for i, (c, r) in enumerate(zip(cases, all_rows, strict=True))}
    return FigureOutput("fig2", NAMES["fig2"], files, numbers, paragraph, seconds, settings)
