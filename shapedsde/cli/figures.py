"""`shapedsde figures`."""

from __future__ import annotations

import argparse
from typing import Any

from .. import _validation as val
from .common import EXIT_OK, torch_device
from .options import add_device


def add_parser(sub: Any, fmt: Any) -> None:
    """The `figures` command's options."""
    p = sub.add_parser("figures", formatter_class=fmt,
                       help="make the figures (paper Figure 1, densities, rank collapse, "
                            "law distance vs width)",
                       description="Write the figures to OUT (PNG + PDF, data .npz, caption .md "
                                   "with the command and settings) and OUT/README.md: (1) the "
                                   "paper's Figure 1 setting (n = 200, d = 150, gamma = "
                                   "1/sqrt(8), tau0 = 1); (1n) the same with shaped "
                                   "pre-RMSNorm and post-RMSNorm attention, networks and "
                                   "SDEs; (2) final-layer correlation density "
                                   "vs width against the SDE, with KS distances; (3) the same "
                                   "for the Transformer block and 4-head attention; (4) rank "
                                   "collapse of unshaped baselines and ablations; (5) figure 2's "
                                   "KS distances against width, log-log, with an n^(-1/2) "
                                   "guide. All seeds derive from --seed.",
                       epilog="example:\n  shapedsde figures --quick --out docs/figures --seed 0")
    p.add_argument("--quick", action="store_true",
                   help="fewer samples and smaller widths (a few minutes on 2 CPU cores)")
    p.add_argument("--out", default="docs/figures", metavar="DIR",
                   help="output folder (default docs/figures)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="root seed (default 0)")
    p.add_argument("--only", metavar="LIST", help="comma-separated figure numbers, e.g. 1,1n,4 "
                                                  "(default: all; 5 needs 2's data)")
    p.add_argument("--method", choices=("auto", "full", "gram"), default="auto",
                   help="finite sampler for the single-head blocks (default auto: the "
                        "exact-in-law V chain where available; full: every weight drawn)")
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`shapedsde figures`: the exit status."""
    # Imported when run: SciPy and Matplotlib cost the other commands ~2 s at start-up.
    from ..experiments import make_figures, parse_only

    only = parse_only(args.only)  # validate before any work
    seed = val.check_seed(args.seed, "--seed")
    make_figures(args.out, quick=args.quick, seed=seed, device=str(torch_device(args.device)),
                 only=only, method=args.method, progress=not args.quiet)
    print(f"figures written to {args.out} (README.md, summary.json)")
    return EXIT_OK
