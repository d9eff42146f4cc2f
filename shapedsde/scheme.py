"""The positive-definite step of the covariance-SDE solver (docs/solver.md).

For dV = b(V) dt + Sigma(V)^{1/2} dB (Ito) the solver carries the Cholesky factor L of
V = L L^T and steps it multiplicatively:

    X  = D h + W,  D h = L^{-1} (b(V) - K(V)/2) L^{-T} h,  W = L^{-1} dN L^{-T},
    M  = X - excess(D h, W),                            dN = Sigma(V)^{1/2} dB_h,
    C  = E^4,  E = I + M/4 + (M/4)^2 / 2,               C = U U^T (Cholesky),
    L' = L U,                                           V' = L' L'^T,

with K^{ad} = sum_bc Sigma^{ab,cd} (V^{-1})^{bc} (the Ito contraction, derived in
`shapedsde.symbolic.contraction`). Why each piece:

- C is exp(M) by scaling and squaring of its second-order Taylor polynomial. E is
  symmetric with eigenvalues 1 + x + x^2/2 > 0 (x = w/4), so C = E^4 is positive
  definite by construction whatever M is: no state is ever projected or clipped, and the
  singular set (absorbing for b and Sigma of the linear and attention blocks) is never
  reached, as for the true SDE. C = I + M + M^2/2 + M^3/8 + ... matches exp(M) to second
  order, with third-order error M^3/96 (the plain Taylor polynomial I + M + M^2/2 has
  M^3/6 and measurably heavier bias in the upper tail: docs/solver.md).
- E[W^2] = L^{-1} K L^{-T} h, so E[C] = I + L^{-1} b L^{-T} h + O(h^2) and
  Cov[C] = Cov[W] + O(h^2): the step's first two moments match the SDE's to O(h^2),
  i.e. weak order 1 (measured in tests/test_solver_pd.py).
- excess (`mean_excess`) is the O(h^2) part of E^4 at X (grading W ~ h^{1/2}, derived
  by `shapedsde.symbolic.step_map`). Its mean grows like (k m h)^2 (W's eigenvalues
  spread over ~ 2 (k m h)^{1/2}), which made the uncorrected step's E[V] low by
  (m + 2)(m - 1) k^2 h / 24 per unit time for the linear block: 5% at m = 16, T = 0.5
  at 50 steps (measured, docs/solver.md). Subtracting it leaves no O(h^2) term in the
  step, so E[C] = I + L^{-1} b L^{-T} h + O(h^3), the Euler step's mean, while C stays
  positive definite. For the linear block, where
  Sigma is congruence-invariant, the step is affine-equivariant: it commutes with
  V -> A V A^T in law, as the SDE does.
- L U is lower triangular, so L' is again a Cholesky factor, computed without forming V'
  (small eigen-directions keep their relative accuracy), at the cost of one m x m
  Cholesky of the well-conditioned C.

Step size (adaptive): h = min(dt_max, rtol / |D_d|_inf, rtol / |K_d|_inf), with
D_d = L_d^{-1} (b - K/2) L_d^{-T} and K_d = L_d^{-1} K L_d^{-T} the drift and noise
intensity in the coordinates of L_d L_d^T = V + d (tr V / m) I (|.|_inf: the largest
absolute row sum, an upper bound on the spectral norm), d = REGULARISATION. So in that
metric the drift part of M and the variance of its noise part are at most about rtol
(bounding the noise's standard deviation by rtol instead costs 1 / rtol times more steps
near blow-up, where both grow like |V|^2, and at many tokens, where |K_d| ~ m): h shrinks
like |V|^-2 near the attention drift's cubic blow-up (explosion is reached in finitely many steps)
and where V is nearly singular and the drift turns its small directions fast, down to
eigenvalues d tr V / m; below that the step no longer resolves their relative size
(their absolute error stays O(h^2) per step, as everywhere), which bounds the cost.
h is a function of the current state only (no rejected steps), the setting of Kelly and
Lord (IMA J. Numer. Anal. 2018) and Fang and Giles (2020).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .blocks import contract_ito, contract_trace

#: Weak order of the scheme (measured in tests/test_solver_pd.py).
WEAK_ORDER = 1.0
NAME = ("positive-definite multiplicative Euler on the Cholesky factor: "
        "L' = L chol(exp(M)), exp by squaring its 2nd-order Taylor twice, "
        "M = X - excess(X), X = L^-1 ((b - K/2) h + dN) L^-T, "
        "excess: the map's O(h^2) mean, removed")
#: Relative eigenvalue floor of the step-size metric (see the module docstring); the
#: near-singular statistic the verifier checks is lambda_min / tr V < 1e-3, ten times above.
REGULARISATION = 1e-4
#: exp(M) is computed as E^(2^SQUARINGS), E = I + M/2^s + (M/2^s)^2/2.
SQUARINGS = 2
#: Coefficients of the s^4 part of exp_+ with SQUARINGS = 2, derived by
#: `shapedsde.symbolic.step_map.mean_excess_coefficients(2)` (tests/test_step_map.py).
EXCESS_DD, EXCESS_DWW, EXCESS_WWWW = 1 / 2, 5 / 32, 17 / 512
#: The correction is applied where |excess|_F <= EXCESS_RATIO |X|_F: beyond, the series it
#: truncates is no guide (`step_matrix`).
EXCESS_RATIO = 0.5
#: ... and where |excess|_inf <= EXCESS_BOUND (it moves no eigenvalue by more).
EXCESS_BOUND = 0.5


def triangular_inverse(L: torch.Tensor) -> torch.Tensor:
    """L^{-1} for lower-triangular L (P, m, m): one batched triangular solve, after which
    every L^{-1} X L^{-T} of the step is two matrix products."""
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand(L.shape)
    return torch.linalg.solve_triangular(L, eye, upper=False)


def regularised_factor(V: torch.Tensor) -> torch.Tensor:
    """L_d with L_d L_d^T = V + d (tr V / m) I, the factor of the step-size metric."""
    m = V.shape[-1]
    scale = torch.diagonal(V, 0, -2, -1).sum(-1) * (REGULARISATION / m)
    Vd = V.clone()
    torch.diagonal(Vd, 0, -2, -1).add_(scale[:, None])
    return torch.linalg.cholesky_ex(Vd)[0]


def inverse_factors(V: torch.Tensor, L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_d^{-1}, L^{-1}) from one triangular solve on the stacked factors (one call
    instead of two: at small m the step's cost is the number of calls)."""
    P = L.shape[0]
    both = triangular_inverse(torch.cat((regularised_factor(V), L)))
    return both[:P], both[P:]


