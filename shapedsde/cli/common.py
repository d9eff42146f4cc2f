"""Shared by the commands: input loading, work limits, errors."""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn

import numpy as np
import torch

from .. import _io
from .. import _validation as val
from .. import sde as solver
from ..blocks import Block
from ..normalised import NORMS, PLACES, Normalised, normalised
from ..parameters import PARAMETERS, Parameter, declared
from ..registry import block, block_classes
from ..scheme import monitored_tokens
from ..sde import check_device
from ..spectrum import log_spectrum_flags
from ..tangent import Tangent, initial_joint, tangent
from ..userfile import load_block_file as load_block_file

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
#: A run estimated to hold more memory than this is refused unless --insist is given.
MEMORY_LIMIT_BYTES = 8 * 2**30
#: At most this many SDE steps / finite sub-layers unless --insist is given: the solver's
#: own limit, checked up front (with --insist the solver is given the steps asked for).
MAX_STEPS = solver.MAX_STEPS
#: The full Sigma(V0) (m^4 numbers per matrix) is evaluated to check it fits the dtype only
#: up to this many bytes; beyond, the solver's own check of the drift at V0 stands.
SIGMA_CHECK_BYTES = 2**28


class UsageError(Exception):
    """Raised by the parser instead of printing usage and exiting."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def load_matrix(path: str, name: str) -> np.ndarray:
    """Read a float64 (..., m, m) array from a .npy file and validate it as a covariance
    (`shapedsde._io.load_npy` checks the file, its header's size included)."""
    return val.check_covariance(_io.load_npy(path, name), name=name)


def block_from_args(args: argparse.Namespace) -> Block:
    """Build the block from --block and the block options the user gave, normalised
    with --norm (and --norm-at) where given.

    A block receives only parameters it declares (linear takes only gamma); an
    option given for a block that does not take it is an error, not ignored.
    """
    norm, at = getattr(args, "norm", None), getattr(args, "norm_at", None)
    if at is not None and norm is None:
        raise ValueError(f"--norm-at {at} needs --norm (one of {', '.join(NORMS)})")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"unknown --norm {norm!r}; choose one of {', '.join(NORMS)}")
    if at is not None and at not in PLACES:
        raise ValueError(f"unknown --norm-at {at!r}; choose one of {', '.join(PLACES)}")
    blk = _plain_block_from_args(args)
    return blk if norm is None else normalised(blk, norm=norm, at=at or "post")


def _plain_block_from_args(args: argparse.Namespace) -> Block:
    given = {p.name: getattr(args, p.name) for p in block_options()
             if getattr(args, p.name, None) is not None}
    if ".py:" in args.block:
        if given:
            raise ValueError(f"a block from a file takes its parameters from the file; drop "
                             f"{', '.join('--' + k.replace('_', '-') for k in given)}")
        return load_block_file(args.block)
    cls = option_blocks().get(args.block)
    if cls is None:
        raise ValueError(f"unknown block {args.block!r}; choose one of "
                         f"{sorted(option_blocks())} or give FILE.py:NAME")
    if args.gamma is None:
        raise ValueError(f"block {args.block!r} needs --gamma (the branch weight in (0, 1])")
    accepted = declared(cls)
    extra = [p.option for p in block_options() if p.name in given and p not in accepted]
    if extra:
        takes = ", ".join(p.option for p in accepted if p.cli is not None)
        raise ValueError(f"block {args.block!r} takes no {', '.join(extra)} (it takes {takes})")
    return block(args.block, **given)


def with_tangent(args: argparse.Namespace, blk: Block, V0: np.ndarray
                 ) -> tuple[Any, np.ndarray]:
    """(tangent(blk), Q0 = [[V0, 0], [0, I]]) with --tangent, else (blk, V0)."""
    if not getattr(args, "tangent", False):
        return blk, V0
    if V0.ndim != 2:
        raise ValueError(f"--tangent starts from one (m, m) V0; got shape {V0.shape}")
    return tangent(blk), initial_joint(V0)


def block_meta(blk: Block) -> dict[str, Any]:
    """{"block", "params"} for the outputs, with the activation of a smooth MLP."""
    meta: dict[str, Any] = {"block": blk.name, "params": blk.kernel_params(),
                            "tangent": isinstance(blk, Tangent)}
    if isinstance(blk, Tangent):  # described as the block it is the tangent of
        inner = block_meta(blk.block)
        return {**inner, "block": blk.name, "tangent": True, "tangent_of": inner["block"]}
    if isinstance(blk, Normalised):
        meta.update(block=blk.inner.name, norm=blk.norm, norm_at=blk.at)
        blk = blk.inner
    if getattr(blk, "smooth", None) is not None:
        meta["activation"] = blk.activation_name
    return meta


