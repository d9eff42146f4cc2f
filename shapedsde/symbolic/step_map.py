"""The second-order mean excess of the solver's step map, derived with non-commuting symbols.

The solver (`shapedsde.scheme`) maps the increment X = D h + W of a step (D h: the
Ito-corrected drift in the coordinates of the Cholesky factor, O(h); W: the noise,
O(h^{1/2}), a symmetric Gaussian matrix) to the positive-definite C = exp_+(X), a
polynomial in X. Grade D by s^2 and W by s (s^2 ~ h). The s^2 coefficient of exp_+(X) is
D + W^2/2, whose mean is the Euler step's b_d (E[W^2] = K_d h). Its s^4 coefficient,

    excess(D, W) = c_dd D^2 + c_dww (W^2 D + W D W + D W^2) + c_wwww W^4,

has a mean of order h^2 that grows like (k m h)^2 with the number of tokens m (for the
linear block: -(m + 2)(m - 1) k^2 h^2 / 24 on E[C] for the exact exponential), so the
solver subtracts it: exp_+(X - excess(D, W)) has no s^4 term at all (the map's
derivative at 0 is the identity). This module derives the three coefficients from the
map itself; `shapedsde.scheme` states them and tests/test_step_map.py checks that the two
agree.
"""

from __future__ import annotations

import sympy as sp

_D, _W = sp.symbols("D W", commutative=False)
_S = sp.Symbol("s")  # the grading: W ~ s, D ~ s^2


def _truncated(expr: sp.Expr, order: int) -> sp.Expr:
    """expr expanded, without its terms of degree > order in s."""
    kept = []
    for term in sp.Add.make_args(sp.expand(expr)):
        commuting, _ = term.args_cnc()
        if sp.Mul(*commuting).as_coeff_exponent(_S)[1] <= order:
            kept.append(term)
    return sp.Add(*kept)


def squared_taylor(X: sp.Expr, squarings: int, order: int | None = None) -> sp.Expr:
    """exp_+(X) = E^(2^squarings), E = 1 + X / 2^s + (X / 2^s)^2 / 2 (as in the solver);
    with `order`, only its terms of degree <= order in the grading symbol s (each product
    truncated: the full expansion of E^4 has millions of words)."""
    cut = (lambda e: sp.expand(e)) if order is None else (lambda e: _truncated(e, order))
    Y = X / 2**squarings
    E = cut(1 + Y + Y**2 / 2)
    for _ in range(squarings):
        E = cut(E * E)
    return E


def graded_coefficients(squarings: int, order: int, X: sp.Expr | None = None) -> sp.Expr:
    """The s^order coefficient of exp_+(X), by default X = s^2 D + s W (D, W
    non-commuting)."""
    X = _S**2 * _D + _S * _W if X is None else X
    return squared_taylor(X, squarings, order).coeff(_S, order)


def mean_excess_coefficients(squarings: int) -> tuple[sp.Rational, sp.Rational, sp.Rational]:
    """(c_dd, c_dww, c_wwww) of the s^4 coefficient of exp_+(s^2 D + s W).

    Raises if the s^4 coefficient is not of the form stated in the module docstring
    (the three words W^2 D, W D W, D W^2 share one coefficient by the map's symmetry)."""
    excess = graded_coefficients(squarings, 4)
    terms: dict[str, sp.Rational] = {}
    for term in excess.as_ordered_terms():
        commuting, word = term.args_cnc()
        terms[str(sp.Mul(*word))] = sp.Rational(sp.Mul(*commuting))
    c_dd, c_wwww = terms.pop("D**2", sp.S.Zero), terms.pop("W**4", sp.S.Zero)
    c_dww = {terms.pop(w, sp.S.Zero) for w in ("W**2*D", "W*D*W", "D*W**2")}
    if terms or len(c_dww) != 1:
        raise AssertionError(f"unexpected s^4 terms of exp_+: {excess}")
    return c_dd, c_dww.pop(), c_wwww
