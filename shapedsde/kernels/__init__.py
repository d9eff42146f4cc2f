"""Numeric drift/diffusion kernels generated from the matrix-form derivation.

The package's blocks have theirs checked in: `_generated_numpy.py` and
`_generated_torch.py` are written by `shapedsde.codegen` (`shapedsde derive`); do not
edit them by hand. A block defined outside the package has its kernels printed by the
same code generator and compiled in memory on first use (cached per derivation for the
process), so nothing is ever written into the installed package.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from functools import cache
from typing import Any

from .._validation import is_torch


def kernel(block: str, face: str, V: Any) -> Callable[..., Any]:
    """The `{block}_{face}` kernel for V's array library (`block`: a derivation name)."""
    mod = _module(block, "torch" if is_torch(V) else "numpy")
    try:
        return getattr(mod, f"{block}_{face}")
    except AttributeError:
        raise ValueError(f"no {face} kernel for {block!r}: its derivation gives none") from None


def noise_group_count(block: str) -> int | None:
    """How many m x m Gaussian matrices the block's structured noise takes (None: none)."""
    return getattr(_module(block, "numpy"), f"{block.upper()}_NOISE_GROUPS", None)


def _module(block: str, backend: str) -> types.ModuleType:
    """The checked-in module holding `block`'s kernels, or one built in memory."""
    if backend == "torch":
        from . import _generated_torch as generated
    else:
        from . import _generated_numpy as generated
    if hasattr(generated, f"{block}_drift"):
        return generated
    from ..registry import derivation

    d = derivation(block)  # ValueError naming the derivations there are
    if not d.has_kernels:
        raise ValueError(f"{block!r} has no kernels printed from a matrix form (it is derived "
                         "per entry, or read per entry with row projectors)")
    return _built(d, backend)


@cache
def _built(d: Any, backend: str) -> types.ModuleType:
    """Print and compile the kernels of one derivation (a block outside the package)."""
    from ..codegen import kernel_source
    from ..parameters import PARAMETERS, declared
    from ..registry import owner
    from ..symbolic.matrixform import matrix_form

    own = tuple(p for p in declared(owner(d.name)) if p not in PARAMETERS)
    source = kernel_source({d.name: matrix_form(d)}, backend, PARAMETERS + own)
    mod = types.ModuleType(f"shapedsde.kernels.built_{d.name}_{backend}")
    exec(compile(source, f"<shapedsde kernels of {d.name!r} ({backend})>", "exec"),
         mod.__dict__)
    return mod
