"""Options shared by several commands."""

from __future__ import annotations

import argparse

from ..blocks import Block
from ..normalised import NORMS, PLACES
from ..parameters import Parameter, declared
from .common import MAX_STEPS, block_options, option_blocks


def add_exit_trace(p: argparse.ArgumentParser, unit: str) -> None:
    p.add_argument("--exit-trace", type=float, metavar="R", dest="exit_trace",
                   help=f"stop each {unit} at the first time tr V >= R tr V0 (R > 1) and write "
                        "the exit times (inf: none) to OUT.exit.npy; the metadata records R, "
                        "the number of exits and P(exit) with its standard error")


EXAMPLE_V = ("V files are .npy arrays of an (m, m) symmetric PSD matrix, e.g.\n"
             "  python -c \"import numpy as np; np.save('V0.npy', [[1, .2], [.2, 1]])\"")


def add_block_args(p: argparse.ArgumentParser, *, finite: bool = False,
                   optional: bool = False) -> None:
    g = p.add_argument_group("block", "the residual sub-layer X' = lam X + gamma Branch(X), "
                             "lam^2 + gamma^2 = 1")
    blocks = option_blocks()
    g.add_argument("--block", required=not optional, metavar="NAME",
                   help=f"block name: one of {', '.join(sorted(blocks))}; or "
                        "FILE.py:NAME, a Block (or a function returning one) in your own "
                        "file, which carries its own parameters")
    for prm in block_options():
        shown = finite or not prm.finite_only
        g.add_argument(prm.option, dest=prm.name, **prm.cli,
                       help=option_help(prm, blocks) if shown else argparse.SUPPRESS)
    g.add_argument("--norm", metavar="NORM", dest="norm",
                   help=f"per-token normalisation, one of {', '.join(NORMS)} (RMSNorm, or "
                        "LayerNorm without gain: the feature mean removed first); "
                        "docs/normalisation.md")
    g.add_argument("--norm-at", metavar="WHERE", dest="norm_at",
                   help=f"with --norm: where, one of {', '.join(PLACES)} (post: X' = "
                        "Norm(lam X + gam Branch(X)), the default; pre: X' = lam X + gam "
                        "Branch(Norm(X))); the transformer block is normalised sub-layer by "
                        "sub-layer (post-LN / pre-LN Transformer)")


def option_help(prm: Parameter, blocks: dict[str, type[Block]]) -> str:
    """The parameter's help, with the blocks that take it (from their definitions)."""
    takers = [name for name, cls in blocks.items() if prm in declared(cls)]
    required = " (required with a block name)" if prm.name == "gamma" else ""
    who = "every block" if len(takers) == len(blocks) else ", ".join(takers)
    return f"{prm.help}{required}; taken by {who}"


def add_insist(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insist", action="store_true",
                   help=f"run even when the estimated memory is over the limit (8 GiB or half "
                        f"the machine's memory) or there are over {MAX_STEPS:.0e} steps")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", metavar="DEV",
                   help="torch device: cpu (default) or cuda")


def add_save_spectrum(p: argparse.ArgumentParser) -> None:
    """--save-spectrum: write OUT.spectrum.npy, the log-eigenvalues of V (sorted)."""
    p.add_argument("--save-spectrum", action="store_true",
                   help="also write the log-eigenvalues of each V, sorted ascending, to "
                        "OUT.spectrum.npy (N, m); NaN rows where V is NaN, NaN entries (counted "
                        "in OUT.json) for an eigenvalue <= 0 of rounding; with --tangent, of the "
                        "tokens' block V of Q")


def add_tangent(p: argparse.ArgumentParser, unit: str) -> None:
    """--tangent: the block's tangent (JVP) carried beside the tokens."""
    p.add_argument("--tangent", action="store_true",
                   help=f"carry the input-output Jacobian: each {unit} starts from the joint "
                        "Gram Q0 = [[V0, 0], [0, I_m]] of the tokens and a tangent direction "
                        "independent of them, and OUT.npy holds Q = [[V, C], [C^T, U]] "
                        "(N, 2m, 2m); tr U / m is the squared Jacobian norm along the "
                        "direction; --exit-trace reads tr V (docs/tangent.md)")
