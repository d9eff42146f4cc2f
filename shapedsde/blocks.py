"""Blocks: one residual sub-layer, declared once with all its faces.

A block is one frozen dataclass whose definition holds
1. its parameters, as fields declared with `shapedsde.parameters.parameter` (checks,
   kernel arguments, CLI options and symbols all come from there);
2. `derivations`: its symbolic face (`shapedsde.symbolic.derivation.Derivation`), the
   update rule per entry and in matrix form, from which b(V) and Sigma(V) are derived
   and the kernels generated;
3. `finite(X, generator)`: the Torch forward of one sub-layer at finite width,
   batched over independent networks (X has shape (B, m, n));
4. `gram_mixing(L, n, generator)` where it has one: its exact-in-law V chain;
5. `drift(V)`, `diffusion(V)`, ...: the numeric kernels generated from the derivation
   (`shapedsde/kernels/_generated_*.py`, or built in memory for a block defined
   outside the package), for NumPy or Torch.

Defining the class registers it (`shapedsde.registry` finds block classes by their
`name`); docs/adding-a-block.md walks through adding one.

Every sub-layer has the residual form X' = lam X + gam Branch(X) with
lam^2 + gam^2 = 1; `gamma` is gam.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch

from . import _validation as val
from .causal import causal_diffusion, causal_drift
from .coefficients import from_parameters
from .kernels import kernel, noise_group_count
from .parameters import (
    ACTIVATION,
    C_MINUS,
    C_PLUS,
    CAUSAL,
    GAMMA,
    HEADS,
    NK,
    SCALE,
    TAU0,
    Parameter,
    declared,
    parameter,
)
from .smooth_activation import SmoothActivation
from .smooth_activation import resolve as resolve_activation
from .symbolic import layers
from .symbolic import matrixform as mx
from .symbolic.derivation import Derivation
from .symbolic.entrywise import derive
from .weights import RandomSource, gaussian_product, weight_source


@dataclass(frozen=True)
class Block:
    """Base class: a residual sub-layer X' = lam X + gamma Branch(X)."""

    gamma: float = parameter(GAMMA)
    name: ClassVar[str] = ""
    #: The symbolic faces; `kernel_name` picks the one an instance uses.
    derivations: ClassVar[tuple[Derivation, ...]] = ()

    def __post_init__(self) -> None:
        """Check and normalise every declared parameter (`Parameter.check`)."""
        for p in declared(self):
            if p.check is not None:
                object.__setattr__(self, p.name, p.check(getattr(self, p.name)))

    @property
    def lam(self) -> float:
        return math.sqrt(1.0 - self.gamma**2)

    @property
    def kernel_name(self) -> str:
        """The derivation (and generated kernels) this block uses: its first one."""
        return self.derivations[0].name if self.derivations else self.name

    def kernel_params(self) -> dict[str, float]:
        """The scalar parameters the generated kernels take, by name: the declared
        parameters that have a symbol in the derived formulas."""
        return {p.name: getattr(self, p.name) for p in declared(self) if p.symbol is not None}

    def drift(self, V: Any, *, check: bool = True) -> Any:
        """b(V), shape (..., m, m); V is a NumPy array or Torch tensor (..., m, m).

        `check=False` skips input validation (for solvers on their own iterates).
        """
        if check:
            V = val.check_covariance(V)
        return self._kernel("drift", V)(V, **self.kernel_params())

    def diffusion(self, V: Any, *, check: bool = True) -> Any:
        """Sigma(V), shape (..., m, m, m, m): lim n Cov[dV^{ab}, dV^{cd}]."""
        if check:
            V = val.check_covariance(V)
        return self._kernel("diffusion", V)(V, **self.kernel_params())

    def ito_contraction(self, V: Any, *, check: bool = True) -> Any:
        """K^{ad}(V) = sum_bc Sigma^{ab,cd}(V) (V^{-1})^{bc}, shape (..., m, m), V positive
        definite: the term the positive-definite solver's step compensates (docs/solver.md).
        Generated from the matrix form (`shapedsde.symbolic.contraction`)."""
        if check:
            V = val.check_covariance(V)
        return self._kernel("ito", V)(V, **self.kernel_params())

    def drift_and_ito(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b(V), K(V)), in one generated kernel that computes their common products once
        (a solver hook: no checks). Where a subclass overrides `drift` or
        `ito_contraction` below the class that defines this method, b and K come from
        those faces instead (baselines; a user's subclass)."""
        cls = type(self)
        owner = defining_class(cls, "drift_and_ito")
        if not all(issubclass(owner, defining_class(cls, f)) for f in ("drift", "ito_contraction")):
            return self.drift(V, check=False), self.ito_contraction(V, check=False)
        return self._kernel("drift_ito", V)(V, **self.kernel_params())

    def trace_variance(self, V: Any, *, check: bool = True) -> Any:
        """s^2(V) = sum_ac Sigma^{aa,cc}(V) = Var[d tr V] / dt, shape (...,)."""
        if check:
            V = val.check_covariance(V)
        return self._kernel("trace_variance", V)(V, **self.kernel_params())

    @property
    def noise_groups(self) -> int | None:
        """k for `structured_noise` (N has shape (..., k, m, m)), or None without one."""
        return noise_group_count(self.derivation(), self._declared_with_derivations())

    def structured_noise(self, V: Any, N: Any, *, check: bool = True, factor: Any = None
                         ) -> Any:
        """A draw with covariance Sigma(V), from N (..., k, m, m) iid N(0, 1), in O(m^3).

        The factorisation is derived from the Kronecker patterns of Sigma
        (`shapedsde.symbolic.noise`); its covariance is proved equal to Sigma in tests.
        `factor`: any R with R R^T = V the caller already has (e.g. a Cholesky factor).
        """
        if check:
            _check_same_kind(V, N)
            V = val.check_covariance(V)
            k = self.noise_groups
            if k is None:
                raise ValueError(f"block {self.name!r} has no structured noise")
            if tuple(N.shape[-3:]) != (k, V.shape[-1], V.shape[-1]):
                raise ValueError(f"N must have shape (..., {k}, m, m); got {tuple(N.shape)}")
        return self._kernel("noise", V)(V, N, **self.kernel_params(), R=factor)

    def factor_noise(self, V: torch.Tensor, N: torch.Tensor, L: torch.Tensor,
                     Linv: torch.Tensor) -> torch.Tensor:
        """L^{-1} dN L^{-T}, where dN = `structured_noise(V, N, factor=L)`, for the
        Cholesky factor L of V and Linv = L^{-1}: the noise of the solver's factor step.
        L^{-1} is taken inside each derived root (L^{-1} V = L^T), so the common roots
        need no product with it (`codegen._factor_root`); no input checks (a solver hook).
        """
        return self._kernel("factor_noise", V)(V, N, L, Linv, **self.kernel_params())

    def branch_mixing(self, X: torch.Tensor, generator: RandomSource) -> torch.Tensor | None:
        """The token-mixing matrix A of the branch: (B, m, m), (B, H, m, m) with one
        matrix per head (head h mixes the value columns of block h), or None for A = I."""
        return None

    def gram_mixing(self, L: torch.Tensor, n: int, generator: torch.Generator
                    ) -> torch.Tensor | None:
        """The exact-chain face (`shapedsde.finite`, method="gram"): A (B, m, m) given
        V = L L^T, exact in law, or None for A = I. For blocks whose finite face is
        X' = lam X + gam A X W^V / sqrt(n) with A depending on X through V only; others
        have none (`shapedsde.finite.supports_gram`)."""
        raise NotImplementedError(f"block {self.name!r} has no exact V chain")

    def check_width(self, n: int) -> int:
        """The width n as an int if the finite face can run at it, else ValueError."""
        return val.check_positive_int("width", n)

    def finite(self, X: torch.Tensor, generator: RandomSource, *, check: bool = True
               ) -> torch.Tensor:
        """One sub-layer at width n = X.shape[-1] on a batch X of shape (B, m, n).

        X must be a real floating tensor; `check=False` skips the test that its entries
        are finite (for runners that track exploding networks themselves).
        """
        _check_hidden(X, values=check)
        self.check_width(X.shape[-1])
        B, m, n = X.shape
        A = self.branch_mixing(X, generator)
        XWV = weight_source(generator).times(X, n)
        return self.lam * X + self.gamma * apply_mixing(A, XWV) / math.sqrt(n)

    def symbolic(self, m: int):
        """The update rule as a symbolic `LayerModel` for m tokens."""
        d = self.derivation()
        if d.entries is None:
            raise ValueError(f"{d.name!r} declares its update rule in matrix form only; its "
                             "entries for m tokens are coefficients(m)")
        return d.entries(_check_tokens(m))

    def coefficients(self, m: int | None = None):
        """b(V) and Sigma(V) as SymPy objects (`shapedsde.coefficients`).

        m None: the matrix form, valid for every number of tokens; m = 2, 3, ...: the
        explicit entries for m tokens (derived per entry where no matrix form is).
        Parameters are symbols; `.params` holds this block's values and
        `.with_values()` substitutes them.
        """
        d = self.derivation()
        if not d.has_matrix_form:
            if m is None:
                raise ValueError(f"{d.name!r} has no matrix form derived for every m; pass m "
                                 "(docs/derivation.md has its closed form)")
            c = derive(self.symbolic(m))
            return from_parameters(c.drift, c.diffusion, m, self.kernel_params(), d.name,
                                   declared(self))
        mf = mx.matrix_form(d)
        c = from_parameters(mf.drift, mf.diffusion, None, self.kernel_params(), self.name,
                            declared(self))
        return c if m is None else c.entries(_check_tokens(m))

    def latex(self, m: int | None = None) -> str:
        """b and Sigma as a LaTeX fragment (matrix form, or entries for m tokens)."""
        return self.coefficients(m).latex()

    def _kernel(self, face: str, V: Any) -> Callable[..., Any]:
        """The generated kernel `face` of this block's derivation for V's array library."""
        return kernel(self.derivation(), face, V, self._declared_with_derivations())

    def _declared_with_derivations(self) -> tuple[Parameter, ...]:
        """The parameters of the class that declares this block's derivations: those
        its kernels can take (a subclass's additions are not in the derivation)."""
        return declared(next(c for c in type(self).__mro__ if "derivations" in c.__dict__))

    def derivation(self) -> Derivation:
        """The symbolic face this block uses (`kernel_name`); finite-only blocks have none."""
        for d in self.derivations:
            if d.name == self.kernel_name:
                return d
        raise ValueError(f"block {self.name!r} ({type(self).__name__}) has a finite face "
                         "only: no symbolic derivation")


@dataclass(frozen=True)
class LinearBlock(Block):
    """Linear residual sub-layer X' = lam X + gamma X W / sqrt(n)."""

    name: ClassVar[str] = "linear"
    derivations: ClassVar[tuple[Derivation, ...]] = (
        Derivation("linear", layers.linear_layer, mx.linear_update),)

    def gram_mixing(self, L: torch.Tensor, n: int, generator: torch.Generator) -> None:
        return None  # A = I: the chain is V' from V and two Wishart-type draws


@dataclass(frozen=True)
class AttentionBlock(Block):
    """Shaped attention: Branch(X) = A X W^V / sqrt(n), A = I + Softmax(Y/tau) - 11^T/m.

    Y = (X W^Q / sqrt(n)) (X W^K / sqrt(n))^T with W^Q, W^K in R^{n x nk}, and
    tau = tau0 sqrt(n nk). `nk` (per head) is used only by `finite`; None means
    nk = n. With `heads` = n_H > 1, head h has its own W^Q_h, W^K_h and mixes the
    value columns of block h (width n / n_H, so n must be a multiple of n_H).
    """

    tau0: float = parameter(TAU0, 1.0)
    nk: int | None = parameter(NK, None)
    heads: int = parameter(HEADS, 1)
    causal: bool = parameter(CAUSAL, False)
    name: ClassVar[str] = "attention"
    # Causal attention's matrix form is read per entry (row projectors); its kernels
    # are the closed form in causal.py, proved equal to it.
    derivations: ClassVar[tuple[Derivation, ...]] = (
        Derivation("attention", layers.attention_layer, mx.attention_update,
                   heads=HEADS.symbol),
        Derivation("causal", layers.causal_layer, mx.causal_update, heads=HEADS.symbol,
                   rows=True, entrywise_latex=2))

    @property
    def kernel_name(self) -> str:
        return "causal" if self.causal else "attention"

    def check_width(self, n: int) -> int:
        n = super().check_width(n)
        if n % self.heads:
            raise ValueError(f"width n = {n} must be a multiple of heads = {self.heads}")
        return n

    def drift(self, V: Any, *, check: bool = True) -> Any:
        if not self.causal:
            return super().drift(V, check=check)
        V = val.check_covariance(V) if check else V
        return causal_drift(V, self.gamma, self.tau0)

    def diffusion(self, V: Any, *, check: bool = True) -> Any:
        if not self.causal:
            return super().diffusion(V, check=check)
        V = val.check_covariance(V) if check else V
        return causal_diffusion(V, self.gamma, self.tau0, self.heads)

    def ito_contraction(self, V: Any, *, check: bool = True) -> Any:
        if not self.causal:
            return super().ito_contraction(V, check=check)
        V = val.check_covariance(V) if check else V
        return contract_ito(self.diffusion(V, check=False), V)

    def drift_and_ito(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.causal:  # no kernels printed (read per entry): its own faces
            return self.drift(V, check=False), self.ito_contraction(V, check=False)
        return super().drift_and_ito(V)

    def trace_variance(self, V: Any, *, check: bool = True) -> Any:
        if not self.causal:
            return super().trace_variance(V, check=check)
        V = val.check_covariance(V) if check else V
        return contract_trace(self.diffusion(V, check=False))

    @property
    def noise_groups(self) -> int | None:
        return None if self.causal else super().noise_groups

    def coefficients(self, m: int | None = None):
        """As `Block.coefficients`; causal attention's matrix form carries the row
        projectors P_x, l_x and is read per entry (docs/derivation.md)."""
        c = super().coefficients(m)
        return replace(c, name="causal") if self.causal else c

    def logits(self, X: torch.Tensor, generator: RandomSource) -> torch.Tensor:
        """Z = Y / tau, shape (B, m, m), or (B, H, m, m) with H = heads > 1."""
        return attention_logits(X, generator, self.tau0, self.nk, self.heads)

    def branch_mixing(self, X: torch.Tensor, generator: RandomSource) -> torch.Tensor:
        return shaped_mixing(self.logits(X, generator), causal=self.causal)

    def gram_mixing(self, L: torch.Tensor, n: int, generator: torch.Generator
                    ) -> torch.Tensor:
        """A from the logits' exact law given V = L L^T (one head; the causal mask acts
        on the logits only, so causal attention has the chain too)."""
        return shaped_mixing(gram_logits(self, L, n, generator), causal=self.causal)


@dataclass(frozen=True)
class MlpBlock(Block):
    """Shaped MLP: Branch(X) = sqrt(c/n) phi(X W^pre / sqrt(n)) W^post, W^pre, W^post in
    R^{n x n}; gamma = 1 (lam = 0) is the MLP without residual, Li-Nica-Roy's neural
    covariance SDE.

    ReLU (default): phi(x) = s_+ max(x, 0) + s_- min(x, 0), s_pm = 1 + c_pm / sqrt(n),
    c = 2 / (s_+^2 + s_-^2).
    Smooth (`activation` = F, a table name or a function of one SymPy expression with
    F(0) = 0, F'(0) = 1): phi(x) = s F(x / s), s = scale sqrt(n), c = 1 / E[phi(g)^2],
    g ~ N(0, 1) (`shapedsde.smooth_activation`); `scale` defaults to 1.
    """

    c_plus: float = parameter(C_PLUS, 0.0)
    c_minus: float = parameter(C_MINUS, -1.0)
    activation: Any = parameter(ACTIVATION, None)
    scale: float | None = parameter(SCALE, None)
    smooth: SmoothActivation | None = field(default=None, init=False, repr=False,
                                            compare=False)
    name: ClassVar[str] = "mlp"
    derivations: ClassVar[tuple[Derivation, ...]] = (
        Derivation("mlp", layers.mlp_layer, mx.mlp_update),
        Derivation("mlp_smooth", layers.smooth_mlp_layer, mx.mlp_smooth_update))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activation is None:
            if self.scale is not None:
                raise ValueError("scale shapes a smooth activation (s = scale sqrt(n)); pass "
                                 "activation= too, or drop scale for the ReLU MLP")
            return
        if (self.c_plus, self.c_minus) != (0.0, -1.0):
            raise ValueError("c_plus and c_minus shape the ReLU activation; a smooth "
                             "activation is shaped by scale (s = scale sqrt(n)): drop them")
        object.__setattr__(self, "smooth", resolve_activation(self.activation))
        object.__setattr__(self, "scale", 1.0 if self.scale is None else self.scale)

    @property
    def kernel_name(self) -> str:
        return "mlp" if self.smooth is None else "mlp_smooth"

    @property
    def activation_name(self) -> str:
        """'relu' for the shaped ReLU, else the smooth activation's name."""
        return "relu" if self.smooth is None else self.smooth.name

    def kernel_params(self) -> dict[str, float]:
        if self.smooth is not None:
            return {"gamma": self.gamma, "f2": self.smooth.f2, "f3": self.smooth.f3,
                    "scale": self.scale}
        return {"gamma": self.gamma, "c_plus": self.c_plus, "c_minus": self.c_minus}

    def slopes(self, n: int) -> tuple[float, float]:
        """(s_+, s_-) = 1 + c_pm / sqrt(n) at width n (ReLU)."""
        return 1 + self.c_plus / math.sqrt(n), 1 + self.c_minus / math.sqrt(n)

    def check_width(self, n: int) -> int:
        """Refuse widths where phi cannot be normalised (ReLU: both slopes 0, so c is 1/0)."""
        n = super().check_width(n)
        if self.smooth is not None:
            self.smooth.normaliser(n, self.scale)  # ValueError if E[phi^2] is not > 0
            return n
        sp_, sm_ = self.slopes(n)
        if sp_**2 + sm_**2 == 0.0:
            raise ValueError(f"at width n = {n} both MLP slopes 1 + c/sqrt(n) are 0 (c_plus = "
                             f"c_minus = {self.c_plus:g} = -sqrt(n)), so the activation is 0 "
                             "and cannot be normalised; change c_plus, c_minus or the width")
        return n

    def activation_input(self, X: torch.Tensor, generator: RandomSource) -> torch.Tensor:
        """G = X W^pre / sqrt(n), shape (B, m, n)."""
        n = X.shape[-1]
        return weight_source(generator).times(X, n) / math.sqrt(n)

    def activated(self, G: torch.Tensor) -> torch.Tensor:
        """sqrt(c) phi(G) at width n = G.shape[-1] (U, the input of the value step)."""
        n = self.check_width(G.shape[-1])
        if self.smooth is not None:
            c = self.smooth.normaliser(n, self.scale)
            return math.sqrt(c) * self.smooth.shaped(G, self.scale * math.sqrt(n))
        sp_, sm_ = self.slopes(n)
        c = 2.0 / (sp_**2 + sm_**2)
        return math.sqrt(c) * (sp_ * G.clamp_min(0) + sm_ * G.clamp_max(0))

    def finite(self, X: torch.Tensor, generator: RandomSource, *, check: bool = True
               ) -> torch.Tensor:
        _check_hidden(X, values=check)
        B, m, n = X.shape
        U = self.activated(self.activation_input(X, generator))
        return self.lam * X + self.gamma * weight_source(generator).times(U, n) / math.sqrt(n)


@dataclass(frozen=True)
class TransformerBlock(Block):
    """Shaped Transformer block: shaped attention sub-layer (`heads` heads), then shaped MLP
    sub-layer.

    Both use the same gamma; SDE time t counts blocks (t = blocks / n). At leading
    order the two sub-layers' drifts and diffusions add (independent weights; see
    docs/derivation.md).
    """

    tau0: float = parameter(TAU0, 1.0)
    c_plus: float = parameter(C_PLUS, 0.0)
    c_minus: float = parameter(C_MINUS, -1.0)
    nk: int | None = parameter(NK, None)
    heads: int = parameter(HEADS, 1)
    name: ClassVar[str] = "transformer"
    derivations: ClassVar[tuple[Derivation, ...]] = (
        Derivation("transformer", layers.transformer_layer, parts=("attention", "mlp")),)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.parts()  # validates the parameters

    def parts(self) -> tuple[AttentionBlock, MlpBlock]:
        return (AttentionBlock(self.gamma, tau0=self.tau0, nk=self.nk, heads=self.heads),
                MlpBlock(self.gamma, c_plus=self.c_plus, c_minus=self.c_minus))

    def check_width(self, n: int) -> int:
        attention, mlp = self.parts()
        return mlp.check_width(attention.check_width(n))

    def finite(self, X: torch.Tensor, generator: RandomSource, *, check: bool = True
               ) -> torch.Tensor:
        attention, mlp = self.parts()
        return mlp.finite(attention.finite(X, generator, check=check), generator, check=False)


@dataclass(frozen=True)
class SumOfCoefficients:
    """Coefficients of independent sub-layers applied in turn: at leading order their
    drifts and diffusions add (used for controls, e.g. a Transformer without attention)."""

    parts: tuple[Any, ...]
    name: str = "sum"

    def drift(self, V: Any, *, check: bool = True) -> Any:
        return sum(p.drift(V, check=check) for p in self.parts)

    def diffusion(self, V: Any, *, check: bool = True) -> Any:
        return sum(p.diffusion(V, check=check) for p in self.parts)

    def ito_contraction(self, V: Any, *, check: bool = True) -> Any:
        return sum(p.ito_contraction(V, check=check) for p in self.parts)

    def trace_variance(self, V: Any, *, check: bool = True) -> Any:
        return sum(p.trace_variance(V, check=check) for p in self.parts)

    def kernel_params(self) -> dict[str, float]:
        return {}


def contract_ito(Sigma: Any, V: Any) -> Any:
    """K^{ad} = sum_bc Sigma^{ab,cd} (V^{-1})^{bc} from a full (..., m, m, m, m) Sigma
    (O(m^4); for coefficients without a generated contraction kernel)."""
    # pinv, not inv: a nearly singular V (LU pivot exactly 0 in floating point) is a
    # valid state whose K stays finite (K is homogeneous of degree 1 in V).
    if val.is_torch(V):
        return torch.einsum("...abcd,...bc->...ad", Sigma, torch.linalg.pinv(V, hermitian=True))
    return np.einsum("...abcd,...bc->...ad", Sigma, np.linalg.pinv(V, hermitian=True))


def contract_trace(Sigma: Any) -> Any:
    """s^2 = sum_ac Sigma^{aa,cc} from a full Sigma."""
    if val.is_torch(Sigma):
        return torch.einsum("...aacc->...", Sigma)
    return np.einsum("...aacc->...", Sigma)


def shaped_mixing(Z: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """A = I + Softmax(Z) - C (row-wise Softmax), for logits Z of shape (..., m, m).

    C = 11^T/m; causal: row a's Softmax runs over keys 0..a and C is the causal
    uniform matrix (row a: 1/(a+1) on keys 0..a).
    """
    m = Z.shape[-1]
    eye = torch.eye(m, dtype=Z.dtype, device=Z.device)
    if not causal:
        return eye + torch.softmax(Z, dim=-1) - 1.0 / m
    mask = torch.ones(m, m, dtype=torch.bool, device=Z.device).tril()
    C = mask / mask.sum(-1, keepdim=True)
    return eye + torch.softmax(Z.masked_fill(~mask, float("-inf")), dim=-1) - C


def attention_logits(X: torch.Tensor, generator: RandomSource, tau0: float,
                     nk: int | None = None, heads: int = 1) -> torch.Tensor:
    """Shaped-attention logits Z = (X W^Q / sqrt(n)) (X W^K / sqrt(n))^T / (tau0 sqrt(n nk)),
    W^Q, W^K in R^{n x nk} (nk None: n), shape (B, m, m); (B, H, m, m) for H = heads > 1,
    each head with its own W^Q_h, W^K_h."""
    B, m, n = X.shape
    nk = nk or n
    if n % heads:
        raise ValueError(f"width n = {n} must be a multiple of heads = {heads}")
    weights = weight_source(generator)
    Q = weights.times(X, nk, heads=heads) / math.sqrt(n)  # (B, H, m, nk)
    K = weights.times(X, nk, heads=heads) / math.sqrt(n)
    Z = (Q @ K.transpose(-1, -2)) / (tau0 * math.sqrt(n * nk))
    return Z[:, 0] if heads == 1 else Z


def apply_mixing(A: torch.Tensor | None, Y: torch.Tensor) -> torch.Tensor:
    """A Y for Y (B, m, n); with per-head A (B, H, m, m), head h acts on column block h."""
    if A is None:
        return Y
    if A.ndim == 3:
        return A @ Y
    B, H, m, _ = A.shape
    Yh = Y.reshape(B, m, H, Y.shape[-1] // H)
    return torch.einsum("bhij,bjhk->bihk", A, Yh).reshape(Y.shape)


def _check_hidden(X: torch.Tensor, *, values: bool = True) -> None:
    """X: a real floating Torch tensor (B, m, n), B >= 1, m >= 2, n >= 1; finite if `values`."""
    if not isinstance(X, torch.Tensor) or X.ndim != 3:
        shape = getattr(X, "shape", None)
        raise ValueError(f"X must be a Torch tensor of shape (B, m, n); got "
                         f"{type(X).__name__} of shape {shape}")
    if X.is_complex() or not X.is_floating_point():
        raise ValueError(f"X must be a real floating-point tensor; got dtype {X.dtype} "
                         "(convert with X.double())")
    if X.shape[0] < 1 or X.shape[1] < 2 or X.shape[2] < 1:
        raise ValueError(f"X needs B >= 1 networks, m >= 2 tokens and width n >= 1; got shape "
                         f"{tuple(X.shape)}")
    if values and not bool(torch.isfinite(X).all()):
        raise ValueError("X contains NaN or inf (pass check=False to let non-finite networks "
                         "propagate)")


def _check_tokens(m: Any) -> int:
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise ValueError(f"m (number of tokens) must be an int >= 2; got {m!r}")
    return m


def defining_class(cls: type, attr: str) -> type:
    """The class in cls's MRO whose own body defines `attr`."""
    return next(c for c in cls.__mro__ if attr in c.__dict__)


def has_gram_face(block: Block) -> bool:
    """Whether the block's class defines `gram_mixing` and no subclass overrides its
    finite face (`finite`, `branch_mixing`, `logits`) below the class that defines it."""
    cls = type(block)
    owner = defining_class(cls, "gram_mixing")
    return owner is not Block and all(
        issubclass(owner, defining_class(cls, face))
        for face in ("finite", "branch_mixing", "logits") if hasattr(cls, face))


def _check_same_kind(V: Any, N: Any) -> None:
    """V and N both NumPy arrays or both Torch tensors."""
    if val.is_torch(V) != val.is_torch(N):
        kinds = [("torch.Tensor" if val.is_torch(x) else type(x).__name__) for x in (V, N)]
        raise ValueError(f"V and N must be of the same kind (both NumPy arrays or both Torch "
                         f"tensors); got {kinds[0]} and {kinds[1]}: convert one with "
                         "torch.as_tensor(...) or .numpy()")


def gram_logits(block: AttentionBlock, L: torch.Tensor, n: int,
                generator: torch.Generator) -> torch.Tensor:
    """Logits Z (B, m, m) of the attention block given V = L L^T, exact in law.

    Z = Q K^T / (tau0 sqrt(n nk)) with Q = L G_Q, K = L G_K (columns iid N(0, V)).
    """
    B, m, _ = L.shape
    nk = block.nk or n
    prod = gaussian_product(B, m, nk, generator, L)  # law of G_Q G_K^T
    return L @ prod @ L.transpose(-1, -2) / (block.tau0 * math.sqrt(n * nk))
