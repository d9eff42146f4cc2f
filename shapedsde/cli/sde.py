"""`shapedsde sde`."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

import numpy as np

from .. import _io
from .. import _validation as val
from .. import sde as solver  # looked up when run: tests replace solver.solve
from .common import (
    EXIT_OK,
    MAX_STEPS,
    SIGMA_CHECK_BYTES,
    block_from_args,
    block_meta,
    check_work,
    coefficients,
    dtype_bytes,
    load_matrix,
    spectrum_sidecar,
    spectrum_warning,
    torch_device,
    torch_dtype,
    with_tangent,
)
from .options import (
    EXAMPLE_V,
    add_block_args,
    add_device,
    add_exit_trace,
    add_insist,
    add_save_spectrum,
    add_tangent,
)


def add_parser(sub: Any, fmt: Any) -> None:
    """The `sde` command's options."""
    p = sub.add_parser("sde", formatter_class=fmt, help="solve the covariance SDE (Monte Carlo)",
                       description="Simulate PATHS independent paths of the covariance SDE from "
                                   "V0 to time T (depth-to-width ratio) with the positive-"
                                   "definite adaptive scheme of shapedsde.sde (docs/solver.md). "
                                   "Writes V at min(T, exit time) as an (N, m, m) array to "
                                   "OUT.npy (NaN rows: paths that blew up), the per-path "
                                   "explosion flags to OUT.exploded.npy, with --exit-trace the "
                                   "exit times (inf: none) to OUT.exit.npy, the run's metadata "
                                   "and counters to OUT.json, and prints a one-line summary.",
                       epilog=EXAMPLE_V + "\nexample:\n  shapedsde sde --block attention "
                                          "--gamma 0.8 --tau0 1 --V0 V0.npy --T 0.5 "
                                          "--paths 4000 --seed 0 --out vt.npy")
    add_block_args(p)
    p.add_argument("--V0", required=True, metavar="FILE.npy", help="initial covariance (m, m)")
    p.add_argument("--T", type=float, required=True, help="horizon T >= 0")
    p.add_argument("--paths", type=int, required=True, metavar="N", help="number of paths")
    p.add_argument("--seed", type=int, required=True, metavar="S",
                   help="random seed, an integer in [0, 2^63)")
    p.add_argument("--steps", type=int, metavar="K",
                   help="K equal steps instead of the adaptive default (at most "
                        f"{MAX_STEPS:.0e} without --insist)")
    p.add_argument("--rtol", type=float, default=0.1,
                   help="adaptive step tolerance (docs/solver.md; smaller is finer)")
    p.add_argument("--save-every", type=int, metavar="K",
                   help="with --steps: also write the states every K steps (and at t = 0, "
                        "T) to OUT.trajectory.npy (k, paths, m, m), their times to "
                        "OUT.times.npy")
    p.add_argument("--save-times", type=int, metavar="K",
                   help="also write the states at K + 1 equally spaced times in [0, T] "
                        "(the steps land on them) to OUT.trajectory.npy and OUT.times.npy")
    add_exit_trace(p, "path")
    add_save_spectrum(p)
    add_tangent(p, "path")
    add_insist(p)
    p.add_argument("--noise-map", choices=("matched", "corrected"), default="matched",
                   dest="noise_map",
                   help="the step's noise map: matched (default; weak order 2 on E log det V, "
                        "a fifth of the steps at many tokens) or corrected (weak order 1, the "
                        "former default); docs/solver.md, 'Many tokens'")
    p.add_argument("--dt-max", type=float, metavar="H", dest="dt_max",
                   help="largest adaptive step (default: 0.01 up to m = 7 tokens, growing "
                        "like m + 1 beyond; docs/solver.md)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    add_device(p)
    p.add_argument("--out", required=True, metavar="OUT.npy", help="output file (.npy)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def sde_bytes(m: int, paths: int, itemsize: int, noise_groups: int | None) -> int:
    """Bytes the SDE solver holds: (paths, m, m) states and temporaries, and the
    (paths, m^2, m^2) Sigma with its eigenvectors where there is no structured noise."""
    per_path = itemsize * (24 + (noise_groups or 0)) * m * m
    if noise_groups is None:
        per_path += itemsize * 8 * m**4
    return paths * per_path + 2 * 8 * paths * m * m  # + the float64 copy that is saved


def run(args: argparse.Namespace) -> int:
    """`shapedsde sde`: the exit status."""
    blk = block_from_args(args)
    seed = val.check_seed(args.seed, "--seed")
    saves = _save_request(args)
    output = _io.prepare_output(
        args.out, extras=("exploded",) + (() if args.exit_trace is None else ("exit",))
        + (("trajectory", "times") if saves else ())
        + (("spectrum",) if args.save_spectrum else ()), inputs={"--V0": args.V0})
    V0 = load_matrix(args.V0, "V0")
    blk, V0 = with_tangent(args, blk, V0)
    T = val.check_time(args.T)
    paths = val.check_positive_int("paths", args.paths)
    steps = solver.default_steps(T) if args.steps is None else val.check_positive_int("steps",
                                                                              args.steps)
    m = V0.shape[-1]
    saved = _saved_states(saves, steps)
    check_work(args, sde_bytes(m, paths, dtype_bytes(args.dtype), blk.noise_groups)
               + 8.0 * saved * paths * m * m,
               f"sde with {paths} paths of {m} x {m}", steps=max(steps, saved - 1),
               step_name="steps" if args.steps else
               "steps (at least T / dt_max, and one per saved time)")
    # A V0 they overflow at would fail at the first step; the full Sigma only where small.
    coefficients(blk, V0, args.dtype,
                 diffusion=8.0 * V0.size * m * m <= SIGMA_CHECK_BYTES)
    dtype = torch_dtype(args.dtype)
    with warnings.catch_warnings():
        # The non-finite warning is repeated below as one line.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = solver.solve(blk, V0, T, paths=paths, seed=seed, steps=args.steps, rtol=args.rtol,
                    dt_max=args.dt_max, exit_trace=args.exit_trace,
                    device=torch_device(args.device), dtype=dtype,
                    progress=not args.quiet, noise_map=args.noise_map,
                    max_steps=10**15 if args.insist else solver.MAX_STEPS, **saves)
    out = output.data
    extras = {"exploded": res.exploded.numpy()}
    if saves:  # (k, paths, m, m), time first, as finite runs record it
        extras["trajectory"] = res.trajectory.cpu().numpy()
        extras["times"] = np.asarray(res.times, dtype=np.float64)
    if args.exit_trace is not None:
        extras["exit"] = res.exit_time.numpy()
    V = res.V.cpu().numpy()
    spectrum_meta: dict[str, Any] = {}
    if args.save_spectrum:
        extras["spectrum"], spectrum_meta = spectrum_sidecar(V, output, blk)
    _io.write_outputs(output, V,
                      {**res.meta, **block_meta(blk), **spectrum_meta,
                       "V0": np.asarray(V0).tolist(), "V0_file": args.V0, "out": str(out),
                       **{f"{k}_file": str(output.extras[k]) for k in extras}},
                      extras=extras)
    print(res.summary())
    if (line := spectrum_warning(spectrum_meta)) is not None:
        print(line, file=sys.stderr)
    if res.meta["n_nonfinite"]:
        print(f"warning: {res.meta['n_nonfinite']} paths became non-finite; their rows in "
              f"{out} are NaN", file=sys.stderr)
    return EXIT_OK


def _save_request(args: argparse.Namespace) -> dict[str, int]:
    """The solver's saving option ({} for none) from --save-every K (fixed steps) or
    --save-times K."""
    if args.save_every is not None and args.save_times is not None:
        raise ValueError("give --save-every or --save-times, not both")
    if args.save_every is not None:
        if args.steps is None:
            raise ValueError("--save-every K counts fixed steps: give --steps too, or use "
                             "--save-times K (K + 1 equally spaced times) with adaptive steps")
        return {"save_every": val.check_positive_int("--save-every", args.save_every)}
    if args.save_times is not None:
        return {"save_times": val.check_positive_int("--save-times", args.save_times)}
    return {}


def _saved_states(saves: dict[str, int], steps: int) -> int:
    """How many states per path a saving option keeps (at most; with t = 0 and T)."""
    if "save_times" in saves:
        return saves["save_times"] + 2
    return steps // saves["save_every"] + 2 if saves else 0
