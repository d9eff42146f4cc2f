"""A matrix whose entries are one scalar function of (V^{aa}, V^{bb}, rho^{ab}).

Activation expectations (the arc-cosine kernel and its shaped expansion) are not
matrix polynomials; they enter the matrix-form derivation as this node, which the
evaluator, the kernel printer and the LaTeX printer all understand.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .activation import RHO, V_AA, V_BB


class Entrywise(MatrixExpr):
    """F(V)^{ab} = formula(V_aa = V^{aa}, V_bb = V^{bb}, rho = V^{ab} / sqrt(V^{aa} V^{bb}))."""

    def __new__(cls, name: sp.Symbol, formula: sp.Expr, V: MatrixExpr):
        return sp.Basic.__new__(cls, name, formula, V)

    @property
    def name(self) -> sp.Symbol:
        return self.args[0]

    @property
    def formula(self) -> sp.Expr:
        return self.args[1]

    @property
    def shape(self):
        return self.args[2].shape

    def _eval_transpose(self):
        return self  # the formula is symmetric in (a, b) for the kernels used here

    def entry_value(self, Vaa: sp.Expr, Vbb: sp.Expr, Vab: sp.Expr, diagonal: bool) -> sp.Expr:
        rho = sp.Integer(1) if diagonal else Vab / sp.sqrt(Vaa * Vbb)
        return sp.simplify(self.formula.subs({V_AA: Vaa, V_BB: Vbb, RHO: rho}))
