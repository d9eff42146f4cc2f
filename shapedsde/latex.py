"""Paper-style LaTeX of derived coefficients.

The derivation's raw output is a sum of many terms; a reader wants the paper's form:

- Sigma in symmetrised Kronecker notation,
  (A (*) B)^{ab,cd} = (A^{ac} B^{bd} + A^{ad} B^{bc} + B^{ac} A^{bd} + B^{ad} A^{bc}) / 2,
  so A (*) A has entries A^{ac} A^{bd} + A^{ad} A^{bc} (`symmetrised`; the grouping is
  proved to expand back to the derived terms in tests/test_latex.py);
- b with its common prefactor collected and X + X^T written sym(X);
- signs that read naturally: gamma^2 (2 - gamma^2), not -gamma^2 (gamma^2 - 2);
- long sums broken over lines, numbered equations with labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .symbolic.kron import Kron

#: Rough width budget of one displayed line, in LaTeX source characters.
LINE_BUDGET = 150


@dataclass(frozen=True)
class SymKron:
    """coef * (A (*) B), the symmetrised Kronecker product (A, B symmetric)."""

    coef: sp.Expr
    A: MatrixExpr
    B: MatrixExpr

    def expand(self) -> list[Kron]:
        """The Kronecker patterns this stands for (the inverse of `symmetrised`)."""
        A, B, c = self.A, self.B, self.coef
        if A == B:
            return [Kron(c, A, ("a", "c"), A, ("b", "d")), Kron(c, A, ("a", "d"), A, ("b", "c"))]
        half = c / 2
        return [Kron(half, A, ("a", "c"), B, ("b", "d")), Kron(half, A, ("a", "d"), B, ("b", "c")),
                Kron(half, B, ("a", "c"), A, ("b", "d")), Kron(half, B, ("a", "d"), A, ("b", "c"))]


def symmetrised(terms: tuple[Kron, ...]) -> tuple[list[SymKron], list[Kron]]:
    """Group Kronecker patterns into symmetrised products; the rest is returned as is."""
    coef: dict[tuple, sp.Expr] = {}
    for k in terms:
        key = (k.X, k.xl, k.Y, k.yl)
        coef[key] = coef.get(key, sp.Integer(0)) + k.coef
    groups: list[SymKron] = []
    used: set[tuple] = set()
    for X, xl, Y, _ in list(coef):
        if xl != ("a", "c"):
            continue
        A, B = sorted((X, Y), key=sp.default_sort_key)
        keys = [(k.X, k.xl, k.Y, k.yl) for k in SymKron(sp.Integer(1), A, B).expand()]
        if any(key not in coef or key in used for key in keys):
            continue
        k0 = coef[keys[0]]
        if all(sp.simplify(coef[key] - k0) == 0 for key in keys):
            # A (*) B spreads coef / 2 over four patterns; A (*) A puts coef on two.
            groups.append(SymKron(sp.factor(k0 * (1 if A == B else 2)), A, B))
            used.update(keys)
    rest = [Kron(c, X, xl, Y, yl) for (X, xl, Y, yl), c in coef.items()
            if (X, xl, Y, yl) not in used and c != 0]
    return groups, rest


def natural_sign(e: sp.Expr) -> tuple[int, sp.Expr]:
    """(sign, e') with e = sign * e', flipping factors like (gamma^2 - 2) to (2 - gamma^2)
    where that removes a minus sign."""
    e = sp.factor(e)
    sign, factors = 1, []
    for f in sp.Mul.make_args(e):
        if f == -1:
            sign = -sign
        elif f.is_Number and f < 0:
            sign, factors = -sign, factors + [-f]
        elif isinstance(f, sp.Add) and sign < 0 and f.could_extract_minus_sign():
            sign, factors = -sign, factors + [sp.expand(-f)]
        else:
            factors.append(f)
    return sign, sp.Mul(*factors, evaluate=False) if len(factors) > 1 else (
        factors[0] if factors else sp.Integer(1))


def signed_terms(pieces: list[tuple[sp.Expr, str]], printer) -> list[str]:
    """'+ c X' / '- c X' strings for (coefficient, LaTeX of the rest) pairs."""
    out = []
    for coef, body in pieces:
        sign, c = natural_sign(coef)
        c_tex = "" if c == 1 else printer(c) + r"\, "
        out.append(f"{'-' if sign < 0 else '+'} {c_tex}{body}".strip())
    if out and out[0].startswith("+ "):
        out[0] = out[0][2:]
    return out


def break_lines(terms: list[str], budget: int = LINE_BUDGET) -> list[str]:
    """Pack signed terms into lines of at most `budget` source characters."""
    lines, current = [], ""
    for t in terms:
        if current and len(current) + len(t) + 1 > budget:
            lines.append(current)
            current = t
        else:
            current = f"{current} {t}".strip()
    return lines + ([current] if current else [])


def common_factor(coefs: list[sp.Expr]) -> sp.Expr:
    """The largest monomial factor shared by every coefficient (1 if none)."""
    nums, dens = zip(*(sp.fraction(sp.factor(c)) for c in coefs), strict=True)
    num = _monomial_gcd(nums)
    den = _monomial_gcd(dens)
    return num / den


def _monomial_gcd(exprs) -> sp.Expr:
    out = None
    for e in exprs:
        mono = sp.Mul(*[f for f in sp.Mul.make_args(e) if not isinstance(f, sp.Add)
                        and not (f.is_Number and f < 0)])
        out = mono if out is None else sp.gcd(out, mono)
    return out if out is not None else sp.Integer(1)