def option_blocks() -> dict[str, type[Block]]:
    """The blocks the CLI builds from options: those that declare parameters."""
    return {name: cls for name, cls in block_classes().items() if declared(cls)}


def block_options() -> list[Parameter]:
    """The block options: every declared parameter that has one."""
    return [p for p in PARAMETERS if p.cli is not None]


def torch_device(name: str) -> Any:
    """The checked torch device (a ValueError names what is wrong)."""
    return check_device(name)


def memory_limit() -> int:
    """MEMORY_LIMIT_BYTES, or half the machine's memory where that is smaller."""
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MEMORY_LIMIT_BYTES
    return min(MEMORY_LIMIT_BYTES, phys // 2) if phys > 0 else MEMORY_LIMIT_BYTES


def check_work(args: argparse.Namespace, nbytes: float, what: str,
               steps: int | None = None, step_name: str = "steps") -> None:
    """Refuse (unless --insist) a run over the memory limit or over MAX_STEPS steps."""
    if getattr(args, "insist", False):
        return
    val.check_budget(nbytes, what, limit=memory_limit())
    if steps is not None and steps > MAX_STEPS:
        raise ValueError(f"{what} would take {steps:.3g} {step_name}, over the limit of "
                         f"{MAX_STEPS:.0e}; lower --T (or --steps / --width) or pass --insist "
                         "to run it anyway")


def dtype_bytes(dtype_name: str) -> int:
    return 4 if dtype_name == "float32" else 8


def coefficients(blk: Block, V: np.ndarray, dtype_name: str = "float64",
                 diffusion: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """b(V) and Sigma(V) in float64; ValueError when they do not fit in `dtype_name`
    (a run from such a V would fail at its first step). diffusion=False: b only (Sigma is
    m^4 numbers per matrix)."""
    with np.errstate(all="ignore"):  # overflow is reported below, in one line
        drift = np.asarray(blk.drift(V, check=False), dtype=np.float64)
        sigma = (np.asarray(blk.diffusion(V, check=False), dtype=np.float64) if diffusion
                 else None)
    top = float(np.finfo(np.dtype(dtype_name)).max)
    for label, arr in (("drift b(V)", drift), ("diffusion Sigma(V)", sigma)):
        if arr is None:
            continue
        if not (np.all(np.isfinite(arr)) and np.max(np.abs(arr)) <= top):
            raise ValueError(f"the {label} of block {blk.name!r} is not finite in {dtype_name} "
                             f"for this V (largest |V^ab| = {float(np.max(np.abs(V))):.3g}); "
                             "rescale V towards O(1) (for the linear and mlp blocks "
                             "b(cV) = c b(V) and Sigma(cV) = c^2 Sigma(V))")
    return drift, sigma


def torch_dtype(name: str) -> torch.dtype:
    return {"float64": torch.float64, "float32": torch.float32}[name]


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def spectrum_sidecar(V: np.ndarray, output: _io.Output, blk: Any = None
                     ) -> tuple[np.ndarray, dict[str, Any]]:
    """--save-spectrum: the (N, m) log-eigenvalues of V (N, m, m), ascending
    (`shapedsde.spectrum`), and what OUT.json says of them: the file, and the states with
    an eigenvalue <= 0 (NaN there) or below the rounding level (kept, an upper bound).
    For a tangent's joint Gram Q (N, 2m, 2m), the tokens' block V = Q[:m, :m] only (the
    spectrum of Q mixes V with U, whose scale is the tangent direction's, arbitrary)."""
    k = V.shape[-1] if blk is None else monitored_tokens(blk, V.shape[-1])
    logw, bad, low = log_spectrum_flags(V[..., :k, :k])
    return logw, {"spectrum_file": str(output.extras["spectrum"]),
                  "spectrum_of": "V" if k == V.shape[-1] else f"V = OUT[:, :{k}, :{k}]",
                  "spectrum_n_nonpositive": int(bad.sum()),
                  "spectrum_n_unresolved": int(low.sum())}


def spectrum_warning(meta: dict[str, Any]) -> str | None:
    """The stderr line for states whose log-spectrum has NaN from an eigenvalue <= 0."""
    n = meta.get("spectrum_n_nonpositive", 0)
    if not n:
        return None
    return (f"warning: {n} states have an eigenvalue <= 0 (singular to working precision); "
            f"their rows in {meta['spectrum_file']} hold NaN there")
