"""Shared pieces of the verifier: seeds, symmetric index sets, z-scores, verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from ..scheme import drift_and_ito
from ..seeds import child_seed

# Family-wise false-alarm rate of one comparison (`Comparison.agrees`): k entries
# agree when max |z| < z_crit(k), the Bonferroni bound, so correct code fails a
# given comparison with probability <= FAMILY_ALPHA (ignoring finite-width bias).
FAMILY_ALPHA = 0.01
# False-alarm probability of one verdict line of the report: each line gates on
# all its z-scores / p-values with Bonferroni at this level, so a run of ~15
# lines fails by chance alone with probability <= ~1.5%.
LINE_ALPHA = 0.001


#: A check's seed from the root seed and its label: the project's one scheme,
#: `shapedsde.seeds.child_seed`.
derive_seed = child_seed


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def z_crit(k: int, alpha: float = FAMILY_ALPHA) -> float:
    """Two-sided Bonferroni threshold for the max |z| of k estimates."""
    return float(norm.isf(alpha / (2 * max(k, 1))))


def pair_index(m: int) -> list[tuple[int, int]]:
    """Unique entries (a <= b) of a symmetric (m, m) matrix."""
    return list(combinations_with_replacement(range(m), 2))


def quad_index(m: int) -> list[tuple[int, int, int, int]]:
    """Unique entries of an (m, m, m, m) tensor symmetric within and between pairs."""
    pairs = pair_index(m)
    return [(*p, *q) for p, q in combinations_with_replacement(pairs, 2)]


def unique_entries(x: torch.Tensor) -> np.ndarray:
    """The unique entries (last 2 or 4 axes) of a symmetric matrix/tensor, as numpy."""
    x = x.detach().cpu().double()
    if x.ndim == 2:
        idx = pair_index(x.shape[-1])
    elif x.ndim == 4:
        idx = quad_index(x.shape[-1])
    else:
        raise ValueError(f"expected an (m, m) or (m, m, m, m) tensor; got shape {tuple(x.shape)}")
    return np.array([float(x[i]) for i in idx])


@dataclass
class Comparison:
    """An estimate against a reference on the unique entries, with standard errors."""

    max_abs_z: float
    z_crit: float
    rel_error: float  # ||est - ref||_F / ||ref||_F over the full tensor
    rel_se: float  # ||SE||_F / ||ref||_F: the noise floor of rel_error
    worst_entry: str
    entries: int

    @property
    def agrees(self) -> bool:
        return self.max_abs_z < self.z_crit

    def as_dict(self) -> dict:
        return {"max_abs_z": self.max_abs_z, "z_crit": self.z_crit, "agrees": self.agrees,
                "rel_error": self.rel_error, "rel_se": self.rel_se,
                "worst_entry": self.worst_entry, "entries": self.entries}


def compare(est: torch.Tensor, se: torch.Tensor, ref: torch.Tensor,
            ref_se: torch.Tensor | None = None) -> Comparison:
    """z-scores (est - ref) / sqrt(se^2 + ref_se^2) over the unique entries.

    Entries with zero combined SE (deterministic, e.g. the linear block) get
    z = 0 when they agree to 1e-9 relative and inf otherwise.
    """
    e, r, s = unique_entries(est), unique_entries(ref), unique_entries(se)
    if ref_se is not None:
        s = np.sqrt(s**2 + unique_entries(ref_se) ** 2)
    diff = e - r
    scale = max(float(np.max(np.abs(r))), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(s > 0, diff / np.where(s > 0, s, 1.0),
                     np.where(np.abs(diff) <= 1e-9 * scale, 0.0, np.inf))
    worst = int(np.argmax(np.abs(z)))
    idx = pair_index(est.shape[-1]) if est.ndim == 2 else quad_index(est.shape[-1])
    ref_full = ref.detach().cpu().double()
    norm_ref = max(float(torch.linalg.vector_norm(ref_full)), 1e-300)
    rel = float(torch.linalg.vector_norm(est.detach().cpu().double() - ref_full)) / norm_ref
    rel_se = float(torch.linalg.vector_norm(se.detach().cpu().double())) / norm_ref
    return Comparison(max_abs_z=float(np.abs(z[worst])), z_crit=z_crit(len(z)),
                      rel_error=rel, rel_se=rel_se,
                      worst_entry=f"{idx[worst]} est={e[worst]:.5g} ref={r[worst]:.5g} "
                                  f"se={s[worst]:.2g}",
                      entries=len(z))


def z_test(comparisons: list[Comparison]) -> dict[str, float]:
    """One test of several comparisons: the max |z| over all their entries, the entry
    count k and the Bonferroni p-value min(1, 2 k P(N(0, 1) > max |z|)), so p < alpha
    exactly when max |z| > z_crit(k, alpha)."""
    k = sum(c.entries for c in comparisons)
    z = max(c.max_abs_z for c in comparisons)
    return {"max_abs_z": z, "entries": k, "p": float(min(1.0, 2 * k * norm.sf(z)))}


class ScaledDrift:
    """Wrong-SDE control: the coefficients of `base` with the drift scaled by `factor`.

    Everything else (diffusion, the solver's contraction kernels, structured noise,
    kernel_params) is `base`'s, so the control's noise is drawn exactly as the block's.
    """

    def __init__(self, base: Any, factor: float, name: str | None = None) -> None:
        self.base, self.factor = base, factor
        self.name = name or f"{base.name} with drift x {factor:g}"

    def drift(self, V, *, check: bool = True):
        return self.factor * self.base.drift(V, check=check)

    def drift_and_ito(self, V):
        """The solver's joint hook, defined here so that the base's (unscaled) one is
        never reached through `__getattr__`."""
        b, K = drift_and_ito(self.base, V)
        return self.factor * b, K

    def __getattr__(self, attr: str) -> Any:
        if attr == "base":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.base, attr)
