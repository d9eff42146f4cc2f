"""Smooth shaped activations: the named table, validation, and the numeric faces.

An activation is a function F of one SymPy expression (`sympy.tanh`,
`lambda x: sympy.sin(x) + x**2 / 4`) with F(0) = 0 and F'(0) = 1. The shaped MLP uses
phi_s(x) = s F(x / s), s = A sqrt(n) (A = `scale`), normalised by
c = 1 / E[phi_s(g)^2], g ~ N(0, 1). Its SDE depends on F only through F''(0) and
F'''(0) (`shapedsde.symbolic.smooth`), which are read off F here, symbolically, once.

The finite face needs phi_s as Torch code and c at the actual width: F is turned into
NumPy and Torch functions with `sympy.lambdify` (never from a user string), and c is
computed by Gauss-Hermite quadrature (c depends on n, so no closed form serves).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import sympy as sp
from numpy.polynomial.hermite_e import hermegauss

_X = sp.Symbol("x", real=True)

#: Activations offered by name (the CLI's `--activation`): tanh is odd (F''(0) = 0,
#: F'''(0) = -2); cubic has both terms (F''(0) = 1, F'''(0) = -2); swish, SiLU scaled
#: to F'(0) = 1, has F''(0) = 1, F'''(0) = 0. So each drift term is seen alone and together.
ACTIVATIONS: dict[str, Callable[[sp.Expr], sp.Expr]] = {
    "tanh": sp.tanh,
    "cubic": lambda x: x + x**2 / 2 - x**3 / 3,
    "swish": lambda x: 2 * x / (1 + sp.exp(-x)),
}
#: Bounds on A and on |F''(0)|, |F'''(0)|: the kernels divide by A^2 and square F''(0).
SCALE_MIN, SCALE_MAX, DERIVATIVE_MAX = 1e-100, 1e100, 1e6
#: Gauss-Hermite nodes for E[.] over one Gaussian (and per axis for two).
QUADRATURE_NODES = 120


@dataclass(frozen=True)
class SmoothActivation:
    """F with F(0) = 0, F'(0) = 1, its derivatives F''(0), F'''(0) and numeric faces."""

    name: str
    expr: sp.Expr  # F(x), in the symbol `x`
    f2: float
    f3: float
    numpy_fn: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)
    torch_fn: Callable[[Any], Any] = field(repr=False, compare=False)

    def __reduce__(self) -> tuple:
        """Pickle a table activation by name (lambdified functions do not pickle)."""
        if self.name in ACTIVATIONS and resolve(self.name) == self:
            return (resolve, (self.name,))
        raise TypeError(f"activation {self.name!r} is not from the table and cannot be "
                        "pickled; pass its name from the table to send it to another process")

    def shaped(self, x: Any, s: float) -> Any:
        """phi_s(x) = s F(x / s) on a Torch tensor."""
        return s * _broadcast(self.torch_fn(x / s), x)

    def normaliser(self, n: int, scale: float) -> float:
        """c = 1 / E[phi_s(g)^2], g ~ N(0, 1), s = scale sqrt(n), by quadrature."""
        return _normaliser(self, int(n), float(scale))

    def kernel(self, V: np.ndarray, n: int, scale: float) -> np.ndarray:
        """c E[phi_s(x) phi_s(y)^T], (x, y) ~ N(0, V) pairwise: (m, m), by 2-d quadrature.

        Written as V + (D - V D_1) / (1 + D_1) with D = E[phi phi^T] - V and
        D_1 = E[phi_s(g)^2] - 1 (each from delta(x) = phi_s(x) - x), so that the O(1/n)
        difference from V is computed without cancelling O(1) numbers.
        """
        s = float(scale) * math.sqrt(n)
        z, w = _nodes()
        delta = lambda t: s * self.numpy_fn(t / s) - t  # noqa: E731
        g, dg = z, delta(z)
        D1 = float(np.sum(w * (2 * g * dg + dg * dg)))
        V = np.asarray(V, dtype=np.float64)
        out = np.empty_like(V)
        for a in range(V.shape[0]):
            for b in range(a, V.shape[0]):
                x, y = _correlated(V[a, a], V[b, b], V[a, b], z)
                dx, dy = delta(x), delta(y)
                D = float(np.sum(np.outer(w, w) * (x * dy + dx * y + dx * dy)))
                out[a, b] = out[b, a] = V[a, b] + (D - V[a, b] * D1) / (1 + D1)
        return out


def resolve(activation: Any) -> SmoothActivation:
    """A `SmoothActivation` from a table name or a function of one SymPy expression."""
    if isinstance(activation, SmoothActivation):
        return activation
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of "
                             f"{sorted(ACTIVATIONS)} or pass a function of one SymPy "
                             "expression")
        return _from_function(ACTIVATIONS[activation], activation)
    if not callable(activation):
        raise ValueError("activation must be a name from the table "
                         f"({', '.join(sorted(ACTIVATIONS))}) or a function of one SymPy "
                         f"expression (e.g. sympy.tanh); got {type(activation).__name__}")
    return _from_function(activation, getattr(activation, "__name__", "custom"))


def check_scale(scale: Any) -> float:
    """A in [SCALE_MIN, SCALE_MAX] (s = A sqrt(n); the kernels divide by A^2)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"scale must be a real number > 0; got {scale!r}")
    a = float(scale)
    if not math.isfinite(a) or not SCALE_MIN <= a <= SCALE_MAX:
        raise ValueError(f"scale must be finite and in [{SCALE_MIN:g}, {SCALE_MAX:g}] "
                         f"(s = scale sqrt(n); the coefficients divide by scale^2); got {a:g}")
    return a


