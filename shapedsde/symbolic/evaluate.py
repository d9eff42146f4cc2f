"""Explicit evaluation of matrix-form results for a given m (used to prove the
matrix form equal to the per-entry derivation)."""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .entrywise_kernel import Entrywise
from .kron import Kron
from .matrixform import M_TOKENS, P, V


def explicit(expr, m: int, Vm: sp.Matrix, **others: sp.Matrix):
    """Evaluate a matrix (or scalar) expression with V -> Vm, P -> I - 11^T/m.

    `others` gives explicit values of further matrix symbols by name.
    """
    env = {V.name: Vm, P.name: sp.eye(m) - sp.ones(m, m) / m, **others}
    return _eval(expr, m, env)


def _eval(e, m: int, env: dict):
    if not isinstance(e, MatrixExpr):  # scalar: may contain traces
        e = e.replace(lambda x: isinstance(x, sp.Trace), lambda x: _eval(x.arg, m, env).trace())
        return e.subs(M_TOKENS, m)
    if isinstance(e, sp.MatrixSymbol):
        return env[e.name]
    if isinstance(e, Entrywise):
        Vm = _eval(e.args[2], m, env)
        return sp.Matrix(m, m, lambda a, b: e.entry_value(Vm[a, a], Vm[b, b], Vm[a, b], a == b))
    if isinstance(e, sp.Identity):
        return sp.eye(m)
    if isinstance(e, sp.OneMatrix):
        return sp.ones(m, m)
    if isinstance(e, sp.ZeroMatrix):
        return sp.zeros(m, m)
    if isinstance(e, sp.Transpose):
        return _eval(e.arg, m, env).T
    if isinstance(e, sp.MatPow):
        return _eval(e.base, m, env) ** int(e.exp)
    if isinstance(e, sp.MatAdd):
        return sum((_eval(a, m, env) for a in e.args), sp.zeros(m, m))
    if isinstance(e, sp.MatMul):
        coef, mats = e.as_coeff_mmul()
        out = sp.eye(m)
        for a in (mats.args if isinstance(mats, sp.MatMul) else [mats]):
            out = out * _eval(a, m, env)
        return _eval(coef, m, env) * out
    if isinstance(e, sp.HadamardProduct):
        out = sp.ones(m, m)
        for a in e.args:
            out = out.multiply_elementwise(_eval(a, m, env))
        return out
    if isinstance(e, sp.HadamardPower):
        return _eval(e.base, m, env).applyfunc(lambda x: x ** e.exp)
    raise NotImplementedError(f"cannot evaluate {type(e).__name__}: {e}")


def explicit_diffusion(terms: tuple[Kron, ...], m: int, Vm: sp.Matrix) -> sp.Array:
    """Sigma^{ab,cd} = sum_k c_k X_k^{..} Y_k^{..} as an explicit (m, m, m, m) array."""
    mats = [(explicit(k.coef, m, Vm), explicit(k.X, m, Vm), k.xl, explicit(k.Y, m, Vm), k.yl)
            for k in terms]
    out = []
    for a in range(m):
        for b in range(m):
            for c in range(m):
                for d in range(m):
                    idx = {"a": a, "b": b, "c": c, "d": d}
                    out.append(sum(co * X[idx[xl[0]], idx[xl[1]]] * Y[idx[yl[0]], idx[yl[1]]]
                                   for co, X, xl, Y, yl in mats))
    return sp.Array(out, (m, m, m, m))
