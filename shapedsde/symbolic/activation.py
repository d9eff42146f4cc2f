"""Gaussian expectations of the shaped leaky-ReLU activation, by integration.

phi(x) = s_+ max(x, 0) + s_- min(x, 0). For (x, y) centred Gaussian with
variances V_aa, V_bb and correlation rho = cos(alpha), alpha in (0, pi), write
x = sqrt(V_aa) r cos(theta), y = sqrt(V_bb) r cos(theta - alpha) with (r, theta)
the polar coordinates of a standard 2-d Gaussian. Then

    E[phi(x) phi(y)] = sqrt(V_aa V_bb) (1 / 2 pi) int_0^inf r^3 e^{-r^2/2} dr
                       * int phi~(cos theta) phi~(cos(theta - alpha)) d theta,

with phi~ the activation's slope pattern. The angular integral is split at the
sign changes of cos(theta) and cos(theta - alpha); the slope on each arc is read
off at the arc's midpoint, and SymPy integrates every piece. This yields the
arc-cosine kernel without typing it in.
"""

from __future__ import annotations

from functools import cache

import sympy as sp

S_PLUS, S_MINUS = sp.symbols("s_+ s_-", positive=True)
V_AA, V_BB = sp.symbols("V_aa V_bb", positive=True)
RHO = sp.Symbol("rho", real=True)
_ALPHA, _THETA, _R = sp.symbols("alpha theta r", positive=True)


def _slope(value: sp.Expr) -> sp.Expr:
    return S_PLUS if value > 0 else S_MINUS


@cache
def activation_kernel() -> sp.Expr:
    """E[phi(x) phi(y)] as a function of V_AA, V_BB, RHO, S_PLUS, S_MINUS."""
    radial = sp.integrate(_R**3 * sp.exp(-_R**2 / 2), (_R, 0, sp.oo)) / (2 * sp.pi)
    cuts = [-sp.pi / 2, _ALPHA - sp.pi / 2, sp.pi / 2, _ALPHA + sp.pi / 2, 3 * sp.pi / 2]
    probe = {_ALPHA: sp.pi / 3}  # any alpha in (0, pi) orders the cuts the same way
    angular = sp.Integer(0)
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        mid = ((lo + hi) / 2).subs(probe)
        slope = _slope(sp.cos(mid)) * _slope(sp.cos(mid - probe[_ALPHA]))
        angular += slope * sp.integrate(sp.cos(_THETA) * sp.cos(_THETA - _ALPHA),
                                        (_THETA, lo, hi))
    kernel = sp.sqrt(V_AA * V_BB) * radial * angular
    kernel = sp.expand_trig(sp.expand(kernel)).subs(
        {sp.sin(_ALPHA): sp.sqrt(1 - RHO**2), sp.cos(_ALPHA): RHO})
    return sp.simplify(kernel.subs(_ALPHA, sp.acos(RHO)))


@cache
def shaped_kernel_series(order: int = 2) -> list[sp.Expr]:
    """c E[phi(x) phi(y)] with s_pm = 1 + c_pm eps, c = 2 / (s_+^2 + s_-^2), as eps-series
    coefficients [k_0, k_1, ..., k_order] (functions of V_AA, V_BB, RHO, c_+, c_-)."""
    eps = sp.Symbol("epsilon", positive=True)
    cp, cm = sp.symbols("c_+ c_-", real=True)
    sp_, sm_ = 1 + cp * eps, 1 + cm * eps
    c = 2 / (sp_**2 + sm_**2)
    expr = c * activation_kernel().subs({S_PLUS: sp_, S_MINUS: sm_})
    series = sp.series(expr, eps, 0, order + 1).removeO()
    return [sp.simplify(series.coeff(eps, k)) for k in range(order + 1)]


@cache
def shaped_tangent_diagonal(order: int = 2) -> tuple[sp.Expr, sp.Expr]:
    """The eps^order coefficients of c E[phi(x) phi'(x) t] and c E[phi'(x)^2 t^2] for one
    token and its tangent, (x, t) centred Gaussian with Var x = V_AA, Cov = C_AA, Var t =
    U_AA (functions of those and c_+, c_-).

    With t = (C / V) x + t_perp (t_perp independent of x) both reduce to one-dimensional
    integrals over x ~ N(0, V), taken here piece by piece on x > 0 and x < 0. The
    two-token kernel's derivatives cannot give these: at rho = 1 the arc-cosine kernel
    is not twice differentiable (docs/tangent.md).
    """
    eps = sp.Symbol("epsilon", positive=True)
    cp, cm = sp.symbols("c_+ c_-", real=True)
    C, U = sp.symbols("C_aa U_aa", real=True)
    x = sp.Symbol("x", real=True)
    density = sp.exp(-x**2 / (2 * V_AA)) / sp.sqrt(2 * sp.pi * V_AA)

    def mean(f_pos: sp.Expr, f_neg: sp.Expr) -> sp.Expr:
        return (sp.integrate(f_pos * density, (x, 0, sp.oo))
                + sp.integrate(f_neg * density, (x, -sp.oo, 0)))

    phi_phid_x = mean(S_PLUS * x * S_PLUS * x, S_MINUS * x * S_MINUS * x)
    phid2_x2 = mean(S_PLUS**2 * x**2, S_MINUS**2 * x**2)
    phid2 = mean(S_PLUS**2, S_MINUS**2)
    beta = C / V_AA
    cross = beta * phi_phid_x
    tangent = beta**2 * phid2_x2 + (U - C**2 / V_AA) * phid2
    sp_, sm_ = 1 + cp * eps, 1 + cm * eps
    c = 2 / (sp_**2 + sm_**2)
    out = []
    for e in (cross, tangent):
        e = c * e.subs({S_PLUS: sp_, S_MINUS: sm_})
        out.append(sp.simplify(sp.series(e, eps, 0, order + 1).removeO().coeff(eps, order)))
    return out[0], out[1]
