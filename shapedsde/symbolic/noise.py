"""Structured noise: a factorisation of Sigma(V) that needs only m x m products.

Sigma is a sum of Kronecker patterns. Two shapes cover every block here:

- c (X^{ac} X^{bd} + X^{ad} X^{bc})  is the covariance of  sqrt(c) A N_s A^T,
  N_s = (N + N^T) / sqrt(2), A A^T = X;
- c (X^{ac} Y^{bd} + X^{ad} Y^{bc} + Y^{ac} X^{bd} + Y^{ad} X^{bc})  is the covariance of
  sqrt(c) (A N B^T + B N^T A^T),  A A^T = X, B B^T = Y,

with N an m x m matrix of iid N(0, 1), one independent N per group. Grouping the
derived patterns into these shapes is done here; `noise_covariance` re-derives the
covariance of the resulting noise with the Wick rules of `kron`, so a test can check
that it reproduces Sigma exactly, for every m.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .kron import Kron, Linear, covariance
from .matrixform import M_TOKENS, MatrixCoefficients, _canonical, _collect


@dataclass(frozen=True)
class NoiseGroup:
    """sqrt(coef) * (A N A^T sym) if Y is None, else sqrt(coef) (A N B^T + B N^T A^T)."""

    coef: sp.Expr
    X: MatrixExpr
    Y: MatrixExpr | None


def noise_groups(c: MatrixCoefficients) -> tuple[NoiseGroup, ...] | None:
    """Group Sigma's patterns into the two shapes above, or None if they do not fit."""
    remaining = {(k.X, k.xl, k.Y, k.yl): k.coef for k in c.diffusion}
    groups = []
    while remaining:
        (X, xl, Y, yl), coef = next(iter(remaining.items()))
        if X == Y:
            needed = [(X, ("a", "c"), X, ("b", "d")), (X, ("a", "d"), X, ("b", "c"))]
        else:
            needed = [_key(Kron(1, X, p, Y, q)) for p, q in
                      ((("a", "c"), ("b", "d")), (("a", "d"), ("b", "c")),
                       (("b", "d"), ("a", "c")), (("b", "c"), ("a", "d")))]
        if any(remaining.get(k) is None or sp.simplify(remaining[k] - coef) != 0
               for k in needed):
            return None
        for k in needed:
            del remaining[k]
        groups.append(NoiseGroup(coef, X, None if X == Y else Y))
    return tuple(groups)


def _key(k: Kron) -> tuple:
    k = _canonical(k)
    return (k.X, k.xl, k.Y, k.yl)


def noise_covariance(groups: tuple[NoiseGroup, ...]) -> list[Kron]:
    """Cov of the structured noise, derived with the Wick rules, in terms of X and Y.

    Square roots are symbols A_k, B_k; A_k A_k^T is then replaced by X_k (B_k B_k^T by Y_k).
    """
    m = M_TOKENS
    table, terms, roots = {}, [], {}
    for i, g in enumerate(groups):
        N = sp.MatrixSymbol(f"N{i}", m, m)
        table[N.name, N.name] = [Kron(sp.Integer(1), sp.Identity(m), ("a", "c"),
                                      sp.Identity(m), ("b", "d"))]
        A = sp.MatrixSymbol(f"A{i}", m, m)
        roots[A * A.T] = g.X
        s = sp.sqrt(g.coef)
        if g.Y is None:  # sqrt(c) A (N + N^T) / sqrt(2) A^T
            terms += [Linear(s / sp.sqrt(2), A, N, False, A.T),
                      Linear(s / sp.sqrt(2), A, N, True, A.T)]
        else:
            B = sp.MatrixSymbol(f"B{i}", m, m)
            roots[B * B.T] = g.Y
            terms += [Linear(s, A, N, False, B.T), Linear(s, B, N, True, A.T)]
    pats = [k for t1 in terms for t2 in terms for k in covariance(t1, t2, table)]
    pats = [Kron(k.coef, _root(k.X, roots), k.xl, _root(k.Y, roots), k.yl) for k in pats]
    return _collect(pats)


def _root(F: MatrixExpr, roots: dict) -> MatrixExpr:
    F = sp.expand(F).doit()
    for AAt, X in roots.items():
        if F == AAt or F == AAt.T:
            return X
    raise AssertionError(f"unexpected factor {F}")
