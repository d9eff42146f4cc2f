"""A block from the user's own file (`--block FILE.py:NAME`), with every call into it guarded.

The file is the user's code and runs as such. Whatever it does wrong ends in one
`UserCodeError` (a ValueError) that names the file, the face that failed and, where the
traceback passes through the file, the function and line there:

- at import or when NAME is called: any exception, SystemExit (`sys.exit("msg")` is not a
  success) or other BaseException (KeyboardInterrupt excepted: Ctrl-C stays an interrupt);
- later, in every face the package calls (`GUARDED`: drift, diffusion, the finite face,
  the symbolic coefficients, ...), the same; and a return value of the wrong type or shape
  (`_check_return`) is refused where it comes back, not deep in NumPy, Torch or SymPy;
- `attributed(spec)` wraps a whole command for what the faces do not cover (properties
  such as noise_groups, code run by the package on the user's behalf): an exception whose
  traceback passes through the file is reported as the file's.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .blocks import Block


class UserCodeError(ValueError):
    """The user's block file failed (raised, exited, or returned the wrong thing)."""


#: The faces of a block the package calls, guarded on a user's block instance.
GUARDED = ("drift", "diffusion", "ito_contraction", "drift_and_ito", "trace_variance",
           "structured_noise", "factor_noise", "diffusion_prod", "finite", "branch_mixing",
           "gram_mixing", "logits", "activation_input", "activated", "coefficients", "latex",
           "symbolic", "kernel_params", "parts")


def load_block_file(spec: str) -> Block:
    """FILE.py:NAME -> the Block that NAME in the user's file is, or returns when called
    with no arguments (e.g. docs/examples/my_block.py:my_block), with its faces guarded."""
    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--block {spec}: no file {path}")
    if not name.isidentifier():
        raise ValueError(f"--block {spec}: {name!r} is not a Python name (FILE.py:NAME)")
    module_spec = importlib.util.spec_from_file_location(f"shapedsde_user_{file.stem}", file)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"--block {spec}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses and pickling look modules up here
    with user_code(spec, file, "importing it"):
        module_spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise UserCodeError(f"--block {spec}: {path} defines no {name!r}")
    obj = getattr(module, name)
    if callable(obj) and not isinstance(obj, Block):
        with user_code(spec, file, f"calling {name}()"):
            obj = obj()
    if not isinstance(obj, Block):
        raise UserCodeError(f"--block {spec}: {name} is a {type(obj).__name__}, not a "
                            "shapedsde Block (or a function returning one)")
    return guard(obj, spec, file)


def guard(blk: Block, spec: str, file: Path) -> Block:
    """`blk` with each face in GUARDED that it has wrapped (as an attribute of this
    instance; its class, and so what the package reads from the class, is unchanged)."""
    for face in GUARDED:
        method = getattr(blk, face, None)
        if callable(method) and not getattr(method, "_shapedsde_guarded", False):
            object.__setattr__(blk, face, _guarded(method, face, spec, file))
    return blk


def _guarded(method: Callable[..., Any], face: str, spec: str, file: Path
             ) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with user_code(spec, file, f"its {face}"):
            out = method(*args, **kwargs)
        problem = _check_return(face, args, out)
        if problem:
            raise UserCodeError(f"--block {spec}: its {face} returned {problem}")
        return out

    call._shapedsde_guarded = True  # type: ignore[attr-defined]
    return call


@contextlib.contextmanager
def user_code(spec: str, file: Path, what: str) -> Iterator[None]:
    """Any exception or BaseException (not KeyboardInterrupt, not a UserCodeError already
    attributed) raised in the block becomes a UserCodeError naming `what` failed."""
    try:
        yield
    except (KeyboardInterrupt, UserCodeError):
        raise
    except BaseException as err:  # the user's code: report it in one line, whatever it is
        raise UserCodeError(f"--block {spec}: {what} raised {_describe(err)}"
                            f"{_where(err, file)}") from None


