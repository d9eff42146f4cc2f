"""Finite-width networks: initial hidden states and batched deep simulations.

`simulate` runs `nets` independent networks of d = round(T * width) residual
sub-layers of one block, all starting from the same hidden state X0 with
X0 X0^T / n = V0, and returns V = X X^T / n at depth d.

Three samplers, equal in law:

- `method="full"` calls the block's finite face `block.finite(X, generator)`
  on X of shape (B, m, n): every weight matrix is drawn (n^2 numbers per
  sub-layer and network), so it is the network itself, but slow on CPU for
  n >~ 64.
- `method="reduced"` runs the same finite faces but draws every weight product
  X W in law as L G (L L^T = X X^T, G of shape (m, c)): the hidden states have
  exactly the law of the full networks with m c instead of n c random numbers per
  weight matrix (`shapedsde.weights`). Every block has it.
- `method="gram"` samples the Markov chain V_l -> V_{l+1} exactly in law with
  O(m^2) random numbers per sub-layer, whatever n. It rests on rotation
  invariance: given X, the law of the next V depends on X only through V
  (write X = sqrt(n) L Omega with V = L L^T and Omega orthonormal rows; an
  orthogonal change of basis makes Omega W^V Omega^T an m x m Gaussian block H
  plus an independent Wishart(n - m) remainder), so
      V' = lam^2 V + lam gam (A L H L^T + (A L H L^T)^T) / sqrt(n)
           + gam^2 A L (H H^T + S_perp) L^T A^T / n,
  H iid N(0, 1) (m x m), S_perp ~ Wishart_m(n - m, I).
  The logits are Z = L (G_Q G_K^T) L^T / (tau0 sqrt(n nk)) with G_Q, G_K iid
  N(0, 1) of shape (m, nk); G_Q G_K^T is drawn as H' T^T with T T^T ~
  Wishart_m(nk, I) (Bartlett). Available for the blocks with a `gram_mixing` face
  (`supports_gram`); the verifier checks it against `method="full"`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import _validation as val
from ._linalg import psd_factor

# gram_logits and gaussian_product: the laws the samplers draw from, re-exported here.
from .blocks import Block, has_gram_face
from .blocks import gram_logits as gram_logits
from .normalised import Normalised
from .progress import progress_bar
from .scheme import check_exit_trace, check_state, monitored_tokens, monitored_trace
from .spectrum import log_spectrum
from .weights import DIRECT_DF, RandomSource, WeightSource, bartlett_factor, standard_normal
from .weights import gaussian_product as gaussian_product

# Bytes of random weights the full sampler may hold per batch (per device kind).
# Fixed, not read from free memory, so the default batch size (and hence the
# random stream) is the same on every machine of a kind.
FULL_BATCH_BYTES = {"cpu": 256 * 2**20, "cuda": 4 * 2**30}
METHODS = ("full", "reduced", "gram", "auto")
GRAM_BATCH_NETS = 1 << 17  # the gram sampler holds O(m^2) numbers per network
#: Most sub-layers one network may run (depth = round(T * width)): far beyond any run
#: that ends (a billion sub-layers of the smallest network is hours), and exact as an int.
MAX_DEPTH = 10**9
#: Most bytes one network's weights and states may take (the full and reduced samplers
#: draw at least one network at a time): beyond, no batch fits.
MAX_NET_BYTES = 8 * 2**30


@dataclass(frozen=True)
class FiniteRun:
    """A finite-width simulation with its recorded trajectory.

    V: (nets, m, m) covariance at depth `depth` (at the exit layer for nets that exited);
    depths: (k,) recorded depths (0, r, 2r, ..., always ending at `depth`); trajectory:
    (k, nets, m, m), time first as in `shapedsde.sde.SDEResult`, frozen after an exit;
    `times` = depths / width, the SDE time of each record; exit_time: (nets,) float64,
    exit layer / width (inf where the net stayed inside, or where no exit_trace was given).
    """

    V: torch.Tensor
    depths: list[int]
    trajectory: torch.Tensor
    width: int
    depth: int
    T: float
    method: str
    seed: int
    exit_time: torch.Tensor | None = None
    exit_trace: float | None = None

    @property
    def times(self) -> np.ndarray:
        """(k,) SDE time t = depth / width of each recorded state."""
        return np.asarray(self.depths, dtype=np.float64) / self.width

    def log_spectrum(self, nonpositive: str = "warn") -> torch.Tensor:
        """(nets, m) float64: log eigenvalues of V, ascending (`shapedsde.spectrum`); for
        the plain (nets, m, m) tensor `simulate` returns, call `spectrum.log_spectrum(V)`."""
        return log_spectrum(self.V, nonpositive=nonpositive)

    @property
    def exited(self) -> torch.Tensor:
        """(nets,) bool: the net reached tr V >= exit_trace tr V0 within `depth` layers."""
        if self.exit_time is None:
            return torch.zeros(self.V.shape[0], dtype=torch.bool)
        return torch.isfinite(self.exit_time)


# ----------------------------------------------------------------------------
# Initial hidden state


def initial_hidden(
    V0,
    n: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    mean_free: bool = False,
) -> torch.Tensor:
    """A hidden state X0 of shape (m, n) with X0 X0^T / n == V0 (to rounding).

    X0 = sqrt(n) F O with F F^T = V0 (eigen factor, so singular PSD V0 works)
    and O (m, n) random orthonormal rows (QR of a seeded Gaussian matrix).
    Computed in float64 on the CPU, then cast, so X0 does not depend on device.
    `mean_free`: the rows of O are also orthogonal to the all-ones vector (each token's
    feature mean is 0, as after a LayerNorm; needs n > m).
    """
    seed = val.check_seed(seed)
    V0 = _as_matrix(V0, "V0")
    m = V0.shape[0]
    n = val.check_positive_int("n (width)", n)
    if n < m:
        raise ValueError(f"width n = {n} must be >= m = {m} for X0 X0^T / n = V0 to be "
                         "attainable with a full-rank V0")
    gen = torch.Generator().manual_seed(int(seed))
    G = torch.randn(n, m, generator=gen, dtype=torch.float64)
    if mean_free:
        if n <= m:
            raise ValueError(f"a mean-free hidden state needs width n > m = {m}; got {n}")
        G = G - G.mean(0, keepdim=True)  # columns orthogonal to 1, and so is Q
    Q, _ = torch.linalg.qr(G)  # (n, m), orthonormal columns
    X0 = math.sqrt(n) * psd_factor(V0) @ Q.T
    return X0.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------
# Simulation


def simulate(
    block: Block,
    V0,
    *,
    width: int,
    T: float,
    nets: int,
    seed: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    batch_size: int | None = None,
    progress: bool = False,
    record_every: int | None = None,
    method: str = "full",
    exit_trace: float | None = None,
) -> torch.Tensor | FiniteRun:
    """V at depth d = round(T * width) of `nets` independent finite networks.

    block: a `shapedsde.Block`; V0: (m, m) initial covariance; width: n.
    Returns a (nets, m, m) float64 tensor on `device`, or a `FiniteRun` with the
    trajectory every `record_every` sub-layers when that is given.
    `dtype`: precision of the hidden states and weights (float32 is 2-4x faster on
    CPU); V is accumulated in float64 either way (`gram_matrix`).
    `method`: "full" (the block's finite face, all weights drawn), "reduced" (the
    same faces, weight products drawn in law from X X^T) or "gram" (exact-in-law
    m x m chain; see the module docstring); "auto" picks "gram" where the block
    supports it, else "full". Reproducible for a fixed (seed, batch_size,
    device, method); `batch_size=None` picks one from a fixed memory budget.
    `exit_trace`: R > 1 stops each net at the first layer l with tr V_l >= R tr V0 (its
    hidden state is frozen from then on: the stopped chain) and returns a `FiniteRun`
    whose `exit_time` is l / width (inf for nets that stayed inside).
    """
    seed = val.check_seed(seed)
    V0 = _as_matrix(V0, "V0")
    n = val.check_positive_int("width", width)
    T = val.check_time(T)
    nets = val.check_positive_int("nets", nets)
    method = _check_method(block, method)
    check_state(block, V0)
    dtype = val.check_float_dtype(dtype)
    if record_every is not None:
        record_every = val.check_positive_int("record_every", record_every)
    if batch_size is not None:
        batch_size = val.check_positive_int("batch_size", batch_size)
    if exit_trace is not None:
        exit_trace = val._finite_scalar("exit_trace", exit_trace)
        if exit_trace <= 1.0:
            raise ValueError(f"exit_trace must be > 1 (a ball tr V < R tr V0); got {exit_trace}")
        check_exit_trace(block, "finite")
    m = V0.shape[0]
    if n < m:
        raise ValueError(f"width {n} must be >= m = {m}")
    depth = check_depth(T, n)
    dev = val.check_device(device)
    if method != "gram":
        need = net_bytes(method, m, n, getattr(block, "nk", None), getattr(block, "heads", 1),
                         dtype)
        if need > MAX_NET_BYTES:
            raise ValueError(f"one network of method {method!r} at width {n}"
                             f"{'' if getattr(block, 'nk', None) is None else f', nk {block.nk}'}"
                             f" needs about {need / 2**30:.3g} GiB of weights and states, over "
                             f"{MAX_NET_BYTES / 2**30:g} GiB"
                             + ("; use method='gram' (O(m^2) numbers per network)"
                                if supports_gram(block) else "; lower the width or nk"))
    if batch_size is None:
        batch_size = _default_batch(method, m, n, getattr(block, "nk", None),
                                    getattr(block, "heads", 1), dev, dtype)
    batch_size = min(batch_size, nets)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    X0 = initial_hidden(V0, n, dtype=dtype, device=dev, seed=seed,
                        mean_free=layer_normalised(block))
    record = _record_depths(depth, record_every)
    step = _gram_runner if method == "gram" else _full_runner
    if method == "reduced":
        gen = WeightSource(gen, reduced=True)
    k = monitored_tokens(block, m)  # a tangent stops on its tokens' block
    level = None if exit_trace is None else exit_trace * float(torch.trace(V0[:k, :k]))
    outs: list[torch.Tensor] = []
    exits: list[torch.Tensor] = []
    bar = progress_bar(total=nets * depth, enabled=progress, unit="layer",
                       desc=f"finite {block.name} n={n} d={depth} ({method})")
    for start in range(0, nets, batch_size):
        B = min(batch_size, nets - start)
        traj_b, exit_b = step(block, X0, B, depth, record, gen, bar, level, k)
        outs.append(traj_b)
        exits.append(exit_b)
    bar.close()
    traj = torch.cat(outs, dim=1)  # (k, nets, m, m)
    if record_every is None and exit_trace is None:
        return traj[-1]
    exit_layer = torch.cat(exits).cpu().to(torch.float64)
    return FiniteRun(V=traj[-1], depths=record, trajectory=traj, width=n, depth=depth,
                     T=T, method=method, seed=int(seed),
                     exit_time=None if exit_trace is None else exit_layer / n,
                     exit_trace=exit_trace)


def check_depth(T: float, width: int) -> int:
    """depth = round(T * width) sub-layers, ValueError over MAX_DEPTH (before any work)."""
    d = T * width
    if not d <= MAX_DEPTH:
        raise ValueError(f"T * width = {T:g} * {width} = {d:.3g} sub-layers, over the limit of "
                         f"{MAX_DEPTH:.0e}; lower T or the width")
    return int(round(d))


def gram_matrix(X: torch.Tensor) -> torch.Tensor:
    """V = X X^T / n of X (..., m, n), accumulated in float64 whatever X's dtype.

    Each entry is a sum of n products: in float32 it carries a relative rounding
    error ~ sqrt(n) eps_32 (about 4e-6 at n = 1024), which benchmarks/ measures
    against float64 accumulation of the same X. The cast costs O(m n) per network,
    nothing next to a sub-layer's O(m n^2).
    """
    Xd = X.to(torch.float64)
    return Xd @ Xd.transpose(-1, -2) / X.shape[-1]


def _full_runner(block: Block, X0: torch.Tensor, B: int, depth: int, record: list[int],
                 gen: RandomSource, bar, level: float | None, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """B networks through `depth` sub-layers of block.finite: (k, B, m, m) at `record`
    and each net's exit layer (inf: none); exited nets keep their hidden state."""
    X = X0.expand(B, *X0.shape).clone()
    stopped = _ExitClock(B, level, X.device, k)
    saved = []
    for layer in range(depth + 1):
        if layer in record or level is not None:
            V = gram_matrix(X)
            stopped.check(V, layer)
        if layer in record:
            saved.append(V)
        if layer < depth:
            X = stopped.hold(X, block.finite(X, gen, check=False))
            bar.update(B)
    return torch.stack(saved), stopped.layer


