"""Regenerate every derived artifact (LaTeX, Markdown preview, NumPy/Torch kernels).

    python derivations/derive_all.py            # write the artifacts
    python derivations/derive_all.py --check    # exit 1 if any is stale
    python derivations/derive_all.py --entrywise 3   # also print the per-entry b for m=3

The same as `shapedsde derive [--check]`, plus --entrywise. The derivation itself lives
in `shapedsde.symbolic` (the library), so that the CLI, this script and the tests run the
same code.
"""

from __future__ import annotations

import argparse
import sys
import time

from shapedsde.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale artifacts")
    parser.add_argument("--entrywise", type=int, metavar="M", default=0,
                        help="also derive and print the per-entry drift for m = M")
    args = parser.parse_args(argv)
    code = cli_main(["derive", *(["--check"] if args.check else [])])
    if args.entrywise:
        import sympy as sp

        from shapedsde.artifacts import package_coefficients
        from shapedsde.symbolic.entrywise import derive_block

        for name in package_coefficients():
            start = time.perf_counter()
            c = derive_block(name, args.entrywise)
            print(f"\n{name}, m = {args.entrywise} ({time.perf_counter() - start:.1f} s)")
            print("b(V) =", sp.pretty(c.drift.applyfunc(sp.factor)))
    return code


if __name__ == "__main__":
    sys.exit(main())
