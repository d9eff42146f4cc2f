"""One-step moments: n E[dV] and n Cov[dV] at fixed V, against b(V) and Sigma(V).

For a residual sub-layer X' = lam X + gam A X W^V / sqrt(n) whose mixing A
is independent of W^V (linear: A = I; attention: A from the logits), the
expectation over the Gaussian W^V is exact at every width. With U = A X and
G = U U^T / n = A V A^T:

    E[V' | A]               = lam^2 V + gam^2 G
    n Cov[V'^{ab}, V'^{cd} | A]
        = lam^2 gam^2 (G_ac V_bd + G_ad V_bc + V_ac G_bd + V_ad G_bc)   (cross term)
        + gam^4 (G_ac G_bd + G_ad G_bc)                                 (Wishart term)

(the cross term lam gam (U W X^T + X W^T U^T) / n^{3/2} is linear in W^V, the
Wishart term gam^2 U W W^T U^T / n^2 quadratic, so they are uncorrelated; each
covariance is a Wick contraction of iid N(0, 1) entries.) Hence, by the law
of total covariance,

    n E[dV]   = n gam^2 (E[G] - V)
    n Cov[dV] = n E[Cov[V' | A]]  +  n gam^4 Cov[G],

and only G (an m x m function of the logits) is sampled. The last term is the
attention part alone (its limit is Sigma_attention - Sigma_linear); the first
is the value part (its limit is Sigma_linear at the same gamma).

Variance reduction: (1) the exact W^V expectation above; (2) antithetic
logits: W^Q -> -W^Q maps Z -> -Z and preserves the law, so each logit draw Z is
used with -Z and the pair is the independent unit (odd orders in Z, the
largest fluctuation of E[G], cancel within a pair); (3) logits drawn exactly
in law from V with O(m^2) numbers (`shapedsde.finite.gram_logits`).
Standard errors of covariance estimates use the influence function
(x - mean)(x - mean)^T, i.e. the delta method, over independent units.

Multi-head attention (n_H heads): head h mixes the value columns of block h
(n / n_H of them, with their own W^V columns) by its own A_h, whose logits come
from the whole X through W^Q_h, W^K_h; given V the A_h are iid and independent
of W^V. With G_h = A_h V A_h^T and Gbar = mean_h G_h, the same Wick contractions
give, head by head (the heads' value columns are independent),

    E[V' | A_1..A_H]     = lam^2 V + gam^2 Gbar
    n Cov[V' | A_1..A_H] = lam^2 gam^2 mean_h (outer2(G_h, V^h) + outer2(V^h, G_h))
                         + gam^4 mean_h outer2(G_h, G_h),

V^h the Gram matrix of the columns of block h. The cross term is linear in V^h
and the G_h are identically distributed, so its expectation over the logits is
that of lam^2 gam^2 (outer2(Gbar, V) + outer2(V, Gbar)) (mean_h V^h = V), and the
one-step moments given X are again functions of V alone:

    n E[dV]   = n gam^2 (E[Gbar] - V)
    n Cov[dV] = lam^2 gam^2 (outer2(E Gbar, V) + outer2(V, E Gbar))
              + gam^4 E[mean_h outer2(G_h, G_h)]  +  n gam^4 Cov[Gbar].

Only the logits are sampled, one draw per head; nothing divides by n_H: the
attention part n gam^4 Cov[Gbar] is measured from the heads' average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..blocks import AttentionBlock, Block, LinearBlock, shaped_mixing
from ..finite import gram_logits, has_gram_face, initial_hidden, psd_factor
from ..registry import block as make_block
from .common import Comparison, compare

# ----------------------------------------------------------------------------
# The conditional closed form


def outer2(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """(P_ac Q_bd + P_ad Q_bc), shape (..., m, m, m, m) from (..., m, m) inputs."""
    return (torch.einsum("...ac,...bd->...abcd", P, Q)
            + torch.einsum("...ad,...bc->...abcd", P, Q))


def conditional_moments(V: torch.Tensor, A: torch.Tensor | None, gamma: float,
                        n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """E[V' | A] (..., m, m) and Cov[V' | A] (..., m, m, m, m), exact at width n.

    V: (m, m) or (..., m, m) current covariance; A: (..., m, m) mixing or None (A = I).
    """
    G = V if A is None else A @ V @ A.transpose(-1, -2)
    return moments_given_G(V, G, gamma, n)


def moments_given_G(V: torch.Tensor, G: torch.Tensor, gamma: float,
                    n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`conditional_moments` in terms of G = A V A^T (..., m, m), which is all they use."""
    lam2, gam2 = 1.0 - gamma**2, gamma**2
    mean = lam2 * V + gam2 * G
    cov = (lam2 * gam2 * (outer2(G, V) + outer2(V, G)) + gam2**2 * outer2(G, G)) / n
    return mean, cov


