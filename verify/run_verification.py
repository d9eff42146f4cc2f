"""Verify the covariance SDE against finite networks: report.json, figures, verdicts.

    python verify/run_verification.py --quick --out verify/out
    python verify/run_verification.py --full --device cuda

Prints one verdict line per check (PASS / FAIL / NO POWER); see verify/README.md.
Exit status: 0 when no check FAILs, 1 otherwise, 2 for invalid arguments.
"""

from __future__ import annotations

import argparse
import sys
import time

from shapedsde.verification import run_verification


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help="small samples, a few minutes on 2 CPU cores (default)")
    size.add_argument("--full", dest="quick", action="store_false",
                      help="large samples, more widths and settings (use a GPU or time)")
    ap.add_argument("--out", default="verify/out", help="output folder (default verify/out)")
    ap.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--blocks", nargs="*", default=None, choices=["attention", "linear"],
                    help="blocks to verify (default both)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        report = run_verification(quick=args.quick, out_dir=args.out, seed=args.seed,
                                  device=args.device, blocks=args.blocks, progress=True)
    except ValueError as err:  # bad arguments: say so without a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    s = report["summary"]
    print(f"\n{s['PASS']} PASS, {s['FAIL']} FAIL, {s['NO POWER']} NO POWER "
          f"in {time.perf_counter() - t0:.0f} s; report: {args.out}/report.json")
    return 1 if s["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
