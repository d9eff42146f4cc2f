"""Kernels of a block's tangent, printed from its block-form derivation.

`shapedsde.symbolic.tangent` derives b^V, b^C, b^U and the blocks Cov[dX, dY] of Sigma of
the joint state Q = [[V, C], [C^T, U]] in matrix form; this prints them with the block
kernels' printer (`shapedsde.codegen`) as functions of the blocks V, C, U. The tangent
object (`shapedsde.tangent`) assembles the (2m, 2m) drift and (2m)^4 diffusion from them.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .codegen import BACKENDS, HEADER, _KernelPrinter, _kron_spec
from .latex import drift_terms, entry_lines, equation, formula_latex, sigma_terms
from .parameters import PARAMETERS, Parameter
from .symbolic.tangent import BLOCKS, JOINT_ENTRIES, JointEntrywise, TangentCoefficients

#: Printed names of the joint entries (`JOINT_ENTRIES`), in the helper's argument order.
_ENTRY_NAMES = ("Va", "Vb", "Vab", "Ca", "Cb", "Cab", "Cba", "Uab")
#: The joint entries as the LaTeX reads them (matrix-form notation V^{ab}, ...).
_ENTRY_TEX = {x: sp.Symbol(t, **x.assumptions0) for x, t in zip(JOINT_ENTRIES, (
    "V^{aa}", "V^{bb}", "V^{ab}", "C^{aa}", "C^{bb}", "C^{ab}", "C^{ba}", "U^{ab}"),
    strict=True)}
#: The helper evaluating a `JointEntrywise` (off-diagonal and diagonal formulas).
_JOINT_HELPER = {
    "numpy": '''
def _acos(x):
    return np.arccos(np.clip(x, -1.0, 1.0))


def _joint_entrywise(V, C, U, off, diag):
    """off(V^aa, V^bb, V^ab, C^aa, C^bb, C^ab, C^ba, U^ab) off the diagonal, diag(V^aa, C^aa,
    U^aa) on it."""
    eye = np.eye(V.shape[-1], dtype=bool)
    dV, dC, dU = (np.diagonal(X, 0, -2, -1) for X in (V, C, U))
    Vab = np.where(eye, 0.0, V)  # the off formula is not read on the diagonal
    with np.errstate(divide="ignore", invalid="ignore"):
        out = off(dV[..., :, None], dV[..., None, :], Vab, dC[..., :, None], dC[..., None, :],
                  C, _T(C), U) + 0 * V
    on = diag(dV, dC, dU) + 0 * dV
    return np.where(eye, on[..., :, None] * eye, out)
''',
    "torch": '''
def _acos(x):
    return torch.acos(x.clamp(-1.0, 1.0))


def _joint_entrywise(V, C, U, off, diag):
    """off(V^aa, V^bb, V^ab, C^aa, C^bb, C^ab, C^ba, U^ab) off the diagonal, diag(V^aa, C^aa,
    U^aa) on it."""
    eye = torch.eye(V.shape[-1], dtype=torch.bool, device=V.device)
    dV, dC, dU = (torch.diagonal(X, 0, -2, -1) for X in (V, C, U))
    Vab = torch.where(eye, torch.zeros_like(V), V)  # the off formula is not read on the diagonal
    out = off(dV[..., :, None], dV[..., None, :], Vab, dC[..., :, None], dC[..., None, :],
              C, _T(C), U) + 0 * V
    on = diag(dV, dC, dU) + 0 * dV
    return torch.where(eye, on[..., :, None] * eye, out)
''',
}


class _TangentPrinter(_KernelPrinter):
    """The block kernels' printer, reading the joint entries and `JointEntrywise` nodes."""

    def __init__(self, params: tuple[Parameter, ...]) -> None:
        super().__init__(params)
        self.scalars.update({x.name: n for x, n in zip(JOINT_ENTRIES, _ENTRY_NAMES,
                                                        strict=True)})

    def _node(self, e: MatrixExpr) -> str:
        if not isinstance(e, JointEntrywise):
            return super()._node(e)
        def lam(f: sp.Expr) -> str:
            root = sp.Function("_sqrt")
            f = f.replace(lambda x: x.is_Pow and x.exp in (sp.S.Half, -sp.S.Half),
                          lambda x: root(x.base) ** (2 * x.exp))
            return self.scalar(f.replace(sp.acos, sp.Function("_acos")))
        diag = e.diag.subs({JOINT_ENTRIES[5]: JOINT_ENTRIES[3]})
        return (f"_joint_entrywise(V, C, U, lambda {', '.join(_ENTRY_NAMES)}: {lam(e.off)}, "
                f"lambda Va, Ca, Uab: {lam(diag)})")


