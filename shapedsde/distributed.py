"""Run independent verification tasks on a Dask cluster, reproducibly.

A verification run is embarrassingly parallel: many (block, width, seed) tasks whose
results are combined at the end. Each task carries its own seed, spawned from one root
seed (`shapedsde.seeds.spawn_seeds`), so the numbers do not depend on how many workers run
them or in which order they finish: results are gathered back in task order.

    results = run_tasks(fn, tasks, workers=4)                 # embedded local cluster
    results = run_tasks(fn, tasks, scheduler="tcp://host:8786")  # an existing cluster

`workers=1` without a scheduler runs in this process (no Dask needed). For a cluster of
GPU machines, start `dask scheduler` on one host and `dask worker tcp://host:8786
--nthreads 1` on each GPU host (one worker per GPU, with CUDA_VISIBLE_DEVICES set), then
pass `--scheduler tcp://host:8786 --device cuda`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .progress import progress_bar


def run_tasks(fn: Callable[..., Any], tasks: Sequence[dict[str, Any]], *, workers: int = 1,
              scheduler: str | None = None, progress: bool = False) -> list[Any]:
    """[fn(**task) for task in tasks], possibly on a Dask cluster; results in task order.

    fn must be importable by the workers (a module-level function) and deterministic
    given its arguments (every random draw seeded from the task).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    if scheduler is None and workers == 1:
        return [fn(**t) for t in _progress(tasks, progress)]
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
    try:
        with Client(scheduler or cluster) as client:
            futures = [client.submit(fn, pure=False, **t) for t in tasks]
            for _ in _progress(as_completed(futures), progress, total=len(futures)):
                pass
            return client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()


def _progress(it, enabled: bool, total: int | None = None):
    if not enabled:
        return it
    return progress_bar(it, total=total, desc="tasks")
