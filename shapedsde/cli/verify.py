"""`shapedsde verify`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from .. import _validation as val
from .common import EXIT_FAIL, EXIT_OK, torch_device
from .options import add_device


def add_parser(sub: Any, fmt: Any) -> None:
    """The `verify` command's options."""
    p = sub.add_parser("verify", formatter_class=fmt,
                       help="check the SDE against finite networks",
                       description="Run the verification suite (one-step moments, laws at T "
                                   "with negative controls, every block, the stopped process "
                                   "at depth, tangents, normalised blocks, the log-spectrum), "
                                   "print each verdict line once and a tally, and "
                                   "write report.html (verdicts, figures, settings, the "
                                   "command that reproduces it), report.json and PNG figures. "
                                   "Exit status 1 if a check fails.",
                       epilog="examples:\n  shapedsde verify --quick              # results/"
                              "verify/report.html\n  shapedsde verify --quick --reference  "
                              "# regenerate the checked-in verify/out/")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small, fast settings (default)")
    mode.add_argument("--full", action="store_true", help="the full-size checks")
    mode.add_argument("--tiny", action="store_true",
                      help="a smoke run in seconds: tiny samples (no power), no every-block, "
                           "depth, tangent, normalised or spectrum checks")
    p.add_argument("--out", metavar="DIR",
                   help="where to write the report and figures (default results/verify)")
    p.add_argument("--reference", action="store_true",
                   help="write the checked-in reference report verify/out/ instead, without "
                        "wall times or machine-dependent fields")
    p.add_argument("--seed", type=int, metavar="S", help="root seed (default 0)")
    p.add_argument("--workers", type=int, default=1, metavar="W",
                   help="Dask worker processes for the sampling tasks (default 1: in "
                        "process); results are identical for any W")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of an existing Dask scheduler (e.g. tcp://host:8786) "
                        "instead of an embedded local cluster")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`shapedsde verify`: the exit status."""
    # Imported when run: SciPy and Matplotlib cost the other commands ~2 s at start-up.
    from .. import verification

    mode = "full" if args.full else "tiny" if args.tiny else "quick"
    kwargs: dict[str, Any] = {"quick": mode != "full", "device": str(torch_device(args.device)),
                              "seed": val.check_seed(0 if args.seed is None else args.seed,
                                                     "--seed"),
                              "workers": val.check_positive_int("--workers", args.workers),
                              "scheduler": args.scheduler, "reference": args.reference}
    if mode == "tiny" and (args.scheduler is not None or args.workers != 1):
        raise ValueError("--tiny runs no every-block checks, the only ones that run on Dask: "
                         "it takes no --scheduler or --workers (use --quick)")
    if args.reference and args.out is not None:
        raise ValueError("--reference writes the checked-in report verify/out/; it takes no "
                         "--out")
    out = reference_dir() if args.reference else Path(args.out or "results/verify")
    if mode == "tiny":
        kwargs.update(config=verification.Config.tiny(), every_block=False)
    kwargs["command"] = verify_command(mode, kwargs["seed"], kwargs["device"],
                                       None if args.reference else args.out, args.reference)
    result = verification.run_verification(out_dir=out, **kwargs)  # prints each verdict line once
    s = result["summary"]
    print(f"verdicts: {s['PASS']} PASS, {s['FAIL']} FAIL, {s['NO POWER']} NO POWER; "
          f"report {_shown(out / 'report.html')} (numbers in report.json, figures beside)")
    return EXIT_OK if s["FAIL"] == 0 else EXIT_FAIL


def reference_dir() -> Path:
    """verify/out/ of the source checkout this package runs from."""
    root = Path(__file__).resolve().parents[2]
    if not ((root / "pyproject.toml").is_file() and (root / "verify").is_dir()):
        raise ValueError(f"--reference rewrites verify/out/ of a source checkout, but "
                         f"shapedsde runs from {root}, which is not one")
    return root / "verify" / "out"


def verify_command(mode: str, seed: int, device: str, out: str | None,
                   reference: bool) -> str:
    """The shapedsde command line that reproduces a verification run."""
    parts = ["shapedsde", "verify", f"--{mode}", "--seed", str(seed)]
    if device != "cpu":
        parts += ["--device", device]
    if reference:
        parts.append("--reference")
    elif out is not None:
        parts += ["--out", out]
    return " ".join(shlex.quote(p) for p in parts)


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
