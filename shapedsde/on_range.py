"""The SDE on the range of a singular V0 that the block keeps (exactly duplicated tokens).

A V0 with a null vector v (v^T X = 0: e.g. v = e_1 - e_2 for two equal tokens) stays
singular along v under a block that maps equal tokens to equal tokens (every block here:
attention mixes rows through equal Softmax rows, the MLP acts token by token), and then
b(V) and every draw of the noise vanish along v: b v = 0 and dN v = 0. The SDE then lives
on the range of V0: with Q (m, r) an orthonormal basis of that range, V = Q V_r Q^T and

    dV_r = Q^T b(Q V_r Q^T) Q dt + (Q^T x Q^T) Sigma^{1/2} dB,

an SDE for the positive-definite (r, r) matrix V_r, which the solver steps as any other.
`kept_null_space` checks the two conditions at V0 (numerically, relative to b's and
Sigma's own size) before the solver relies on them: a dependency that the block lifts
(the MLP lifts x_3 = x_1 + x_2, since phi(x_1 + x_2) != phi(x_1) + phi(x_2)) fails the
check, and the solver refuses such a V0 with that reason.
"""

from __future__ import annotations

from typing import Any

import torch

#: An eigenvalue at most this times the largest is a null direction of V0 (float64
#: rounding of X X^T / n for exactly equal rows of X leaves ~1e-16 relative).
NULL_RTOL = 1e-13
#: b and the noise vanish along the null space to this relative accuracy (rounding).
KEPT_RTOL = 1e-8
#: Sigma is (m, m, m, m): the check is made up to this many tokens.
MAX_TOKENS = 48


def null_split(V0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, N): orthonormal bases of the range and of the null space of symmetric PSD V0
    (eigenvalues above / at most NULL_RTOL times the largest)."""
    w, U = torch.linalg.eigh(V0)
    null = w <= NULL_RTOL * w.abs().max()
    return U[:, ~null], U[:, null]


def kept_null_space(coefficients: Any, V0: torch.Tensor, N: torch.Tensor) -> str | None:
    """None where the drift and the noise vanish along the null space N (m, k) of V0,
    else the reason they do not (a sentence)."""
    m = V0.shape[-1]
    if m > MAX_TOKENS:
        return f"the check needs the full Sigma, made only up to m = {MAX_TOKENS} tokens"
    b = coefficients.drift(V0[None], check=False)[0]
    S = coefficients.diffusion(V0[None], check=False)[0]
    if not (bool(torch.isfinite(b).all()) and bool(torch.isfinite(S).all())):
        return "its drift or diffusion is not finite there"
    if float((b @ N).norm()) > KEPT_RTOL * float(b.norm()) + 1e-300:
        return "its drift moves V0 off its null space (b v != 0 for a null vector v)"
    # E|dN v|^2 / dt summed over the null vectors: Sigma^{ab,cd} contracted with v_b v_d.
    leak = torch.einsum("abad,bk,dk->", S, N, N)
    scale = torch.einsum("abab->", S).abs()
    if float(leak.abs()) > KEPT_RTOL**2 * float(scale) + 1e-300:
        return "its noise moves V0 off its null space (dN v != 0 for a null vector v)"
    return None


class OnRange:
    """The coefficients of the SDE of V_r = Q^T V Q (module docstring) for coefficients
    on (m, m) states and Q (m, r) with orthonormal columns."""

    def __init__(self, coefficients: Any, Q: torch.Tensor) -> None:
        self.inner, self.Q = coefficients, Q
        self.name = getattr(coefficients, "name", type(coefficients).__name__)

    def lift(self, Vr: torch.Tensor) -> torch.Tensor:
        """Q V_r Q^T for V_r (..., r, r); NaN stays NaN."""
        Q = self.Q.to(Vr)
        return Q @ Vr @ Q.T

    def drift(self, Vr: torch.Tensor, *, check: bool = False) -> torch.Tensor:
        Q = self.Q.to(Vr)
        return Q.T @ self.inner.drift(self.lift(Vr), check=check) @ Q

    def diffusion(self, Vr: torch.Tensor, *, check: bool = False) -> torch.Tensor:
        Q = self.Q.to(Vr)
        S = self.inner.diffusion(self.lift(Vr), check=check)
        return torch.einsum("...abcd,ai,bj,ck,dl->...ijkl", S, Q, Q, Q, Q)

    def kernel_params(self) -> dict[str, float]:
        params = getattr(self.inner, "kernel_params", None)
        return params() if callable(params) else {}
