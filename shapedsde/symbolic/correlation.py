"""The correlation SDE, by Ito's lemma from the covariance SDE.

With dV = b(V) dt + Sigma(V)^{1/2} dB (any block), the correlation
rho^{ab} = V^{ab} / sqrt(V^{aa} V^{bb}) solves

    d rho^{ab} = mu^{ab}(V) dt + (noise),   d<rho^{ab}, rho^{cd}> = C^{ab,cd}(V) dt,

    mu^{ab}     = sum_u (d rho^{ab} / d v_u) b_u
                  + 1/2 sum_{u,w} (d^2 rho^{ab} / d v_u d v_w) Sigma_{u,w},
    C^{ab,cd}   = sum_{u,w} (d rho^{ab} / d v_u) (d rho^{cd} / d v_w) Sigma_{u,w}.

The symmetric pair. V is symmetric, so the state of the SDE is the vector of its
independent entries v_u = V^{ij}, u = (i, j) with i <= j; `derive_block` uses one
symbol V_ij for both V^{ij} and V^{ji}, which is exactly this parametrisation. Each
independent entry is an Ito process with drift b^{ij} and
d<v_{(ij)}, v_{(kl)}> = Sigma^{ij,kl} dt (the entries of Sigma at i <= j, k <= l).
So rho is written as a function of the independent symbols (differentiating with
respect to the symbol V_ij is differentiating with respect to v_{(ij)}), and the sums
above run over i <= j and k <= l only. Summing over all (i, j) instead would count
the off-diagonal entries twice; the equivalent full-matrix form uses the symmetrised
derivative d/dV^{ij} = (1/2) d/dv_{(ij)} for i != j (as `rho_derivatives` does).

Three faces:
- `correlation_sde`, `correlation_covariation`: exact SymPy expressions per entry, from
  `derive_block(name, m)`, for explicit m;
- `reduced_correlation_sde`: the same with V^{ij} = rho^{ij} sqrt(V^{ii} V^{jj}),
  simplified: for m = 2 the correlation SDE in terms of rho, V^{aa}, V^{bb} and the
  block's parameters; `latex_correlation` prints it;
- `rho_coefficients(block, V)`: numeric, for any m, from the block's generated kernels
  and the closed-form derivatives of rho (NumPy or Torch, batched):
      d rho^{ab} / d v_{(ab)} = 1 / sqrt(V^{aa} V^{bb}),
      d rho^{ab} / d v_{(aa)} = -rho^{ab} / (2 V^{aa}),
      second derivatives (x = V^{ab}, y = V^{aa}, z = V^{bb}; a != b):
      rho_xx = 0, rho_xy = -1 / (2 y sqrt(y z)), rho_yy = 3 rho / (4 y^2),
      rho_yz = rho / (4 y z),
  hence, with s_a = V^{aa},
      mu^{ab} = b^{ab} / sqrt(s_a s_b) - rho (b^{aa} / s_a + b^{bb} / s_b) / 2
                - (Sigma^{ab,aa} / s_a + Sigma^{ab,bb} / s_b) / (2 sqrt(s_a s_b))
                + rho (3 Sigma^{aa,aa} / (8 s_a^2) + 3 Sigma^{bb,bb} / (8 s_b^2)
                       + Sigma^{aa,bb} / (4 s_a s_b)).
  rho^{aa} = 1 has zero drift and diffusion (the formulas give 0 there as well).

Results for m = 2 (docs/formulas/correlation_<block>.tex; k = gam^2 (2 - gam^2),
q = V^{aa} + V^{bb} - 2 V^{ab}, nu(rho) = (c_+ - c_-)^2 (sqrt(1 - rho^2) - rho acos rho)
/ (2 pi)):
    linear:      mu = -k rho (1 - rho^2) / 2,              sigma^2 = k (1 - rho^2)^2;
    mlp:         mu = gam^2 (nu(rho) - rho (1 - rho^2)),    sigma^2 = 2 gam^2 (1 - rho^2)^2;
    attention:   linear's terms plus
                 mu += gam^4 (1 - rho^2) q (2 (2 + rho^2) sqrt(V^{aa} V^{bb})
                       - 3 rho (V^{aa} + V^{bb})) / (32 n_H tau0^2),
                 sigma^2 += gam^4 (1 - rho^2)^2 q^2 / (16 n_H tau0^2);
    transformer: the sum of attention (n_H = 1) and mlp.
For m = 2 the attention drift b(V) is proportional to V and moves no correlation: its
correlation drift is all Ito correction from the attention diffusion (hence gam^4).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import sympy as sp

from .. import _validation as val
from .._validation import is_torch
from .activation import RHO, V_AA, V_BB
from .entrywise import derive_block
from .layers import C_MINUS, C_PLUS, TAU0, covariance_symbols

# ----------------------------------------------------------------------------
# Symbolic Ito's lemma, per entry


def _coordinates(V: sp.Matrix) -> list[tuple[int, int]]:
    """The independent entries (i, j), i <= j, of the symmetric symbol matrix V."""
    m = V.shape[0]
    return [(i, j) for i in range(m) for j in range(i, m)]


def correlation_expr(V: sp.Matrix, a: int, b: int) -> sp.Expr:
    """rho^{ab} as a function of the independent entries of V (1 on the diagonal)."""
    if a == b:
        return sp.Integer(1)
    return V[a, b] / sp.sqrt(V[a, a] * V[b, b])


def ito_drift(f: sp.Expr, ew) -> sp.Expr:
    """Drift of f(V) under the covariance SDE with per-entry coefficients `ew`
    (an `EntrywiseCoefficients`): sum_u f_u b_u + 1/2 sum_{u,w} f_{uw} Sigma_{uw}."""
    coords = _coordinates(ew.V)
    sym = [ew.V[i, j] for i, j in coords]
    grad = [sp.diff(f, s) for s in sym]
    out = sum((g * ew.drift[u] for g, u in zip(grad, coords, strict=True)), sp.Integer(0))
    for g, u in zip(grad, coords, strict=True):
        for s, w in zip(sym, coords, strict=True):
            if ew.diffusion[u + w] != 0:
                out += sp.diff(g, s) * ew.diffusion[u + w] / 2
    return out


def ito_covariation(f: sp.Expr, g: sp.Expr, ew) -> sp.Expr:
    """d<f(V), g(V)> / dt = sum_{u,w} f_u g_w Sigma_{uw} (independent entries u, w)."""
    coords = _coordinates(ew.V)
    sym = [ew.V[i, j] for i, j in coords]
    fg = [sp.diff(f, s) for s in sym]
    gg = fg if g is f else [sp.diff(g, s) for s in sym]
    out = sp.Integer(0)
    for fu, u in zip(fg, coords, strict=True):
        for gw, w in zip(gg, coords, strict=True):
            if fu != 0 and gw != 0:
                out += fu * gw * ew.diffusion[u + w]
    return out


def _check_pair(m: int, a: int, b: int, distinct: bool = True) -> None:
    if not (0 <= a < m and 0 <= b < m) or (distinct and a == b):
        kind = "two distinct tokens" if distinct else "tokens"
        raise ValueError(f"need {kind} 0 <= a, b < m = {m}; got ({a}, {b})")


@cache
def correlation_sde(name: str, m: int, a: int = 0, b: int = 1) -> tuple[sp.Expr, sp.Expr]:
    """(drift, diffusion) of rho^{ab} for block `name` with m tokens, per entry.

    drift = lim n E[d rho^{ab}], diffusion = d<rho^{ab}>/dt = lim n Var[d rho^{ab}],
    as SymPy expressions in the symbols V_ij (i <= j) of `derive_block(name, m).V` and
    the block's parameters; unsimplified (see `reduced_correlation_sde`).
    """
    _check_pair(m, a, b)
    ew = derive_block(name, m)
    rho = correlation_expr(ew.V, a, b)
    return ito_drift(rho, ew), ito_covariation(rho, rho, ew)


@cache
def correlation_covariation(name: str, m: int, ab: tuple[int, int],
                            cd: tuple[int, int]) -> sp.Expr:
    """d<rho^{ab}, rho^{cd}>/dt for any two pairs (zero if either pair is diagonal)."""
    for p in (ab, cd):
        _check_pair(m, *p, distinct=False)
    ew = derive_block(name, m)
    f, g = (correlation_expr(ew.V, *p) for p in (ab, cd))
    return ito_covariation(f, g, ew)


# ----------------------------------------------------------------------------
# Reduced form: in terms of correlations and diagonal entries


def correlation_symbols(m: int) -> tuple[dict[sp.Symbol, sp.Expr], list[sp.Symbol],
                                          dict[tuple[int, int], sp.Symbol]]:
    """Substitution V_ij -> rho_ij sqrt(V_ii V_jj) for the symbols of `derive_block`.

    Returns (substitution, diagonal symbols s_i, correlation symbols rho_ij by (i, j)).
    For m = 2 the symbols are `activation`'s V_aa, V_bb and rho (a = 0, b = 1).
    """
    V = covariance_symbols(m)
    if m == 2:
        diag, rhos = [V_AA, V_BB], {(0, 1): RHO}
    else:
        diag = [sp.Symbol(f"V_{i}{i}", positive=True) for i in range(m)]
        rhos = {(i, j): sp.Symbol(f"rho_{i}{j}", real=True)
                for i in range(m) for j in range(i + 1, m)}
    subs = {V[i, i]: diag[i] for i in range(m)}
    subs |= {V[i, j]: r * sp.sqrt(diag[i] * diag[j]) for (i, j), r in rhos.items()}
    return subs, diag, rhos


def _reduce(e: sp.Expr, subs: dict) -> sp.Expr:
    e = e.xreplace(subs)
    e = sp.powsimp(sp.powdenest(sp.expand(e), force=True), force=True)
    return sp.factor(sp.simplify(e))


@cache
def reduced_correlation_sde(name: str, m: int = 2, a: int = 0,
                            b: int = 1) -> tuple[sp.Expr, sp.Expr]:
    """`correlation_sde` with V_ij = rho_ij sqrt(V_ii V_jj), simplified.

    For m = 2: functions of rho (the correlation), V_aa = V^{00}, V_bb = V^{11} (the two
    variances, `shapedsde.symbolic.activation` symbols) and the block's parameters. For
    m > 2: of rho_ij (i < j) and V_ii (`correlation_symbols`).
    """
    subs, _, _ = correlation_symbols(m)
    drift, diffusion = correlation_sde(name, m, a, b)
    return _reduce(drift, subs), _reduce(diffusion, subs)


def split_drift(name: str, m: int = 2, a: int = 0, b: int = 1) -> dict[str, sp.Expr]:
    """The drift of rho^{ab} split into its two Ito parts, reduced:
    'transport' = sum_u rho_u b_u and 'ito' = 1/2 sum_{u,w} rho_uw Sigma_uw."""
    _check_pair(m, a, b)
    ew = derive_block(name, m)
    subs, _, _ = correlation_symbols(m)
    rho = correlation_expr(ew.V, a, b)
    coords = _coordinates(ew.V)
    transport = sum((sp.diff(rho, ew.V[u]) * ew.drift[u] for u in coords), sp.Integer(0))
    total = ito_drift(rho, ew)
    return {"transport": _reduce(transport, subs), "ito": _reduce(total - transport, subs)}


# ----------------------------------------------------------------------------
# LaTeX


def latex_symbols() -> dict[sp.Symbol, sp.Symbol]:
    return {V_AA: sp.Symbol("V^{aa}", positive=True), V_BB: sp.Symbol("V^{bb}", positive=True),
            RHO: sp.Symbol(r"\rho", real=True)}


_S_A, _S_B = sp.symbols("s_a s_b", positive=True)  # sqrt(V_aa), sqrt(V_bb), for factoring


def display_form(e: sp.Expr) -> list[sp.Expr]:
    """Split an m = 2 reduced coefficient into factored terms, for display.

    Terms are grouped by their power of tau_0 and, where the expression depends on the
    activation slopes only through c_+ - c_-, by the power of c_+ - c_-; each group is
    factored in rho, sqrt(V_aa), sqrt(V_bb), with (rho - 1)(rho + 1) written as
    -(1 - rho^2) and negative sums flipped. Returns the terms; their sum equals e.
    """
    delta = sp.Dummy("delta")
    e = sp.expand(e.subs({V_AA: _S_A**2, V_BB: _S_B**2}))
    shifted = sp.expand(e.subs(C_PLUS, C_MINUS + delta))
    by_c = C_PLUS in e.free_symbols and C_MINUS not in shifted.free_symbols
    if by_c:
        e = shifted
    groups: dict[tuple, sp.Expr] = {}
    for term in sp.Add.make_args(e):
        powers = term.as_powers_dict()
        key = (-powers.get(TAU0, 0), powers.get(delta, 0) if by_c else 0)
        groups[key] = groups.get(key, sp.Integer(0)) + term
    back = {_S_A: sp.sqrt(V_AA), _S_B: sp.sqrt(V_BB), delta: C_PLUS - C_MINUS}
    return [_tidy_factors(sp.factor(groups[key]), back) for key in sorted(groups)]


def _negative_sum(e: sp.Expr) -> bool:
    """Whether to print -e instead of e: a negative constant term, or no positive one and
    a leading minus sign; arc-cosine sums as sqrt(1 - rho^2) - rho acos(rho) (the
    arc-cosine kernel's, and Li-Nica-Roy's, sign)."""
    acos = [t for t in sp.Add.make_args(e) if t.has(sp.acos)]
    if acos:
        return not acos[0].could_extract_minus_sign()
    const = e.as_coeff_Add()[0]
    return bool(const < 0) or (const == 0 and e.could_extract_minus_sign())


def _collect_scales(x: sp.Expr) -> sp.Expr:
    """Collect a sum (or a power of one) by sqrt(V_aa V_bb), factoring the coefficients."""
    base, exp = x.as_base_exp()
    if base.is_Add and {_S_A, _S_B} <= base.free_symbols:
        return sp.Pow(sp.collect(base, [_S_A * _S_B], func=sp.factor), exp)
    return x


def _tidy_factors(f: sp.Expr, back: dict) -> sp.Expr:
    """Rewrite a factored product: (rho-1)^k (rho+1)^k -> (-1)^k (1-rho^2)^k, -(sum) -> sum."""
    sign, factors, pm = sp.Integer(1), [], {RHO - 1: 0, RHO + 1: 0}
    for x in sp.Mul.make_args(f):
        base, exp = x.as_base_exp()
        if base in pm and exp.is_Integer:
            pm[base] += exp
        elif base.is_Add and exp.is_Integer and _negative_sum(base):
            sign *= (-1) ** exp
            factors.append(sp.Pow(-base, exp))
        elif x.is_Number:
            sign *= x
        else:
            factors.append(x)
    k = min(pm.values())
    if k > 0:
        sign *= (-1) ** k
        factors.insert(0, sp.Pow(1 - RHO**2, k))
    factors += [sp.Pow(b, p - k) for b, p in pm.items() if p - k]
    factors = [_collect_scales(x).xreplace(back) for x in factors]
    return sp.Mul(sign, *factors, evaluate=False) if sign != 1 else sp.Mul(*factors,
                                                                             evaluate=False)


# ----------------------------------------------------------------------------
# Numeric coefficients for any m


class _Ops:
    """The few array operations used below, for NumPy or Torch."""

    def __init__(self, V: Any) -> None:
        if is_torch(V):
            import torch

            self.einsum, self.sqrt = torch.einsum, torch.sqrt
            self.eye = lambda m: torch.eye(m, dtype=V.dtype, device=V.device)
            self.diagonal = lambda X: torch.diagonal(X, 0, -2, -1)
        else:
            self.einsum, self.sqrt = np.einsum, np.sqrt
            self.eye = lambda m: np.eye(m, dtype=V.dtype)
            self.diagonal = lambda X: np.diagonal(X, 0, -2, -1)


def _pieces(V: Any, ops: _Ops):
    s = ops.diagonal(V)  # (..., m)
    r = 1.0 / ops.sqrt(s)
    rr = r[..., :, None] * r[..., None, :]  # 1 / sqrt(s_a s_b)
    return s, rr, V * rr


def rho_coefficients(block, V: Any, *, check: bool = True) -> tuple[Any, Any]:
    """Drift (..., m, m) and diffusion (..., m, m, m, m) of the correlation matrix rho(V).

    drift[..., a, b] = lim n E[d rho^{ab}], diffusion[..., a, b, c, d] =
    d<rho^{ab}, rho^{cd}>/dt, from `block.drift(V)`, `block.diffusion(V)` and the
    closed-form derivatives of rho (module docstring). V: NumPy array or Torch tensor
    (..., m, m), batched; the diagonal entries (rho^{aa} = 1) are exactly 0.
    `check=False` skips input validation (V must then have a positive diagonal).
    """
    if check:
        V = val.check_covariance(V)
        d = V.diagonal(0, -2, -1)
        if not bool((d > 0).all()):
            raise ValueError("rho needs V^{aa} > 0 for every token")
    b = block.drift(V, check=check)
    S = block.diffusion(V, check=check)
    ops = _Ops(V)
    s, rr, rho = _pieces(V, ops)
    m = V.shape[-1]
    off = 1.0 - ops.eye(m)
    # First-order (transport) term.
    drift = _grad_contract(b, s, rr, rho, ops)
    # Ito correction 1/2 sum rho_uw Sigma_uw.
    S_ab_aa = ops.einsum("...abaa->...ab", S)
    S_ab_bb = ops.einsum("...abbb->...ab", S)
    S_aa_bb = ops.einsum("...aabb->...ab", S)
    q = ops.einsum("...aaaa->...a", S) / s**2
    drift = drift - rr * (S_ab_aa / s[..., :, None] + S_ab_bb / s[..., None, :]) / 2 \
        + rho * (3 * q[..., :, None] / 8 + 3 * q[..., None, :] / 8
                 + S_aa_bb / (4 * s[..., :, None] * s[..., None, :]))
    # Quadratic covariation: contract the gradient with both pairs of Sigma.
    U = _grad_contract_first(S, s, rr, rho, ops)  # (..., a, b, k, l)
    U = ops.einsum("...abkl->...klab", U)
    C = _grad_contract_first(U, s, rr, rho, ops)  # (..., c, d, a, b)
    C = ops.einsum("...cdab->...abcd", C)
    mask4 = off[..., :, :, None, None] * off[..., None, None, :, :]
    return drift * off, C * mask4


def _grad_contract(M: Any, s: Any, rr: Any, rho: Any, ops: _Ops) -> Any:
    """(grad rho^{ab}) . M for a symmetric M (..., m, m): M^{ab} / sqrt(s_a s_b)
    - rho^{ab} (M^{aa} / s_a + M^{bb} / s_b) / 2."""
    d = ops.diagonal(M) / s
    return M * rr - rho * (d[..., :, None] + d[..., None, :]) / 2


def _grad_contract_first(S: Any, s: Any, rr: Any, rho: Any, ops: _Ops) -> Any:
    """`_grad_contract` over the first pair of S (..., i, j, k, l) -> (..., a, b, k, l)."""
    d = ops.einsum("...iikl->...ikl", S) / s[..., :, None, None]
    return S * rr[..., None, None] - rho[..., None, None] * (
        d[..., :, None, :, :] + d[..., None, :, :, :]) / 2


def rho_derivatives(V: Any) -> tuple[Any, Any]:
    """Gradient (..., m, m, m, m) and Hessian (..., m, m, m, m, m, m) of rho(V) in the
    full-matrix, symmetrised convention: rho as a function of (V + V^T) / 2, so that
    d rho^{ab} = sum_{ij} G[ab, ij] dV^{ij} + 1/2 sum_{ijkl} H[ab, ij, kl] dV^{ij} dV^{kl}
    for symmetric dV. Rows with a = b are zero. O(m^6): for tests and small m.
    """
    ops = _Ops(V)
    s, rr, rho = _pieces(V, ops)
    m = V.shape[-1]
    eye = ops.eye(m)
    off = 1.0 - eye
    # Directions: E (the entry x = V^{ab}, symmetrised), A (y = V^{aa}), B (z = V^{bb}).
    E = (ops.einsum("ai,bj->abij", eye, eye) + ops.einsum("aj,bi->abij", eye, eye)) / 2
    A = ops.einsum("ai,aj,bb->abij", eye, eye, eye)
    B = ops.einsum("bi,bj,aa->abij", eye, eye, eye)
    sa, sb = s[..., :, None], s[..., None, :]
    gx, gy, gz = rr, -rho / (2 * sa), -rho / (2 * sb)
    G = gx[..., None, None] * E + gy[..., None, None] * A + gz[..., None, None] * B
    hxy, hxz = -rr / (2 * sa), -rr / (2 * sb)
    hyy, hzz, hyz = 3 * rho / (4 * sa**2), 3 * rho / (4 * sb**2), rho / (4 * sa * sb)

    def sym(P, Q):
        return ops.einsum("abij,abkl->abijkl", P, Q) + ops.einsum("abij,abkl->abijkl", Q, P)

    def w(h):
        return h[..., None, None, None, None]

    H = (w(hxy) * sym(E, A) + w(hxz) * sym(E, B) + w(hyy) * ops.einsum("abij,abkl->abijkl", A, A)
         + w(hzz) * ops.einsum("abij,abkl->abijkl", B, B) + w(hyz) * sym(A, B))
    return G * off[..., None, None], H * off[..., None, None, None, None]


__all__ = ["correlation_covariation", "correlation_expr", "correlation_sde", "ito_covariation",
           "ito_drift", "latex_symbols", "reduced_correlation_sde", "rho_coefficients",
           "rho_derivatives", "split_drift"]
