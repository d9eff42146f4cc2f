"""Per-token normalisation inside a block, derived (docs/normalisation.md).

Post-normalisation, X' = Norm(lam X + gam Branch(X)) with RMSNorm x -> x / sqrt(|x|^2 / n),
applies the map N(V)^{ab} = V^{ab} / sqrt(V^{aa} V^{bb}) to V after each step. One step of
the block moves V by dV (mean b / n, covariance Sigma / n); the normalised state moves by
N(V + dV) - N(V), so by Ito's formula (second order in dV, the rest is o(1/n)) the
normalised SDE has, at a correlation matrix R (unit diagonal),

    mu^{ab}      = sum_u N^{ab}_u b_u + 1/2 sum_{u,w} N^{ab}_{uw} Sigma_{u,w},
    C^{ab,cd}    = sum_{u,w} N^{ab}_u N^{cd}_w Sigma_{u,w},

with u, w running over the three independent entries N^{ab} depends on:
x = V^{ab}, y = V^{aa}, z = V^{bb}. The gradient and Hessian of N in (x, y, z) are derived
here with SymPy (`derivatives`) and evaluated batched for NumPy or Torch
(`numeric_derivatives`); `ito_map` contracts them with any block's numeric b(V) and
Sigma(V). The diagonal (N^{aa} = 1) has zero drift and diffusion.

Pre-normalisation, X' = lam X + gam Branch(Norm(X)): the stream's diagonal relaxes to 1
geometrically (by lam^2 per layer), so it is a fast variable around the unit-diagonal
set; `prenorm_contraction` derives (series in the log-scales u_a = log(V^{aa}) / 2) what
its O(n^{-1/2}) fluctuations do to the slow correlation, and `prenorm_correction`
evaluates the averaged extra drift.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import sympy as sp

from .._validation import is_torch

#: N^{ab} as a function of x = V^{ab}, y = V^{aa}, z = V^{bb} (a != b).
X_AB, Y_AA, Z_BB = sp.symbols("x y z", positive=True)
COORDS = (X_AB, Y_AA, Z_BB)
N_EXPR = X_AB / sp.sqrt(Y_AA * Z_BB)


@cache
def derivatives() -> tuple[tuple[sp.Expr, ...], sp.Matrix]:
    """(gradient, Hessian) of N^{ab}(x, y, z) = x / sqrt(y z), derived with SymPy."""
    grad = tuple(sp.simplify(sp.diff(N_EXPR, c)) for c in COORDS)
    hess = sp.Matrix(3, 3, lambda i, j: sp.simplify(sp.diff(N_EXPR, COORDS[i], COORDS[j])))
    return grad, hess


def _sqrt(t: Any) -> Any:
    return t**0.5


@cache
def _lambdified():
    grad, hess = derivatives()
    exprs = [*grad, *[hess[i, j] for i in range(3) for j in range(3)]]
    return sp.lambdify(COORDS, exprs, modules=[{"sqrt": _sqrt}, "math"])


class _Ops:
    """NumPy or Torch, for the few operations below."""

    def __init__(self, V: Any) -> None:
        self.torch = is_torch(V)
        if self.torch:
            import torch

            self.t = torch
        self.like = V

    def stack(self, xs: list[Any], shape: tuple[int, ...]) -> Any:
        if self.torch:
            return self.t.stack([x + self.t.zeros(shape, dtype=self.like.dtype,
                                                  device=self.like.device) for x in xs], -1)
        return np.stack([x + np.zeros(shape, dtype=self.like.dtype) for x in xs], -1)

    def index(self, a: np.ndarray) -> Any:
        return self.t.as_tensor(a, device=self.like.device) if self.torch else a

    def einsum(self, *args: Any) -> Any:
        return (self.t.einsum if self.torch else np.einsum)(*args)

    def diagonal(self, V: Any) -> Any:
        return self.t.diagonal(V, 0, -2, -1) if self.torch else np.diagonal(V, 0, -2, -1)

    def off_diagonal(self, m: int) -> Any:
        if self.torch:
            return 1.0 - self.t.eye(m, dtype=self.like.dtype, device=self.like.device)
        return 1.0 - np.eye(m, dtype=self.like.dtype)


def numeric_derivatives(V: Any) -> tuple[Any, Any]:
    """The derived gradient g (..., m, m, 3) and Hessian h (..., m, m, 3, 3) of N^{ab} in
    (x, y, z) = (V^{ab}, V^{aa}, V^{bb}), evaluated at V (NumPy or Torch, batched; V^{aa} >
    0). Rows a = b are zero (N^{aa} = 1)."""
    ops = _Ops(V)
    d = ops.diagonal(V)
    y, z = d[..., :, None], d[..., None, :]
    vals = _lambdified()(V, y, z)
    shape = tuple(V.shape)
    off = ops.off_diagonal(V.shape[-1])
    g = ops.stack(list(vals[:3]), shape) * off[..., None]
    h = ops.stack(list(vals[3:]), shape)
    h = h.reshape(*shape, 3, 3) * off[..., None, None]
    return g, h


@cache
def _coordinate_index(m: int) -> tuple[np.ndarray, np.ndarray]:
    """I, J (m, m, 3): entry (a, b)'s coordinates (V^{ab}, V^{aa}, V^{bb}) as (I, J) pairs."""
    a, b = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    return np.stack([a, a, b], -1), np.stack([b, a, b], -1)


