"""`shapedsde trainability`."""

from __future__ import annotations

import argparse
from typing import Any

from .. import _validation as val
from ..parameters import declared
from .common import EXIT_OK, load_matrix, option_blocks, torch_device
from .options import add_device
from .stability import _floats

DEFAULT_GAMMAS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.95)
DEFAULT_TAU0S = (0.2, 0.45, 1.0, 2.0, 4.0)


def add_parser(sub: Any, fmt: Any) -> None:
    """The `trainability` command: the tangent SDE's map over (gamma, tau0)."""
    p = sub.add_parser(
        "trainability", formatter_class=fmt,
        help="map the Jacobian (tangent SDE) over (gamma, tau0): exits, growth, sensitivity",
        description="Trainability map over (gamma, tau0) from the tangent SDE (the tokens' "
                    "Gram V and a forward-mode tangent's U, from Q0 = [[V0, 0], [0, I]]): "
                    "per point P(exit by T) of tr V < R tr V0 with its SE; for the survivors "
                    "the Jacobian growth g = log(tr U_T / tr U_0) and the relative "
                    "sensitivity s = log[(tr U_T / tr V_T) / (tr U_0 / tr V_0)] (mean, sd, "
                    "rate per unit T), the near-singular fraction of V_T "
                    "(lambda_min / tr V < 1e-2), the median off-diagonal correlation, the "
                    "exploded and non-finite paths, and a prediction (healthy / exploding / "
                    "collapsing; docs/trainability.md). Writes <out>/<name>.{json,csv,png} "
                    "and <name>_summary.txt.",
        epilog="example (the committed map: 175 s CPU, 6 min wall on a shared CPU, one thread):\n"
               "  shapedsde trainability --block transformer --T 0.5 --paths 160 --seed 0 "
               "--progress --out docs/figures/trainability\n"
               "a small run:\n"
               "  shapedsde trainability --block attention --gammas 0.3,0.9 --tau0s 0.3,1 "
               "--T 0.1 --paths 50 --out /tmp/tmap")
    p.add_argument("--block", default="transformer", choices=("attention", "transformer"),
                   help="non-causal shaped attention, or the Transformer block (attention + "
                        "MLP) (default transformer)")
    p.add_argument("--gammas", type=_floats, default=None,
                   help="comma-separated gammas in (0, 1] (default "
                        f"{','.join(map(str, DEFAULT_GAMMAS))})")
    p.add_argument("--tau0s", type=_floats, default=None,
                   help="comma-separated tau0 > 0 (default "
                        f"{','.join(map(str, DEFAULT_TAU0S))})")
    p.add_argument("--T", type=float, default=0.5, help="depth-to-width ratio (default 0.5)")
    p.add_argument("--V0", default=None, metavar="FILE.npy",
                   help="initial (m, m) token covariance, positive definite (default: m = 4, "
                        "V0 = 0.8 I + 0.2 11^T)")
    p.add_argument("--paths", type=int, default=200, help="SDE paths per point (default 200)")
    p.add_argument("--steps", type=int, default=None,
                   help="equal solver steps (default dt <= 0.01)")
    p.add_argument("--seed", type=int, default=0,
                   help="root seed; point (i, j) gets child_seed(seed, 0, i K + j) (default 0)")
    p.add_argument("--exit-trace", type=float, default=5.0, metavar="R", dest="exit_trace",
                   help="stop a path when tr V >= R tr V0, R > 1 (default 5)")
    add_device(p)
    p.add_argument("--heads", type=int, default=None, help="attention heads n_H")
    p.add_argument("--c-plus", type=float, default=None, help="MLP c_+ (transformer)")
    p.add_argument("--c-minus", type=float, default=None, help="MLP c_- (transformer)")
    p.add_argument("--workers", type=int, default=1,
                   help="Dask local workers (default 1: in this process)")
    p.add_argument("--scheduler", default=None, help="an existing Dask scheduler address")
    p.add_argument("--out", default="docs/figures/trainability", help="output folder")
    p.add_argument("--name", default=None, help="file stem (default trainability_<block>_m<m>)")
    p.add_argument("--progress", action="store_true", help="progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`shapedsde trainability`: the exit status."""
    from ..experiments.trainability_map import run_trainability

    params = {k: getattr(args, k) for k in ("heads", "c_plus", "c_minus")
              if getattr(args, k) is not None}
    cls = option_blocks().get(args.block)
    extra = [k for k in params if cls is not None and k not in {p.name for p in declared(cls)}]
    if extra:
        raise ValueError(f"block {args.block!r} takes no "
                         f"{', '.join('--' + k.replace('_', '-') for k in extra)}")
    V0 = None if args.V0 is None else load_matrix(args.V0, "--V0")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1; got {args.workers}")
    tm, written = run_trainability(
        args.out, name=args.name, block_name=args.block,
        gammas=DEFAULT_GAMMAS if args.gammas is None else args.gammas,
        tau0s=DEFAULT_TAU0S if args.tau0s is None else args.tau0s, T=args.T, V0=V0,
        paths=args.paths, seed=val.check_seed(args.seed, "--seed"),
        exit_trace=args.exit_trace, steps=args.steps, device=str(torch_device(args.device)),
        progress=args.progress, workers=args.workers, scheduler=args.scheduler, **params)
    print(tm.summary())
    print("wrote " + ", ".join(str(p) for p in written))
    return EXIT_OK