def tangent_arguments(c: TangentCoefficients, params: tuple[Parameter, ...] = PARAMETERS
                      ) -> tuple[str, ...]:
    """The kernels' parameter arguments, in the order of `params`: those that appear."""
    free = set().union(*(e.free_symbols for e in c.drift.values()),
                       *(k.coef.free_symbols for ks in c.diffusion.values() for k in ks))
    return tuple(p.name for p in params if p.symbol is not None and p.symbol in free)


def tangent_kernel_source(coeffs: dict[str, TangentCoefficients], backend: str,
                          params: tuple[Parameter, ...] = PARAMETERS) -> str:
    """Python source of one backend's tangent kernels: `<name>_drift(V, C, U, ...)` ->
    (b^V, b^C, b^U) and `<name>_diffusion(V, C, U, ...)` -> {(X, Y): Cov[dX, dY] / dt}."""
    b = BACKENDS[backend]
    parts = [HEADER, f'"""{backend} kernels of the tangents: blocks of b(Q) and Sigma(Q)."""',
             "", b["import"], "", b["prelude"], _JOINT_HELPER[backend]]
    for name, c in coeffs.items():
        args = "".join(f", {a}" for a in tangent_arguments(c, params))
        if c.rows:
            parts += _rows_source(name, c, args, params)
            continue
        pr = _TangentPrinter(params)
        outs = [pr.matrix(c.drift[X]) for X in BLOCKS]
        parts += ["", f"def {name}_drift(V, C, U{args}):",
                  f'    """(b^V, b^C, b^U) of {name}; each (..., m, m)."""',
                  "    m, I, J, P = _setup(V)", *pr.lines, f"    return {', '.join(outs)}", ""]
        pr = _TangentPrinter(params)
        entries = []
        for (X, Y), ks in c.diffusion.items():
            terms = [f'({pr.scalar(k.coef)}) * _kron("{_kron_spec(k)}", {pr.matrix(k.X)}, '
                     f'{pr.matrix(k.Y)})' for k in ks]
            body = " + ".join(terms) or '0 * _kron("...ac,...bd->...abcd", V, V)'
            entries.append(f'("{X}", "{Y}"): {body},')
        parts += ["", f"def {name}_diffusion(V, C, U{args}):",
                  f'    """Cov[dX^ab, dY^cd] / dt of {name} for X <= Y in V, C, U; '
                  '(..., m, m, m, m)."""',
                  "    m, I, J, P = _setup(V)", *pr.lines,
                  "    return {", *(f"        {e}" for e in entries), "    }", ""]
    return "\n".join(parts).replace("\n\n\n\n", "\n\n\n").rstrip() + "\n"