def ito_map(drift: Any, diffusion: Any, V: Any) -> tuple[Any, Any]:
    """(mu, C): drift (..., m, m) and diffusion (..., m, m, m, m) of N(V_t) where V_t has
    drift `drift` = b(V) and diffusion `diffusion` = Sigma(V) at V, by Ito's formula with
    the derived derivatives of N at V. At a unit-diagonal V this is the post-normalised
    SDE; at any V, the correlation SDE of the unnormalised block."""
    ops = _Ops(V)
    m = V.shape[-1]
    g, h = numeric_derivatives(V)
    rows, cols = (ops.index(x) for x in _coordinate_index(m))
    b_sub = drift[..., rows, cols]  # (..., m, m, 3)
    S_sub = diffusion[..., rows[..., :, None], cols[..., :, None], rows[..., None, :],
                      cols[..., None, :]]
    mu = (g * b_sub).sum(-1) + 0.5 * (h * S_sub).sum((-2, -1))
    ra, ca = rows[:, :, :, None, None, None], cols[:, :, :, None, None, None]
    rb, cb = rows[None, None, None], cols[None, None, None]
    S_pairs = diffusion[..., ra, ca, rb, cb]  # (..., m, m, 3, m, m, 3)
    C = ops.einsum("...abu,...abucdw,...cdw->...abcd", g, S_pairs, g)
    return mu, C


def normalise(V: Any) -> Any:
    """N(V): V^{ab} / sqrt(V^{aa} V^{bb}) (the Gram matrix after per-token RMSNorm)."""
    ops = _Ops(V)
    r = ops.diagonal(V) ** -0.5
    return V * r[..., :, None] * r[..., None, :]


# ----------------------------------------------------------------------------
# Symbolic faces: LaTeX of the post-norm coefficients, the pre-norm averaging


def _entry_symbols() -> tuple[list[sp.Symbol], sp.Matrix, sp.Symbol]:
    rho = sp.Symbol(r"\rho^{ab}", real=True)
    names = ["ab", "aa", "bb"]
    b = [sp.Symbol(f"b^{{{u}}}") for u in names]
    S = sp.Matrix(3, 3, lambda i, j: sp.Symbol(
        f"\\Sigma^{{{sorted((names[i], names[j]))[0]},{sorted((names[i], names[j]))[1]}}}"))
    return b, S, rho


