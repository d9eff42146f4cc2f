"""Sums over the width index, reduced to one m-dimensional Gaussian term.

Given X, the width-n sums of one layer are sums of N iid terms f(g_j) of a
Gaussian vector g (e.g. (1/n) H H^T = (1/n) sum_j h_j h_j^T with the columns
h_j of H = X W / sqrt(n) iid N(0, V)). Writing eps = N^{-1/2},

    (1/N) sum_j f(g_j) = E f(g) + eps xi,     Cov(xi) = Cov(f(g)),

so at the orders kept (mean to O(1/n), fluctuation to O(n^{-1/2})) each sum
is its mean plus a centred noise whose covariance is taken by Wick's theorem
on the single term. Only these second moments survive at this order, so the
noise is treated as Gaussian downstream (its higher cumulants are O(eps)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sympy as sp

from .wick import gaussian_expectation


@dataclass(frozen=True)
class WidthSum:
    """Matrix-valued terms f_s(g) of one iid draw g ~ N(0, cov) of `variables`."""

    variables: tuple[sp.Symbol, ...]
    cov: sp.Matrix
    terms: dict[str, sp.Matrix]

    def mean(self, name: str) -> sp.Matrix:
        return self.terms[name].applyfunc(
            lambda e: gaussian_expectation(e, self.variables, self.cov))

    def noise(self) -> tuple[dict[str, sp.Matrix], list[sp.Symbol], sp.Matrix]:
        """Noise symbols xi_s (one matrix per term) and their joint covariance."""
        symbols: dict[str, sp.Matrix] = {}
        flat: list[sp.Symbol] = []
        centred: list[sp.Expr] = []
        for name, term in self.terms.items():
            rows, cols = term.shape
            sym = sp.Matrix(rows, cols, lambda i, j, n=name: sp.Symbol(f"xi_{n}{i}{j}"))
            symbols[name] = sym
            mean = self.mean(name)
            flat.extend(sym)
            centred.extend(term[k] - mean[k] for k in range(rows * cols))
        k = len(flat)
        cov = sp.zeros(k, k)
        for i in range(k):
            for j in range(i, k):
                cov[i, j] = cov[j, i] = gaussian_expectation(
                    centred[i] * centred[j], self.variables, self.cov)
        return symbols, flat, cov


def gaussian_vector(name: str, V: sp.Matrix) -> tuple[list[sp.Symbol], sp.Matrix]:
    """Symbols for one draw of N(0, V) (m components)."""
    m = V.shape[0]
    return list(sp.symbols(f"{name}0:{m}")), V


def independent(*vectors: tuple[Sequence[sp.Symbol], sp.Matrix]
                ) -> tuple[tuple[sp.Symbol, ...], sp.Matrix]:
    """Stack independent Gaussian vectors: block-diagonal covariance."""
    variables = tuple(v for vec, _ in vectors for v in vec)
    return variables, sp.diag(*[cov for _, cov in vectors])
