"""Verify the covariance SDE against finite networks: `shapedsde verify` as a script.

    python verify/run_verification.py --quick                # results/verify/report.html
    python verify/run_verification.py --quick --reference    # the checked-in verify/out/
    python verify/run_verification.py --full --device cuda

Takes the options of `shapedsde verify` (see verify/README.md). Prints one verdict line
per check (PASS / FAIL / NO POWER) and a tally naming the HTML report.
Exit status: 0 when no check FAILs, 1 otherwise, 2 for invalid arguments.
"""

from __future__ import annotations

import sys

from shapedsde.cli import main

if __name__ == "__main__":
    sys.exit(main(["verify", *sys.argv[1:]]))
