"""Kernels of a block's tangent, printed from its block-form derivation.

`shapedsde.symbolic.tangent` derives b^V, b^C, b^U and the blocks Cov[dX, dY] of Sigma of
the joint state Q = [[V, C], [C^T, U]] in matrix form; this prints them with the block
kernels' printer (`shapedsde.codegen`) as functions of the blocks V, C, U. The tangent
object (`shapedsde.tangent`) assembles the (2m, 2m) drift and (2m)^4 diffusion from them.
"""

from __future__ import annotations

from .codegen import BACKENDS, HEADER, _KernelPrinter, _kron_spec
from .parameters import PARAMETERS, Parameter
from .symbolic.tangent import BLOCKS, TangentCoefficients


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
             "", b["import"], "", b["prelude"]]
    for name, c in coeffs.items():
        args = "".join(f", {a}" for a in tangent_arguments(c, params))
        pr = _KernelPrinter(params)
        outs = [pr.matrix(c.drift[X]) for X in BLOCKS]
        parts += ["", f"def {name}_drift(V, C, U{args}):",
                  f'    """(b^V, b^C, b^U) of {name}; each (..., m, m)."""',
                  "    m, I, J, P = _setup(V)", *pr.lines, f"    return {', '.join(outs)}", ""]
        pr = _KernelPrinter(params)
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
