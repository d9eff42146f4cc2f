"""Seeded sampling tasks for `shapedsde.distributed.run_tasks`: module-level functions
of picklable arguments (a block by name and parameters), so Dask workers can run them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..finite import simulate
from ..registry import block as make_block
from .engine import solve_quiet


def sample_finite(block: str, params: dict[str, Any], V0: Any, *, width: int, T: float,
                  nets: int, seed: int, device: str = "cpu", method: str = "full"
                  ) -> np.ndarray:
    """A task: V at depth round(T width) of `nets` finite networks (nets, m, m);
    `method` as in `shapedsde.finite.simulate`."""
    blk = make_block(block, **params)
    return simulate(blk, np.asarray(V0), width=width, T=T, nets=nets, seed=seed,
                    device=device, method=method).cpu().numpy()


def sample_sde(block: str, params: dict[str, Any], V0: Any, *, T: float, paths: int,
               seed: int, device: str = "cpu") -> np.ndarray:
    """A task: V_T of `paths` SDE paths (paths, m, m); NaN rows: paths that blew up."""
    return solve_quiet(make_block(block, **params), np.asarray(V0), T, paths=paths, seed=seed,
                       device=device).V.cpu().numpy()