def value_raw_samples(X: torch.Tensor, A: torch.Tensor | None, gamma: float, samples: int,
                      gen: torch.Generator, batch: int = 256) -> torch.Tensor:
    """V' (samples, m, m) for fixed X (m, n) and A (m, m), drawing W^V (n, n) each time.

    The brute-force counterpart of `conditional_moments`, used to test it.
    """
    m, n = X.shape
    U = X if A is None else A @ X
    lam = math.sqrt(1.0 - gamma**2)
    out = []
    for start in range(0, samples, batch):
        B = min(batch, samples - start)
        W = torch.randn(B, n, n, generator=gen, dtype=X.dtype, device=X.device)
        Xn = lam * X + gamma * (U @ W) / math.sqrt(n)
        out.append(Xn @ Xn.transpose(-1, -2) / n)
    return torch.cat(out)


# ----------------------------------------------------------------------------
# Estimates with standard errors


@dataclass
class Moments:
    """Mean (m, m) and covariance (m, m, m, m) estimates with standard errors."""

    mean: torch.Tensor
    mean_se: torch.Tensor
    cov: torch.Tensor
    cov_se: torch.Tensor
    units: int  # independent units (samples, or antithetic pairs)


def sample_moments(x: torch.Tensor) -> Moments:
    """Mean and covariance of iid samples x (N, m, m) with delta-method SEs."""
    N = x.shape[0]
    mean = x.mean(0)
    d = x - mean
    infl = torch.einsum("nab,ncd->nabcd", d, d)  # influence of the covariance, per sample
    cov = infl.sum(0) / (N - 1)
    return Moments(mean=mean, mean_se=x.std(0) / math.sqrt(N), cov=cov,
                   cov_se=infl.std(0) / math.sqrt(N), units=N)


@dataclass
class OneStepEstimate:
    """n E[dV] and n Cov[dV] at width n, split into value and attention parts.

    Shapes: drift (m, m); the diffusions (m, m, m, m); each with an SE tensor.
    """

    n: int
    pairs: int
    drift: torch.Tensor
    drift_se: torch.Tensor
    diffusion: torch.Tensor
    diffusion_se: torch.Tensor
    attention: torch.Tensor  # n gam^4 Cov[G]: fluctuation over the logits alone
    attention_se: torch.Tensor
    value: torch.Tensor  # n E[Cov[V' | A]]
    value_se: torch.Tensor


def heads_of(block: Block) -> int:
    """The number of attention heads n_H of the block (1 without token mixing)."""
    return int(getattr(block, "heads", 1))


def supports_one_step(block: Block) -> bool:
    """Whether `one_step_estimate` covers the block: the linear block and attention
    (any number of heads, causal or not), with their own finite faces."""
    return isinstance(block, LinearBlock | AttentionBlock) and has_gram_face(block)


