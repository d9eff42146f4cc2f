"""Causal shaped attention for any m: the closed form in row-stacked matrix notation.

Causal attention lets token a attend to keys 0..a; its Softmax runs over that prefix
and the centring uses the causal uniform matrix C (row a: 1/(a+1) on the prefix). The
rows then have different centring projectors, P_a = D_a - 1_a 1_a^T / l_a on the
prefix of length l_a = a + 1, and the second-order expansion of row a is
A1[a, :] = z[a, :] M_a,  M_a = P_a / l_a. With E[z^{ae} z^{cf}] = V^{ac} V^{ef} / tau0^2:

    b^{ab}  = gam^2 / tau0^2 [ V^{ab} tr(M_a V M_b V) + r_a q_a^b + r_b q_b^a ],
              r_a = V^{aa} / (2 l_a),  q_a = V P_a diag(P_a V P_a),
    Sigma   = gam^2 (2 - gam^2) (V^{ac} V^{bd} + V^{ad} V^{bc})
              + gam^4 / (n_H tau0^2) (K^{ab,cd} + K^{ab,dc} + K^{ba,cd} + K^{ba,dc}),
              K^{ab,cd} = V^{ac} (V M_a V M_c V)^{bd}.

With M_a = P / m for every row this is the (non-causal) attention block.

These formulas are derived for every m by the matrix-form Wick rules
(`shapedsde.symbolic.matrixform.matrix_form("causal")`, one projector per row label:
P_a, P_b in b^{ab}, P_a, ..., P_d in Sigma^{ab,cd}; docs/derivation.md), and
tests/test_causal.py proves the derived result equal to them as matrix expressions with m
and the projectors symbolic, hence for every m. Both also equal the per-entry derivation
(`shapedsde.symbolic.layers.attention_layer(causal=True)`) for m = 2, 3, 4. This module's
code, a transcription of the formulas with loops over rows, is checked against the
derived form at m = 2, 3, 4 (symbolic V, through the per-entry derivation) and m = 5, 7
(exact rational V), and against finite networks by the verifier.

Cost: O(m^5) per V (m^2 products of m x m matrices).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy as sp
import torch

from ._validation import is_torch


def row_projectors(m: int, xp: Any = np, like: Any = None) -> list[Any]:
    """[M_0, ..., M_{m-1}], M_a = P_a / (a + 1), as arrays of V's kind (or SymPy)."""
    out = []
    for a in range(m):
        length = a + 1
        if xp is sp:
            M = sp.zeros(m, m)
            M[:length, :length] = (sp.eye(length) - sp.ones(length, length) / length) / length
        else:
            M = np.zeros((m, m))
            M[:length, :length] = (np.eye(length) - 1.0 / length) / length
            if xp is torch:
                M = torch.as_tensor(M, dtype=like.dtype, device=like.device)
        out.append(M)
    return out


def _backend(V: Any) -> Any:
    return sp if isinstance(V, sp.MatrixBase) else torch if is_torch(V) else np


def causal_drift(V: Any, gamma: Any, tau0: Any) -> Any:
    """b(V) of causal shaped attention; V (..., m, m) NumPy/Torch, or a SymPy Matrix."""
    xp, m = _backend(V), V.shape[-1]
    M = row_projectors(m, xp, V)
    P = [Ma * (a + 1) for a, Ma in enumerate(M)]
    r = [_entry(V, a, a) / (2 * (a + 1)) for a in range(m)]
    q = [V @ P[a] @ _diag_part(P[a] @ V @ P[a], xp) for a in range(m)]  # (..., m, 1)
    drift = [[_entry(V, a, b) * _trace(M[a] @ V @ M[b] @ V, xp)
              + r[a] * _entry(q[a], b, 0) + r[b] * _entry(q[b], a, 0)
              for b in range(m)] for a in range(m)]
    return gamma**2 / tau0**2 * _assemble(drift, xp)


def causal_diffusion(V: Any, gamma: Any, tau0: Any, heads: Any = 1) -> Any:
    """Sigma(V) of causal shaped attention, shape (..., m, m, m, m)."""
    xp, m = _backend(V), V.shape[-1]
    M = row_projectors(m, xp, V)
    W = [[V @ M[a] @ V @ M[c] @ V for c in range(m)] for a in range(m)]

    def K(a: int, b: int, c: int, d: int) -> Any:
        return _entry(V, a, c) * _entry(W[a][c], b, d)

    def sigma(a: int, b: int, c: int, d: int) -> Any:
        value = gamma**2 * (2 - gamma**2) * (_entry(V, a, c) * _entry(V, b, d)
                                             + _entry(V, a, d) * _entry(V, b, c))
        att = K(a, b, c, d) + K(a, b, d, c) + K(b, a, c, d) + K(b, a, d, c)
        return value + gamma**4 / (heads * tau0**2) * att

    idx = range(m)
    flat = [sigma(a, b, c, d) for a in idx for b in idx for c in idx for d in idx]
    if xp is sp:
        return sp.Array(flat, (m, m, m, m))
    return xp.stack(flat, -1).reshape(*V.shape[:-2], m, m, m, m)


def _entry(X: Any, i: int, j: int) -> Any:
    return X[i, j] if isinstance(X, sp.MatrixBase) else X[..., i, j]


def _trace(X: Any, xp: Any) -> Any:
    return X.trace() if xp is sp else xp.einsum("...ii->...", X)


def _diag_part(X: Any, xp: Any) -> Any:
    """diag(X) as a column (..., m, 1)."""
    if xp is sp:
        return sp.Matrix([X[i, i] for i in range(X.shape[0])])
    return xp.diagonal(X, 0, -2, -1)[..., None]


def _assemble(rows: list[list[Any]], xp: Any) -> Any:
    if xp is sp:
        return sp.Matrix(rows)
    return xp.stack([xp.stack(r, -1) for r in rows], -2)
