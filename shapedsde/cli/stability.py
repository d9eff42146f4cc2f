"""`shapedsde stability`."""

from __future__ import annotations

import argparse
from typing import Any

from .. import _validation as val
from ..normalised import NORMS, PLACES
from .common import EXIT_OK, torch_device
from .options import add_device


def add_parser(sub: Any, fmt: Any) -> None:
    """The `stability` command: the map over (gamma, tau0) and finite spot checks."""
    p = sub.add_parser("stability", formatter_class=fmt,
                       help="map the SDE's behaviour over (gamma, tau0), with finite spot checks",
                       description="Stability map over (gamma, tau0): spread of rho_T, "
                                   "probability of a near-degenerate V_T, P(exit) and the "
                                   "non-finite fraction, from the covariance SDE; plus "
                                   "finite-network spot checks against it. Writes "
                                   "<out>/<name>.{json,npz,png,pdf}, <name>_spot.json and "
                                   "<name>_summary.txt.",
                       epilog="examples:\n  shapedsde stability --quick --out results/stability"
                              "\n  shapedsde stability --quick --norm rms --norm-at pre "
                              "--out results/stability")
    p.add_argument("--block", default="attention", choices=("attention", "transformer"))
    p.add_argument("--gammas", type=_floats, default=None,
                   help="comma-separated gammas in (0, 1] (default 0.2,0.35,0.5,0.7,1)")
    p.add_argument("--tau0s", type=_floats, default=None,
                   help="comma-separated tau0 > 0 (default 0.25,0.35,0.5,0.7,1,1.4,2)")
    p.add_argument("--T", type=float, default=1.0, help="depth-to-width ratio (default 1)")
    p.add_argument("--m", type=int, default=3, help="tokens (default 3)")
    p.add_argument("--rho0", type=float, default=0.2,
                   help="V0 = (1 - rho0) I + rho0 11^T (default 0.2)")
    p.add_argument("--paths", type=int, default=None, help="SDE paths per cell (default 4000)")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default dt <= 0.005)")
    p.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    add_device(p)
    p.add_argument("--heads", type=int, default=None, help="attention heads n_H (attention)")
    p.add_argument("--c-plus", type=float, default=None, help="MLP c_+ (transformer)")
    p.add_argument("--c-minus", type=float, default=None, help="MLP c_- (transformer)")
    p.add_argument("--norm", choices=NORMS, default=None,
                   help="per-token normalisation around the block (RMSNorm, or LayerNorm "
                        "without gain); its state stays a correlation matrix (tr V = m), so "
                        "the figure shows mean and median rho_T in place of the trace and "
                        "P(exit) panels; docs/normalisation.md")
    p.add_argument("--norm-at", choices=PLACES, default=None, dest="norm_at",
                   help="with --norm: post (default; X' = Norm(lam X + gam Branch(X))) or "
                        "pre (X' = lam X + gam Branch(Norm(X))); the transformer block "
                        "sub-layer by sub-layer")
    p.add_argument("--eig-threshold", type=float, default=0.05,
                   help="near-degenerate: lambda_min(corr) below this (default 0.05)")
    p.add_argument("--rho-threshold", type=float, default=0.99,
                   help="collapse: some rho above this (default 0.99)")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the attention-free (tau0 = inf) column")
    p.add_argument("--spot", type=_point, action="append", default=None, metavar="GAMMA,TAU0",
                   help="finite-network spot check at this point (repeatable)")
    p.add_argument("--widths", type=_ints, default=None, help="spot-check widths (default 64,128)")
    p.add_argument("--nets", type=int, default=None,
                   help="finite nets per spot check (default 2000)")
    p.add_argument("--spot-paths", type=int, default=None,
                   help="SDE paths per spot check (default: --paths)")
    p.add_argument("--out", default="docs/figures/stability", help="output folder")
    p.add_argument("--name", default=None, help="file stem (default stability_<block>_m<m>)")
    p.add_argument("--quick", action="store_true",
                   help="small run: defaults become a 3 x 3 grid, 300 paths, one spot check "
                        "at (0.7, 0.7), width 32, 300 nets (explicit options still win)")
    p.add_argument("--progress", action="store_true", help="tqdm progress bars")
    p.set_defaults(func=run)

def run(args: argparse.Namespace) -> int:
    """`shapedsde stability`: the exit status."""
    # Imported when run: SciPy and Matplotlib cost the other commands ~2 s at start-up.
    from ..experiments import run_stability

    params = {k: getattr(args, k) for k in ("heads", "c_plus", "c_minus", "norm", "norm_at")
              if getattr(args, k) is not None}
    lines, written = run_stability(
        args.out, block=args.block, quick=args.quick, T=args.T, m=args.m, rho0=args.rho0,
        seed=val.check_seed(args.seed, "--seed"), device=str(torch_device(args.device)),
        steps=args.steps, reference=not args.no_reference, eig_threshold=args.eig_threshold,
        rho_threshold=args.rho_threshold, name=args.name, spot_paths=args.spot_paths,
        progress=args.progress, block_params=params, gammas=args.gammas, tau0s=args.tau0s,
        paths=args.paths, spot=args.spot, widths=args.widths, nets=args.nets)
    print("\n".join(lines))
    print("wrote " + ", ".join(str(p) for p in written))
    return EXIT_OK


def _list_of(cast: type) -> Any:
    """An argparse type: comma-separated values of `cast` (int or float)."""
    def parse(text: str) -> list:
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {cast.__name__}s; got "
                                             f"{text!r}") from None
    return parse


_floats, _ints = _list_of(float), _list_of(int)


def _point(text: str) -> tuple[float, float]:
    v = _floats(text)
    if len(v) != 2:
        raise argparse.ArgumentTypeError(f"expected GAMMA,TAU0; got {text!r}")
    return v[0], v[1]
