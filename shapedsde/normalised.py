"""Per-token normalisation around a block: `normalised(blk, norm="rms", at="post")`.

- at="post": X' = Norm(lam X + gam Branch(X)), i.e. the block's finite face followed by
  Norm. V stays a correlation matrix. Its SDE is derived for any block from the block's
  b and Sigma by Ito's formula applied to N(V)^{ab} = V^{ab} / sqrt(V^{aa} V^{bb})
  (`shapedsde.symbolic.normalisation.ito_map`), evaluated at the correlation matrix N(V)
  of the state, so the coefficients are functions of the correlation only and the
  diagonal has zero drift and diffusion (tr V = m for ever: no finite-time blow-up).
- at="pre": X' = lam X + gam Branch(Norm(X)) (one residual sub-layer: its branch is read
  off its finite face, gam Branch(Z) = blk.finite(Z) - lam Z). Its SDE is the post-norm
  SDE plus the averaged drift of the fast diagonal fluctuations
  (`shapedsde.symbolic.normalisation.prenorm_correction`, docs/normalisation.md),
  evaluated at N(V): the slow correlation's SDE. The stream's own diagonal is not
  modelled by it (it relaxes to 1 at rate O(n) in t).

Norm: "rms" (x -> x / sqrt(|x|^2 / n), no gain) or "layer" (LayerNorm without gain or
bias: the token's feature mean removed first). Both have the same SDE
(docs/normalisation.md: the removed mean moves V by -mu mu^T = O(1/n) a layer, whose mean
is proportional to V at leading order, and N is scale invariant).

A block of several residual sub-layers (the Transformer block: attention, then MLP; a
`serial` composition) is normalised sub-layer by sub-layer, as in pre-LN and post-LN
Transformers: `normalised(transformer, norm, at)` is serial(normalised(attention, norm, at),
normalised(mlp, norm, at)) (`sublayers`). Its finite face is each sub-layer's finite face
with its normalisation, in order; its SDE is the sum of the sub-layers' normalised SDEs
(at leading order the coefficients add, as for any serial composition). For post-norm the
sum equals the Ito map of the summed (b, Sigma) (the map is linear in them); for pre-norm
the averaged corrections add too when the sub-layers share gamma (the fast diagonal is an
AR(1) with the same factor lam^2 in every sub-layer: the spreads it feeds into the next
sub-layers sum to (w_1 + w_2) / (1 - lam^4) per block, docs/normalisation.md), which a
Transformer block's do; pre-normalised parts with different gammas are refused.

Exact V chains (`shapedsde.finite`, method="gram") exist where the block has one: post
(RMS and LayerNorm) and pre (RMS) of a single sub-layer (attention, linear); see
`shapedsde.finite.gram_step`. The Transformer block has none (method "full" or "reduced").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from . import _validation as val
from .blocks import Block, TransformerBlock, _check_hidden, contract_ito, contract_trace
from .registry import block as registered_block
from .serial import Serial
from .symbolic.normalisation import ito_map, normalise, prenorm_correction
from .weights import RandomSource

NORMS = ("rms", "layer")
PLACES = ("pre", "post")


@dataclass(frozen=True)
class Normalised(Block):
    """A block with per-token normalisation before its branch (`at="pre"`) or after the
    residual sum (`at="post"`). `gamma` is the inner block's."""

    inner: Block | None = None
    norm: str = "rms"
    at: str = "post"
    gamma: float = field(init=False, default=math.nan)
    #: each residual sub-layer normalised, for a block of several (else None)
    sublayers: tuple[Normalised, ...] | None = field(init=False, default=None, repr=False,
                                                   compare=False)
    name: ClassVar[str] = "normalised"

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Block):
            raise ValueError(f"normalised needs a shapedsde Block to normalise; got "
                             f"{type(self.inner).__name__}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {NORMS}")
        if self.at not in PLACES:
            raise ValueError(f"unknown norm place {self.at!r}; choose one of {PLACES}")
        if isinstance(self.inner, Normalised):
            raise ValueError("the block is normalised already")
        object.__setattr__(self, "gamma", self.inner.gamma)
        parts = residual_sublayers(self.inner)
        if parts is not None:
            if self.at == "pre" and len({p.gamma for p in parts}) > 1:
                raise ValueError("pre-normalised sub-layers with different gammas: their "
                                 "averaged fast-diagonal drifts do not add (derived for a "
                                 "common gamma, docs/normalisation.md); give every part the "
                                 "same gamma")
            object.__setattr__(self, "sublayers", tuple(
                Normalised(inner=p, norm=self.norm, at=self.at) for p in parts))

    @property
    def lam(self) -> float:
        return self.inner.lam

    @property
    def label(self) -> str:
        """e.g. 'attention+rms@post'."""
        return f"{self.inner.name}+{self.norm}@{self.at}"

    def kernel_params(self) -> dict[str, float]:
        return self.inner.kernel_params()

    # -- the SDE -----------------------------------------------------------

    def coefficients_at(self, V: Any) -> tuple[Any, Any]:
        """(drift, diffusion) at V: the normalised SDE at R = N(V) (for several sub-layers,
        the sum of theirs)."""
        if self.sublayers is not None:
            pairs = [p.coefficients_at(V) for p in self.sublayers]
            return sum(mu for mu, _ in pairs), sum(C for _, C in pairs)
        R = normalise(V)
        b = self.inner.drift(R, check=False)
        S = self.inner.diffusion(R, check=False)
        mu, C = ito_map(b, S, R)
        if self.at == "pre":
            mu = mu + prenorm_correction(S, R, self.lam)
        return mu, C

    def drift(self, V: Any, *, check: bool = True) -> Any:
        V = val.check_covariance(V) if check else V
        return self.coefficients_at(V)[0]

    def diffusion(self, V: Any, *, check: bool = True) -> Any:
        V = val.check_covariance(V) if check else V
        return self.coefficients_at(V)[1]

    def ito_contraction(self, V: Any, *, check: bool = True) -> Any:
        V = val.check_covariance(V) if check else V
        return contract_ito(self.coefficients_at(V)[1], V)

    def drift_and_ito(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, C = self.coefficients_at(V)
        return mu, contract_ito(C, V)

    def trace_variance(self, V: Any, *, check: bool = True) -> Any:
        V = val.check_covariance(V) if check else V
        return contract_trace(self.coefficients_at(V)[1])  # 0: the diagonal is fixed

    def project_factor(self, L: torch.Tensor) -> torch.Tensor:
        """The solver's hook: the factor of N(L L^T), D^-1/2 L (rows of L to unit length),
        so that every state is a correlation matrix (the SDE keeps the unit diagonal; the
        discrete step leaves it by O(h))."""
        return L * torch.rsqrt((L * L).sum(-1, keepdim=True))

    @property
    def noise_groups(self) -> None:
        return None  # the solver factorises the (m^2 x m^2) diffusion

    def fixed_trace(self, face: str) -> bool:
        """Whether tr V = m at every depth on `face` (`shapedsde.scheme.check_exit_trace`):
        the SDE's state is a correlation matrix (post and pre), and so is the finite
        network's after post-normalisation (pre: the stream itself is not normalised)."""
        return face == "sde" or self.at == "post"

    def derivation(self):
        raise ValueError("a normalised block's SDE is built from its inner block's kernels "
                         "(shapedsde.symbolic.normalisation); it has no derivation of its own")

    # -- the finite face ---------------------------------------------------

    def check_width(self, n: int) -> int:
        return self.inner.check_width(n)

    def apply_norm(self, X: torch.Tensor) -> torch.Tensor:
        """Norm per token (row of X, shape (B, m, n)): RMSNorm, or LayerNorm (the feature
        mean removed first), no gain or bias."""
        if self.norm == "layer":
            X = X - X.mean(-1, keepdim=True)
        return X * torch.rsqrt((X * X).mean(-1, keepdim=True))

    def finite(self, X: torch.Tensor, generator: RandomSource, *, check: bool = True
               ) -> torch.Tensor:
        _check_hidden(X, values=check)
        self.check_width(X.shape[-1])
        if self.sublayers is not None:
            for p in self.sublayers:
                X = p.finite(X, generator, check=False)
            return X
        if self.at == "post":
            return self.apply_norm(self.inner.finite(X, generator, check=False))
        Z = self.apply_norm(X)
        branch = self.inner.finite(Z, generator, check=False) - self.lam * Z  # gam Branch(Z)
        return self.lam * X + branch


def residual_sublayers(blk: Block) -> tuple[Block, ...] | None:
    """The residual sub-layers of a block of several (the Transformer block's attention and
    MLP; a serial composition's parts, flattened), or None for a single sub-layer."""
    if isinstance(blk, TransformerBlock):
        return blk.parts()
    if isinstance(blk, Serial):
        return tuple(q for p in blk.parts for q in (residual_sublayers(p) or (p,)))
    return None


def normalised(blk: Block, norm: str = "rms", at: str = "post") -> Normalised:
    """`blk` with per-token `norm` ("rms" or "layer") before its branch (`at="pre"`) or
    after its residual sum (`at="post"`); a Transformer block or a serial composition
    sub-layer by sub-layer (pre-LN / post-LN Transformer)."""
    return Normalised(inner=blk, norm=norm, at=at)


def block(name: str, *, norm: str | None = None, norm_at: str | None = None,
          **params: Any) -> Block:
    """`shapedsde.block(name, **params)`, normalised where `norm` ("rms" or "layer") is
    given: `norm_at` "post" (default) or "pre" (`normalised`)."""
    blk = registered_block(name, **params)
    if norm is None:
        if norm_at is not None:
            raise ValueError("norm_at places a normalisation: give norm='rms' or 'layer' too")
        return blk
    return normalised(blk, norm=norm, at="post" if norm_at is None else norm_at)
