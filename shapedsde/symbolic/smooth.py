"""Gaussian expectations of a smooth shaped activation, by Taylor expansion and Wick.

Li, Nica, Roy (2022) shape a smooth activation F with F(0) = 0, F'(0) = 1 as
phi_s(x) = s F(x / s), s = A sqrt(n) = A / eps, and normalise the branch by
c = 1 / E[phi_s(g)^2], g ~ N(0, 1). The expansion of phi_s in eps is taken by SymPy
from that definition, with F an undefined function whose derivatives at 0 become the
symbols F''(0), F'''(0), ... (F(0) = 0 and F'(0) = 1 substituted). For (x, y) centred
Gaussian with covariance [[V_aa, V_ab], [V_ab, V_bb]] the series of
c E[phi_s(x) phi_s(y)] is then a polynomial in x, y per order, whose moments Isserlis'
theorem gives (`wick.gaussian_expectation`); c's own series comes the same way.

Odd powers of eps pair an odd number of Gaussian factors, so they vanish: the series
is in eps^2 = 1 / n. Its eps^2 coefficient kappa(V_aa, V_bb, V_ab) is the drift of the
activation, a polynomial in V that depends on F''(0), F'''(0) and A only.
`kernel_matrix` writes it in matrix form for every m, monomial by monomial:
V_aa^i V_ab^k V_bb^j is entry (a, b) of Dg(V)^i (V o ... o V) Dg(V)^j (k factors,
11^T for k = 0).
"""

from __future__ import annotations

from functools import cache

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .activation import RHO
from .entrywise_kernel import Entrywise
from .wick import gaussian_expectation

EPS = sp.Symbol("epsilon", positive=True)  # n^{-1/2}
SCALE = sp.Symbol("A", positive=True)  # s = A sqrt(n)
V_AA, V_BB = sp.symbols("V_aa V_bb", positive=True)
V_AB = sp.Symbol("V_ab", real=True)
_X, _Y, _U = sp.symbols("x y u", real=True)


def derivative_symbol(k: int) -> sp.Symbol:
    """The symbol for F^{(k)}(0), printed F''(0), F'''(0), ..."""
    return sp.Symbol("F" + "'" * k + "(0)", real=True)


F2, F3 = derivative_symbol(2), derivative_symbol(3)


@cache
def activation_series(order: int) -> tuple[sp.Expr, ...]:
    """phi_s(x) = s F(x / s) with s = A / eps, as eps-series coefficients in x.

    Taylor-expanded by SymPy from the definition; F(0) = 0, F'(0) = 1.
    """
    F = sp.Function("F")
    series = sp.series(SCALE / EPS * F(EPS * _X / SCALE), EPS, 0, order + 1).removeO()

    def value(s: sp.Subs) -> sp.Expr:
        k = s.expr.derivative_count
        return sp.Integer(1) if k == 1 else derivative_symbol(k)

    series = series.replace(lambda e: isinstance(e, sp.Subs), value).subs(F(0), 0)
    series = sp.expand(series)
    if series.coeff(EPS, -1) != 0:
        raise AssertionError("phi_s has an O(1/eps) term although F(0) = 0")
    return tuple(series.coeff(EPS, k) for k in range(order + 1))


def _truncate(expr: sp.Expr, order: int) -> sp.Expr:
    expr = sp.expand(expr)
    return sum((expr.coeff(EPS, k) * EPS**k for k in range(order + 1)), sp.Integer(0))


def phi_series(arg: sp.Expr, order: int) -> sp.Expr:
    """phi_s(arg) truncated at eps^order."""
    return sum((EPS**k * c.subs(_X, arg) for k, c in enumerate(activation_series(order))),
               sp.Integer(0))


@cache
def kernel_series(order: int = 2) -> tuple[sp.Expr, ...]:
    """c E[phi_s(x) phi_s(y)] as eps-series coefficients [k_0, ..., k_order], functions of
    V_AA, V_BB, V_AB, F^{(k)}(0) and A; (x, y) ~ N(0, [[V_aa, V_ab], [V_ab, V_bb]])."""
    cov = sp.Matrix([[V_AA, V_AB], [V_AB, V_BB]])
    joint = gaussian_expectation(_truncate(phi_series(_X, order) * phi_series(_Y, order), order),
                                 (_X, _Y), cov)
    norm = gaussian_expectation(_truncate(phi_series(_U, order) ** 2, order), (_U,), sp.eye(1))
    c = sp.series(1 / norm, EPS, 0, order + 1).removeO()
    product = _truncate(c * joint, order)
    return tuple(sp.factor_terms(sp.expand(product.coeff(EPS, k))) for k in range(order + 1))


def drift_kernel() -> sp.Expr:
    """kappa(V_aa, V_bb, V_ab): the eps^2 = 1/n coefficient of c E[phi_s(x) phi_s(y)]."""
    series = kernel_series(2)
    if sp.expand(series[0] - V_AB) != 0 or series[1] != 0:
        raise AssertionError(f"c E[phi phi] must be V_ab + O(eps^2); got {series[:2]}")
    return sp.expand(series[2])


def drift_entry(Vm: sp.Matrix, a: int, b: int) -> sp.Expr:
    """kappa at entry (a, b) of an explicit symbolic V."""
    return drift_kernel().subs({V_AA: Vm[a, a], V_BB: Vm[b, b], V_AB: Vm[a, b]},
                               simultaneous=True)


def kernel_matrix(V: MatrixExpr) -> MatrixExpr:
    """kappa(V) as a matrix expression valid for every m (see the module docstring)."""
    m = V.shape[0]
    Dg = sp.HadamardProduct(sp.Identity(m), V)
    poly = sp.Poly(drift_kernel(), V_AA, V_AB, V_BB)
    total = sp.ZeroMatrix(m, m)
    for (i, k, j), coef in poly.terms():
        middle = (sp.OneMatrix(m, m) if k == 0 else V if k == 1
                  else sp.HadamardProduct(*([V] * k)))
        total += coef * sp.MatMul(*([Dg] * i), middle, *([Dg] * j))
    return total


class SmoothKernel(Entrywise):
    """kappa(V) of a smooth activation as one node: its entries are the polynomial
    `drift_kernel` (read through rho), and `doit` writes it in matrix form
    (`kernel_matrix`), so the block's own derivation sees the matrix polynomial while the
    tangent's (`shapedsde.symbolic.tangent`) can read the kernel as a function of one
    entry and differentiate it."""

    def doit(self, **hints) -> MatrixExpr:
        return kernel_matrix(self.args[2])


def kernel_node(V: MatrixExpr) -> SmoothKernel:
    """kappa(V) as a `SmoothKernel` node."""
    formula = drift_kernel().subs(V_AB, RHO * sp.sqrt(V_AA * V_BB))
    return SmoothKernel(sp.Symbol("kappa_smooth"), sp.expand(formula), V)
