"""Verification: finite networks against the covariance SDE (see DESIGN.md,
"How a result is verified"), with numbers, figures and one-line verdicts.

    from shapedsde.verification import run_verification
    report = run_verification(quick=True, out_dir="verify/out", seed=0)
"""

from .report import Config, run_verification

__all__ = ["Config", "run_verification"]
