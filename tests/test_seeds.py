"""The one seed scheme: children of a root seed named by labels."""

from __future__ import annotations

import numpy as np
import pytest

from shapedsde.seeds import check_root, child_seed, spawn_seeds
from shapedsde.verification.common import derive_seed


def test_children_are_reproducible_distinct_and_in_range() -> None:
    a = child_seed(0, "fig1", "sde")
    assert a == child_seed(0, "fig1", "sde")
    others = {child_seed(1, "fig1", "sde"), child_seed(0, "fig1", "finite"),
              child_seed(0, "fig1"), child_seed(0, "sde", "fig1")}
    assert len(others | {a}) == 5  # root, each label and their order all matter
    assert all(0 <= s < 2**63 for s in others | {a})


def test_integer_labels_are_seedsequence_spawns() -> None:
    """child i (and child j of child i) are numpy's own spawned children."""
    ss = np.random.SeedSequence(7)
    kids = ss.spawn(4)
    want = [int(k.generate_state(1, np.uint64)[0] >> np.uint64(1)) for k in kids]
    assert spawn_seeds(7, 4) == want
    grand = kids[2].spawn(3)[1]
    assert child_seed(7, 2, 1) == int(grand.generate_state(1, np.uint64)[0] >> np.uint64(1))
    assert spawn_seeds(7, 2) == spawn_seeds(7, 4)[:2]  # child i does not depend on count


def test_the_verifier_uses_the_same_scheme() -> None:
    assert derive_seed(3, "law/x") == child_seed(3, "law/x")


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, True, "3"])
def test_bad_roots_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="seed"):
        check_root(bad)
    with pytest.raises(ValueError, match="seed"):
        child_seed(bad, "x")


def test_bad_labels_and_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        child_seed(0, -1)
    with pytest.raises(ValueError, match="count"):
        spawn_seeds(0, -2)
