"""Unshaped attention baselines and the two shaping ablations (finite face only).

These blocks are the comparisons of the shaped Transformer paper (rank collapse, its
Figure 1). Each is a residual sub-layer X' = lam X + gam A X_in W^V / sqrt(n) on X of
shape (B, m, n), with the logits Y = (X_in W^Q / sqrt(n)) (X_in W^K / sqrt(n))^T,
W^Q, W^K in R^{n x nk}, W^V in R^{n x n}, all iid N(0, 1) (nk = None means nk = n):

| name                  | A                                        | X_in    | residual |
|-----------------------|------------------------------------------|---------|----------|
| `standard`            | Softmax(Y / sqrt(nk))                    | X       | lam, gam |
| `standard-noresidual` | Softmax(Y / sqrt(nk))                    | X       | none     |
| `prenorm`             | Softmax(Y / sqrt(nk))                    | RMS(X)  | lam, gam |
| `centering-only`      | I + Softmax(Y / sqrt(nk)) - 11^T / m     | X       | lam, gam |
| `temperature-only`    | Softmax(Y / (tau0 sqrt(n nk)))           | X       | lam, gam |

Softmax is row-wise. Y / sqrt(nk) is the usual scaled dot product at standard
initialisation: its entries are O(1). The shaped attention logits are these divided by
tau0 sqrt(n) (`shapedsde.blocks.AttentionBlock`).

Conventions chosen here:

- `standard-noresidual` is X' = A X W^V / sqrt(n): gam = 1 and lam = 0. Its `gamma`
  defaults to 1 and any other value is a ValueError (the block has no residual to weigh).
- `prenorm` normalises each token (row of X) to unit mean square before the attention,
  RMS(X)_a = x_a / sqrt(|x_a|^2 / n) = x_a / sqrt(V^{aa}), and uses it for the queries,
  keys and values: X' = lam X + gam Softmax(Y(RMS(X)) / sqrt(nk)) RMS(X) W^V / sqrt(n).
  There is no learned gain or bias (gain 1, bias 0 at initialisation) and no subtraction
  of the feature mean (the RMSNorm form of LayerNorm; at initialisation each row's
  feature mean is O(n^{-1/2}) of its scale). With this convention the layer depends on X
  only through V, like the others. The residual stream itself is not normalised.

None of these blocks has a covariance SDE under t = depth / width: `drift`, `diffusion`,
`structured_noise` and `symbolic` raise a ValueError that says why. Their finite
networks run through `shapedsde.finite.simulate`; importing this module also registers
them with its exact-in-law V chain (`method="gram"`), valid because, given X, their
A is a function of V and of Gaussian logits whose law depends on X only through V.

`rank_collapse_summary` runs finite networks of several blocks from one V0 and reports
the mean correlation over depth and the fraction of networks whose tokens have collapsed
(every pairwise correlation above a threshold, 0.99 by default) at the last layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from . import _validation as val
from .blocks import AttentionBlock, Block
from .finite import simulate
from .parameters import GAMMA, NK, TAU0, parameter
from .weights import RandomSource, gaussian_product, weight_source

__all__ = [
    "UnshapedAttentionBlock", "StandardAttentionBlock", "StandardNoResidualBlock",
    "PreNormAttentionBlock", "CenteringOnlyBlock", "TemperatureOnlyBlock",
    "BASELINE_BLOCKS", "baseline_blocks", "pairwise_rho", "CollapseRow",
    "RankCollapseSummary", "rank_collapse_summary",
]


@dataclass(frozen=True)
class UnshapedAttentionBlock(Block):
    """Base of the unshaped baselines: X' = lam X + gam A X_in W^V / sqrt(n).

    Subclasses set `reason` (why there is no SDE limit) and may override
    `temperature`, `mixing` and `branch_input`.
    """

    nk: int | None = parameter(NK, None)
    name: ClassVar[str] = ""
    reason: ClassVar[str] = ""

    # -- the finite face --------------------------------------------------

    def temperature(self, n: int, nk: int) -> float:
        """The Softmax temperature: sqrt(nk) (standard scaled dot-product attention)."""
        return math.sqrt(nk)

    def mixing(self, Z: torch.Tensor) -> torch.Tensor:
        """A from the logits Z = Y / temperature (..., m, m): row-wise Softmax."""
        return torch.softmax(Z, dim=-1)

    def branch_input(self, X: torch.Tensor) -> torch.Tensor:
        """X_in, the input of the attention branch (X itself unless pre-normalised)."""
        return X

    def logits(self, X: torch.Tensor, generator: RandomSource) -> torch.Tensor:
        """Z = Y(X_in) / temperature, shape (B, m, m); draws W^Q and W^K (n x nk)."""
        B, m, n = X.shape
        nk = self.nk or n
        Xin = self.branch_input(X)
        weights = weight_source(generator)
        Q = weights.times(Xin, nk) / math.sqrt(n)
        K = weights.times(Xin, nk) / math.sqrt(n)
        return (Q @ K.transpose(-1, -2)) / self.temperature(n, nk)

    def branch_mixing(self, X: torch.Tensor, generator: RandomSource) -> torch.Tensor:
        """The effective mixing of X: Branch(X) = branch_mixing(X) X W^V / sqrt(n)."""
        A = self.mixing(self.logits(X, generator))
        return A * self._input_scale(X)

    def _input_scale(self, X: torch.Tensor) -> torch.Tensor | float:
        """Column scale s with X_in = diag(s) X: 1, or 1 / rms(x_a) for pre-norm (B, 1, m)."""
        return 1.0

    # -- the exact-in-law V chain (shapedsde.finite, method="gram") ----------

    def gram_mixing(self, L: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """The effective mixing A (B, m, m) given V = L L^T (L (B, m, m)), exact in law.

        X = sqrt(n) L Omega with Omega orthonormal rows, so X W / sqrt(n) = L G with
        G = Omega W iid N(0, 1): Y = L_in (G_Q G_K^T) L_in^T, L_in = diag(s) L.
        """
        B, m, _ = L.shape
        nk = self.nk or n
        s = self._gram_scale(L)
        Lin = L if isinstance(s, float) else s.transpose(-1, -2) * L
        prod = gaussian_product(B, m, nk, generator, L)
        A = self.mixing(Lin @ prod @ Lin.transpose(-1, -2) / self.temperature(n, nk))
        return A if isinstance(s, float) else A * s

    def _gram_scale(self, L: torch.Tensor) -> torch.Tensor | float:
        return 1.0

    # -- no SDE ------------------------------------------------------------

    def no_limit_message(self) -> str:
        return (f"block {self.name!r} has no covariance-SDE limit under t = depth/width: "
                f"{self.reason}. Use its finite networks (shapedsde.finite.simulate, "
                "shapedsde.baselines.rank_collapse_summary) instead")

    def drift(self, V: Any, *, check: bool = True) -> Any:
        raise ValueError(self.no_limit_message())

    def diffusion(self, V: Any, *, check: bool = True) -> Any:
        raise ValueError(self.no_limit_message())

    @property
    def noise_groups(self) -> int | None:
        return None

    def structured_noise(self, V: Any, N: Any, *, check: bool = True) -> Any:
        raise ValueError(self.no_limit_message())

    def symbolic(self, m: int):
        raise ValueError(self.no_limit_message())


_COLLAPSE = ("the logits Y/sqrt(nk) are O(1), so each layer's Softmax mixes the tokens by an "
             "O(1) amount and V moves O(1) per layer, not O(1/n); rho -> 1 within O(1) layers "
             "(rank collapse)")


@dataclass(frozen=True)
class StandardAttentionBlock(UnshapedAttentionBlock):
    """Standard attention with residual: X' = lam X + gam A X W^V / sqrt(n),
    A = Softmax(Y / sqrt(nk))."""

    name: ClassVar[str] = "standard"
    reason: ClassVar[str] = _COLLAPSE


@dataclass(frozen=True)
class StandardNoResidualBlock(UnshapedAttentionBlock):
    """Standard attention without residual: X' = Softmax(Y / sqrt(nk)) X W^V / sqrt(n).

    gamma is fixed at 1 (lam = 0); it defaults to 1 and any other value is an error.
    """

    gamma: float = parameter(GAMMA, 1.0)
    name: ClassVar[str] = "standard-noresidual"
    reason: ClassVar[str] = _COLLAPSE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gamma != 1.0:
            raise ValueError("block 'standard-noresidual' has no residual: gamma is fixed at 1 "
                             f"(lam = 0); got gamma = {self.gamma}")


@dataclass(frozen=True)
class PreNormAttentionBlock(UnshapedAttentionBlock):
    """Pre-norm standard attention: X' = lam X + gam Softmax(Y(R) / sqrt(nk)) R W^V / sqrt(n),
    R = RMS(X), each row of X scaled to unit mean square (no gain, bias or mean subtraction)."""

    name: ClassVar[str] = "prenorm"
    reason: ClassVar[str] = ("the normalised tokens give O(1) logits Y/sqrt(nk), so each "
                             "layer's Softmax mixes the tokens by an O(1) amount and V moves "
                             "O(1) per layer, not O(1/n); rho -> 1 within O(1) layers "
                             "(rank collapse)")

    def branch_input(self, X: torch.Tensor) -> torch.Tensor:
        return X * self._input_scale(X).transpose(-1, -2)

    def _input_scale(self, X: torch.Tensor) -> torch.Tensor:
        # (B, 1, m): 1 / sqrt(V^{aa}), so that X_in = diag(s) X and A_eff = A diag(s)
        return torch.rsqrt(X.pow(2).mean(-1)).unsqueeze(-2)

    def _gram_scale(self, L: torch.Tensor) -> torch.Tensor:
        return torch.rsqrt(L.pow(2).sum(-1)).unsqueeze(-2)  # sqrt(V^{aa}) = |row a of L|


@dataclass(frozen=True)
class CenteringOnlyBlock(UnshapedAttentionBlock):
    """Ablation, centring only: A = I + Softmax(Y / sqrt(nk)) - 11^T/m (no temperature)."""

    name: ClassVar[str] = "centering-only"
    reason: ClassVar[str] = ("without the width-dependent temperature the logits are O(1), so "
                             "A - I = Softmax(Y/sqrt(nk)) - 11^T/m is O(1): V moves O(1) per "
                             "layer and n E[dV] diverges as n grows")

    def mixing(self, Z: torch.Tensor) -> torch.Tensor:
        m = Z.shape[-1]
        eye = torch.eye(m, dtype=Z.dtype, device=Z.device)
        return eye + torch.softmax(Z, dim=-1) - 1.0 / m


@dataclass(frozen=True)
class TemperatureOnlyBlock(UnshapedAttentionBlock):
    """Ablation, temperature only: A = Softmax(Y / (tau0 sqrt(n nk))) (no identity centring)."""

    tau0: float = parameter(TAU0, 1.0)
    name: ClassVar[str] = "temperature-only"
    reason: ClassVar[str] = ("without the identity centring A = 11^T/m + O(n^{-1/2}) is the "
                             "O(1) mean-field average of the tokens, so V moves O(1) per layer "
                             "towards rank one; rho -> 1 within O(1) layers (rank collapse)")

    def temperature(self, n: int, nk: int) -> float:
        return self.tau0 * math.sqrt(n * nk)


BASELINE_BLOCKS: tuple[type[UnshapedAttentionBlock], ...] = (
    StandardAttentionBlock, StandardNoResidualBlock, PreNormAttentionBlock, CenteringOnlyBlock,
    TemperatureOnlyBlock)


# ----------------------------------------------------------------------------
# Rank collapse


def baseline_blocks(gamma: float = 1 / math.sqrt(8), tau0: float = 1.0,
                    nk: int | None = None) -> dict[str, Block]:
    """The comparison set, by label: the five baselines and shaped attention.

    The residual blocks use `gamma`; `standard-noresidual` has gamma = 1.
    """
    return {
        "standard": StandardAttentionBlock(gamma, nk=nk),
        "standard-noresidual": StandardNoResidualBlock(nk=nk),
        "prenorm": PreNormAttentionBlock(gamma, nk=nk),
        "centering-only": CenteringOnlyBlock(gamma, nk=nk),
        "temperature-only": TemperatureOnlyBlock(gamma, nk=nk, tau0=tau0),
        "shaped": AttentionBlock(gamma, tau0=tau0, nk=nk),
    }


def pairwise_rho(V: torch.Tensor | np.ndarray) -> np.ndarray:
    """Correlations rho^{ab} (a < b) of V (..., m, m): array (..., m(m-1)/2), float64."""
    V = np.asarray(V.detach().cpu().double() if isinstance(V, torch.Tensor) else V,
                   dtype=np.float64)
    m = V.shape[-1]
    a, b = np.triu_indices(m, k=1)
    d = np.sqrt(np.diagonal(V, axis1=-2, axis2=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return V[..., a, b] / (d[..., a] * d[..., b])


@dataclass
class CollapseRow:
    """One block's rank-collapse numbers (finite networks; non-finite nets excluded).

    mean_rho, se_rho: (k,) mean over networks (and token pairs) of rho at `depths`, with
    its standard error; final_*: the same at the last layer; collapsed: fraction of
    networks with every pairwise rho > threshold at the last layer, with a 95% Wilson
    interval; rho_final: (nets,) the per-network mean pairwise rho at the last layer;
    trace_ratio: (k,) median over networks of tr(V_l) / tr(V_0) (growth of the scale).
    """

    label: str
    block: str
    params: dict[str, float]
    mean_rho: np.ndarray
    se_rho: np.ndarray
    q10: np.ndarray
    q90: np.ndarray
    final_mean: float
    final_se: float
    collapsed: float
    collapsed_ci: tuple[float, float]
    nets: int
    n_nonfinite: int
    rho_final: np.ndarray
    trace_ratio: np.ndarray
    method: str

    def line(self, threshold: float) -> str:
        lo, hi = self.collapsed_ci
        extra = f", {self.n_nonfinite} non-finite nets excluded" if self.n_nonfinite else ""
        return (f"{self.label:<20} rho_0 = {self.mean_rho[0]:.3f} -> rho_d = "
                f"{self.final_mean:.4f} +- {self.final_se:.4f} (SE); collapsed (rho > "
                f"{threshold:g}): {100 * self.collapsed:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
                f" of {self.nets - self.n_nonfinite}{extra}")


@dataclass
class RankCollapseSummary:
    """Output of `rank_collapse_summary`: one `CollapseRow` per block, same depths."""

    rows: list[CollapseRow]
    depths: np.ndarray
    width: int
    depth: int
    threshold: float
    V0: np.ndarray
    seed: int

    def row(self, label: str) -> CollapseRow:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(label)

    def table(self) -> str:
        head = (f"rank collapse, width n = {self.width}, depth d = {self.depth}, m = "
                f"{self.V0.shape[0]}, seed {self.seed}")
        return "\n".join([head, *(r.line(self.threshold) for r in self.rows)])

    def __str__(self) -> str:
        return self.table()


def wilson_interval(k: int, N: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (scipy's) for a binomial proportion k / N; z = 1.96: 95%."""
    if N == 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest, norm

    ci = binomtest(int(k), int(N)).proportion_ci(confidence_level=float(2 * norm.cdf(z) - 1),
                                                 method="wilson")
    return (0.0 if k == 0 else float(ci.low), 1.0 if k == N else float(ci.high))


