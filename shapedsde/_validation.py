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

#: tau0 must lie in [TAU0_MIN, TAU0_MAX]: the coefficients scale as tau0^-2, so at
#: tau0 = 1e-150 they are 1e300 |V|^2 and a solver step overflows (every path non-finite);
#: from 1e-100 they stay below 1e200 |V|^2, where a blow-up is seen as one.
TAU0_MIN, TAU0_MAX = 1e-100, 1e150
#: |c_plus|, |c_minus| <= C_MAX: the kernels square c_+ - c_- (and the finite face
#: squares 1 + c / sqrt(n)), so much larger shifts overflow or lose all precision.
C_MAX = 1e6
#: Seeds are integers in [0, SEED_LIMIT): what torch.Generator.manual_seed takes as a
#: non-negative int64.
SEED_LIMIT = 2**63


def is_torch(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def check_gamma(gamma: float) -> float:
    g = _finite_scalar("gamma", gamma)
    if not 0.0 < g <= 1.0:
        raise ValueError(f"gamma must lie in (0, 1] (lam = sqrt(1 - gamma^2)); got {g}")
    return g


def check_tau0(tau0: float) -> float:
    """tau0 in [TAU0_MIN, TAU0_MAX] (the kernels divide by tau0^2)."""
    t = _finite_scalar("tau0", tau0)
    if t <= 0.0:
        raise ValueError(f"tau0 must be > 0 (temperature tau = tau0 sqrt(n nk)); got {t}")
    if not TAU0_MIN <= t <= TAU0_MAX:
        raise ValueError(f"tau0 must lie in [{TAU0_MIN:g}, {TAU0_MAX:g}] (the coefficients "
                         f"scale as tau0^-2: beyond, a step leaves float64); got {t:g}")
    return t


def check_slope_shift(name: str, c: float) -> float:
    """An MLP slope shift c_+ or c_- (s = 1 + c / sqrt(n)), |c| <= C_MAX."""
    x = _finite_scalar(name, c)
    if abs(x) > C_MAX:
        raise ValueError(f"{name} must satisfy |{name}| <= {C_MAX:g} (the coefficients square "
                         f"it); got {x:g}")
    return x


def check_positive_int(name: str, value: Any) -> int:
    """A positive integer (an int, NumPy integer or integral float; not bool or str)."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    try:
        integral = float(value).is_integer()
    except (TypeError, ValueError, OverflowError):
        integral = False
    if not integral or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed: an integer in [0, 2^63) (int or NumPy integer; not bool, float or str)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name} must be an integer in [0, 2^63); got {seed!r} "
                         f"({type(seed).__name__})")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2^63); got {seed!r}")
    return int(seed)


def check_time(T: float) -> float:
    t = _finite_scalar("T", T)
    if t < 0.0:
        raise ValueError(f"T (depth-to-width ratio) must be >= 0; got {t}")
    return t + 0.0  # -0.0 becomes 0.0 (printed "T=0", not "T=-0")


def check_blowup(blowup: Any) -> float:
    """The explosion level R_blow > 1 (a path with tr V >= R_blow tr V0 has exploded)."""
    b = _finite_scalar("blowup", blowup)
    if not b > 1.0:
        raise ValueError(f"blowup must be > 1 (a path has exploded at tr V >= blowup tr V0, "
                         f"which every path starts below); got {b:g}")
    return b


def check_device(device: Any) -> Any:
    """`device` as a torch.device; ValueError if unknown or if CUDA is asked for but absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available here; use 'cpu'")
    return dev


def fmt_level(R: float) -> str:
    """A level R as text that never rounds it onto a different number (1.0000000001 is not
    printed as 1): the shortest repr that reads back as R."""
    return f"{R:g}" if float(f"{R:g}") == R else repr(float(R))


def check_float_dtype(dtype: Any) -> Any:
    """torch.float32 or torch.float64, else ValueError."""
    import torch

    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype!r}")
    return dtype


def check_covariance(V: Any, *, psd: bool = True, name: str = "V") -> Any:
    """Check that `V` has shape (..., m, m), m >= 2, is finite, symmetric and PSD.

    Accepts NumPy arrays (or array-likes of real numbers) and floating-point Torch
    tensors; returns the input as an array of the same kind (NumPy input becomes
    float64). Complex, boolean and non-numeric input, integer tensors and empty
    batches are refused rather than converted.
    """
    if is_torch(V):
        if V.is_complex() or not V.is_floating_point():
            raise ValueError(f"{name} must be a real floating-point tensor; got dtype {V.dtype} "
                             f"(convert with {name}.double())")
    else:
        V = _real_array(V, name)
    shape = tuple(V.shape)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(f"{name} must have shape (..., m, m) (square in its last two axes); "
                         f"got shape {shape}")
    if shape[-1] < 2:
        raise ValueError(f"{name} must describe m >= 2 tokens; got m = {shape[-1]}")
    if 0 in shape:
        raise ValueError(f"{name} is an empty batch of shape {shape}; pass at least one "
                         "(m, m) matrix")
    Vn = V.detach().cpu().double().numpy() if is_torch(V) else V
    if not np.all(np.isfinite(Vn)):
        raise ValueError(f"{name} contains NaN or inf")
    tiny = np.finfo(np.float64).tiny
    sub = (Vn != 0) & (np.abs(Vn) < tiny)
    if np.any(sub):
        raise ValueError(f"{name} has subnormal entries (0 < |{name}^ab| < {tiny:.3g}, e.g. "
                         f"{float(Vn[sub].flat[0]):.3g}), which carry too few bits for the "
                         f"coefficients; rescale {name} towards O(1)")
    # Compare in units of the largest entry, so the checks neither over- nor underflow.
    scale = float(np.max(np.abs(Vn)))
    if scale == 0.0:
        return V
    U = Vn / scale
    asym = float(np.max(np.abs(U - np.swapaxes(U, -1, -2))))
    if asym > SYMMETRY_RTOL:
        raise ValueError(f"{name} must be symmetric; max |V - V^T| = {asym * scale:.3g}")
    if psd:
        lo = float(np.min(np.linalg.eigvalsh(0.5 * (U + np.swapaxes(U, -1, -2)))))
        if lo < -PSD_RTOL:
            raise ValueError(f"{name} must be positive semi-definite; "
                             f"smallest eigenvalue {lo * scale:.3g}")
    return V


def _real_array(V: Any, name: str) -> np.ndarray:
    """V as a float64 NumPy array; ValueError unless it holds real (int or float) numbers."""
    try:
        arr = np.asarray(V)
    except (TypeError, ValueError) as err:  # e.g. ragged nested lists
        raise ValueError(f"{name} must be an array of real numbers: {err}") from None
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold real numbers (int or float); got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def check_budget(nbytes: float, what: str, *, limit: float, flag: str = "--insist") -> None:
    """Refuse a run whose estimated memory `nbytes` exceeds `limit` (ValueError naming `flag`)."""
    if nbytes > limit:
        raise ValueError(f"{what} would need about {_gib(nbytes)} of memory, over the limit of "
                         f"{_gib(limit)}; make it smaller or pass {flag} to run it anyway")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def _finite_scalar(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a real number; got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a real number; got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite; got {x}")
    return x
