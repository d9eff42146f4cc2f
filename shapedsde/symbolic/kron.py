"""Wick calculus on matrix expressions with Kronecker-structured covariances.

A centred random m x m matrix G (a "source") is described by its covariance
with every other source as a sum of Kronecker patterns,

    Cov(G^{ab}, G'^{cd}) = sum_k c_k X_k^{l1 l2} Y_k^{l3 l4},

where (l1 l2 l3 l4) is a pairing of the labels a, b (entry of G) and c, d
(entry of G'). Linear maps L G N act on the labels by sandwiching X and Y,
which gives covariances of linear forms, means of quadratic forms and means of
Hadamard squares as matrix expressions valid for every m.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import sympy as sp
from sympy.matrices.expressions import MatrixExpr


@dataclass(frozen=True)
class Kron:
    """coef * X^{xl[0] xl[1]} * Y^{yl[0] yl[1]}, labels drawn from 'abcd'."""

    coef: sp.Expr
    X: MatrixExpr
    xl: tuple[str, str]
    Y: MatrixExpr
    yl: tuple[str, str]

    def relabel(self, new: dict[str, tuple[MatrixExpr, str]]) -> Kron:
        """Contract each label l with matrix M (as M^{l' l}) and rename it l'."""
        (Mp, p), (Mq, q) = new[self.xl[0]], new[self.xl[1]]
        (Mr, r), (Ms, s) = new[self.yl[0]], new[self.yl[1]]
        return Kron(self.coef, Mp * self.X * Mq.T, (p, q), Mr * self.Y * Ms.T, (r, s))


@dataclass(frozen=True)
class Linear:
    """coef * L G N, or coef * L G^T N when `transposed`, for a source G."""

    coef: sp.Expr
    L: MatrixExpr
    source: sp.MatrixSymbol
    transposed: bool
    N: MatrixExpr

    def label_map(self, row: str, col: str) -> dict[str, tuple[MatrixExpr, str]]:
        """Source labels (row, col) -> (matrix, output label) for output entry (row, col)."""
        if self.transposed:
            return {row: (self.N.T, col), col: (self.L, row)}
        return {row: (self.L, row), col: (self.N.T, col)}


CovarianceTable = dict[tuple[str, str], list[Kron]]


def covariance(t1: Linear, t2: Linear, table: CovarianceTable) -> list[Kron]:
    """Cov((t1)^{ab}, (t2)^{cd}) as Kronecker patterns in the labels a, b, c, d."""
    pats = table.get((t1.source.name, t2.source.name), [])
    labels = t1.label_map("a", "b") | t2.label_map("c", "d")
    return [Kron(t1.coef * t2.coef * k.coef, *_xy(k.relabel(labels))) for k in pats]


def _xy(k: Kron) -> tuple[MatrixExpr, tuple[str, str], MatrixExpr, tuple[str, str]]:
    return k.X, k.xl, k.Y, k.yl


def mean_hadamard(t1: Linear, t2: Linear, table: CovarianceTable, m: sp.Symbol
                  ) -> MatrixExpr:
    """E[(t1) o (t2)] (entrywise product): the diagonal c = a, d = b of Cov(t1, t2)."""
    total = sp.ZeroMatrix(m, m)
    for k in covariance(t1, t2, table):
        X = k.X if k.xl[0] in "ab" else k.X.T  # orient as X^{(a|b)(c|d)}
        Y = k.Y if k.yl[0] in "ab" else k.Y.T
        xl = tuple(sorted(k.xl))
        if xl in {("a", "c"), ("b", "d")}:  # X^{aa} Y^{bb} (or swapped)
            first, second = (X, Y) if xl == ("a", "c") else (Y, X)
            total += k.coef * diag_part(first, m) * sp.OneMatrix(m, m) * diag_part(second, m)
        else:  # X^{ab} Y^{ba} (or swapped): a Hadamard product
            first, second = (X, Y) if xl == ("a", "d") else (Y, X)
            total += k.coef * sp.HadamardProduct(first, second.T)
    return total


def mean_chain(coef: sp.Expr, L: MatrixExpr, s1: Linear, K: MatrixExpr, s2: Linear,
               N: MatrixExpr, table: CovarianceTable, m: sp.Symbol) -> MatrixExpr:
    """E[coef * L S1 K S2 N] for two source factors S1 = G1 or G1^T, S2 = G2 or G2^T.

    Slot entries are S1^{ef}, S2^{gh}; Wick pairs the labels (e f g h) by the
    source covariance, and each pairing is a chain or a trace.
    """
    total = sp.ZeroMatrix(m, m)
    for k in table.get((s1.source.name, s2.source.name), []):
        # Source labels a, b (of G1) and c, d (of G2) -> slot labels.
        rename = ({"a": "f", "b": "e"} if s1.transposed else {"a": "e", "b": "f"}) | (
            {"c": "h", "d": "g"} if s2.transposed else {"c": "g", "d": "h"})
        X, xl = k.X, (rename[k.xl[0]], rename[k.xl[1]])
        Y, yl = k.Y, (rename[k.yl[0]], rename[k.yl[1]])
        if "e" not in xl:
            X, xl, Y, yl = Y, yl, X, xl
        X = X if xl[0] == "e" else X.T  # X^{e ?}
        other = xl[1] if xl[0] == "e" else xl[0]
        Y = Y if yl[0] == min(yl) else Y.T  # Y^{low high} in e<f<g<h order
        c = coef * k.coef
        if other == "h":  # X^{eh} Y^{fg}: trace over the middle
            total += c * sp.Trace(K * Y.T) * (L * X * N)
        elif other == "g":  # X^{eg} Y^{fh}
            total += c * (L * X * K.T * Y * N)
        else:  # X^{ef} Y^{gh}
            total += c * (L * X * K * Y * N)
    return total


def diag_part(X: MatrixExpr, m: sp.Symbol) -> MatrixExpr:
    """Dg(X) = I o X: the diagonal matrix with X's diagonal."""
    return sp.HadamardProduct(sp.Identity(m), X)


def outer_product_covariances(terms: dict[str, tuple[str, str]],
                              vector_cov: dict[tuple[str, str], MatrixExpr],
                              scale: dict[str, sp.Expr]) -> CovarianceTable:
    """Covariance table of sources G_s = scale_s * u w^T built from Gaussian vectors.

    `terms[s] = (u, w)` names the vectors; `vector_cov[(u, v)]` is Cov(u, v)
    (absent: independent). Isserlis: E[u^a w^b u'^c w'^d] minus the product of
    means leaves the pairings (a c)(b d) and (a d)(b c).
    """
    def cov(u: str, v: str) -> MatrixExpr | None:
        if (u, v) in vector_cov:
            return vector_cov[u, v]
        return vector_cov[v, u].T if (v, u) in vector_cov else None

    table: CovarianceTable = {}
    for s1, s2 in product(terms, repeat=2):
        (u1, w1), (u2, w2) = terms[s1], terms[s2]
        pats = []
        for (p, q), (r, t) in ((("a", "c"), ("b", "d")), (("a", "d"), ("b", "c"))):
            vec = {"a": u1, "b": w1, "c": u2, "d": w2}
            X, Y = cov(vec[p], vec[q]), cov(vec[r], vec[t])
            if X is not None and Y is not None:
                pats.append(Kron(scale[s1] * scale[s2], X, (p, q), Y, (r, t)))
        if pats:
            table[s1, s2] = pats
    return table
