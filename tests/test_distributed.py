"""Scale-out: the same samples whatever the number of Dask workers."""

from __future__ import annotations

import numpy as np
import pytest

from shapedsde.distributed import run_tasks
from shapedsde.seeds import spawn_seeds
from shapedsde.verification.tasks import sample_finite

V0 = [[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]]


def test_one_and_two_workers_give_bit_identical_samples() -> None:
    pytest.importorskip("distributed")
    params = {"gamma": 0.8, "tau0": 0.7}
    tasks = [dict(block="attention", params=params, V0=V0, width=w, T=4 / w, nets=8, seed=s,
                  method=meth)
             for w, s, meth in zip([16, 32, 16, 32], spawn_seeds(0, 4),
                                   ["full", "full", "reduced", "reduced"], strict=True)]
    serial = run_tasks(sample_finite, tasks, workers=1)
    parallel = run_tasks(sample_finite, tasks, workers=2)
    for x, y in zip(serial, parallel, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(serial[0], serial[2])  # different seeds, different samples


def test_bad_worker_count() -> None:
    with pytest.raises(ValueError, match="workers"):
        run_tasks(sample_finite, [], workers=0)
