"""`tangent(block)`: a block acting on its tokens and their tangent (forward-mode JVP).

The state is the joint Gram Q = [[V, C], [C^T, U]] of Z = [X; T] (2m rows), T the tangent
of X along an input direction: V = X X^T / n, C = X T^T / n, U = T T^T / n. With T_0
independent of X_0 (Q_0 = [[V_0, 0], [0, I]]), tr U_t / tr U_0 is the squared norm of the
input-output Jacobian along a random direction, whose law is that of a gradient's squared
norm backpropagated from the output (J J^T and J^T J share their spectrum).

Its faces, each from the block's own:
- symbolic: b(Q) and Sigma(Q) by blocks, derived by differentiating the block's update
  rule (`shapedsde.symbolic.tangent`), printed as kernels (`shapedsde.kernels`);
- finite: the block's finite face with its JVP (`torch.func.jvp`), one weight draw;
- exact chain (where the block has one): the block's chain on Q with the mixing matrix
  [[A, 0], [dA, A]], dA the Softmax's derivative along the joint logits.

The solver stops on the forward part: `monitored_tokens` tells `shapedsde.solve` and
`shapedsde.finite.simulate` that tr V, not tr Q, is the exit trace.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import _validation as val
from .blocks import (
    AttentionBlock,
    Block,
    LinearBlock,
    _check_hidden,
    gram_logits,
    has_gram_face,
    shaped_mixing,
)
from .kernels import tangent_kernel
from .serial import Serial
from .symbolic.tangent import BLOCKS
from .weights import RandomSource

#: Q's (row block, column block) -> (block of the derivation, transposed).
_PLACE = {(0, 0): ("V", False), (0, 1): ("C", False), (1, 0): ("C", True),
          (1, 1): ("U", False)}


@dataclass(frozen=True)
class Tangent:
    """The tangent of `block`: the SDE of the joint Gram Q (2m x 2m) of tokens and JVP."""

    block: Block
    #: A control, not the Jacobian: the mixing matrix held fixed along the tangent (dA = 0).
    frozen_mixing: bool = False
    #: No reduced finite sampler (`shapedsde.finite`): it draws X W in law from X X^T alone,
    #: while the JVP needs T W with the same W.
    reduced_sampler = False

    def __post_init__(self) -> None:
        if not isinstance(self.block, Block):
            raise ValueError(f"tangent() takes a shapedsde block; got {type(self.block).__name__}")
        if isinstance(self.block, Tangent):
            raise ValueError("tangent(tangent(...)) is not supported: take one tangent")

    @property
    def name(self) -> str:
        inner = getattr(self.block, "label", self.block.name)
        return f"tangent({inner}{', dA = 0' if self.frozen_mixing else ''})"

    @property
    def lam(self) -> float:
        return self.block.lam

    @property
    def gamma(self) -> float:
        return self.block.gamma

    @property
    def heads(self) -> int:
        return getattr(self.block, "heads", 1)

    @property
    def nk(self) -> int | None:
        return getattr(self.block, "nk", None)

    def kernel_params(self) -> dict[str, float]:
        return self.block.kernel_params()

    @property
    def noise_groups(self) -> None:
        """No structured noise: the solver factorises the full Sigma(Q) (2m small)."""
        return None

    def check_state(self, Q0: Any, name: str = "Q0") -> None:
        """An initial state (..., 2m, 2m) with 2m >= 4 rows (`shapedsde.scheme.check_state`:
        the solvers' steps evaluate the faces unchecked)."""
        _check_rows(Q0.shape[-1], f"{name} of {self.name}")

    def fixed_trace(self, face: str) -> bool:
        """Whether tr V (the tokens' block) is the same at every depth: the block's."""
        f = getattr(self.block, "fixed_trace", None)
        return bool(callable(f) and f(face))

    def monitored_tokens(self, size: int) -> int:
        """How many leading rows of a (size x size) state the exit trace reads: the tokens."""
        return size // 2

    # -- coefficients ----------------------------------------------------------------------

    def drift(self, Q: Any, *, check: bool = True) -> Any:
        """b(Q), shape (..., 2m, 2m), for the joint Gram Q (..., 2m, 2m)."""
        Q = _check_joint(Q) if check else Q
        return _assemble_drift(Q, self._parts_face("drift", Q))

    def diffusion(self, Q: Any, *, check: bool = True) -> Any:
        """Sigma(Q), shape (..., 2m, 2m, 2m, 2m): lim n Cov[dQ^{ij}, dQ^{kl}]."""
        Q = _check_joint(Q) if check else Q
        return _assemble_diffusion(Q, self._parts_face("diffusion", Q))

    def _parts_face(self, face: str, Q: Any) -> Any:
        """The blocks' face, summed over serial parts (independent weights add)."""
        V, C, U = _split(Q)
        parts = self.block.parts if isinstance(self.block, Serial) else (self.block,)
        outs = [_block_face(p, face, V, C, U, self.frozen_mixing) for p in parts]
        if face == "drift":
            return tuple(functools.reduce(operator.add, xs) for xs in zip(*outs, strict=True))
        return {k: functools.reduce(operator.add, (o[k] for o in outs)) for k in outs[0]}

    # -- finite faces ----------------------------------------------------------------------

    def check_width(self, n: int) -> int:
        return self.block.check_width(n)

    def finite(self, Z: torch.Tensor, generator: RandomSource, *, check: bool = True
               ) -> torch.Tensor:
        """One sub-layer on Z = [X; T] (B, 2m, n): [block(X); JVP of block at X along T],
        with the same weights (one draw)."""
        _check_hidden(Z, values=check)
        if Z.shape[1] % 2:
            raise ValueError(f"the tangent's hidden state stacks X and T: it needs an even "
                             f"number of rows; got {Z.shape[1]}")
        if self.frozen_mixing:
            raise ValueError("the dA = 0 control has an exact chain (method='gram') only")
        m = Z.shape[1] // 2
        X, T = Z[:, :m], Z[:, m:]
        out, jvp = torch.func.jvp(lambda x: self.block.finite(x, generator, check=False),
                                  (X,), (T,))
        return torch.cat([out, jvp], dim=1)

    def exact_chain(self) -> bool:
        """Whether the exact Q chain exists: the block's own chain (one head, its finite face
        not overridden below the class that defines the chain) is linear or attention's."""
        blk = self.block
        return (isinstance(blk, LinearBlock | AttentionBlock) and self.heads == 1
                and has_gram_face(blk))

    def gram_mixing(self, L: torch.Tensor, n: int, generator: torch.Generator
                    ) -> torch.Tensor | None:
        """[[A, 0], [dA, A]] (B, 2m, 2m) given Q = L L^T, exact in law (attention, one head):
        the joint logits of X and T drawn as the block's, dA the Softmax's JVP along the
        logits' tangent Y_tx + Y_xt."""
        blk = self.block
        if not self.exact_chain():
            raise NotImplementedError(f"the tangent of {blk.name!r} has no exact chain")
        if not isinstance(blk, AttentionBlock):  # A = I (linear): the chain on 2m rows
            return blk.gram_mixing(L, n, generator)
        return self.mixing_from_logits(gram_logits(blk, L, n, generator))

    def mixing_from_logits(self, Y: torch.Tensor) -> torch.Tensor:
        """[[A, 0], [dA, A]] (..., 2m, 2m) from the joint logits Y (..., 2m, 2m) of Z = [X; T]
        (attention): A = Softmax mixing of the tokens' logits, dA its JVP along
        Y_tx + Y_xt (zero for the frozen_mixing control)."""
        blk = self.block
        m = Y.shape[-1] // 2
        z, dz = Y[..., :m, :m], Y[..., m:, :m] + Y[..., :m, m:]
        A, dA = torch.func.jvp(lambda y: shaped_mixing(y, causal=blk.causal), (z,), (dz,))
        if self.frozen_mixing:
            dA = torch.zeros_like(dA)
        zero = torch.zeros_like(A)
        return torch.cat([torch.cat([A, zero], -1), torch.cat([dA, A], -1)], -2)


def tangent(block: Block, *, frozen_mixing: bool = False) -> Tangent:
    """The tangent of `block` (a built-in block, `serial(...)` or a user's): its
    coefficients act on the joint Gram Q = [[V, C], [C^T, U]] (module docstring).
    frozen_mixing=True: the control with dA = 0 (not the Jacobian)."""
    return Tangent(block, frozen_mixing)


def initial_joint(V0: Any, scale: float = 1.0) -> np.ndarray:
    """Q_0 = [[V_0, 0], [0, scale I_m]]: a tangent direction independent of the input."""
    scale = val._finite_scalar("scale", scale)
    if not scale > 0:
        raise ValueError(f"scale (U_0 = scale I) must be > 0: the tangent directions need a "
                         f"positive-definite Gram; got {scale:g}")
    V0 = val.check_covariance(V0, name="V0")
    V0 = np.asarray(V0.detach().cpu() if val.is_torch(V0) else V0, dtype=np.float64)
    if V0.ndim != 2:
        raise ValueError(f"V0 must be one (m, m) matrix; got shape {V0.shape}")
    m = V0.shape[0]
    Q = np.zeros((2 * m, 2 * m))
    Q[:m, :m], Q[m:, m:] = V0, scale * np.eye(m)
    return Q


def _block_face(blk: Block, face: str, V: Any, C: Any, U: Any, frozen: bool) -> Any:
    """One block's tangent kernel `face` at (V, C, U), the block's parameters passed."""
    try:
        d = blk.derivation()
    except ValueError as err:
        raise ValueError(f"the tangent of {getattr(blk, 'label', blk.name)!r} has no SDE here "
                         f"(it is derived from a block's own update rule): {err}; its finite "
                         "face has one (shapedsde.finite.simulate)") from None
    if not d.has_matrix_form:
        raise ValueError(f"block {blk.name!r}: its tangent is derived from the matrix form of "
                         "its update rule, which it does not declare")
    own = blk._declared_with_derivations()
    if d.rows:
        fn = tangent_kernel(d, "rows", V, own, frozen)
        return _read_rows(fn, face, V, C, U, _arguments(fn, blk, 11))
    fn = tangent_kernel(d, face, V, own, frozen)
    return fn(V, C, U, **_arguments(fn, blk, 3))


def _arguments(fn: Any, blk: Block, skip: int) -> dict[str, Any]:
    """The block's parameters a generated kernel takes (after its `skip` array arguments)."""
    params = blk.kernel_params()
    return {k: params[k] for k in fn.__code__.co_varnames[skip:fn.__code__.co_argcount]}


#: Paths per chunk where the rows are read: a chunk holds about m^6 numbers a path.
_ROWS_CHUNK = 2**20


def _read_rows(fn: Any, face: str, V: Any, C: Any, U: Any, params: dict[str, Any]) -> Any:
    """A face of a tangent read per entry (causal attention): every factor is evaluated with
    P_x, l_x broadcast on its own label axis x in (a, b, c, d), then read at each entry."""
    m = V.shape[-1]
    batch = tuple(V.shape[:-2])
    flat = [X.reshape((-1, m, m)) for X in (V, C, U)]
    size = max(1, _ROWS_CHUNK // m**6)
    outs = []
    for s in range(0, flat[0].shape[0], size):
        parts = [X[s:s + size] for X in flat]
        outs.append(_read_rows_chunk(fn, face, *parts, params))
    cat = _concatenate(V)
    if face == "drift":
        return tuple(cat([o[i] for o in outs]).reshape(batch + (m, m)) for i in range(3))
    return {k: cat([o[k] for o in outs]).reshape(batch + (m,) * 4) for k in outs[0]}


def _read_rows_chunk(fn: Any, face: str, V: Any, C: Any, U: Any, params: dict[str, Any]
                     ) -> Any:
    m, B = V.shape[-1], V.shape[0]
    P, lengths = _prefix_projectors(m, V)
    axes = "abcd"

    def on_axis(X: Any, i: int) -> Any:  # X (m, ...) placed on label axis i of four
        shape = [1, 1, 1, 1] + list(X.shape[1:])
        shape[i] = m
        return X.reshape(shape)

    rows = [on_axis(P, i) for i in range(4)] + [on_axis(lengths, i) for i in range(4)]
    drift, sigma = fn(*(X[:, None, None, None, None] for X in (V, C, U)), *rows, **params)
    ar = torch.arange(m, device=V.device) if val.is_torch(V) else np.arange(m)
    zero = _full(np.zeros((B,) + (m,) * (2 if face == "drift" else 4)), V)
    if face == "drift":
        at = {"a": ar[:, None], "b": ar[None, :], "c": 0 * ar[:1, None], "d": 0 * ar[:1, None]}
        return tuple(zero + _read(_full(b, V), at, "ab") for b in drift)
    at = {x: ar.reshape([-1 if i == j else 1 for j in range(4)]) for i, x in enumerate(axes)}
    out = {}
    for key, terms in sigma.items():
        total = zero
        for coef, X, xl, Y, yl in terms:
            total = total + (_read(_full(coef, V), at, None) * _read(_full(X, V), at, xl)
                             * _read(_full(Y, V), at, yl))
        out[key] = total
    return out


def _full(X: Any, like: Any) -> Any:
    """X as an array of the state's library (a generated constant may be a float)."""
    if val.is_torch(like):
        return torch.as_tensor(X, dtype=like.dtype, device=like.device)
    return np.asarray(X, dtype=like.dtype)


def _read(X: Any, at: dict[str, Any], labels: str | None) -> Any:
    """X (B, la, lb, lc, ld, r, c) (label axes of size 1 or m; missing leading axes
    broadcast) read at each entry: label axis x at token at[x], and the element
    (labels[0], labels[1]) of the last two axes (None: a scalar, element (0, 0))."""
    if X.ndim < 7:
        X = X.reshape((1,) * (7 - X.ndim) + tuple(X.shape))
    sel = [at[x] if X.shape[1 + i] > 1 else 0 * at[x] for i, x in enumerate("abcd")]
    tail = [0 * at["a"]] * 2 if labels is None else [at[labels[0]], at[labels[1]]]
    return X[(slice(None), *sel, *tail)]


def _prefix_projectors(m: int, like: Any) -> tuple[Any, Any]:
    """P_x (m, m, m): the centring projector on tokens 0..x (zero elsewhere), and l_x = x + 1
    (m, 1, 1), in the state's library."""
    P = np.zeros((m, m, m))
    for x in range(m):
        P[x, :x + 1, :x + 1] = np.eye(x + 1) - 1.0 / (x + 1)
    lengths = np.arange(1, m + 1, dtype=np.float64).reshape(m, 1, 1)
    return _full(P, like), _full(lengths, like)


def _split(Q: Any) -> tuple[Any, Any, Any]:
    m = Q.shape[-1] // 2
    return Q[..., :m, :m], Q[..., :m, m:], Q[..., m:, m:]


def _assemble_drift(Q: Any, blocks: tuple[Any, Any, Any]) -> Any:
    """[[b^V, b^C], [b^C^T, b^U]] from (b^V, b^C, b^U)."""
    bV, bC, bU = blocks
    cat = _concatenate(Q)
    return cat([cat([bV, bC], -1), cat([_transpose(bC), bU], -1)], -2)


def _assemble_diffusion(Q: Any, blocks: dict[tuple[str, str], Any]) -> Any:
    """Sigma^{(p a)(q b),(r c)(s d)} from the blocks Cov[dX, dY] (X <= Y in V, C, U)."""
    torch_ = val.is_torch(Q)
    m = Q.shape[-1] // 2
    batch = tuple(Q.shape[:-2])
    shape = batch + (2, m, 2, m, 2, m, 2, m)
    out = (torch.zeros(shape, dtype=Q.dtype, device=Q.device) if torch_
           else np.zeros(shape, dtype=Q.dtype))
    order = {X: i for i, X in enumerate(BLOCKS)}
    ein = torch.einsum if torch_ else np.einsum
    for (p, q), (X, tx) in _PLACE.items():
        for (r, s), (Y, ty) in _PLACE.items():
            if order[X] <= order[Y]:
                S = blocks[X, Y]
            else:
                S = ein("...abcd->...cdab", blocks[Y, X])
            if tx:
                S = ein("...abcd->...bacd", S)
            if ty:
                S = ein("...abcd->...abdc", S)
            out[..., p, :, q, :, r, :, s, :] = S
    return out.reshape(batch + (2 * m,) * 4)


def _concatenate(like: Any) -> Any:
    """torch.cat or np.concatenate, for the library of `like`."""
    return torch.cat if val.is_torch(like) else np.concatenate


def _transpose(X: Any) -> Any:
    return X.transpose(-1, -2) if val.is_torch(X) else np.swapaxes(X, -1, -2)


def _check_joint(Q: Any) -> Any:
    """A joint Gram: symmetric PSD with an even number 2m >= 4 of rows."""
    Q = val.check_covariance(Q, name="Q")
    _check_rows(Q.shape[-1], "Q")
    return Q


def _check_rows(size: int, what: str) -> None:
    if size % 2 or size < 4:
        raise ValueError(f"{what} is the joint Gram [[V, C], [C^T, U]] of m >= 2 tokens and "
                         f"their tangents: it needs an even number 2m >= 4 of rows; got {size} "
                         "(build it from V0 with shapedsde.tangent.initial_joint(V0))")