def _gram_runner(block: Block, X0: torch.Tensor, B: int, depth: int, record: list[int],
                 gen: torch.Generator, bar, level: float | None, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """B networks of the exact-in-law V chain: (k, B, m, m) at `record`, exit layers."""
    n = X0.shape[-1]
    V = (X0 @ X0.T / n).expand(B, -1, -1).clone()
    stopped = _ExitClock(B, level, V.device, k)
    saved = []
    for layer in range(depth + 1):
        stopped.check(V, layer)
        if layer in record:
            saved.append(V.to(torch.float64))
        if layer < depth:
            V = stopped.hold(V, gram_step(block, V, n, gen))
            bar.update(B)
    return torch.stack(saved), stopped.layer


class _ExitClock:
    """First layer with tr V[:k, :k] >= level per net (inf: not yet); freezes the exited
    nets."""

    def __init__(self, B: int, level: float | None, device: torch.device, k: int) -> None:
        self.level, self.k = level, k
        self.layer = torch.full((B,), math.inf, dtype=torch.float64, device=device)

    def check(self, V: torch.Tensor, layer: int) -> None:
        if self.level is None:
            return
        trace = monitored_trace(V, self.k).to(torch.float64)
        new = torch.isinf(self.layer) & (trace >= self.level)
        self.layer[new] = float(layer)

    def hold(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """`new`, except for exited nets, which keep `old` (the stopped chain)."""
        if self.level is None:
            return new
        out = torch.isfinite(self.layer).view(-1, *([1] * (new.ndim - 1)))
        return torch.where(out, old, new)


# ----------------------------------------------------------------------------
# The exact-in-law V chain ("gram" sampler)


def gram_step(block: Block, V: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """One sub-layer of the V chain at width n: V (B, m, m) -> V' (B, m, m), exact in law.

    Normalised blocks (`shapedsde.normalised`): post-norm is the inner block's step
    followed by N(V) = D^-1/2 V D^-1/2 (D = diag V); with LayerNorm the state's tokens
    have zero feature mean (X e = 0, e = 1 / sqrt(n): the previous layer's LayerNorm, or
    the mean-free X0 `simulate` starts such blocks from), so the unit vector e is one
    more direction orthogonal to X's rows: writing G = W-columns in the basis (X's rows,
    e, the rest), the mean removed is mu = gam A L h / sqrt(n) with h = G e ~ N(0, I_m)
    independent of the rest, and V - mu mu^T is the step with the h h^T part of the
    Wishart(n - m) remainder dropped, i.e. a Wishart(n - m - 1) remainder. Pre-norm (RMS)
    feeds the branch with L_n = D^-1/2 L (the same orthonormal rows) and keeps lam^2 V.
    """
    if isinstance(block, Normalised):
        if block.at == "post":
            Vn = _residual_gram_step(block.inner, V, n, generator,
                                     mean_free=block.norm == "layer")
            return _normalised(Vn)
        return _residual_gram_step(block.inner, V, n, generator, pre_norm=True)
    return _residual_gram_step(block, V, n, generator)


def _residual_gram_step(block: Block, V: torch.Tensor, n: int, generator: torch.Generator,
                        *, mean_free: bool = False, pre_norm: bool = False) -> torch.Tensor:
    B, m, _ = V.shape
    L = psd_factor(V)
    Lb = L * torch.rsqrt(torch.diagonal(V, 0, -2, -1))[..., :, None] if pre_norm else L
    A = gram_mixing(block, Lb, n, generator)
    AL = Lb if A is None else A @ Lb
    H = standard_normal(generator, V, B, m, m)
    cross = AL @ H @ L.transpose(-1, -2)
    wish = H @ H.transpose(-1, -2) + wishart_identity(B, m, n - m - int(mean_free),
                                                      generator, V)
    Vn = (block.lam**2 * V + block.lam * block.gamma * (cross + cross.transpose(-1, -2))
          / math.sqrt(n) + block.gamma**2 * AL @ wish @ AL.transpose(-1, -2) / n)
    return 0.5 * (Vn + Vn.transpose(-1, -2))  # keep exact symmetry over many layers


def _normalised(V: torch.Tensor) -> torch.Tensor:
    r = torch.rsqrt(torch.diagonal(V, 0, -2, -1))
    return V * r[..., :, None] * r[..., None, :]


def layer_normalised(block: Block) -> bool:
    """Whether the block ends in a LayerNorm (post): its states have zero feature mean."""
    return isinstance(block, Normalised) and block.norm == "layer" and block.at == "post"


def supports_gram(block: Block) -> bool:
    """Whether `method="gram"` is available for this block: it defines the exact-chain
    face `gram_mixing`, has one head, and no subclass overrides its finite face below
    the class that defines the chain (which would then sample something else).

    Multi-head attention has no chain: head h mixes only the value columns of block h,
    so the next V depends on the per-block Gram matrices of X, not on V alone. Causal
    attention has one: the mask acts on the logits only, whose law given X depends on V
    alone (tests/test_finite.py checks the chain against block.finite, with the
    non-causal chain as a control that the test rejects).
    A normalised block has one where its inner block has, except pre-LayerNorm (the
    stream's feature mean is not a function of V)."""
    own = getattr(block, "exact_chain", None)  # a wrapper (a tangent) says for itself
    if callable(own):
        return bool(own())
    if isinstance(block, Normalised):
        return supports_gram(block.inner) and (block.at == "post" or block.norm == "rms")
    return has_gram_face(block) and getattr(block, "heads", 1) == 1


def gram_mixing(block: Block, L: torch.Tensor, n: int,
                generator: torch.Generator) -> torch.Tensor | None:
    """The token-mixing matrix A (B, m, m) given V = L L^T, or None (A = I)."""
    if not supports_gram(block):
        raise ValueError(f"block {block.name!r} ({type(block).__name__}, "
                         f"{block.kernel_params()}) has no gram sampler; use method='full'")
    if isinstance(block, Normalised):
        return gram_mixing(block.inner, L, n, generator)
    return block.gram_mixing(L, n, generator)


def wishart_identity(B: int, m: int, df: int, generator: torch.Generator,
                     like: torch.Tensor) -> torch.Tensor:
    """S ~ Wishart_m(df, I), shape (B, m, m): the law of G G^T, G (m, df) iid N(0, 1)."""
    if df <= 0:
        return torch.zeros(B, m, m, dtype=like.dtype, device=like.device)
    if df < DIRECT_DF:
        G = standard_normal(generator, like, B, m, df)
        return G @ G.transpose(-1, -2)
    Tl = bartlett_factor(B, m, df, generator, like)
    return Tl @ Tl.transpose(-1, -2)


# ----------------------------------------------------------------------------
# Helpers


def _as_matrix(V0, name: str) -> torch.Tensor:
    """Validate V0 as one (m, m) covariance and return it as a float64 CPU tensor."""
    V0 = val.check_covariance(V0, name=name)
    if tuple(V0.shape) != (V0.shape[-1],) * 2:
        raise ValueError(f"{name} must be a single (m, m) matrix; got shape {tuple(V0.shape)}")
    if val.is_torch(V0):
        return V0.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(V0, dtype=np.float64))


def _check_method(block: Block, method: str) -> str:
    if not isinstance(block, Block) and not isinstance(getattr(block, "block", None), Block):
        raise ValueError(f"block must be a shapedsde Block (or a tangent of one); got "
                         f"{type(block).__name__}")
    if method == "auto":
        return "gram" if supports_gram(block) else "full"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if method == "reduced" and not getattr(block, "reduced_sampler", True):
        raise ValueError(f"block {getattr(block, 'label', block.name)!r} has no reduced "
                         "sampler (it draws X W in law from X X^T alone, not jointly with the "
                         "tangent T W); use method='full'"
                         + (" or 'gram'" if supports_gram(block) else ""))
    if method == "gram" and not supports_gram(block):
        raise ValueError(f"block {getattr(block, 'label', block.name)!r} has no gram sampler; "
                         "use method='full' or 'reduced'")
    return method


def _record_depths(depth: int, every: int | None) -> list[int]:
    if every is None:
        return [depth]
    depths = list(range(0, depth + 1, every))
    if depths[-1] != depth:
        depths.append(depth)
    return depths


def net_bytes(method: str, m: int, n: int, nk: int | None, heads: int,
              dtype: torch.dtype) -> int:
    """Bytes one network holds per sub-layer with the full or reduced sampler."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if method == "reduced":  # (m, n) states and (m, c) draws only
        return itemsize * (8 + 4 * heads) * m * max(n, nk or n)
    # per network and sub-layer: W^V (n, n), W^Q and W^K (heads, n, nk), a few (m, n) states
    return itemsize * (n * n + 2 * heads * n * (nk or n) + 8 * m * n)


def _default_batch(method: str, m: int, n: int, nk: int | None, heads: int,
                   device: torch.device, dtype: torch.dtype) -> int:
    if method == "gram":
        return GRAM_BATCH_NETS
    budget = FULL_BATCH_BYTES.get(device.type, FULL_BATCH_BYTES["cpu"])
    return max(1, budget // net_bytes(method, m, n, nk, heads, dtype))
