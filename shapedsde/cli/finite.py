"""`shapedsde finite`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from .. import _io, finite
from .. import _validation as val
from ..blocks import Block
from ..sde import exit_summary
from .common import (
    EXIT_OK,
    block_from_args,
    block_meta,
    check_work,
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
    """The `finite` command's options."""
    p = sub.add_parser("finite", formatter_class=fmt, help="sample finite-width networks",
                       description="Run NETS independent finite networks of width n and depth "
                                   "d = round(T n) sub-layers of the block from a hidden state "
                                   "with covariance V0, and save V = X X^T / n at depth d as "
                                   "an (NETS, m, m) array to OUT.npy (metadata in OUT.json).",
                       epilog=EXAMPLE_V + "\nexample:\n  shapedsde finite --block attention "
                                          "--gamma 0.8 --tau0 1 --V0 V0.npy --width 64 "
                                          "--T 0.5 --nets 1000 --seed 0 --out net.npy")
    add_block_args(p, finite=True)
    p.add_argument("--V0", required=True, metavar="FILE.npy", help="initial covariance (m, m)")
    p.add_argument("--width", type=int, required=True, metavar="n", help="width n >= m")
    p.add_argument("--T", type=float, required=True, help="depth-to-width ratio T = d / n >= 0")
    p.add_argument("--nets", type=int, required=True, metavar="N",
                   help="number of independent networks")
    p.add_argument("--seed", type=int, required=True, metavar="S",
                   help="random seed, an integer in [0, 2^63)")
    add_insist(p)
    p.add_argument("--method", choices=("full", "reduced", "gram", "auto"),
                   help="sampler (see shapedsde.finite; default: its default)")
    add_exit_trace(p, "net")
    add_save_spectrum(p)
    add_tangent(p, "net")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of hidden states and weights (V is accumulated in "
                        "float64 either way)")
    add_device(p)
    p.add_argument("--out", required=True, metavar="OUT.npy", help="output file (.npy)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def finite_bytes(blk: Block, m: int, width: int, nets: int, method: str, itemsize: int,
                 dtype: Any, device: Any) -> int:
    """Bytes a finite run holds: the initial state, one batch of networks with its weights
    (the batch `shapedsde.finite` picks), and the (nets, m, m) results."""
    n, nk, heads = width, getattr(blk, "nk", None) or width, getattr(blk, "heads", 1)
    batch = min(nets, finite._default_batch(method, m, n, getattr(blk, "nk", None), heads,
                                             device, dtype))
    if method == "gram":
        per_net = 8 * m * m * 32 + itemsize * m * (2 * min(nk, 64) + min(n, 64))
    elif method == "reduced":
        per_net = itemsize * (8 + 4 * heads) * m * max(n, nk)
    else:
        per_net = itemsize * (n * n + 2 * heads * n * nk + 8 * m * n)
    return 4 * 8 * n * m + batch * per_net + 3 * 8 * nets * m * m


def run(args: argparse.Namespace) -> int:
    """`shapedsde finite`: the exit status."""
    blk = block_from_args(args)
    V0 = load_matrix(args.V0, "V0")
    blk, V0 = with_tangent(args, blk, V0)
    if V0.ndim != 2:
        raise ValueError(f"V0 must be one (m, m) matrix; got shape {V0.shape}")
    # Validate here too, so bad numbers fail before the (heavier) sampler is imported.
    width = blk.check_width(val.check_positive_int("width", args.width))
    nets = val.check_positive_int("nets", args.nets)
    T = val.check_time(args.T)
    seed = val.check_seed(args.seed, "--seed")
    if width < V0.shape[-1]:
        raise ValueError(f"--width {width} must be >= m = {V0.shape[-1]} (the tokens of V0)")
    output = _io.prepare_output(args.out, extras=(() if args.exit_trace is None else ("exit",))
                                + (("spectrum",) if args.save_spectrum else ()),
                                inputs={"--V0": args.V0})
    out = output.data
    device = torch_device(args.device)
    dtype = torch_dtype(args.dtype)
    method = args.method or "full"
    if method == "auto":
        method = "gram" if finite.supports_gram(blk) else "full"
    depth = finite.check_depth(T, width)
    check_work(args, finite_bytes(blk, V0.shape[-1], width, nets, method,
                                  dtype_bytes(args.dtype), dtype, device),
               f"finite with {nets} nets of width {width}", steps=depth,
               step_name="sub-layers (depth = T * width)")
    extra = {} if args.method is None else {"method": args.method}
    if args.exit_trace is not None:
        extra["exit_trace"] = args.exit_trace
    run = finite.simulate(blk, V0, width=width, T=T, nets=nets, seed=seed,
                   device=device, dtype=dtype, progress=not args.quiet, **extra)
    V = (run if args.exit_trace is None else run.V).detach().cpu().numpy()
    exits: dict[str, Any] = {}
    extras = {}
    if args.exit_trace is not None:
        extras["exit"] = run.exit_time.numpy()
        exits = {**exit_summary(extras["exit"], args.exit_trace),
                 "exit_file": str(output.extras["exit"])}
    meta = {**block_meta(blk), "nk": getattr(blk, "nk", None),
            "width": width, "depth": depth, "T": T, "nets": nets, "seed": seed,
            "device": str(device), "method": method, "dtype": args.dtype,
            "V0": V0.tolist(), "V0_file": args.V0, "out": str(out),
            "n_nonfinite": int((~np.isfinite(V).all(axis=(-2, -1))).sum()),
            "exit_trace": args.exit_trace, **exits}
    if args.save_spectrum:
        extras["spectrum"], spectrum_meta = spectrum_sidecar(V, output, blk)
        meta.update(spectrum_meta)
    _io.write_outputs(output, V, meta, extras=extras)
    params = ", ".join(f"{k}={v:g}" for k, v in blk.kernel_params().items())
    label = getattr(blk, "label", blk.name)
    line = (f"finite {label}({params}): {args.nets} nets, width {args.width}, "
            f"depth {depth} (T={T:g}), seed {args.seed}, {device} -> {out}")
    if exits:
        line += (f" | exit at tr V >= {val.fmt_level(args.exit_trace)} tr V0: "
                 f"{exits['n_exits']} nets, "
                 f"P(exit) = {exits['p_exit']:.4f} +- {exits['p_exit_se']:.4f}")
    print(line)
    if (warn := spectrum_warning(meta)) is not None:
        print(warn, file=sys.stderr)
    if meta["n_nonfinite"]:  # e.g. a V0 near the float64 limit overflows
        print(f"warning: {meta['n_nonfinite']} of {nets} networks became non-finite; their rows "
              f"in {out} are not finite (n_nonfinite in {output.meta})", file=sys.stderr)
    return EXIT_OK
