"""The positive-definite step of the covariance-SDE solver (docs/solver.md).

For dV = b(V) dt + Sigma(V)^{1/2} dB (Ito) the solver carries the Cholesky factor L of
V = L L^T and steps it in two factors, the drift's and the noise's:

    L' = L U_D chol(C),
    U_D = tril(D h, -1) + diag(exp(diag(D h) / 2)),     D = L^{-1} b(V) L^{-T},
    C  = E^4,  E = I + M/4 + (M/4)^2 / 2,               M = X - excess(-K_d h / 2, W),
    X  = -K_d h / 2 + W,  K_d = L^{-1} K(V) L^{-T},     W = L^{-1} dN L^{-T},
                                                        dN = Sigma(V)^{1/2} dB_h,

with K^{ad} = sum_bc Sigma^{ab,cd} (V^{-1})^{bc} (the Ito contraction, derived in
`shapedsde.symbolic.contraction`). Why each piece:

- The drift moves the Cholesky coordinates, not the matrix exponential: U_D is the Euler
  step of the factor's own ODE, dL/dt = L Phi(D) (Phi: the lower triangle with half the
  diagonal, the derivative of the Cholesky map), with its diagonal, the square roots of
  the Schur complements, stepped multiplicatively so that it stays positive. Near a
  singular V the drift has two kinds of large entries in D (measured at lambda_min =
  eps tr V, docs/solver.md): it turns the nearly null direction at an O(1) rate
  (attention: D's off-diagonal entries grow like eps^-1/2 while L Phi(D), the factor's
  velocity, stays bounded) and it lifts a linear dependency between tokens at an O(1)
  absolute rate (MLP: D's diagonal grows like eps^-1, the Schur complement grows
  additively). Applied through exp(D h), as the step did before, both became growth
  factors: made-up explosions. Through U_D a turn is a bounded additive change of L, and
  a lift is a relative change of one diagonal entry, which the step bounds.
- The noise is the multiplicative step: C is exp(M) by scaling and squaring of its
  second-order Taylor polynomial, positive definite by construction whatever M is, and
  E[W^2] = K_d h, so E[C] = I + O(h^2) and Cov[C] = Cov[W] + O(h^2); the noise's own
  O(h^2) mean, excess (`mean_excess`, derived by `shapedsde.symbolic.step_map`), is
  removed, so E[C] = I + O(h^3). Then E[V'] = V + b h + O(h^2) and Cov[V'] = Sigma h +
  O(h^2): weak order 1 (measured in tests/test_solver_pd.py). K_d is bounded on every
  valid state (the noise vanishes along a null direction of V at the rate of V).
  For the linear block (b = 0) U_D = I and the step is the multiplicative step alone,
  affine-equivariant in law as the SDE is.
- L U_D chol(C) is lower triangular with a positive diagonal: L' is again a Cholesky
  factor, computed without forming V' (small eigen-directions keep their relative
  accuracy), so every state is positive definite by construction: no projection,
  clipping or taming.

Step size (adaptive): h = min(dt_max, rtol / r) with the rate
r = max(|K_d|_inf, max_j |D_jj|, max_i |(L Phi(D))_i| / |L_i|) (|.|_inf the largest
absolute row sum; L_i the i-th row of L, |L_i|^2 = V^ii): the noise's variance in
factor coordinates, the relative change of each Schur complement, and the change of each
row of L against its size are at most about rtol a step. Every quantity is in the true
metric of V (no regularisation): r is bounded on nearly singular states except where the
drift lifts a dependency (the MLP), and there h ~ rtol eps grows geometrically with the
Schur complement, so resolving it costs O(log(1 / eps) / rtol) steps. h shrinks like
|V|^-2 near the attention drift's cubic blow-up. h is a function of the current state
only (no rejected steps), the setting of Kelly and Lord (IMA J. Numer. Anal. 2018) and
Fang and Giles (2020).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .blocks import contract_ito, contract_trace

#: Weak order of the scheme (measured in tests/test_solver_pd.py).
WEAK_ORDER = 1.0
NAME = ("positive-definite Euler on the Cholesky factor: L' = L U_D chol(exp(M)), "
        "U_D = tril(D h, -1) + diag(exp(diag(D h) / 2)), D = L^-1 b L^-T (drift in "
        "Cholesky coordinates), M = X - excess(X), X = L^-1 (dN - K h/2) L^-T, "
        "exp by squaring its 2nd-order Taylor twice, excess: its O(h^2) mean, removed")
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


def sandwich(Linv: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """L^{-1} X L^{-T}, symmetrised, for X (P, m, m) or (P, k, m, m)."""
    if X.ndim == Linv.ndim + 1:
        Linv = Linv[:, None]
    Y = Linv @ X @ Linv.transpose(-1, -2)
    return 0.5 * (Y + Y.transpose(-1, -2))


def ito_contraction(coefficients: Any, V: torch.Tensor, Sigma: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """K(V) from the coefficients' own kernel, or from the full Sigma (O(m^4)): `Sigma`
    where the caller has it at V already."""
    f = getattr(coefficients, "ito_contraction", None)
    if callable(f):
        return f(V, check=False)
    return contract_ito(coefficients.diffusion(V, check=False) if Sigma is None else Sigma, V)


def monitored_tokens(coefficients: Any, m: int) -> int:
    """How many leading rows of an (m, m) state its exit trace reads: all, or fewer where
    the coefficients say (`monitored_tokens(m)`: a tangent's state stacks the tokens and
    their tangents, and stops on the tokens)."""
    f = getattr(coefficients, "monitored_tokens", None)
    return m if not callable(f) else int(f(m))


def check_state(coefficients: Any, V0: Any, name: str = "V0") -> None:
    """The coefficients' own check of an initial state's shape (`check_state(V0, name)`,
    e.g. a tangent's 2m rows): run once at V0 by `shapedsde.solve` and
    `shapedsde.finite.simulate`, whose steps evaluate the faces unchecked."""
    f = getattr(coefficients, "check_state", None)
    if callable(f):
        f(V0, name)


def has_fixed_trace(coefficients: Any, face: str) -> bool:
    """Whether tr V (of the monitored tokens) is the same at every depth on `face` ("sde" or
    "finite"): the coefficients' `fixed_trace(face)`, False where they have none."""
    f = getattr(coefficients, "fixed_trace", None)
    return bool(callable(f) and f(face))


def check_exit_trace(coefficients: Any, face: str) -> None:
    """Refuse an exit trace where tr V (of the monitored tokens) is the same at every depth
    on `face` ("sde" or "finite"; the coefficients' `fixed_trace(face)`): R tr V0 would
    never be reached, and P(exit) = 0 would be reported for any R."""
    if has_fixed_trace(coefficients, face):
        label = getattr(coefficients, "label", None) or getattr(coefficients, "name", "")
        raise ValueError(f"exit_trace (--exit-trace) is meaningless for {label}: its "
                         f"{'SDE' if face == 'sde' else 'finite'} state is normalised per "
                         "token, so tr V stays at m and never reaches R tr V0; drop it")


def monitored_trace(V: torch.Tensor, k: int) -> torch.Tensor:
    """tr V[:k, :k], shape (...,)."""
    return torch.diagonal(V[..., :k, :k], 0, -2, -1).sum(-1)


def trace_variance(coefficients: Any, V: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """s^2(V) = Var[d tr V[:k, :k]] / dt, shape (P,) (k None: every row)."""
    m = V.shape[-1]
    if k is None or k == m:
        f = getattr(coefficients, "trace_variance", None)
        if callable(f):
            return f(V, check=False)
        return contract_trace(coefficients.diffusion(V, check=False))
    return contract_trace(coefficients.diffusion(V, check=False)[..., :k, :k, :k, :k])


def trace_variance_bound(V: torch.Tensor, Linv: torch.Tensor, K: torch.Tensor,
                         k: int | None = None) -> torch.Tensor:
    """An upper bound |V_k|_F^2 tr(V^{-1} K) >= s^2(V), shape (P,), in one product, for the
    trace of the leading k x k block V_k (k None: V).

    tr E dN = <S, L^T E L> with S = L^{-1} dN L^{-T} and E the projector on the first k
    rows, so by Cauchy-Schwarz Var[tr E dN] <= |L^T E L|_F^2 E|S|_F^2 = |E V E|_F^2
    tr(V^{-1} K) h (E[S^2] = L^{-1} K L^{-T} h). It lets the exit test skip the exact s^2
    for paths that cannot cross in this step.
    """
    Vk = V if k is None else V[..., :k, :k]
    return (Vk * Vk).sum((-2, -1)) * ((Linv @ K) * Linv).sum((-2, -1))


def drift_and_ito(coefficients: Any, V: torch.Tensor, Sigma: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, K) at V: from the coefficients' joint kernel (`drift_and_ito`) where they have
    one, else from `drift` and `ito_contraction` (with `Sigma` at V, if given)."""
    both = getattr(coefficients, "drift_and_ito", None)
    if callable(both):
        return both(V)
    b = coefficients.drift(V, check=False)  # first: a block without an SDE says so here
    return b, ito_contraction(coefficients, V, Sigma)


def cholesky_velocity(L: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """L Phi(D): the derivative of the Cholesky factor of V = L L^T along dV = L D L^T
    (Phi: the lower triangle of D with half its diagonal, so Phi(D) + Phi(D)^T = D)."""
    half = torch.tril(D, -1) + torch.diag_embed(0.5 * torch.diagonal(D, 0, -2, -1))
    return L @ half


def step_rate(L: torch.Tensor, D: torch.Tensor, Kd: torch.Tensor,
              noise_weight: float = 1.0) -> torch.Tensor:
    """The rate r (P,) of the adaptive step h = rtol / r (module docstring):
    max(noise_weight noise_rate(K_d), max_j |D_jj|, max_i |(L Phi(D))_i| / |L_i|), from
    the drift D = L^-1 b L^-T and the Ito contraction K_d = L^-1 K L^-T in factor
    coordinates (`sandwich`). `noise_weight` < 1 allows the noise a larger tolerance
    (the matched map: 1 / MATCHED_NOISE_FACTOR). Non-finite where the coefficients are."""
    rows = cholesky_velocity(L, D).norm(dim=-1) / L.norm(dim=-1)
    parts = (noise_weight * noise_rate(Kd), torch.diagonal(D, 0, -2, -1).abs().amax(-1),
             rows.amax(-1))
    return torch.stack(parts).amax(0)


def noise_rate(Kd: torch.Tensor) -> torch.Tensor:
    """|K_d|_inf (P,), the largest absolute row sum: the noise's part of the rate."""
    return Kd.abs().sum(-1).amax(-1)


def adaptive_dt(rate: torch.Tensor, rtol: float, dt_max: float) -> torch.Tensor:
    """h = min(dt_max, rtol / rate) per path, shape (P,)."""
    return (rtol / rate.clamp_min(torch.finfo(rate.dtype).tiny)).clamp(max=dt_max)


#: Relative slack of a landing: a step that ends within SNAP * h of its target lands on it,
#: and `land_evenly` takes n steps where gap / h <= n + SNAP. It absorbs the clock's
#: rounding (about sqrt(k) ulp(t) after k steps; a slack of 1e-9 was passed at 3e4 fixed
#: steps and added a step), and lets a step exceed h by at most SNAP relative.
SNAP = 1e-6


#: `land_evenly` evens out the steps when at most this many are left to the target.
LANDING_STEPS = 3


def land_evenly(h: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """The step towards a target `gap` ahead (per path): where n = ceil(gap / h - SNAP) <=
    LANDING_STEPS steps are left, gap / n (equal steps, each <= h (1 + SNAP)), else h.
    Rather than full steps and a sliver: for the same number of steps, equal steps have the
    least error (sum h_i^(p+1) at fixed sum h_i); measured on the trace moments at m = 64
    (docs/spectrum.md). Only over the last few steps, where the rate barely changes:
    spread over the whole run, a rate that grows along the path cost about one step more
    (attention, m = 64, T = 1: 62.6 against 61.4 steps a path)."""
    n = torch.ceil(gap / h - SNAP).clamp_min(1.0)
    step = torch.where(n <= LANDING_STEPS, gap / n, h)  # n > LANDING_STEPS: gap > h
    return torch.where(gap > 0, step, torch.zeros_like(gap))  # T = 0: h = 0, not 0 / 0


def advance_clock(t: torch.Tensor, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """t + h, landed exactly on `target` when it ends within SNAP h of it."""
    return torch.where(target - (t + h) <= SNAP * h, target, t + h)


def drift_factor(D: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """U_D = tril(D h, -1) + diag(exp(diag(D h) / 2)) for the drift D = L^-1 b L^-T in
    factor coordinates and h (P,): the drift's Euler step in Cholesky coordinates,
    L -> L U_D (module docstring). Lower triangular with a positive diagonal,
    U_D U_D^T = I + D h + O(h^2)."""
    Dh = D * h[:, None, None]
    diag = torch.exp(0.5 * torch.diagonal(Dh, 0, -2, -1))
    return torch.tril(Dh, -1) + torch.diag_embed(diag)


def step_matrix(Linv: torch.Tensor, drift: torch.Tensor, noise: torch.Tensor,
                in_factor: bool, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, corrected): M = X - excess(D h, W), X = D h + W, with D = `drift` already in
    factor coordinates (the solver passes -K_d/2, the Ito correction of the exponential;
    the drift b is stepped by `drift_factor`) and W = L^{-1} dN L^{-T}, dN = sqrt(h)
    `noise` (`noise`: a draw of Sigma^{1/2} dB_1, linear in dB). `in_factor`: `noise` is
    already L^{-1} dN_1 L^{-T} (symmetric; `Block.factor_noise`), else one sandwich by
    `Linv` takes it there.

    The correction is the second term of a series in X: on paths where it is not small
    against the first, |excess|_F > EXCESS_RATIO |X|_F, or where it could move an
    eigenvalue by more than EXCESS_BOUND (|excess|_inf, a row-sum bound; exp_+ follows
    exp only for eigenvalues above -4), it is not applied, and `corrected` (P,) bool says
    so; the solver counts those steps. (|excess|_F / |X|_F is about half X's spectral
    norm for a small random X, and excess is close to its mean, a multiple of I for
    isotropic noise: neither test grows with the tokens as a row-sum bound on X would,
    like m^{1/2}.)"""
    h = h[:, None, None]
    Dh = drift * h
    W = noise * h.sqrt() if in_factor else sandwich(Linv, noise * h.sqrt())
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


def factor_step(L: torch.Tensor, M: torch.Tensor, exp: Any = None) -> torch.Tensor:
    """One step of the factor, L' = L chol(exp_+(M)) (`exp`: another positive-definite
    exponential, e.g. `pade_exp`; default `positive_exp`).

    L' is lower triangular (a product of lower-triangular factors: its upper part is
    exactly zero) with L' L'^T positive definite whenever M is finite; rows where the
    Cholesky of exp_+(M) fails (only if M was not finite or exp_+(M) overflowed) are NaN.
    """
    U, info = torch.linalg.cholesky_ex((exp or positive_exp)(M))
    if bool((info != 0).any()):
        U = torch.where((info == 0)[:, None, None], U, torch.full_like(U, math.nan))
    return L @ U


# ---------------------------------------------------------------------------
# The "matched" noise map (docs/solver.md, "Many tokens"): the same factor step with
# M = X + b_m W^3 + beta_m (tr W) W^2 and a positive-definite exponential exact to 4th order.

#: The solver's noise maps: "matched" (M = X + b_m W^3 + beta_m (tr W) W^2, `pade_exp`; the
#: default) and "corrected" (M = X - excess(X), exp_+; the default before issue 21).
SCHEMES = ("matched", "corrected")
#: The matched map's noise tolerance is this many times rtol: h |K_d|_inf <= 5 rtol
#: (measured error model, docs/solver.md "Many tokens"); the drift's rates keep rtol.
MATCHED_NOISE_FACTOR = 5.0


def noise_weight(noise_map: str) -> float:
    """The weight of the noise's rate in `step_rate` for a noise map: 1 / MATCHED_NOISE_FACTOR
    for "matched", 1 for "corrected"."""
    return 1.0 / MATCHED_NOISE_FACTOR if noise_map == "matched" else 1.0


MATCHED_NAME = ("positive-definite Euler on the Cholesky factor, matched noise map: "
                "L' = L U_D chol(exp(M)), M = X + b_m W^3 + beta_m (tr W) W^2, "
                "X = -K_d h/2 + W, b_m = (m^2+m+4) / (24 (2m^2+5m-1)), "
                "beta_m = -(m+1) / (8 (2m^2+5m-1)), exp by Pade [2/2] and one "
                "squaring (positive definite, exact to 4th order)")


def cubic_coefficient(m: int) -> float:
    """b_m = (m^2 + m + 4) / (24 (2 m^2 + 5 m - 1)), the matched map's coefficient of W^3.

    Derived in `symbolic.matched_map` with `trace_cubic_coefficient` (the test proves both
    closed forms equal): with W the linear block's isotropic noise in factor coordinates,
    exp(-K_d h/2 + W + b W^3 + beta (tr W) W^2) has the SDE's joint spectral moments
    E prod_r tr C^{lambda_r} to O(h^2) (checked to |lambda| = 6) exactly at (b_m, beta_m):
    the step's law is right to second order. b_m -> 1/48."""
    return (m * m + m + 4) / (24.0 * (2 * m * m + 5 * m - 1))


def trace_cubic_coefficient(m: int) -> float:
    """beta_m = -(m + 1) / (8 (2 m^2 + 5 m - 1)), the coefficient of (tr W) W^2
    (`cubic_coefficient`). At m = 1 b_1 + beta_1 = 0: exp of a scalar Gaussian is exact.
    E (tr W) tr W^2 = 0, so E tr M = E tr X and E log det exp(M) keeps the exact Ito log
    det drift."""
    return -(m + 1) / (8.0 * (2 * m * m + 5 * m - 1))


def matched_step_matrix(Linv: torch.Tensor, drift: torch.Tensor, noise: torch.Tensor,
                        in_factor: bool, h: torch.Tensor) -> torch.Tensor:
    """M = D h + W + b_m W^3 + beta_m (tr W) W^2 with `drift` D = -K_d / 2 in factor
    coordinates and W as in `step_matrix`. No guard: `pade_exp` is positive definite for
    every finite symmetric M."""
    h = h[:, None, None]
    W = noise * h.sqrt() if in_factor else sandwich(Linv, noise * h.sqrt())
    m = W.shape[-1]
    W2 = W @ W
    trace = torch.diagonal(W, 0, -2, -1).sum(-1)[:, None, None]
    cubic = W @ W2 * cubic_coefficient(m) + W2 * (trace * trace_cubic_coefficient(m))
    return drift * h + W + cubic


def pade_exp(M: torch.Tensor) -> torch.Tensor:
    """exp(M) for symmetric M (P, m, m) as R(M/2)^2, R(Y) = (I - Y/2 + Y^2/12)^-1
    (I + Y/2 + Y^2/12), the [2/2] Pade approximant: both factors have eigenvalues
    (y -+ 3)^2 / 12 + 1/4 > 0 and commute, so R(Y) is symmetric positive definite for
    every symmetric Y, and R(y) = e^y + O(y^5): log det R(M/2)^2 = tr M + O(tr M^5)
    (exp_+ of the corrected map: tr M - tr M^3 / 96)."""
    Y = 0.5 * M
    Y2 = (Y @ Y) * (1.0 / 12.0)
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    num = Y2 + 0.5 * Y + eye
    den = Y2 - 0.5 * Y + eye
    C, info = torch.linalg.cholesky_ex(den)
    R = torch.cholesky_solve(num, C)
    if bool((info != 0).any()):  # only for non-finite M
        R = torch.where((info == 0)[:, None, None], R, torch.full_like(R, math.nan))
    R = 0.5 * (R + R.transpose(-1, -2))
    return R @ R