@contextlib.contextmanager
def attributed(spec: str | None) -> Iterator[None]:
    """Around a whole command with `--block spec`: an exception whose traceback passes
    through the user's file (other than ValueError and KeyboardInterrupt, which say what
    they are) is reported as a UserCodeError naming it. No-op for a package block."""
    if spec is None or ".py:" not in spec:
        yield
        return
    file = Path(spec.rpartition(":")[0])
    try:
        yield
    except (KeyboardInterrupt, ValueError):
        raise
    except BaseException as err:
        if not _where(err, file):
            raise
        raise UserCodeError(f"--block {spec}: code in {file.name} raised {_describe(err)}"
                            f"{_where(err, file)}") from None


def _describe(err: BaseException) -> str:
    if isinstance(err, SystemExit):
        return (f"SystemExit({err.code!r}) (a block file must not exit: the run is not a "
                "success)")
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _where(err: BaseException, file: Path) -> str:
    """' (FILE line N, in FUNC)' for the innermost frame of the traceback in `file`."""
    try:
        target = file.resolve()
    except OSError:
        return ""
    found = ""
    for frame in traceback.extract_tb(err.__traceback__):
        try:
            same = Path(frame.filename).resolve() == target
        except OSError:
            same = False
        if same:
            found = f" ({file.name} line {frame.lineno}, in {frame.name})"
    return found


def _check_return(face: str, args: tuple[Any, ...], out: Any) -> str | None:
    """What is wrong with `out`, the return of `face` called with `args`, or None."""
    arg = args[0] if args else None
    shape = tuple(getattr(arg, "shape", ()))
    array = (np.ndarray, torch.Tensor)
    if face == "drift" or face == "ito_contraction":
        return _shape_problem(out, array, shape)
    if face in ("structured_noise", "diffusion_prod", "factor_noise"):  # batch: V's and N's
        problem = _shape_problem(out, array, None)
        if problem is None and tuple(out.shape[-2:]) != shape[-2:]:
            problem = f"an array of shape {tuple(out.shape)}; expected (..., {shape[-1]}, " \
                      f"{shape[-1]})"
        return problem
    if face == "diffusion":
        return _shape_problem(out, array, shape + shape[-1:] * 2 if shape else None)
    if face == "trace_variance":
        return _shape_problem(out, array + (float, np.floating), shape[:-2] or None)
    if face == "drift_and_ito":
        if not (isinstance(out, tuple) and len(out) == 2):
            return f"{type(out).__name__}, not a pair (b, K)"
        return _shape_problem(out[0], array, shape) or _shape_problem(out[1], array, shape)
    if face == "finite":
        if not isinstance(out, torch.Tensor):
            return f"{type(out).__name__}, not a Torch tensor like X {shape}"
        if tuple(out.shape) != shape or out.dtype != arg.dtype:
            return (f"a tensor of shape {tuple(out.shape)} and dtype {out.dtype}; the next "
                    f"hidden state must have X's shape {shape} and dtype {arg.dtype}")
    if face in ("branch_mixing", "gram_mixing", "logits") and out is not None \
            and not isinstance(out, torch.Tensor):
        return f"{type(out).__name__}, not a Torch tensor (or None)"
    if face == "coefficients" and not callable(getattr(out, "latex", None)):
        return f"{type(out).__name__}, not the symbolic coefficients (with .latex())"
    if face == "latex" and not isinstance(out, str):
        return f"{type(out).__name__}, not a LaTeX string"
    if face == "kernel_params" and not isinstance(out, dict):
        return f"{type(out).__name__}, not a dict of parameter values"
    return None


def _shape_problem(out: Any, kinds: tuple[type, ...], shape: tuple[int, ...] | None
                   ) -> str | None:
    if not isinstance(out, kinds):
        return f"{type(out).__name__}, not an array"
    got = tuple(getattr(out, "shape", ()))
    if shape is not None and got != shape:
        return f"an array of shape {got}; expected {shape}"
    return None