@cache
def post_coefficients_symbolic() -> tuple[sp.Expr, sp.Expr]:
    """(mu^{ab}, C^{ab,ab}) of the post-normalised SDE at unit diagonal, as SymPy
    expressions in rho^{ab}, b^{ab}, b^{aa}, b^{bb} and the entries of Sigma."""
    grad, hess = derivatives()
    b, S, rho = _entry_symbols()
    at = {X_AB: rho, Y_AA: 1, Z_BB: 1}
    g = [e.subs(at) for e in grad]
    H = hess.subs(at)
    mu = sum(g[u] * b[u] for u in range(3)) + sum(
        H[u, w] * S[u, w] for u in range(3) for w in range(3)) / 2
    C = sum(g[u] * g[w] * S[u, w] for u in range(3) for w in range(3))
    return sp.expand(mu), sp.expand(C)


@cache
def prenorm_contraction() -> sp.Expr:
    """The change of log rho^{ab} in one pre-norm layer's mean map, to second order in the
    log-scales u_a, u_b (V^{aa} = e^{2 u_a}): with V = D^{1/2} R D^{1/2}, the mean map is
    V -> lam^2 V + gam^2 R (the branch sees N(V) = R), so

        rho' / rho = (lam^2 e^{u_a+u_b} + gam^2) / sqrt((lam^2 e^{2u_a} + gam^2)
                                                         (lam^2 e^{2u_b} + gam^2)),

    whose log is -lam^2 gam^2 (u_a - u_b)^2 / 2 + O(u^3): no first-order term."""
    lam, ua, ub, eps = sp.symbols("lambda u_a u_b epsilon", positive=True)
    gam2 = 1 - lam**2

    def f(w):
        return sp.log(lam**2 * sp.exp(w) + gam2)

    expr = f(eps * (ua + ub)) - (f(2 * eps * ua) + f(2 * eps * ub)) / 2
    series = sp.series(expr, eps, 0, 3).removeO()
    return sp.factor(sp.simplify(series.subs(eps, 1)))


@cache
def prenorm_drift_factor() -> sp.Expr:
    """c(lam) with the pre-norm averaged extra drift
    mu_pre^{ab} - mu_post^{ab} = -c rho^{ab} (Sigma^{aa,aa} + Sigma^{bb,bb} - 2 Sigma^{aa,bb}).

    delta_a = V^{aa} - 1 is an AR(1) chain delta' = lam^2 delta + xi with Cov[xi_a, xi_b]
    = Sigma^{aa,bb} / n (one step of the block at unit diagonal); its stationary
    covariance solves v = lam^4 v + q. With u = delta / 2 + O(delta^2), the contraction's
    mean per layer, times n layers per unit of t, is the extra drift."""
    lam, q, v = sp.symbols("lambda q v", positive=True)
    stationary = sp.solve(sp.Eq(v, lam**4 * v + q), v)[0]  # Var[delta_a - delta_b] per q
    ua, ub = sp.symbols("u_a u_b", positive=True)
    quad = prenorm_contraction()  # coefficient of (u_a - u_b)^2
    k = sp.simplify(quad / (ua - ub) ** 2)
    return sp.factor(sp.simplify(-k * stationary.subs(q, 1) / 4))


def prenorm_correction(diffusion: Any, rho: Any, lam: float) -> Any:
    """The averaged pre-norm extra drift (..., m, m) at a correlation matrix rho, from the
    block's Sigma(rho) (`prenorm_drift_factor`; zero on the diagonal)."""
    ops = _Ops(rho)
    c = float(prenorm_drift_factor().subs(sp.Symbol("lambda", positive=True), lam))
    q = ops.einsum("...aacc->...ac", diffusion)
    d = ops.diagonal(q)
    spread = d[..., :, None] + d[..., None, :] - 2 * q
    return -c * rho * spread * ops.off_diagonal(rho.shape[-1])


__all__ = ["COORDS", "N_EXPR", "derivatives", "ito_map", "normalise", "numeric_derivatives",
           "post_coefficients_symbolic", "prenorm_contraction", "prenorm_correction",
           "prenorm_drift_factor"]