def sample_G(block: Block, V: torch.Tensor, n: int, pairs: int,
             gen: torch.Generator) -> torch.Tensor | None:
    """G_h = A_h V A_h^T for antithetic logit pairs: (pairs, H, 2, m, m), H = n_H heads,
    the H logit draws of a pair flipped together; None when A = I."""
    if not hasattr(block, "logits"):  # no token mixing (linear block): A = I
        return None
    H, m = heads_of(block), V.shape[-1]
    L = psd_factor(V).expand(pairs * H, -1, -1)
    Z = gram_logits(block, L, n, gen)  # the heads' logits: iid given V
    A = shaped_mixing(torch.stack([Z, -Z], dim=1), causal=getattr(block, "causal", False))
    return (A @ V @ A.transpose(-1, -2)).reshape(pairs, H, 2, m, m)


def one_step_estimate(block: Block, V: torch.Tensor, n: int, pairs: int,
                      gen: torch.Generator) -> OneStepEstimate:
    """Variance-reduced n E[dV], n Cov[dV] at width n for fixed V (m, m).

    Everything is linear in the first two moments of the heads' G over the logits, so
    per antithetic pair k only g1_k = avg Gbar, g2_k = avg Gbar (x) Gbar and
    w2_k = avg mean_h G_h (x) G_h are needed (one head: g2 = w2):
        drift     = n gam^2 (E g1 - V)
        attention = n gam^4 (E g2 - E g1 (x) E g1)              (= n gam^4 Cov[Gbar])
        value     = lam^2 gam^2 (outer2(E g1, V) + outer2(V, E g1)) + gam^4 O2(E w2)
    with O2(M)_{abcd} = M_{acbd} + M_{adbc} (so O2(G (x) G) = outer2(G, G)). SEs are
    the standard deviation over pairs of the linearised influence (delta method).
    """
    if not supports_one_step(block):
        raise ValueError(f"the one-step estimator does not support block {block.name!r}: it "
                         "needs X' = lam X + gam A X W^V / sqrt(n) with A drawn from V "
                         "(linear, or attention with one A per head)")
    return estimate_from_G(V, sample_G(block, V, n, pairs, gen), block.gamma, n)


def estimate_from_G(V: torch.Tensor, G: torch.Tensor | None, gam: float, n: int
                    ) -> OneStepEstimate:
    """`one_step_estimate` from the sampled G_h = A_h V A_h^T of antithetic logit pairs,
    (pairs, H, 2, m, m) (None: A = I, deterministic moments). Any residual sub-layer
    X' = lam X + gam M X W^V / sqrt(n) with M independent of W^V is covered, e.g. a
    tangent's joint chain on Z = [X; T] with M = [[A, 0], [dA, A]] and V the joint Gram."""
    lam2 = 1.0 - gam**2
    if G is None:  # A = I: the one-step moments are deterministic
        mean, cov = moments_given_G(V, V, gam, n)
        z2, z4 = torch.zeros_like(V), torch.zeros_like(cov)
        return OneStepEstimate(n, 0, n * (mean - V), z2, n * cov, z4, z4, z4, n * cov, z4)
    K = G.shape[0]
    Gbar = G.mean(1)  # (K, 2, m, m): the heads' average per logit draw
    g1 = Gbar.mean(1)  # (K, m, m): antithetic pair averages, the iid units
    g2 = torch.einsum("kiab,kicd->kabcd", Gbar, Gbar) / 2
    w2 = g2 if G.shape[1] == 1 else _pair_mean_square(G)
    mu1, mu2, muw = g1.mean(0), g2.mean(0), w2.mean(0)
    d1, d2, dw = g1 - mu1, g2 - mu2, w2 - muw
    cov_g1 = torch.einsum("kab,kcd->abcd", d1, d1) / (K - 1)
    # Estimates; Cov[g1] / K removes the bias of the plug-in mu1 (x) mu1.
    att = n * gam**4 * (mu2 - _outer(mu1, mu1) + cov_g1 / K)
    val = lam2 * gam**2 * (outer2(mu1, V) + outer2(V, mu1)) + gam**4 * _o2(muw)
    # Linearised per-pair influences (K, m, m, m, m).
    psi_att = n * gam**4 * (d2 - _outer(d1, mu1) - _outer(mu1, d1))
    psi_val = lam2 * gam**2 * (outer2(d1, V) + outer2(V, d1)) + gam**4 * _o2(dw)

    def se(x: torch.Tensor) -> torch.Tensor:
        return x.std(0) / math.sqrt(K)

    return OneStepEstimate(
        n=n, pairs=K,
        drift=n * gam**2 * (mu1 - V), drift_se=n * gam**2 * se(g1),
        diffusion=att + val, diffusion_se=se(psi_att + psi_val),
        attention=att, attention_se=se(psi_att), value=val, value_se=se(psi_val))


