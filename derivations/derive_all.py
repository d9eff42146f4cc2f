"""Regenerate every derived artifact (LaTeX, Markdown preview, NumPy/Torch kernels).

    python derivations/derive_all.py            # write the artifacts
    python derivations/derive_all.py --check    # exit 1 if any is stale
    python derivations/derive_all.py --entrywise 3   # also print the per-entry b, Sigma for m=3

The derivation itself lives in `shapedsde.symbolic` (the library), so that the
CLI (`shapedsde derive`), this script and the tests run the same code.
"""

from __future__ import annotations

import argparse
import sys
import time

import sympy as sp

from shapedsde.codegen import BLOCK_NAMES, regenerate
from shapedsde.symbolic.entrywise import derive_block


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale artifacts")
    parser.add_argument("--entrywise", type=int, metavar="M", default=0,
                        help="also derive and print the per-entry coefficients for m = M")
    args = parser.parse_args()
    start = time.perf_counter()
    stale = regenerate(check=args.check)
    verb = "stale" if args.check else "written"
    for path in stale:
        print(f"{verb}: {path}")
    print(f"matrix-form derivation and codegen: {time.perf_counter() - start:.1f} s, "
          f"{len(stale)} file(s) {verb}")
    for name in BLOCK_NAMES if args.entrywise else ():
        start = time.perf_counter()
        c = derive_block(name, args.entrywise)
        print(f"\n{name}, m = {args.entrywise} ({time.perf_counter() - start:.1f} s)")
        print("b(V) =", sp.pretty(c.drift.applyfunc(sp.factor)))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
