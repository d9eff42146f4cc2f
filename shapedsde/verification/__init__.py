"""Verification: finite networks against the covariance SDE (see DESIGN.md,
"How a result is verified"), with numbers, figures and one-line verdicts.

    from shapedsde.verification import run_verification
    report = run_verification(quick=True, out_dir="results/verify", seed=0)
    # results/verify/report.html (verdicts, figures, settings), report.json, PNGs
"""

from .report import Config, run_verification

__all__ = ["Config", "run_verification"]