def _pair_mean_square(G: torch.Tensor) -> torch.Tensor:
    """avg over the pair and the heads of G_h (x) G_h: (K, m, m, m, m) from (K, H, 2, m, m)."""
    Gall = G.flatten(1, 2)
    return torch.einsum("kiab,kicd->kabcd", Gall, Gall) / Gall.shape[1]


def _outer(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """P_ab Q_cd, broadcasting leading axes."""
    return P[..., :, :, None, None] * Q[..., None, None, :, :]


def _o2(M: torch.Tensor) -> torch.Tensor:
    """O2(M)_{abcd} = M_{acbd} + M_{adbc} for M (..., m, m, m, m)."""
    return M.permute(*range(M.ndim - 4), -4, -2, -3, -1) + M.permute(
        *range(M.ndim - 4), -4, -2, -1, -3)


# ----------------------------------------------------------------------------
# Brute-force counterparts (for the consistency checks)


def raw_one_step(block: Block, X: torch.Tensor, samples: int, gen: torch.Generator,
                 batch: int = 512) -> Moments:
    """Moments of n (V' - V) from `samples` calls of block.finite on X (m, n); no tricks."""
    m, n = X.shape
    V = X @ X.T / n
    out = []
    for s in range(0, samples, batch):
        B = min(batch, samples - s)
        Xn = block.finite(X.expand(B, m, n).contiguous(), gen)
        out.append(Xn @ Xn.transpose(-1, -2) / n - V)
    mo = sample_moments(torch.cat(out))  # moments of dV; scale to n E[dV], n Cov[dV]
    return Moments(n * mo.mean, n * mo.mean_se, n * mo.cov, n * mo.cov_se, mo.units)


def extrapolate(widths: list[int], est: list[torch.Tensor],
                se: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Entrywise weighted least squares est(n) = theta + beta / n (+ delta / n^2 with
    four or more widths); returns theta (the n -> inf value) and its SE.

    The finite-width corrections of both one-step moments are a series in 1/n:
    odd moments of the logits vanish (Z -> -Z symmetry), so there is no n^{-1/2}
    term. The 1/n^2 term matters for the nearly noiseless value part.
    """
    x = torch.tensor([1.0 / n for n in widths], dtype=torch.float64)
    degree = 2 if len(widths) >= 4 else 1
    X = torch.stack([x**k for k in range(degree + 1)], dim=1)  # (W, p) design
    y = torch.stack([e.double().cpu() for e in est]).flatten(1)  # (W, E)
    w = torch.stack([s.double().cpu() for s in se]).flatten(1).clamp_min(1e-300) ** -2
    # Normal equations per entry: (X^T W X) c = X^T W y.
    XtWX = torch.einsum("wp,we,wq->epq", X, w, X)
    XtWy = torch.einsum("wp,we,we->ep", X, w, y)
    cov = torch.linalg.inv(XtWX)
    coef = torch.einsum("epq,eq->ep", cov, XtWy)
    shape = est[0].shape
    return coef[:, 0].reshape(shape), cov[:, 0, 0].clamp_min(0).sqrt().reshape(shape)


# ----------------------------------------------------------------------------
# The check


def theory(block: Block, V: torch.Tensor) -> dict[str, torch.Tensor]:
    """Kernel values at V: drift, diffusion, and the split of the diffusion into the
    value part (the linear block's Sigma at the same gamma) and the attention rest."""
    value = make_block("linear", gamma=block.gamma).diffusion(V)
    diffusion = block.diffusion(V)
    return {"drift": block.drift(V), "diffusion": diffusion, "value": value,
            "attention": diffusion - value}


PARTS = ("drift", "diffusion", "attention", "value")


def one_step_check(block: Block, V: torch.Tensor, widths: list[int], pairs: int,
                   seed_of, progress: bool = False) -> dict:
    """Estimates at each width against the kernels, and the 1/n extrapolation.

    seed_of: label -> torch seed. Returns a JSON-ready dict:
    {"widths": {n: {part: Comparison dict, ...}}, "extrapolated": {part: ...}, ...}.
    """
    V = V.to(torch.float64)
    th = theory(block, V)
    per_width, ests = {}, []
    for n in widths:
        gen = torch.Generator().manual_seed(seed_of(f"one-step/{_label(block)}/n={n}"))
        e = one_step_estimate(block, V, n, pairs, gen)
        ests.append(e)
        per_width[n] = {part: _cmp(e, part, th).as_dict() for part in PARTS}
        if progress:
            print(f"  one-step {_label(block)} n={n}: " + ", ".join(
                f"{p} z={per_width[n][p]['max_abs_z']:.2f}" for p in PARTS))
    extra = {}
    if len(widths) >= 2 and ests[0].pairs > 0:
        for part in PARTS:
            theta, theta_se = extrapolate(widths, [getattr(e, part) for e in ests],
                                          [getattr(e, part + "_se") for e in ests])
            extra[part] = compare(theta, theta_se, th[part]).as_dict()
    return {"block": block.name, "params": block.kernel_params(), "pairs": ests[0].pairs,
            "V": V.tolist(), "widths": per_width, "extrapolated": extra,
            "estimates": {n: {p: getattr(e, p).tolist() for p in PARTS}
                          for n, e in zip(widths, ests, strict=True)},
            "theory": {p: th[p].tolist() for p in PARTS}}


def closed_form_check(block: Block, V: torch.Tensor, n: int, samples: int,
                      gen: torch.Generator) -> dict:
    """The conditional closed form against raw W^V sampling, for one fixed logit draw."""
    X = initial_hidden(V, n, seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
    Vx = X @ X.T / n
    A = None
    if hasattr(block, "logits"):  # the block mixes tokens: draw one A
        A = shaped_mixing(gram_logits(block, psd_factor(Vx)[None], n, gen),
                          causal=getattr(block, "causal", False))[0]
    mean, cov = conditional_moments(Vx, A, block.gamma, n)
    raw = sample_moments(value_raw_samples(X, A, block.gamma, samples, gen))
    return {"n": n, "samples": samples,
            "mean": compare(raw.mean, raw.mean_se, mean).as_dict(),
            "cov": compare(raw.cov, raw.cov_se, cov).as_dict()}


def raw_consistency_check(block: Block, V: torch.Tensor, n: int, samples: int, pairs: int,
                          gen: torch.Generator) -> dict:
    """block.finite (all weights drawn, no variance reduction) against the variance-
    reduced estimator at the same width: both estimate the same finite-n moments."""
    X = initial_hidden(V, n, seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
    raw = raw_one_step(block, X, samples, gen)
    vr = one_step_estimate(block, (X @ X.T / n), n, pairs, gen)
    return {"n": n, "samples": samples, "pairs": pairs,
            "drift": compare(raw.mean, raw.mean_se, vr.drift, vr.drift_se).as_dict(),
            "diffusion": compare(raw.cov, raw.cov_se, vr.diffusion, vr.diffusion_se).as_dict()}


def _cmp(e: OneStepEstimate, part: str, th: dict[str, torch.Tensor]) -> Comparison:
    return compare(getattr(e, part), getattr(e, part + "_se"), th[part])


def _label(block: Block) -> str:
    return block.name + "".join(f" {k}={v:g}" for k, v in block.kernel_params().items())
