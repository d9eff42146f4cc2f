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
from typing import TYPE_CHECKING, Any

from .._validation import is_torch

if TYPE_CHECKING:
    from ..symbolic.derivation import Derivation


def kernel(d: Derivation, face: str, V: Any) -> Callable[..., Any]:
    """The `{d.name}_{face}` kernel of derivation `d` for V's array library."""
    mod = _module(d, "torch" if is_torch(V) else "numpy")
    try:
        return getattr(mod, f"{d.name}_{face}")
    except AttributeError:
        raise ValueError(f"no {face} kernel for {d.name!r}: its derivation gives none") from None


def noise_group_count(d: Derivation) -> int | None:
    """How many m x m Gaussian matrices the structured noise takes (None: none)."""
    return getattr(_module(d, "numpy"), f"{d.name.upper()}_NOISE_GROUPS", None)


def _module(d: Derivation, backend: str) -> types.ModuleType:
    """The checked-in module holding d's kernels, or one built in memory."""
    if backend == "torch":
        from . import _generated_torch as generated
    else:
        from . import _generated_numpy as generated
    if hasattr(generated, f"{d.name}_drift"):
        return generated
    if not d.has_kernels:
        raise ValueError(f"{d.name!r} has no kernels printed from a matrix form (it is "
                         "derived per entry, or read per entry with row projectors)")
    return _built(d, backend)


@cache
def _built(d: Derivation, backend: str) -> types.ModuleType:
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