def rank_collapse_summary(
    blocks: dict[str, Block] | None = None,
    V0: Any = None,
    *,
    width: int = 200,
    depth: int = 150,
    nets: int = 1024,
    seed: int = 0,
    threshold: float = 0.99,
    record_every: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    method: str = "auto",
    progress: bool = False,
) -> RankCollapseSummary:
    """Rank collapse of finite networks: mean rho over depth, fraction collapsed at the end.

    blocks: label -> Block (default `baseline_blocks()`: the five baselines and shaped
    attention at gamma = 1/sqrt(8), tau0 = 1); V0: (m, m) initial covariance (default
    [[1, 0.2], [0.2, 1]]). Each block runs `nets` networks of width `width` and `depth`
    sub-layers from the same X0 (`shapedsde.finite.simulate`, block i with seed
    seed + i; `method="auto"` uses the exact-in-law V chain where available). A network
    has collapsed when every pairwise correlation exceeds `threshold` at the last layer.
    """
    blocks = baseline_blocks() if blocks is None else dict(blocks)
    if not blocks:
        raise ValueError("blocks must name at least one block")
    V0 = np.array([[1.0, 0.2], [0.2, 1.0]]) if V0 is None else np.asarray(V0, dtype=float)
    width = val.check_positive_int("width", width)
    depth = val.check_positive_int("depth", depth)
    nets = val.check_positive_int("nets", nets)
    thr = val._finite_scalar("threshold", threshold)
    if not -1.0 < thr < 1.0:
        raise ValueError(f"threshold must lie in (-1, 1); got {thr}")
    rows = []
    depths = None
    for i, (label, blk) in enumerate(blocks.items()):
        if not isinstance(blk, Block):
            raise ValueError(f"blocks[{label!r}] must be a shapedsde Block; got "
                             f"{type(blk).__name__}")
        run = simulate(blk, V0, width=width, T=depth / width, nets=nets, seed=seed + i,
                       device=device, dtype=dtype, record_every=record_every, method=method,
                       progress=progress)
        depths = np.asarray(run.depths)
        rows.append(_collapse_row(label, blk, run.trajectory.transpose(0, 1), thr, run.method))
    return RankCollapseSummary(rows=rows, depths=depths, width=width, depth=depth,
                               threshold=thr, V0=V0, seed=seed)


