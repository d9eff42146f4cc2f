"""Taylor expansion of the row Softmax around the uniform row, to any order.

Softmax is invariant under adding a constant to a row, so it is expanded in the
centred logits zeta_b = z_b - mean_c z_c. With a bookkeeping parameter eps,

    Softmax(eps z)_b = sum_k eps^k s_b^(k)(zeta) + O(eps^(order+1)),

s^(0) = 1/m, s^(1) = zeta/m, s^(2) = (zeta^2 - mean(zeta^2)) / (2m), ...
The coefficients are computed by truncated power-series arithmetic on
exp(eps zeta_b) / sum_c exp(eps zeta_c), for any order; none is typed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import sympy as sp


def centred(z: Sequence[sp.Expr]) -> list[sp.Expr]:
    """zeta_b = z_b - (1/m) sum_c z_c."""
    mean = sp.Add(*z) / len(z)
    return [zb - mean for zb in z]


Series = list[sp.Expr]  # coefficients of eps^0 .. eps^order


def _mul(a: Series, b: Series) -> Series:
    """Product of two truncated power series in eps (same order)."""
    return [sp.expand(sum(a[i] * b[k - i] for i in range(k + 1))) for k in range(len(a))]


def _exp(x: sp.Expr, order: int) -> Series:
    """exp(eps x) truncated: coefficients x^k / k!."""
    return [x**k / sp.factorial(k) for k in range(order + 1)]


def _reciprocal(a: Series) -> Series:
    """1 / a for a truncated series with a[0] != 0, by the geometric series."""
    order = len(a) - 1
    u = [sp.Integer(0)] + [c / a[0] for c in a[1:]]  # a = a0 (1 + u)
    result: Series = [sp.Integer(1)] + [sp.Integer(0)] * order
    power = list(result)
    for _ in range(order):
        power = _mul(power, [-c for c in u])
        result = [r + p for r, p in zip(result, power, strict=True)]
    return [sp.expand(c / a[0]) for c in result]


@cache
def _generic_coefficients(m: int, order: int) -> tuple[tuple[sp.Expr, ...], ...]:
    """Series coefficients of Softmax(eps u)_b in generic symbols u_0..u_{m-1}.

    Truncated power-series arithmetic: exp(eps zeta_b) / sum_c exp(eps zeta_c).
    """
    zeta = centred(sp.symbols(f"u0:{m}"))
    numerators = [_exp(zc, order) for zc in zeta]
    denominator = [sp.expand(sp.Add(*col)) for col in zip(*numerators, strict=True)]
    inverse = _reciprocal(denominator)
    rows = [_mul(num, inverse) for num in numerators]  # rows[b][k]
    return tuple(tuple(rows[b][k] for b in range(m)) for k in range(order + 1))


def softmax_expansion(z: Sequence[sp.Expr], order: int) -> list[list[sp.Expr]]:
    """Coefficients s[k][b] of Softmax(eps z)_b = sum_{k<=order} eps^k s[k][b] + O(eps^(order+1)).

    `z` is one row of logits (any SymPy expressions); returns order+1 lists of length m.
    """
    m = len(z)
    if m < 1 or order < 0:
        raise ValueError(f"need a non-empty row and order >= 0; got m={m}, order={order}")
    generic = _generic_coefficients(m, order)
    subs = dict(zip(sp.symbols(f"u0:{m}"), z, strict=True))
    return [[sp.expand(c.xreplace(subs)) for c in row] for row in generic]
