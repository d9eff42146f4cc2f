"""Verify the covariance SDE against finite networks: report.json, figures, verdicts.

    python verify/run_verification.py --quick --out verify/out
    python verify/run_verification.py --full --device cuda

The same as `shapedsde verify` (every option of `shapedsde verify --help`), except that
the output folder defaults to verify/out. Prints one verdict line per check (PASS / FAIL /
NO POWER); see verify/README.md. Exit status: 0 when no check FAILs, 1 otherwise, 2 for
invalid arguments.
"""

from __future__ import annotations

import sys

from shapedsde.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    given = any(a == "--out" or a.startswith("--out=") for a in argv)
    return cli_main(["verify", *argv, *([] if given else ["--out", "verify/out"])])


if __name__ == "__main__":
    sys.exit(main())