def _collapse_row(label: str, blk: Block, traj: torch.Tensor, thr: float,
                  method: str) -> CollapseRow:
    rho = pairwise_rho(traj)  # (nets, k, pairs)
    ok = np.isfinite(rho).all(axis=(1, 2))
    r = rho[ok].mean(-1)  # (nets_ok, k): per-network mean pairwise rho
    N = r.shape[0]
    k_coll = int((rho[ok][:, -1, :] > thr).all(-1).sum())
    nan_k = np.full(rho.shape[1], np.nan)
    mean = r.mean(0) if N else nan_k
    se = r.std(0, ddof=1) / math.sqrt(N) if N > 1 else nan_k
    q10, q90 = (np.quantile(r, [0.1, 0.9], axis=0) if N else (nan_k, nan_k))
    tr = torch.einsum("bkii->bk", traj.detach().cpu().double()).numpy()
    with np.errstate(invalid="ignore"):
        trace_ratio = np.nanmedian(tr / tr[:, :1], axis=0)
    return CollapseRow(label=label, block=blk.name, params=blk.kernel_params(), mean_rho=mean,
                       se_rho=se, q10=q10, q90=q90, final_mean=float(mean[-1]),
                       final_se=float(se[-1]), collapsed=k_coll / N if N else math.nan,
                       collapsed_ci=wilson_interval(k_coll, N), nets=int(rho.shape[0]),
                       n_nonfinite=int((~ok).sum()), rho_final=r[:, -1],
                       trace_ratio=trace_ratio, method=method)