def sandwich(Linv: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """L^{-1} X L^{-T}, symmetrised, for X (P, m, m) or (P, k, m, m)."""
    if X.ndim == Linv.ndim + 1:
        Linv = Linv[:, None]
    Y = Linv @ X @ Linv.transpose(-1, -2)
    return 0.5 * (Y + Y.transpose(-1, -2))


def ito_contraction(coefficients: Any, V: torch.Tensor) -> torch.Tensor:
    """K(V) from the coefficients' own kernel, or from the full Sigma (O(m^4))."""
    f = getattr(coefficients, "ito_contraction", None)
    if callable(f):
        return f(V, check=False)
    return contract_ito(coefficients.diffusion(V, check=False), V)


def trace_variance(coefficients: Any, V: torch.Tensor) -> torch.Tensor:
    """s^2(V) = Var[d tr V] / dt, shape (P,)."""
    f = getattr(coefficients, "trace_variance", None)
    if callable(f):
        return f(V, check=False)
    return contract_trace(coefficients.diffusion(V, check=False))


def trace_variance_bound(V: torch.Tensor, Linv: torch.Tensor, K: torch.Tensor
                         ) -> torch.Tensor:
    """An upper bound |V|_F^2 tr(V^{-1} K) >= s^2(V), shape (P,), in one product.

    tr dN = <S, L^T L> with S = L^{-1} dN L^{-T}, so by Cauchy-Schwarz
    Var[tr dN] <= |L^T L|_F^2 E|S|_F^2 = |V|_F^2 tr(V^{-1} K) h (E[S^2] = L^{-1} K L^{-T} h).
    It lets the exit test skip the exact s^2 for paths that cannot cross in this step.
    """
    return (V * V).sum((-2, -1)) * ((Linv @ K) * Linv).sum((-2, -1))


def drift_and_ito(coefficients: Any, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, K) at V: from the coefficients' joint kernel (`drift_and_ito`) where they have
    one, else from `drift` and `ito_contraction`."""
    both = getattr(coefficients, "drift_and_ito", None)
    if callable(both):
        return both(V)
    b = coefficients.drift(V, check=False)  # first: a block without an SDE says so here
    return b, ito_contraction(coefficients, V)


def drift_and_contraction(coefficients: Any, V: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(b - K/2, K) at V, each (P, m, m)."""
    b, K = drift_and_ito(coefficients, V)
    return b - 0.5 * K, K


def adaptive_dt(Ld_inv: torch.Tensor, corrected: torch.Tensor, K: torch.Tensor, rtol: float,
                dt_max: float) -> torch.Tensor:
    """h = min(dt_max, rtol / |D_d|_inf, rtol / |K_d|_inf) per path, shape (P,), from
    L_d^{-1} (`inverse_factors`). D_d and K_d are symmetric up to rounding, which moves
    their row-sum norms by rounding only: they are not symmetrised. (Two plain batched
    products each, not one broadcast over a stacked pair: broadcasting copies L_d^{-1}
    and its transpose, which at m = 64 cost more than the products.)"""
    At = Ld_inv.transpose(-1, -2)
    norm = torch.maximum(*((Ld_inv @ X @ At).abs().sum(-1).amax(-1) for X in (corrected, K)))
    h = rtol / norm.clamp_min(torch.finfo(norm.dtype).tiny)
    return h.clamp(max=dt_max)


def step_matrix(Linv: torch.Tensor, corrected: torch.Tensor, noise: torch.Tensor,
                in_factor: bool, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, corrected): M = X - excess(D h, W), X = D h + W, D h = L^{-1} (b - K/2) L^{-T} h
    and W = L^{-1} dN L^{-T}, dN = sqrt(h) `noise` (`noise`: a draw of Sigma^{1/2} dB_1,
    linear in dB). `in_factor`: `noise` is already L^{-1} dN_1 L^{-T} (symmetric;
    `Block.factor_noise`), else one batched sandwich takes the drift and the noise.

    The correction is the second term of a series in X: on paths where it is not small
    against the first, |excess|_F > EXCESS_RATIO |X|_F, or where it could move an
    eigenvalue by more than EXCESS_BOUND (|excess|_inf, a row-sum bound; exp_+ follows
    exp only for eigenvalues above -4), it is not applied, and `corrected` (P,) bool says
    so; the solver counts those steps. Both fail near blow-up, where the step bounds D only
    in the regularised metric and D h can be large in a nearly singular direction of L.
    (|excess|_F / |X|_F is about half X's spectral norm for a small random X, and excess is
    close to its mean, a multiple of I for isotropic noise: neither test grows with the
    tokens as a row-sum bound on X would, like m^{1/2}.)"""
    h = h[:, None, None]
    if in_factor:
        Dh, W = sandwich(Linv, corrected * h), noise * h.sqrt()
    else:
        both = sandwich(Linv, torch.stack((corrected * h, noise * h.sqrt()), dim=1))
        Dh, W = both[:, 0], both[:, 1]
    X = Dh + W
    excess = mean_excess(Dh, W)
    ratio = (excess * excess).sum((-2, -1)) / (X * X).sum((-2, -1)).clamp_min(1e-300)
    small = (ratio <= EXCESS_RATIO**2) & (excess.abs().sum(-1).amax(-1) <= EXCESS_BOUND)
    return torch.where(small[:, None, None], X - excess, X), small


def mean_excess(Dh: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """The s^4 part of exp_+(Dh + W) (W ~ s, Dh ~ s^2; `shapedsde.symbolic.step_map`):
    c_dd Dh^2 + c_dww (W^2 Dh + W Dh W + Dh W^2) + c_wwww W^4, symmetric, O(h^2).

    Subtracting it from the argument removes every s^4 term of the step, so that
    E[exp_+(M)] = I + L^{-1} b L^{-T} h + O(h^3): without it the step's mean is low by
    about (m + 2)(m - 1) k^2 h^2 / 24 (linear block), a bias that grows like m^2."""
    W2 = W @ W
    WD = W @ Dh
    W2D = W @ WD
    out = torch.baddbmm(W2 @ W2, Dh, Dh, beta=EXCESS_WWWW, alpha=EXCESS_DD)
    out += EXCESS_DWW * (W2D + W2D.transpose(-1, -2) + WD @ W)
    return out


def positive_exp(M: torch.Tensor) -> torch.Tensor:
    """exp(M) for symmetric M (P, m, m), approximated so as to be positive definite:
    E^(2^s) with E = I + X + X^2/2, X = M / 2^s (s = SQUARINGS). The powers are not
    re-symmetrised: their asymmetry is rounding, and the Cholesky factorisation that
    follows reads the lower triangle only."""
    X = M * (1.0 / 2**SQUARINGS)
    E = torch.baddbmm(X, X, X, alpha=0.5)
    torch.diagonal(E, 0, -2, -1).add_(1.0)
    for _ in range(SQUARINGS):
        E = E @ E
    return E


def factor_step(L: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """One step of the factor, L' = L chol(exp_+(M)).

    L' is lower triangular (a product of lower-triangular factors: its upper part is
    exactly zero) with L' L'^T positive definite whenever M is finite; rows where the
    Cholesky of exp_+(M) fails (only if M was not finite or exp_+(M) overflowed) are NaN.
    """
    U, info = torch.linalg.cholesky_ex(positive_exp(M))
    if bool((info != 0).any()):
        U = torch.where((info == 0)[:, None, None], U, torch.full_like(U, math.nan))
    return L @ U
