"""Where a finite network's Gaussian weights come from: drawn, or reduced in law.

Every weight product in the blocks' finite faces is X W with X (..., m, n) the current
(function of the) hidden state and W (n, c) a fresh matrix of iid N(0, 1) entries,
independent of everything before. Given X, X W is matrix normal: its c columns are
iid N(0, X X^T). So L G, with L L^T = X X^T (an m x m factor) and G (m, c) iid
N(0, 1), has the same conditional law, and so does the whole network as a Markov
chain in X: every hidden state has exactly the law of the network with all weights
drawn. That costs m c random numbers instead of n c, and O(m^2 (n + c)) FLOPs instead
of O(m n c): at m = 4, n = 1024 a sub-layer draws 256x fewer numbers. L is taken from
a QR factorisation of X^T (L = R^T), which keeps the accuracy of X's small singular
values (the Gram matrix X X^T would square their relative error).

Blocks take `generator: torch.Generator | WeightSource`; a bare generator means the
weights are drawn (the network itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WeightSource:
    """The random source of a finite network's weight products.

    generator: the `torch.Generator` of every draw.
    reduced: False: draw W and multiply (the network itself); True: draw X W in law
        as L G (see the module docstring) - same law of every hidden state, far fewer
        random numbers.
    """

    generator: torch.Generator
    reduced: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.generator, torch.Generator):
            raise ValueError("WeightSource needs a torch.Generator (e.g. "
                             f"torch.Generator().manual_seed(0)); got {self.generator!r}")

    def times(self, X: torch.Tensor, cols: int, heads: int | None = None) -> torch.Tensor:
        """X W for fresh iid N(0, 1) weights W (n, cols), one per batch element (and head).

        X: (B, m, n). Returns (B, m, cols), or (B, heads, m, cols) with an independent
        W per head when `heads` is given.
        """
        B, m, n = X.shape
        lead = (B,) if heads is None else (B, heads)
        kw = dict(generator=self.generator, device=X.device, dtype=X.dtype)
        if not self.reduced:
            W = torch.randn(*lead, n, cols, **kw)
            return (X if heads is None else X[:, None]) @ W
        # L from a QR of X^T (X X^T = R^T R): the Gram matrix would square X's
        # condition number and lose the small directions of a nearly singular V.
        L = torch.linalg.qr(X.transpose(-1, -2), mode="r").R.transpose(-1, -2)
        G = torch.randn(*lead, m, cols, **kw)
        return (L if heads is None else L[:, None]) @ G


def weight_source(generator: torch.Generator | WeightSource) -> WeightSource:
    """A `WeightSource`: the argument itself, or drawn weights from a bare generator.

    A generator is required: without one the draws would come from Torch's global,
    unseeded generator and a run could not be reproduced.
    """
    if isinstance(generator, WeightSource):
        return generator
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator (e.g. "
                         "torch.Generator().manual_seed(0)) or a shapedsde.weights.WeightSource; "
                         f"got {generator!r}")
    return WeightSource(generator)


#: What the finite faces accept as their source of randomness.
RandomSource = torch.Generator | WeightSource


# Gaussian products in law (the gram sampler and the attention logits given V)

#: Below this many degrees of freedom a Wishart / Gaussian product is drawn
#: directly from Gaussians (cheap, and Bartlett's chi-squares need df >= m).
DIRECT_DF = 64


def gaussian_product(B: int, m: int, df: int, generator: torch.Generator,
                     like: torch.Tensor) -> torch.Tensor:
    """The law of G1 G2^T, G1, G2 (m, df) independent iid N(0, 1); shape (B, m, m).

    Given G2, the rows of G1 G2^T are iid N(0, S) with S = G2 G2^T ~ Wishart(df),
    so G1 G2^T = H T^T with H iid N(0, 1) and T the Bartlett factor of S.
    """
    if df < DIRECT_DF:
        G1 = standard_normal(generator, like, B, m, df)
        G2 = standard_normal(generator, like, B, m, df)
        return G1 @ G2.transpose(-1, -2)
    Tl = bartlett_factor(B, m, df, generator, like)
    return standard_normal(generator, like, B, m, m) @ Tl.transpose(-1, -2)


def bartlett_factor(B: int, m: int, df: int, generator: torch.Generator,
                    like: torch.Tensor) -> torch.Tensor:
    """Lower-triangular T (B, m, m) with T T^T ~ Wishart_m(df, I), df >= m (Bartlett).

    T_ii = sqrt(chi^2_{df - i}) (i = 0..m-1), T_ij ~ N(0, 1) below the diagonal.
    """
    if df < m:
        raise ValueError(f"Bartlett needs df >= m; got df={df}, m={m}")
    shape = torch.arange(m, dtype=like.dtype, device=like.device)
    alpha = ((df - shape) / 2).expand(B, m).contiguous()
    chi2 = 2.0 * torch._standard_gamma(alpha, generator=generator)
    Tl = torch.tril(standard_normal(generator, like, B, m, m), diagonal=-1)
    return Tl + torch.diag_embed(chi2.sqrt())


def standard_normal(generator: torch.Generator, like: torch.Tensor, *shape: int) -> torch.Tensor:
    """iid N(0, 1) of `shape`, with the dtype and device of `like`."""
    return torch.randn(*shape, generator=generator, dtype=like.dtype, device=like.device)
