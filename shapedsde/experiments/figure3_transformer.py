"""Figure 3: the density comparison of figure 2 for the shaped Transformer block
(attention then MLP; d = T n blocks) and for multi-head shaped attention (nk = n / heads
per head), every weight drawn."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import _validation as val
from ..blocks import AttentionBlock, LinearBlock, MlpBlock, SumOfCoefficients, TransformerBlock
from . import _common as common
from . import figure2_density as density
from ._common import NAMES, PAPER, SDE_DT, FigureOutput
from .figure2_density import POWERED


def figure3(out: str | Path = "docs/figures", *, seed: int = 0,
            transformer_widths: Sequence[int] = (16, 32, 64, 128), transformer_nets: int = 2048,
            multihead_widths: Sequence[int] = (16, 32, 64), multihead_nets: int = 1024,
            heads: int = 4, T: float = POWERED["T"], sde_paths: int = 4096,
            gamma: float = POWERED["gamma"], tau0: float = POWERED["tau0"],
            rho0: float = PAPER["rho0"], c_plus: float = 0.0, c_minus: float = -1.0,
            sde_dt: float = SDE_DT, dtype: torch.dtype = torch.float32, device: str = "cpu",
            progress: bool = False, command: str | None = None) -> FigureOutput:
    """Figure 2's comparison for the Transformer block (control: its SDE without the
    attention terms, linear + MLP) and `heads`-head attention (control: the linear block).
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
    command = command or common.python_command("figure3_transformer", "figure3",
                                        dict(out=str(out), seed=seed))
    V0 = common.initial_cov(rho0)
    tblk = TransformerBlock(gamma, tau0=tau0, c_plus=c_plus, c_minus=c_minus)
    tctrl = SumOfCoefficients((LinearBlock(gamma), MlpBlock(gamma, c_plus=c_plus, c_minus=c_minus)))
    trows = density.density_row("transformer", lambda n: tblk, tblk, tctrl, V0, T, tw,
                        transformer_nets, sde_paths, seed, "fig3", device, "full", dtype,
                        progress, sde_dt)
    mblk = AttentionBlock(gamma, tau0=tau0, heads=heads)
    mrows = density.density_row(f"{heads}-head attention",
                        lambda n: AttentionBlock(gamma, tau0=tau0, heads=heads, nk=n // heads),
                        mblk, LinearBlock(gamma), V0, T, mw, multihead_nets, sde_paths, seed,
                        "fig3", device, "full", dtype, progress, sde_dt)
    plt = common.pyplot()
    ncol = max(len(tw), len(mw)) + 1
    fig, axes = plt.subplots(2, ncol, figsize=(3.4 * ncol, 7.2), squeeze=False)
    density.plot_density_row([*axes[0, :len(tw)], axes[0, -1]], trows, "Transformer block",
                     "MLP-only SDE", "C2")
    density.plot_density_row([*axes[1, :len(mw)], axes[1, -1]], mrows, f"{heads}-head attention",
                     "no-attention SDE", "C4")
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
            + density.ks_table("Transformer block", trows, "MLP-only SDE") + "\n\n"
            + density.ks_table(f"{heads}-head attention", mrows, "no-attention SDE"))
    arrays = {**density.ks_arrays("transformer_", trows), **density.ks_arrays("multihead_", mrows)}
    files = common.save(fig, out, NAMES["fig3"], arrays,
                 common.caption("fig3", command, settings, body, seconds), settings)
    said = {k: f"{density.trend(r)}; {density.power_sentence(r, c)}; {density.v00_sentence(r)}"
            for k, r, c in (("t", trows, "the MLP-only SDE"), ("m", mrows, "the no-attention SDE"))}
    paragraph = (f"The same comparison, at gamma = {gamma:g}, tau0 = {tau0:g}, T = {T:g}, with "
                 "every weight drawn, for the shaped Transformer block (attention then MLP; "
                 f"{transformer_nets} networks per width; {said['t']}) and for {heads}-head "
                 f"shaped attention (nk = n/{heads}; {multihead_nets} networks per width; "
                 f"{said['m']}).")
    numbers = {"transformer": density.ks_numbers(trows), "multihead": density.ks_numbers(mrows)}
    return FigureOutput("fig3", NAMES["fig3"], files, numbers, paragraph, seconds, settings)
