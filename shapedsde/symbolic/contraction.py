"""Contractions of Sigma(V) that the positive-definite solver needs, in matrix form.

The solver (`shapedsde.scheme`) steps the Cholesky factor L of V = L L^T with the
increment M = L^{-1} dV L^{-T}, and needs two contractions of the diffusion:

- the Ito contraction  K^{ad}(V) = sum_{b,c} Sigma^{ab,cd}(V) (V^{-1})^{bc},  so that
  E[M^2] = L^{-1} K L^{-T} dt (the second-order term of the multiplicative step, which
  the drift of M must compensate);
- the trace variance  s^2(V) = sum_{a,c} Sigma^{aa,cc}(V) = Var[d tr V] / dt, which the
  exit test uses for its Brownian-bridge crossing probability.

Both are derived here from the Kronecker patterns of Sigma (`shapedsde.symbolic.kron`),
for every m, with W = V^{-1} as a SymPy `Inverse`; SymPy cancels V V^{-1} = I, so for
every built-in block K and s^2 are polynomials in V (no inverse is left to compute).
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .kron import Kron
from .matrixform import M_TOKENS, MatrixCoefficients, V, _symmetrise, _tidy_matrix


def _oriented(F: MatrixExpr, labels: tuple[str, str], first: str) -> tuple[MatrixExpr, str]:
    """F as F^{first, other}: transpose it if `first` is its second label."""
    if labels[0] == first:
        return F, labels[1]
    return F.T, labels[0]


def ito_contraction(patterns: tuple[Kron, ...]) -> MatrixExpr:
    """K^{ad} = sum_{bc} Sigma^{ab,cd} (V^{-1})^{bc} as a matrix expression (every m)."""
    W = sp.Inverse(V)
    total = sp.ZeroMatrix(M_TOKENS, M_TOKENS)
    for k in patterns:
        F, Fl, G, Gl = (k.X, k.xl, k.Y, k.yl) if "a" in k.xl else (k.Y, k.yl, k.X, k.xl)
        F, x = _oriented(F, Fl, "a")
        if x == "d":  # F^{ad} G^{bc}: the bc sum is a trace with W
            G, _ = _oriented(G, Gl, "b")
            total += k.coef * sp.Trace(G.T * W) * F
        else:  # a chain a -x- W -y- d
            y = "c" if x == "b" else "b"
            G, _ = _oriented(G, Gl, y)
            total += k.coef * F * W * G
    return _tidy_matrix(_cancel_inverses(total))


def trace_variance(patterns: tuple[Kron, ...]) -> sp.Expr:
    """s^2 = sum_{a,c} Sigma^{aa,cc} = Var[tr dV] / dt as a scalar expression (every m)."""
    total = sp.Integer(0)
    for k in patterns:
        pairs = {frozenset(k.xl), frozenset(k.yl)}
        if frozenset("ab") in pairs:  # X^{ab} Y^{cd} with b = a, d = c
            total += k.coef * sp.Trace(k.X) * sp.Trace(k.Y)
        else:  # X and Y each carry one label of {a, b} and one of {c, d}: sum X o Y
            X, _ = _oriented(k.X, k.xl, k.xl[0] if k.xl[0] in "ab" else k.xl[1])
            Y, _ = _oriented(k.Y, k.yl, k.yl[0] if k.yl[0] in "ab" else k.yl[1])
            total += k.coef * sp.Trace(X.T * Y)
    return sp.factor(_symmetrise(_cancel_inverses(total)))


def _cancel_inverses(expr):
    """Expand, cancel every V V^{-1} (also cyclically inside traces), evaluate traces of I."""
    expr = _tidy_matrix(sp.expand(expr).doit()) if isinstance(expr, MatrixExpr) \
        else sp.expand(expr)
    return expr.replace(lambda e: isinstance(e, (sp.MatMul, sp.Trace)), _cancel_node).doit()


def _cancel_node(e):
    if isinstance(e, sp.Trace):
        factors = _factors(e.arg)
        while len(factors) > 1 and _inverse_pair(factors[-1], factors[0]):
            factors = factors[1:-1]
        return sp.Trace(_product(factors)).doit()
    coef, mat = e.as_coeff_mmul()
    return coef * _product(_factors(mat))


def _factors(e) -> list:
    """Factors of a matrix product with adjacent X X^{-1} pairs removed."""
    out: list = []
    for f in (list(e.args) if isinstance(e, sp.MatMul) else [e]):
        if out and _inverse_pair(out[-1], f):
            out.pop()
        else:
            out.append(f)
    return out


def _inverse_pair(f, g) -> bool:
    return sp.Inverse(f) == g or f == sp.Inverse(g) or (
        isinstance(g, sp.MatPow) and g.exp == -1 and g.base == f) or (
        isinstance(f, sp.MatPow) and f.exp == -1 and f.base == g)


def _product(factors: list):
    return sp.MatMul(*factors).doit() if factors else sp.Identity(M_TOKENS)


def contractions(c: MatrixCoefficients) -> tuple[MatrixExpr, sp.Expr]:
    """(K, s^2) of a block's matrix-form coefficients."""
    return ito_contraction(c.diffusion), trace_variance(c.diffusion)
