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


#: A finite V is refused (ValueError) where it is not symmetric, or has an eigenvalue below
#: -tol |lambda|_max, beyond rounding: tol = max(RTOL, 100 m eps) in V's own precision
#: (a float32 state rounds at 1e-7, not 1e-16). Within it, an eigenvalue <= 0 is rounding.
RTOL = 1e-8


def eigenvalues(V: Any) -> torch.Tensor:
    """Eigenvalues (..., m), ascending, float64 Torch, of V (..., m, m) (its symmetric part:
    V symmetric to rounding); all NaN for rows whose V is not finite. ValueError for a V
    that is not real, not symmetric, or has an eigenvalue < 0 beyond rounding (`RTOL`):
    not a covariance, whose log-spectrum would be silently wrong."""
    X = _real_tensor(V)
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"V must have shape (..., m, m); got {tuple(X.shape)}")
    tol = max(RTOL, 100 * X.shape[-1] * torch.finfo(X.dtype).eps)
    X = X.to(torch.float64)
    lead, m = X.shape[:-2], X.shape[-1]
    X = X.reshape(-1, m, m)
    ok = torch.isfinite(X).flatten(1).all(1)
    w = torch.full((X.shape[0], m), float("nan"), dtype=torch.float64, device=X.device)
    if bool(ok.any()):
        Y = X[ok]
        size = Y.abs().flatten(1).amax(1).clamp_min(torch.finfo(torch.float64).tiny)
        asym = ((Y - Y.transpose(-1, -2)).abs().flatten(1).amax(1) / size).max()
        if float(asym) > tol:
            raise ValueError(f"V must be symmetric (a covariance); max |V - V^T| / max |V| = "
                             f"{float(asym):.3g}")
        wy = torch.linalg.eigvalsh(0.5 * (Y + Y.transpose(-1, -2)))
        low = (wy[:, 0] / wy.abs().amax(1).clamp_min(torch.finfo(torch.float64).tiny)).min()
        if float(low) < -tol:
            raise ValueError(f"V must be positive semi-definite (a covariance): an eigenvalue "
                             f"{float(low):.3g} times the largest, beyond rounding ({tol:.1g})")
        w[ok] = wy
    return w.reshape(*lead, m)


def _real_tensor(V: Any) -> torch.Tensor:
    """V as a real floating-point Torch tensor (NumPy ints become float64); ValueError for
    complex, boolean or non-numeric input."""
    if isinstance(V, torch.Tensor):
        X = V.detach()
    else:
        try:
            arr = np.asarray(V)
        except (TypeError, ValueError) as err:  # e.g. ragged nested lists
            raise ValueError(f"V must be an array of real numbers: {err}") from None
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"V must hold real numbers; got dtype {arr.dtype}")
        X = torch.as_tensor(arr if arr.dtype.kind == "f" else arr.astype(np.float64))
    if X.is_complex() or X.dtype == torch.bool:
        raise ValueError(f"V must hold real numbers; got dtype {X.dtype}")
    return X if X.is_floating_point() else X.to(torch.float64)


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
