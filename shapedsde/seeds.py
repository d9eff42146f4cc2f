"""The project's one seed scheme: a root seed and a path of labels give a child seed.

    child_seed(root, "law", "n=64")  ->  an integer in [0, 2^63), a torch/numpy seed

The child is `numpy.random.SeedSequence(root, spawn_key=key).generate_state(1, uint64)[0]
>> 1`, where `key` holds one word per label: an integer label is used as it is, a string
label by its CRC32. So

- a stream depends only on the root seed and its labels, never on which other streams
  are drawn, how many there are or in which order (checks, figure panels and grid cells
  can be added, skipped or run on other machines without changing the others' numbers);
- `child_seed(root, i)` is child i of `SeedSequence(root).spawn(k)` for any k > i, and
  `child_seed(root, i, j)` child j of that child's own spawn: `spawn_seeds(root, k)` lists
  the first k.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

#: The scheme in words, for reports and captions.
SCHEME = ("numpy SeedSequence(root, spawn_key=labels).generate_state(1, uint64)[0] >> 1; "
          "integer labels as they are, strings by CRC32")


def check_root(seed: Any, name: str = "seed") -> int:
    """The root seed as an int; ValueError unless it is an integer in [0, 2^63)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"{name} must be an integer in [0, 2^63); got {seed!r}")
    return int(seed)


def _word(label: int | str) -> int:
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if label < 0:
            raise ValueError(f"integer seed labels must be >= 0; got {label}")
        return int(label)
    return zlib.crc32(str(label).encode())


def child_seed(root: int, *labels: int | str) -> int:
    """The seed of the stream named by `labels` under the root seed (see the module doc)."""
    key = tuple(_word(lab) for lab in labels)
    ss = np.random.SeedSequence(check_root(root), spawn_key=key)
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def spawn_seeds(root: int, count: int, *labels: int | str) -> list[int]:
    """[child_seed(root, *labels, i) for i < count]: child i does not depend on count."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be an integer >= 0; got {count!r}")
    return [child_seed(root, *labels, i) for i in range(int(count))]
