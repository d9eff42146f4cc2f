"""Input checks shared by the API and the CLI.

Every public entry point validates here, so a bad V or parameter fails with a
`ValueError` that names the problem instead of a traceback from deep inside
NumPy or Torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:  # torch is a hard dependency, but keep the checks importable without it
    import torch
except ImportError:  # pragma: no cover
    torch = None

# Relative tolerances: V is a Gram matrix computed in floating point.
SYMMETRY_RTOL = 1e-8
PSD_RTOL = 1e-8


def is_torch(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def check_gamma(gamma: float) -> float:
    g = _finite_scalar("gamma", gamma)
    if not 0.0 < g <= 1.0:
        raise ValueError(f"gamma must lie in (0, 1] (lam = sqrt(1 - gamma^2)); got {g}")
    return g


def check_tau0(tau0: float) -> float:
    t = _finite_scalar("tau0", tau0)
    if t <= 0.0:
        raise ValueError(f"tau0 must be > 0 (temperature tau = tau0 sqrt(n nk)); got {t}")
    return t


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def check_time(T: float) -> float:
    t = _finite_scalar("T", T)
    if t < 0.0:
        raise ValueError(f"T (depth-to-width ratio) must be >= 0; got {t}")
    return t


def check_float_dtype(dtype: Any) -> Any:
    """torch.float32 or torch.float64, else ValueError."""
    import torch

    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype!r}")
    return dtype


def check_covariance(V: Any, *, psd: bool = True, name: str = "V") -> Any:
    """Check that `V` has shape (..., m, m), m >= 2, is finite, symmetric and PSD.

    Accepts NumPy arrays (or array-likes) and Torch tensors; returns the input as
    an array of the same kind (array-likes become float64 NumPy arrays).
    """
    if not is_torch(V):
        V = np.asarray(V, dtype=np.float64)
    shape = tuple(V.shape)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(f"{name} must have shape (..., m, m) (square in its last two axes); "
                         f"got shape {shape}")
    if shape[-1] < 2:
        raise ValueError(f"{name} must describe m >= 2 tokens; got m = {shape[-1]}")
    Vn = V.detach().cpu().double().numpy() if is_torch(V) else V
    if not np.all(np.isfinite(Vn)):
        raise ValueError(f"{name} contains NaN or inf")
    scale = max(float(np.max(np.abs(Vn))), np.finfo(float).tiny)
    asym = float(np.max(np.abs(Vn - np.swapaxes(Vn, -1, -2))))
    if asym > SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} must be symmetric; max |V - V^T| = {asym:.3g}")
    if psd:
        lo = float(np.min(np.linalg.eigvalsh(0.5 * (Vn + np.swapaxes(Vn, -1, -2)))))
        if lo < -PSD_RTOL * scale:
            raise ValueError(f"{name} must be positive semi-definite; "
                             f"smallest eigenvalue {lo:.3g}")
    return V


def _finite_scalar(name: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number; got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite; got {x}")
    return x
