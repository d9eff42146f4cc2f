"""b(V) and Sigma(V) of a block as SymPy objects: the public symbolic face.

`Coefficients` holds either the matrix form, valid for every number of tokens m
(b a matrix expression in V and the centring projector P = I - 11^T/m, Sigma a sum
of symmetrised Kronecker patterns `Kron`), or the explicit entries for one m
(b an m x m `sympy.Matrix` in the symbols V_ab, Sigma an (m, m, m, m) `sympy.Array`).
Parameters stay symbols (gamma, tau_0, n_H, c_+, c_-); `params` maps each to the
block's value and `with_values()` substitutes them.

Blocks made of sub-layers in sequence add their coefficients at leading order
(`add`); where the parts disagree on a parameter's value, each part's symbol is
indexed by its position (gamma_1, gamma_2, ...), so nothing is conflated.

This module sits above the symbolic engine and the printers it combines (parameter
symbols, `shapedsde.codegen` for the LaTeX).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .codegen import entrywise_latex_source, latex_source
from .parameters import symbols
from .symbolic.evaluate import explicit, explicit_diffusion
from .symbolic.kron import Kron
from .symbolic.layers import covariance_symbols
from .symbolic.matrixform import MatrixCoefficients


@dataclass(frozen=True)
class Coefficients:
    """b and Sigma of one block: matrix form (`m is None`) or explicit entries for m."""

    drift: MatrixExpr | sp.Matrix
    diffusion: tuple[Kron, ...] | sp.Array
    m: int | None = None
    params: dict[sp.Symbol, Any] = field(default_factory=dict)
    name: str = ""

    def with_values(self) -> Coefficients:
        """The same coefficients with every parameter symbol replaced by its value."""
        return self.replaced({s: sp.nsimplify(v) for s, v in self.params.items()}, {})

    def replaced(self, mapping: dict[sp.Symbol, Any], params: dict[sp.Symbol, Any]
                 ) -> Coefficients:
        """b and Sigma with the symbols of `mapping` replaced, and the given `params`."""
        if self.m is None:
            diffusion: Any = tuple(Kron(k.coef.xreplace(mapping), k.X, k.xl, k.Y, k.yl)
                                   for k in self.diffusion)
        else:  # entry by entry: xreplace is linear in the size, Array.subs is not
            diffusion = self.diffusion.applyfunc(lambda e: e.xreplace(mapping))
        return Coefficients(self.drift.xreplace(mapping), diffusion, self.m, params, self.name)

    def entries(self, m: int) -> Coefficients:
        """Explicit entries for m tokens (V -> the symbols V_ab, P -> I - 11^T/m), left
        unexpanded (expanding Sigma's m^4 entries costs minutes at m = 5)."""
        if self.m is not None:
            if m != self.m:
                raise ValueError(f"these coefficients are for m = {self.m}, not {m}")
            return self
        Vm = covariance_symbols(m)
        drift = explicit(self.drift, m, Vm)
        diffusion = explicit_diffusion(self.diffusion, m, Vm)
        return Coefficients(drift, diffusion, m, self.params, self.name)

    def latex(self) -> str:
        """A LaTeX fragment (align*) with b and Sigma."""
        if self.m is None:
            return latex_source(MatrixCoefficients(self.name, self.drift, self.diffusion))
        return entrywise_latex_source(self.name, self.m, self.drift, self.diffusion)


def parameter_values(values: dict[str, Any], declared: tuple = ()) -> dict[sp.Symbol, Any]:
    """Kernel parameters by name (Block.kernel_params) -> the same values by symbol
    (`shapedsde.parameters`, and a user block's `declared` parameters)."""
    table = {**symbols(), **{p.name: p.symbol for p in declared if p.symbol is not None}}
    return {table[k]: v for k, v in values.items() if k in table}


def from_parameters(drift: Any, diffusion: Any, m: int | None, values: dict[str, Any],
                    name: str, declared: tuple = ()) -> Coefficients:
    """Coefficients whose symbols are the kernel parameters `values` (name -> value)."""
    return Coefficients(drift, diffusion, m, parameter_values(values, declared), name)


def add(parts: list[Coefficients], name: str) -> Coefficients:
    """Leading-order coefficients of independent sub-layers in sequence: their sum.

    A symbol on which the parts' values disagree is renamed per part (gamma -> gamma_i).
    """
    m = {p.m for p in parts}
    if len(m) != 1:
        raise ValueError("cannot add matrix-form and per-entry coefficients, or two m's")
    renames = part_renames([p.params for p in parts])
    renamed = [p.replaced(r, {r.get(s, s): v for s, v in p.params.items()})
               for p, r in zip(parts, renames, strict=True)]
    params = {s: v for p in renamed for s, v in p.params.items()}
    if parts[0].m is None:
        drift = sp.MatAdd(*(p.drift for p in renamed)).doit()
        diffusion: Any = tuple(k for p in renamed for k in p.diffusion)
    else:
        drift = sum((p.drift for p in renamed[1:]), renamed[0].drift)
        diffusion = sum((p.diffusion for p in renamed[1:]), renamed[0].diffusion)
    return Coefficients(drift, diffusion, parts[0].m, params, name)


def part_renames(params: list[dict[sp.Symbol, Any]]) -> list[dict[sp.Symbol, sp.Symbol]]:
    """Per part, the symbols to rename s -> s_{i+1}: those whose value differs between
    parts (i = the part's position)."""
    out = []
    for i, own in enumerate(params):
        clash = [s for s, v in own.items() if any(s in q and q[s] != v for q in params)]
        out.append({s: sp.Symbol(f"{s.name}_{i + 1}", **s.assumptions0) for s in clash})
    return out
