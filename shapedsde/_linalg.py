"""Batched dense linear algebra helpers the solver needs at many tokens."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch

#: Below this many matrices a batch is decomposed in one call.
MIN_SPLIT = 64


@lru_cache(maxsize=1)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="shapedsde-eigh")


# A forked child inherits the pool without its threads: start a new one there.
os.register_at_fork(after_in_child=_pool.cache_clear)


def eigh(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.linalg.eigh` of a batch (B, m, m), split across threads on CPU.

    On CPU Torch loops over the batch and hands each small matrix to LAPACK, whose
    own threading does not pay at m ~ 64 (in float64 it is slower than one thread);
    one chunk of the batch per thread is 2-3x faster on two cores (see
    docs/benchmarks.md). Torch releases the GIL inside the call. The results equal one
    call's up to round-off.
    """
    workers = torch.get_num_threads()
    if X.device.type != "cpu" or workers < 2 or X.shape[0] < MIN_SPLIT:
        return torch.linalg.eigh(X)
    parts = list(_pool(workers).map(torch.linalg.eigh, X.chunk(workers)))
    return torch.cat([w for w, _ in parts]), torch.cat([q for _, q in parts])


def clipped_factor(V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues w (B, m), ascending, of symmetric V (B, m, m) and R = Q diag(w_+)^{1/2}:
    R R^T is V with its negative eigenvalues clipped at 0 (the nearest PSD matrix)."""
    w, Q = eigh(V)
    return w, Q * w.clamp_min(0).sqrt().unsqueeze(-2)


def psd_factor(V: torch.Tensor) -> torch.Tensor:
    """F with F F^T = V for PSD V of shape (..., m, m), via Cholesky where it
    succeeds and a symmetric eigen factor (negative rounding clipped) elsewhere."""
    L, info = torch.linalg.cholesky_ex(V)
    bad = info != 0
    if bool(bad.any()):
        L = L.clone()
        L[bad] = clipped_factor(V[bad])[1]
    return L
