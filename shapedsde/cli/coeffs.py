"""`shapedsde coeffs`."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from .. import _io
from .common import EXIT_OK, block_from_args, block_meta, check_work, coefficients, load_matrix
from .options import EXAMPLE_V, add_block_args, add_insist


def add_parser(sub: Any, fmt: Any) -> None:
    """The `coeffs` command's options."""
    p = sub.add_parser("coeffs", formatter_class=fmt, help="print b(V) and Sigma(V) as JSON",
                       description="Evaluate the drift b(V) (m x m) and diffusion Sigma(V) "
                                   "(m x m x m x m, Sigma^{ab,cd} = lim n Cov[dV^ab, dV^cd]) "
                                   "of a block and print them as JSON "
                                   '{"block", "params", "drift", "diffusion"}.',
                       epilog=EXAMPLE_V + "\nexample:\n  shapedsde coeffs --block attention "
                                          "--gamma 0.8 --tau0 1 --V V0.npy")
    add_block_args(p)
    p.add_argument("--V", required=True, metavar="FILE.npy", help="the covariance V (m, m)")
    p.add_argument("--out", metavar="OUT.npy",
                   help="write b(V) to OUT.npy, Sigma(V) to OUT.diffusion.npy and the block "
                        "to OUT.json instead of printing JSON")
    add_insist(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`shapedsde coeffs`: the exit status."""
    blk = block_from_args(args)
    output = None if args.out is None else _io.prepare_output(args.out, extras=("diffusion",),
                                                                  inputs={"--V": args.V})
    V = load_matrix(args.V, "V")
    m = V.shape[-1]
    # Sigma (and, printed, about 25 bytes of JSON per entry).
    check_work(args, (8 * 4 + (0 if output else 25)) * V.size * m * m, "coeffs")
    drift, diffusion = coefficients(blk, V)
    meta = block_meta(blk)
    if output is None:
        print(json.dumps({**meta, "drift": drift.tolist(), "diffusion": diffusion.tolist()}))
        return EXIT_OK
    _io.write_outputs(output, drift, {**meta, "V": np.asarray(V).tolist(), "V_file": args.V,
                                      "drift": str(output.data),
                                      "diffusion": str(output.extras["diffusion"])},
                      extras={"diffusion": diffusion})
    print(f"coeffs {blk.name}: drift -> {output.data}, diffusion -> "
          f"{output.extras['diffusion']}")
    return EXIT_OK