def _rows_source(name: str, c: TangentCoefficients, args: str,
                 params: tuple[Parameter, ...]) -> list[str]:
    """`<name>_rows(V, C, U, P_a, ..., P_d, l_a, ..., l_d, ...)`: every factor of a tangent
    read per entry (causal attention), unread: the drift blocks (labels a, b) and, per
    block pair, (coef, X, labels of X, Y, labels of Y) with the row projectors broadcast
    on their own axes (`shapedsde.tangent` reads them at each entry)."""
    pr = _TangentPrinter(params)
    outs = [pr.matrix(c.drift[X]) for X in BLOCKS]
    entries = []
    for (X, Y), ks in c.diffusion.items():
        items = [f'({pr.scalar(k.coef)}, {pr.matrix(k.X)}, "{"".join(k.xl)}", '
                 f'{pr.matrix(k.Y)}, "{"".join(k.yl)}")' for k in ks]
        entries.append(f'("{X}", "{Y}"): [{", ".join(items)}],')
    rows = "P_a, P_b, P_c, P_d, l_a, l_b, l_c, l_d"
    return ["", f"def {name}_rows(V, C, U, {rows}{args}):",
            f'    """Factors of {name}, read per entry with the row projectors P_x, l_x."""',
            "    m, I, J, P = _setup(V)", *pr.lines,
            f"    return ({', '.join(outs)}), {{", *(f"        {e}" for e in entries),
            "    }", ""]


def _with_angle(e: sp.Expr) -> tuple[sp.Expr, bool]:
    """An arc-cosine kernel's formula in the angle theta^{ab} = arccos(rho^{ab}) (for
    display only: V^{ab} = cos(theta) sqrt(V^{aa} V^{bb}), sin(theta) > 0)."""
    va, vb, vab = JOINT_ENTRIES[:3]
    pa, pb = (sp.Symbol(x.name, positive=True) for x in (va, vb))  # variances: positive
    theta = sp.Symbol(r"\theta^{ab}", positive=True)
    e = e.xreplace({va: pa, vb: pb}).subs(vab, sp.cos(theta) * sp.sqrt(pa) * sp.sqrt(pb))
    e = sp.simplify(e).replace(sp.Abs, lambda x: x).replace(
        lambda x: isinstance(x, sp.acos) and isinstance(x.args[0], sp.cos),
        lambda x: x.args[0].args[0])
    return sp.simplify(e).xreplace({pa: va, pb: vb}), True


def tangent_latex(c: TangentCoefficients) -> str:
    """The block form of a tangent's coefficients as a paper-style LaTeX fragment:
    b^V, b^C, b^U, the joint kernels they read, and Cov[dX^{ab}, dY^{cd}] / dt."""
    key = c.name.replace("+", "-").replace("_", "-")
    lines: list[str] = []
    for X in BLOCKS:
        lines += equation(f"b^{{{X}}}", drift_terms(c.drift[X]), f"eq:{key}-b{X}", ",")
    joint = set().union(*(e.atoms(JointEntrywise) for e in c.drift.values()))
    angle = False
    for j in sorted(joint, key=sp.default_sort_key):
        name = formula_latex(j.name)
        off, angle = _with_angle(j.off) if j.off.has(sp.acos) else (j.off, angle)
        for lhs, e, end in ((f"{name}^{{ab}}", off, r", \quad a \neq b,"),
                            (f"{name}^{{aa}}", j.diag, ",")):
            e = sp.factor(e).xreplace(_ENTRY_TEX)
            lines += [f"{x} \\nonumber" for x in entry_lines(lhs, e, end)]
    if angle:
        lines.append(r"\theta^{ab} &= \arccos\bigl(V^{ab} / \sqrt{V^{aa} V^{bb}}\bigr) "
                     r"\in (0, \pi), \nonumber")
    for (X, Y), ks in c.diffusion.items():
        end = "." if (X, Y) == ("U", "U") else ","
        lines += equation(rf"\Sigma^{{{X}{Y}}}", sigma_terms(ks), f"eq:{key}-S{X}{Y}", end)
    rows = " \\\\\n".join(lines)
    return (f"% {HEADER[2:]}"
            f"% Tangent of {c.name.removesuffix('_tangent')}: Q = [[V, C], [C^T, U]], "
            "C = X T^T / n, U = T T^T / n;\n"
            "% Sigma^{XY} is Cov[dX^{ab}, dY^{cd}] / dt; P = I - 11^T/m, Dg(X) = I o X; the "
            "joint kernels' entries are read at tokens a and b.\n"
            f"\\begin{{align}}\n{rows}\n\\end{{align}}\n")
