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
from ..codegen import kernel_source
from ..parameters import PARAMETERS, Parameter
from ..symbolic.derivation import Derivation
from ..symbolic.matrixform import matrix_form
from ..symbolic.tangent import tangent_form
from ..tangent_codegen import tangent_kernel_source
from . import (
    _generated_numpy,
    _generated_tangent_numpy,
    _generated_tangent_torch,
    _generated_torch,
)


def kernel(d: Derivation, face: str, V: Any, params: tuple[Parameter, ...] = ()
           ) -> Callable[..., Any]:
    """The `{d.name}_{face}` kernel of derivation `d` for V's array library; `params`:
    the parameters its block declares (a block outside the package may add its own)."""
    mod = _module(d, "torch" if is_torch(V) else "numpy", params)
    try:
        return getattr(mod, f"{d.name}_{face}")
    except AttributeError:
        raise ValueError(f"no {face} kernel for {d.name!r}: its derivation gives none") from None


def noise_group_count(d: Derivation, params: tuple[Parameter, ...] = ()) -> int | None:
    """How many m x m Gaussian matrices the structured noise takes (None: none)."""
    return getattr(_module(d, "numpy", params), f"{d.name.upper()}_NOISE_GROUPS", None)


def _module(d: Derivation, backend: str, params: tuple[Parameter, ...]) -> types.ModuleType:
    """The checked-in module holding d's kernels, or one built in memory."""
    generated = _generated_torch if backend == "torch" else _generated_numpy
    if hasattr(generated, f"{d.name}_drift"):
        return generated
    if not d.has_kernels:
        raise ValueError(f"{d.name!r} has no kernels printed from a matrix form (it is "
                         "derived per entry, or read per entry with row projectors)")
    return _built(d, backend, tuple(p for p in params if p not in PARAMETERS))


@cache
def _built(d: Derivation, backend: str, own: tuple[Parameter, ...]) -> types.ModuleType:
    """Print and compile the kernels of one derivation (a block outside the package) with
    the block's own parameters `own`."""
    source = kernel_source({d.name: matrix_form(d)}, backend, PARAMETERS + own)
    mod = types.ModuleType(f"shapedsde.kernels.built_{d.name}_{backend}")
    exec(compile(source, f"<shapedsde kernels of {d.name!r} ({backend})>", "exec"),
         mod.__dict__)
    return mod


def tangent_kernel(d: Derivation, face: str, V: Any, params: tuple[Parameter, ...] = (),
                   frozen: bool = False) -> Callable[..., Any]:
    """The `{d.name}_tangent[_frozen]_{face}` kernel (face: drift or diffusion) of the
    tangent of derivation `d`, for V's array library: checked in for the package's blocks,
    else printed from `shapedsde.symbolic.tangent` and compiled in memory."""
    backend = "torch" if is_torch(V) else "numpy"
    generated = _generated_tangent_torch if backend == "torch" else _generated_tangent_numpy
    name = f"{d.name}_tangent{'_frozen' if frozen else ''}_{face}"
    if hasattr(generated, name):
        return getattr(generated, name)
    own = tuple(p for p in params if p not in PARAMETERS)
    return getattr(_built_tangent(d, backend, own, frozen), name)


@cache
def _built_tangent(d: Derivation, backend: str, own: tuple[Parameter, ...], frozen: bool
                   ) -> types.ModuleType:
    """Print and compile the tangent kernels of one derivation."""
    c = tangent_form(d, frozen)
    source = tangent_kernel_source({c.name: c}, backend, PARAMETERS + own)
    mod = types.ModuleType(f"shapedsde.kernels.built_{d.name}_tangent_{backend}")
    exec(compile(source, f"<shapedsde tangent kernels of {d.name!r} ({backend})>", "exec"),
         mod.__dict__)
    return mod