@lru_cache(maxsize=64)
def _from_function(F: Callable[[sp.Expr], sp.Expr], name: str) -> SmoothActivation:
    example = "e.g. sympy.tanh or lambda x: sympy.sin(x) + x**2 / 4"
    try:
        expr = sp.sympify(F(_X))
    except Exception as err:  # any failure of the user's function on a Symbol
        raise ValueError(f"activation {name!r} must map a SymPy expression to a SymPy "
                         f"expression ({example}); calling it on a Symbol failed: "
                         f"{err}") from None
    if not isinstance(expr, sp.Expr) or expr.free_symbols != {_X}:
        raise ValueError(f"activation {name!r} must give an expression in its argument "
                         f"only ({example}); F(x) = {expr}")
    d = [_derivative_at_zero(expr, k, name) for k in range(4)]
    if abs(d[0]) > 1e-12:
        raise ValueError(f"activation {name!r} must satisfy F(0) = 0; got F(0) = {d[0]:.6g} "
                         "(use F(x) - F(0))")
    if abs(d[1] - 1) > 1e-12:
        raise ValueError(f"activation {name!r} must satisfy F'(0) = 1; got F'(0) = "
                         f"{d[1]:.6g} (divide F by F'(0))")
    for k in (2, 3):
        if abs(d[k]) > DERIVATIVE_MAX:
            raise ValueError(f"activation {name!r}: |F^({k})(0)| = {abs(d[k]):.3g} is over "
                             f"{DERIVATIVE_MAX:g}; rescale the activation")
    act = SmoothActivation(name, expr, d[2], d[3], sp.lambdify(_X, expr, "numpy"),
                           sp.lambdify(_X, expr, "torch"))
    z, _ = _nodes()
    if not np.all(np.isfinite(_broadcast(act.numpy_fn(z), z))):
        raise ValueError(f"activation {name!r} is not finite and real on the real line "
                         f"(F(x) = {expr})")
    return act


def _derivative_at_zero(expr: sp.Expr, k: int, name: str) -> float:
    d = sp.diff(expr, _X, k)
    v = d.subs(_X, 0)
    if not (v.is_number and v.is_finite):
        v = sp.limit(d, _X, 0)
    try:
        z = complex(sp.N(v))
    except (TypeError, ValueError):
        z = complex("nan")
    if not (math.isfinite(z.real) and abs(z.imag) < 1e-12):
        raise ValueError(f"activation {name!r} must be three times differentiable at 0 with "
                         f"real derivatives; F^({k})(0) = {v}")
    return z.real


@lru_cache(maxsize=1)
def _nodes() -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes and weights for E over N(0, 1) (weights sum to 1)."""
    z, w = hermegauss(QUADRATURE_NODES)
    return z, w / math.sqrt(2 * math.pi)


def _correlated(Vaa: float, Vbb: float, Vab: float, z: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) on the 2-d node grid, x = sqrt(Vaa) z1, y = sqrt(Vbb)(rho z1 + sqrt(1-rho^2) z2)."""
    rho = 0.0 if Vaa * Vbb == 0 else float(np.clip(Vab / math.sqrt(Vaa * Vbb), -1, 1))
    z1, z2 = z[:, None], z[None, :]
    x = math.sqrt(Vaa) * z1 + 0 * z2
    y = math.sqrt(Vbb) * (rho * z1 + math.sqrt(1 - rho * rho) * z2)
    return x, y


@lru_cache(maxsize=4096)
def _normaliser(act: SmoothActivation, n: int, scale: float) -> float:
    s = scale * math.sqrt(n)
    z, w = _nodes()
    second = float(np.sum(w * (s * act.numpy_fn(z / s)) ** 2))
    if not (math.isfinite(second) and second > 0):
        raise ValueError(f"E[phi_s(g)^2] of activation {act.name!r} is {second:g} at n = {n}, "
                         f"scale = {scale:g}; it cannot be normalised")
    return 1.0 / second


def _broadcast(value: Any, like: Any) -> Any:
    """lambdify returns a scalar for a constant expression; give it `like`'s shape."""
    return value + 0 * like
