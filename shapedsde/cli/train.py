"""`shapedsde train`."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from .. import _validation as val
from .common import EXIT_OK

#: --quick: a small grid that runs in about a minute on one CPU thread.
QUICK = {"width": 32, "depth": 8, "steps": 60}


def add_parser(sub: Any, fmt: Any) -> None:
    """The `train` command: train small causal Transformers at points (gamma, tau0)."""
    p = sub.add_parser(
        "train", formatter_class=fmt,
        help="train small shaped Transformers at points (gamma, tau0) and two baselines",
        description="Trainability by training: causal Transformers (shaped at each point "
                    "GAMMA,TAU0; the baselines 'standard' (X + Branch, no normalisation) and "
                    "'preln' (pre-LayerNorm)) trained with Adam on next-token prediction of "
                    "sequences from per-sequence random Markov chains, for every learning "
                    "rate and seed. Reports the held-out loss against the Bayes-optimal "
                    "in-context floor and log V, and counts diverged runs. Writes "
                    "<out>/training.{json,csv,png} and training_summary.csv "
                    "(docs/trainability.md).",
        epilog="example:\n  shapedsde train --quick --out results/train\n"
               "  shapedsde train --points 0.5,1 0.9,0.2 preln --lrs 0.003,0.01 "
               "--seeds 0 1 --steps 150 --out results/train")
    p.add_argument("--points", nargs="+", type=_point, default=None, metavar="POINT",
                   help="GAMMA,TAU0 (shaped) or 'standard' / 'preln' (default: six shaped "
                        "points and both baselines)")
    p.add_argument("--lrs", type=_floats, default=None,
                   help="comma-separated Adam learning rates (default 0.003,0.01,0.03)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seeds: each gives data, held-out set and weights (default 0 1 2)")
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default 150)")
    p.add_argument("--width", type=int, default=None, help="width n (default 64)")
    p.add_argument("--depth", type=int, default=None, help="blocks d (default 32)")
    p.add_argument("--length", type=int, default=None, help="tokens m (default 8)")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary V (default 4)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 32)")
    p.add_argument("--concentration", type=float, default=None,
                   help="Dirichlet concentration of the chains' rows (default 0.1)")
    p.add_argument("--out", default="results/train", help="output folder (default "
                                                          "results/train)")
    p.add_argument("--quick", action="store_true",
                   help="small run: width 32, depth 8, 60 steps (explicit options win)")
    p.add_argument("--progress", action="store_true", help="tqdm progress bar")
    p.add_argument("--quiet", action="store_true", help="no line per run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`shapedsde train`: the exit status."""
    from ..experiments.training import (
        DEFAULT_POINTS,
        TrainSettings,
        best_lr_table,
        markdown_table,
        run_training,
    )

    sizes = dict(QUICK) if args.quick else {}
    for key in ("width", "depth", "steps", "length", "vocab", "batch", "concentration"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    for key in ("width", "depth", "steps", "length", "vocab", "batch"):
        if key in sizes:
            val.check_positive_int(f"--{key}", sizes[key])
    settings = TrainSettings(**sizes)
    seeds = [val.check_seed(s, "--seeds") for s in (args.seeds or [0, 1, 2])]
    lrs = [3e-3, 1e-2, 3e-2] if args.lrs is None else args.lrs
    if any(not (0 < lr < math.inf) for lr in lrs):
        raise ValueError(f"--lrs must be finite and > 0; got {lrs}")
    log = None if args.quiet else (lambda line: print(line, flush=True))
    res = run_training(args.out, args.points or DEFAULT_POINTS, lrs, seeds, settings,
                       progress=args.progress, log=log)
    print(f"\nper point at its best learning rate ({settings}):", file=sys.stdout)
    print(markdown_table(best_lr_table(res["summary"])))
    print(f"wrote {args.out}/training.json, training.csv, training_summary.csv, training.png")
    return EXIT_OK


def _floats(text: str) -> list[float]:
    try:
        out = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out:  # "" would have fallen back on the defaults, silently
        raise argparse.ArgumentTypeError(f"expected comma-separated floats; got {text!r}")
    return out


def _point(text: str) -> Any:
    """'standard', 'preln' or GAMMA,TAU0 (gamma in [0, 1], tau0 > 0) as a `Point`."""
    from ..experiments.training import Point

    if text in ("standard", "preln"):
        return Point(text)
    v = _floats(text)
    if len(v) != 2 or not 0 <= v[0] <= 1 or not v[1] > 0:
        raise argparse.ArgumentTypeError(f"expected GAMMA,TAU0 with gamma in [0, 1] and "
                                         f"tau0 > 0, or standard / preln; got {text!r}")
    return Point("shaped", v[0], v[1])
