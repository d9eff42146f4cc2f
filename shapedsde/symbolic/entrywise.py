"""Per-entry derivation of b(V) and Sigma(V) from a `LayerModel`.

With dV = V' - V = eps D1 + eps^2 D2 + O(eps^3) and eps^2 = 1/n,
    b(V)            = lim n E[dV]        = E[D2]   (and E[D1] must vanish),
    Sigma^{ab,cd}(V) = lim n Cov[dV]     = E[D1^{ab} D1^{cd}] / heads,
the expectations taken by Wick's theorem over the layer's noise (`heads` iid
copies averaged, for multi-head attention, divide the covariance).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sympy as sp

from .layers import GAMMA, layer_model
from .wick import gaussian_expectation


@dataclass(frozen=True)
class EntrywiseCoefficients:
    V: sp.Matrix
    drift: sp.Matrix
    diffusion: sp.Array  # (m, m, m, m)


def derive(model) -> EntrywiseCoefficients:
    """b and Sigma of a LayerModel, entry by entry."""
    m = model.m
    def E(e: sp.Expr, other: sp.Expr | None = None) -> sp.Expr:
        return gaussian_expectation(e, model.noise, model.noise_cov, other)

    D0 = (model.series[0] - model.V).applyfunc(sp.simplify)
    if D0 != sp.zeros(m, m):
        raise AssertionError(f"update is not the identity at eps = 0: {D0}")
    D1, D2 = model.series[1], model.series[2]
    if any(sp.simplify(E(e)) != 0 for e in D1):
        raise AssertionError("first-order update has non-zero mean")
    drift = D2.applyfunc(lambda e: _tidy(E(e)))
    flat = [D1[a, b] for a in range(m) for b in range(m)]
    entries: dict[tuple[int, int], sp.Expr] = {}
    for i in range(m * m):
        for j in range(i, m * m):
            entries[i, j] = entries[j, i] = _tidy(E(flat[i], flat[j]) / model.heads)
    diffusion = sp.Array([entries[i, j] for i in range(m * m) for j in range(m * m)],
                         (m, m, m, m))
    return EntrywiseCoefficients(model.V, drift, diffusion)


def _tidy(e: sp.Expr) -> sp.Expr:
    """Expand, using lam^2 = 1 - gam^2 (lam enters as sqrt(1 - gam^2))."""
    return sp.expand(sp.expand(e).subs(sp.sqrt(1 - GAMMA**2) ** 2, 1 - GAMMA**2))


@cache
def derive_block(name: str, m: int) -> EntrywiseCoefficients:
    """Cached per-entry coefficients of a named block for m tokens."""
    return derive(layer_model(name, m))
