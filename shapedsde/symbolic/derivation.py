"""`Derivation`: the symbolic face of a block, declared in the block's definition.

A block class lists its derivations (`Block.derivations`); the derivation engine, the
code generator and the symbolic API find them there by name (`shapedsde.registry`),
so nothing keeps a second table of block names. The blocks sit in a layer above this
one, so the registry installs that lookup here when it is imported (`set_lookup`), and
`find` uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

if TYPE_CHECKING:  # layers looks derivations up by name here: no import back
    from .layers import LayerModel


@dataclass(frozen=True)
class Derivation:
    """How b(V) and Sigma(V) of one block are derived.

    name: the derivation's (and generated kernels') name, a Python identifier unique
        over all blocks.
    entries: m -> the per-entry update rule (`LayerModel`) for m tokens; None where the
        rule is declared in matrix form only (its entries are then those of the matrix
        form, `Coefficients.entries`).
    update: (sources, heads) -> V' of one head's copy as a matrix expression
        (`matrixform.residual_update`); None where only `parts` or `entries` give it.
    heads: the number of iid copies averaged per update (n_H for multi-head attention).
    parts: names of sub-layer derivations applied in sequence; their coefficients add
        at leading order (independent weights; proved on the per-entry composition).
    rows: the update is read per entry with row projectors P_x, l_x (causal attention:
        entry (a, b) uses rows a and b, and Sigma's second factor entry (c, d)); such a
        matrix form gives LaTeX and explicit entries, not printed kernels.
    entrywise_latex: also export b and Sigma per entry for this m.
    """

    name: str
    entries: Callable[[int], LayerModel] | None = None
    update: Callable[[dict, sp.Expr], MatrixExpr] | None = None
    heads: sp.Expr = sp.Integer(1)
    parts: tuple[str, ...] = ()
    rows: bool = False
    entrywise_latex: int | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"a derivation's name names its kernels (name_drift, ...): it "
                             f"must be a Python identifier; got {self.name!r}")
        if self.entries is None and not self.has_matrix_form:
            raise ValueError(f"derivation {self.name!r} needs an update rule: entries, "
                             "update or parts")

    @property
    def has_matrix_form(self) -> bool:
        """Whether b and Sigma are derived for every m."""
        return self.update is not None or bool(self.parts)

    @property
    def has_kernels(self) -> bool:
        """Whether kernels are printed from the matrix form (not read per entry)."""
        return self.has_matrix_form and not self.rows


#: Derivation by name, installed by `shapedsde.registry` (importing `shapedsde` does it).
_lookup: Callable[[str], Derivation] | None = None


def set_lookup(lookup: Callable[[str], Derivation]) -> None:
    """Install how `find` looks derivations up by name (the blocks' definitions)."""
    global _lookup
    _lookup = lookup


def find(name: str) -> Derivation:
    """The derivation called `name`, among the blocks' definitions."""
    if _lookup is None:
        raise RuntimeError("no derivation lookup installed: import shapedsde first")
    return _lookup(name)
