"""The log-spectrum of covariance states: log eigenvalues of V, sorted ascending.

`log_spectrum(V)` maps a batch V (..., m, m) (NumPy or Torch) to (..., m): the logarithms
of the eigenvalues of V in ascending order, computed in float64 (`torch.linalg.eigvalsh`)
and returned as the input's kind (a NumPy array for NumPy input, a CPU/device float64
tensor for Torch input).

- A row whose V is not finite (an exploded or failed SDE path, a non-finite network) is
  all NaN: it stays NaN.
- An eigenvalue <= 0 of a finite V cannot be a state of the SDE (the solver keeps every
  state positive definite); it is rounding, of a V that is singular to working precision
  (e.g. exactly duplicated tokens, solved on their range, or a state with
  lambda_min / lambda_max ~ 1e-16). Its log is not -inf or a number: it is NaN, and the
  row is counted. `nonpositive="warn"` (default) issues a `NonPositiveEigenvalueWarning`
  naming the count, "raise" raises ValueError, "nan" only sets the NaN (for callers that
  count it themselves with `log_spectrum_flags`).
- Positive eigenvalues below the rounding level of their row, lambda_i <= m eps
  lambda_max, are kept (their log is an upper bound of the truth, not its value) and
  counted by `log_spectrum_flags`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

NONPOSITIVE_POLICIES = ("warn", "raise", "nan")


class NonPositiveEigenvalueWarning(RuntimeWarning):
    """A finite V had an eigenvalue <= 0 (rounding of a state singular to working
    precision); its log-eigenvalue is NaN."""


def eigenvalues(V: Any) -> torch.Tensor:
    """Eigenvalues (..., m), ascending, float64 Torch, of the symmetric part of V (..., m, m);
    all NaN for rows whose V is not finite."""
    X = torch.as_tensor(np.asarray(V) if not isinstance(V, torch.Tensor) else V.detach())
    X = X.to(torch.float64)
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"V must have shape (..., m, m); got {tuple(X.shape)}")
    lead, m = X.shape[:-2], X.shape[-1]
    X = X.reshape(-1, m, m)
    ok = torch.isfinite(X).flatten(1).all(1)
    w = torch.full((X.shape[0], m), float("nan"), dtype=torch.float64, device=X.device)
    if bool(ok.any()):
        Y = X[ok]
        w[ok] = torch.linalg.eigvalsh(0.5 * (Y + Y.transpose(-1, -2)))
    return w.reshape(*lead, m)


def log_spectrum(V: Any, *, nonpositive: str = "warn") -> Any:
    """log eigenvalues of V (..., m, m), sorted ascending, shape (..., m); see the module
    docstring for NaN rows and non-positive eigenvalues. NumPy in, NumPy out."""
    if nonpositive not in NONPOSITIVE_POLICIES:
        raise ValueError(f"nonpositive must be one of {NONPOSITIVE_POLICIES}; "
                         f"got {nonpositive!r}")
    out, bad, _ = _log_and_flags(eigenvalues(V))
    n_bad = int(bad.sum())
    if n_bad and nonpositive == "raise":
        raise ValueError(f"{n_bad} states have an eigenvalue <= 0 (singular to working "
                         "precision); their log-spectrum is undefined")
    if n_bad and nonpositive == "warn":
        warnings.warn(f"{n_bad} states have an eigenvalue <= 0 (rounding of a state singular "
                      "to working precision); those log-eigenvalues are NaN",
                      NonPositiveEigenvalueWarning, stacklevel=2)
    return out if isinstance(V, torch.Tensor) else out.cpu().numpy()


def log_spectrum_flags(V: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log-spectrum (..., m), nonpositive (...,), unresolved (...,)) as NumPy arrays, with
    no warning: `log_spectrum(V, nonpositive="nan")`, the finite states with an eigenvalue
    <= 0 (NaN there), and the finite states whose smallest eigenvalue is at or below the
    rounding level m eps lambda_max of their row (kept: an upper bound of the truth)."""
    out, bad, low = _log_and_flags(eigenvalues(V))
    return out.cpu().numpy(), bad.cpu().numpy(), low.cpu().numpy()


def _log_and_flags(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    finite = torch.isfinite(w).all(-1)
    bad = finite & (w <= 0).any(-1)
    floor = w.shape[-1] * torch.finfo(torch.float64).eps * w[..., -1].abs()
    low = finite & (w[..., 0] <= floor)
    out = torch.where(w > 0, torch.log(w.clamp_min(torch.finfo(torch.float64).tiny)),
                      torch.full_like(w, float("nan")))
    return out, bad, low
