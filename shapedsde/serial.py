"""Serial composition: sub-layers applied one after the other, as one block.

`serial(b1, b2, ...)` is the block X -> b_k(... b2(b1(X))). One step of SDE time
(t = depth / n) is one pass through all the parts. The parts draw independent
weights, so at leading order in 1/n their drifts and diffusions add; the per-entry
composition (`shapedsde.symbolic.layers.compose`, a Taylor expansion of the later
parts at the earlier parts' output) proves this for the parts it covers, in
tests/test_serial.py. Every face of the composite comes from its parts:

- finite: the parts' finite faces in order (one seed stream, drawn part by part);
- coefficients: the sums of the parts' generated kernels (nothing is generated for
  the composite, so a user's composition needs no code generation);
- structured noise: the parts' independent draws added, N split between them;
- symbolic: the composed per-entry update rule (`symbolic(m)`) and the sum of the
  matrix forms (`coefficients()`, `latex()`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import sympy as sp
import torch

from . import _validation as val
from .blocks import Block, _check_hidden, _check_same_kind, _check_tokens
from .coefficients import add, parameter_values, part_renames
from .parameters import declared
from .registry import block
from .symbolic.layers import HEADS, compose
from .weights import RandomSource


@dataclass(frozen=True)
class Serial(Block):
    """Blocks applied in sequence. `gamma` is the parts' common gamma (NaN if they
    differ: each part keeps its own)."""

    parts: tuple[Block, ...] = ()
    gamma: float = field(init=False, default=math.nan)
    name: ClassVar[str] = "serial"

    def __post_init__(self) -> None:
        parts = tuple(self.parts) if isinstance(self.parts, list | tuple) else None
        if not parts:
            raise ValueError(f"serial needs a non-empty sequence of blocks; got {self.parts!r}")
        parts = tuple(_as_block(i, p) for i, p in enumerate(parts))
        object.__setattr__(self, "parts", parts)
        gammas = {p.gamma for p in parts}
        object.__setattr__(self, "gamma", gammas.pop() if len(gammas) == 1 else math.nan)

    def kernel_params(self) -> dict[str, float]:
        """Every part's parameters, keyed `name[i]` (i = position in the sequence)."""
        return {f"{k}[{i}]": v for i, p in enumerate(self.parts)
                for k, v in p.kernel_params().items()}

    def drift(self, V: Any, *, check: bool = True) -> Any:
        return self._summed("drift", V, check)

    def diffusion(self, V: Any, *, check: bool = True) -> Any:
        return self._summed("diffusion", V, check)

    def ito_contraction(self, V: Any, *, check: bool = True) -> Any:
        return self._summed("ito_contraction", V, check)

    def trace_variance(self, V: Any, *, check: bool = True) -> Any:
        return self._summed("trace_variance", V, check)

    def drift_and_ito(self, V: Any) -> tuple[Any, Any]:
        pairs = [p.drift_and_ito(V) for p in self.parts]
        return sum(b for b, _ in pairs), sum(K for _, K in pairs)

    def _summed(self, face: str, V: Any, check: bool) -> Any:
        """The sum over the parts of one coefficient face, V validated once."""
        V = val.check_covariance(V) if check else V
        return functools.reduce(operator.add,
                                (getattr(p, face)(V, check=False) for p in self.parts))

    @property
    def noise_groups(self) -> int | None:
        groups = [p.noise_groups for p in self.parts]
        return None if any(k is None for k in groups) else sum(groups)

    def structured_noise(self, V: Any, N: Any, *, check: bool = True, factor: Any = None
                         ) -> Any:
        """The parts' independent structured draws, added (N split along its group axis)."""
        k = self.noise_groups
        if check:
            _check_same_kind(V, N)
            V = val.check_covariance(V)
            if k is None:
                raise ValueError("a part of this serial block has no structured noise")
            if tuple(N.shape[-3:]) != (k, V.shape[-1], V.shape[-1]):
                raise ValueError(f"N must have shape (..., {k}, m, m); got {tuple(N.shape)}")
        return functools.reduce(operator.add, (
            p.structured_noise(V, Np, check=False, factor=factor) for p, Np in self._split(N)))

    def factor_noise(self, V: Any, N: Any, L: Any, Linv: Any) -> Any:
        """The parts' `factor_noise` draws, added (N split as in `structured_noise`)."""
        return functools.reduce(operator.add,
                                (p.factor_noise(V, Np, L, Linv) for p, Np in self._split(N)))

    def _split(self, N: Any) -> list[tuple[Block, Any]]:
        """Each part with its own groups of N (..., k, m, m), in order."""
        ends = list(itertools.accumulate(p.noise_groups for p in self.parts))
        return [(p, N[..., e - p.noise_groups:e, :, :])
                for p, e in zip(self.parts, ends, strict=True)]

    def check_width(self, n: int) -> int:
        for p in self.parts:
            n = p.check_width(n)
        return n

    def finite(self, X: torch.Tensor, generator: RandomSource, *, check: bool = True
               ) -> torch.Tensor:
        _check_hidden(X, values=check)
        self.check_width(X.shape[-1])
        for p in self.parts:
            X = p.finite(X, generator, check=False)
        return X

    def symbolic(self, m: int):
        """The composed per-entry update rule (parts with a single noise copy)."""
        renames = part_renames([parameter_values(p.kernel_params(), declared(p))
                                for p in self.parts])
        for p, r in zip(self.parts, renames, strict=True):
            if getattr(p, "heads", None) == 1:  # a single head: one noise copy
                r[HEADS] = sp.Integer(1)
        models = [_renamed(p.symbolic(_check_tokens(m)), r)
                  for p, r in zip(self.parts, renames, strict=True)]
        if any(model.heads != 1 for model in models):
            raise ValueError("the per-entry composition takes single-head parts; the "
                             "coefficients of multi-head parts add (see coefficients())")
        out = models[0]
        for model in models[1:]:
            out = compose(out, model)
        return out

    def coefficients(self, m: int | None = None):
        """The sum of the parts' coefficients (`shapedsde.coefficients.add`)."""
        name = "+".join(p.name for p in self.parts)
        return add([p.coefficients(m) for p in self.parts], name)


def _as_block(i: int, part: Any) -> Block:
    """A part given as a Block or as a (name, params) pair (a spec that pickles and
    serialises, for seeded tasks: `block("serial", parts=[("attention", {...}), ...])`)."""
    if isinstance(part, Block):
        return part
    if (isinstance(part, list | tuple) and len(part) == 2 and isinstance(part[0], str)
            and isinstance(part[1], dict)):
        return block(part[0], **part[1])
    raise ValueError(f"serial part {i} must be a shapedsde Block or a (name, params) pair; "
                     f"got {type(part).__name__}")


def serial(*blocks: Block) -> Serial:
    """The block applying `blocks` in order: `serial(block("attention", ...), ...)`."""
    return Serial(parts=blocks)


def _renamed(model, rename: dict) -> Any:
    """A LayerModel with parameter symbols renamed or fixed (n_H -> 1 for one head)."""
    if not rename:
        return model
    params = (rename.get(s, s) for s in model.params)
    return dataclasses.replace(
        model, series=[t.xreplace(rename) for t in model.series],
        noise_cov=model.noise_cov.xreplace(rename), heads=model.heads.xreplace(rename),
        params=tuple(s for s in params if isinstance(s, sp.Symbol)))
