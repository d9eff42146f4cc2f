"""Gaussian moments by Isserlis' (Wick's) theorem.

For a centred Gaussian vector g with covariance C,
    E[g_{i1} ... g_{i2k}] = sum over perfect matchings of prod C[i, j],
and odd moments vanish. `gaussian_expectation` applies this to a polynomial in
the components of g with coefficients that may be any SymPy expressions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import sympy as sp


def isserlis_moment(indices: Sequence[int], cov: sp.Matrix) -> sp.Expr:
    """E[g_{indices[0]} g_{indices[1]} ...] for g ~ N(0, cov)."""
    key = tuple(sorted(indices))

    @cache
    def moment(idx: tuple[int, ...]) -> sp.Expr:
        if not idx:
            return sp.Integer(1)
        if len(idx) % 2:
            return sp.Integer(0)
        first, rest = idx[0], idx[1:]
        total = sp.Integer(0)
        for j, partner in enumerate(rest):
            c = cov[first, partner]
            if c != 0:
                total += c * moment(rest[:j] + rest[j + 1:])
        return total

    return moment(key)


def monomials(expr: sp.Expr, variables: Sequence[sp.Symbol]
              ) -> list[tuple[tuple[int, ...], sp.Expr]]:
    """(indices, coefficient) pairs of a polynomial in `variables`.

    `indices` lists the variable index once per power, ready for Isserlis.
    """
    expr = sp.expand(expr)
    if expr == 0:
        return []
    poly = sp.Poly(expr, *variables)
    return [(tuple(i for i, e in enumerate(exps) for _ in range(e)), coeff)
            for exps, coeff in poly.terms()]


def gaussian_expectation(expr: sp.Expr, variables: Sequence[sp.Symbol], cov: sp.Matrix,
                         other: sp.Expr | None = None) -> sp.Expr:
    """E[expr] (or E[expr * other]) where `variables` ~ N(0, cov) jointly.

    Both factors are polynomials in `variables` with coefficients that may be
    any SymPy expressions. Passing the second factor as `other` pairs the two
    factors' monomials directly instead of expanding their product.
    """
    variables = list(variables)
    if cov.shape != (len(variables), len(variables)):
        raise ValueError(f"cov must be {len(variables)}x{len(variables)}; got {cov.shape}")
    left = monomials(expr, variables)
    right = [((), sp.Integer(1))] if other is None else monomials(other, variables)
    memo: dict[tuple[int, ...], sp.Expr] = {}
    total = sp.Integer(0)
    for idx_l, c_l in left:
        for idx_r, c_r in right:
            idx = tuple(sorted(idx_l + idx_r))
            if len(idx) % 2:
                continue
            if idx not in memo:
                memo[idx] = isserlis_moment(idx, cov)
            if memo[idx] != 0:
                total += c_l * c_r * memo[idx]
    return sp.expand(total)
