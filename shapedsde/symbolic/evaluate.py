"""Explicit evaluation of matrix-form results for a given m (used to prove the
matrix form equal to the per-entry derivation).

An expression with causal attention's row projectors P_x (and lengths l_x), x in
a, b, c, d, is read per entry: entry (a, b) of b with P_a, P_b the centring
projectors on the prefixes of tokens a and b, and each factor of Sigma^{ab,cd} with
the projectors of a, b, c, d.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .entrywise_kernel import Entrywise
from .kron import Kron
from .matrixform import M_TOKENS, ROW_LENGTHS, ROW_PROJECTORS, P, V


def explicit(expr, m: int, Vm: sp.Matrix, **others: sp.Matrix):
    """Evaluate a matrix (or scalar) expression with V -> Vm, P -> I - 11^T/m.

    `others` gives explicit values of further matrix symbols by name. A matrix with row
    projectors P_a, P_b is read per entry (module docstring).
    """
    env = {V.name: Vm, P.name: sp.eye(m) - sp.ones(m, m) / m, **others}
    labels = row_labels(expr)
    if not labels:
        return _eval(expr, m, env)
    if not isinstance(expr, MatrixExpr) or not set(labels) <= {"a", "b"}:
        raise ValueError(f"cannot read {expr} per entry: row labels {labels}")
    return sp.Matrix(m, m, lambda i, j: _at(expr, {"a": i, "b": j}, m, env)[i, j])


def prefix_projector(length: int, m: int) -> sp.Matrix:
    """The centring projector on the first `length` of m coordinates (zero elsewhere)."""
    out = sp.zeros(m, m)
    out[:length, :length] = sp.eye(length) - sp.ones(length, length) / length
    return out


def row_labels(expr) -> str:
    """The labels x whose row projector P_x or prefix length l_x occurs in `expr`."""
    atoms = sp.sympify(expr).atoms(sp.MatrixSymbol, sp.Symbol)
    return "".join(x for x in "abcd" if ROW_PROJECTORS[x] in atoms or ROW_LENGTHS[x] in atoms)


def _at(expr, rows: dict[str, int], m: int, env: dict):
    """`expr` with each row label x read at token rows[x] (P_x, l_x = rows[x] + 1)."""
    expr = sp.sympify(expr).xreplace({ROW_LENGTHS[x]: i + 1 for x, i in rows.items()})
    env = env | {ROW_PROJECTORS[x].name: prefix_projector(i + 1, m) for x, i in rows.items()}
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
    env = {V.name: Vm, P.name: sp.eye(m) - sp.ones(m, m) / m}
    mats = [(_reader(k.coef, m, env), _reader(k.X, m, env), k.xl, _reader(k.Y, m, env), k.yl)
            for k in terms]
    out = []
    for a in range(m):
        for b in range(m):
            for c in range(m):
                for d in range(m):
                    idx = {"a": a, "b": b, "c": c, "d": d}
                    out.append(sum(co(idx) * X(idx)[idx[xl[0]], idx[xl[1]]]
                                   * Y(idx)[idx[yl[0]], idx[yl[1]]]
                                   for co, X, xl, Y, yl in mats))
    return sp.Array(out, (m, m, m, m))


def _reader(expr, m: int, env: dict):
    """idx -> the value of `expr` with its row labels read at idx, each value computed once."""
    labels, cache = row_labels(expr), {}

    def read(idx: dict[str, int]):
        key = tuple(idx[x] for x in labels)
        if key not in cache:
            cache[key] = _at(expr, {x: idx[x] for x in labels}, m, env)
        return cache[key]
    return read
