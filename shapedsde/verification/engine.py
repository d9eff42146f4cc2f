"""The one comparison of laws: finite networks against the SDE on a statistic, with
deliberately wrong SDEs as negative controls.

Every law check (the verifier's law at T, every block's check, the stability spot checks,
the density figures and the stopped-process checks at depth) samples V from finite
networks, from the SDE and from the controls, reduces each sample to a statistic
(`statistics`: rho^{01}, V^{00}, tr(P V P) / tr V) and calls `compare_law`:

- `distance`: two-sample KS statistic and p-value, Wasserstein-1 (of log V^{00} for V00,
  whose tail near the SDE's blow-up would otherwise dominate), sample sizes and the KS
  critical value at the comparison's alpha (scipy's limiting Kolmogorov law);
- the verdict: FAIL when the true SDE is rejected (p < alpha); otherwise PASS when some
  control is rejected (p < alpha) and sits farther than the true SDE (the test has
  power), else NO POWER.

`solve_quiet` runs the solver with its non-finite-path warning silenced: callers count
those paths from the result's metadata and report them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import ks_2samp, kstwobign, wasserstein_distance

from ..baselines import pairwise_rho
from ..sde import solve

STATISTICS = ("rho01", "V00", "centred")
STATUSES = ("PASS", "FAIL", "NO POWER")


def rho01(V: torch.Tensor | np.ndarray) -> np.ndarray:
    """rho^{01} = V^{01} / sqrt(V^{00} V^{11}) per sample of V (..., m, m); NaN where V is
    not finite."""
    return pairwise_rho(V)[..., 0]


def finite_rows(V: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The samples of V (N, m, m) whose entries are all finite, as CPU float64."""
    V = torch.as_tensor(V).detach().cpu().double()
    return V[torch.isfinite(V).flatten(1).all(1)]


def statistics(V: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of a batch V (N, m, m); rows with non-finite V are dropped.

    rho01 = V^{01} / sqrt(V^{00} V^{11}); V00 = V^{00}; centred = tr(P V P) / tr(V) with
    P = I - 11^T / m (the one the attention terms move most)."""
    V = finite_rows(V)
    m = V.shape[-1]
    P = torch.eye(m, dtype=V.dtype) - 1.0 / m
    tr = torch.einsum("bii->b", V)
    return {"rho01": rho01(V), "V00": V[:, 0, 0].numpy(),
            "centred": (torch.einsum("bii->b", P @ V @ P) / tr).numpy()}


def ks_critical(n_x: int, n_y: int, alpha: float) -> float:
    """The two-sample KS distance exceeded with probability alpha under one law
    (asymptotic: Kolmogorov's limit law over the effective size n_x n_y / (n_x + n_y))."""
    return float(kstwobign.isf(alpha) * math.sqrt((n_x + n_y) / (n_x * n_y)))


def ks_null_mean(n_x: int, n_y: int) -> float:
    """The mean two-sample KS distance between two samples of one law (asymptotic)."""
    return float(kstwobign.mean() * math.sqrt((n_x + n_y) / (n_x * n_y)))


def distance(x: np.ndarray, y: np.ndarray, stat: str = "", alpha: float = 0.05
             ) -> dict[str, float]:
    """KS statistic and p-value, W1 (on log V00 for V00; raw W1 also kept there), the sizes
    and the KS critical value at `alpha`. Non-finite values are dropped first."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    ks = ks_2samp(x, y)
    out = {"ks": float(ks.statistic), "p": float(ks.pvalue),
           "w1": float(wasserstein_distance(x, y)), "n_x": int(len(x)), "n_y": int(len(y)),
           "ks_crit": ks_critical(len(x), len(y), alpha)}
    if stat == "V00":
        out["w1_raw"] = out["w1"]
        out["w1"] = float(wasserstein_distance(np.log(np.maximum(x, 1e-300)),
                                               np.log(np.maximum(y, 1e-300))))
    return out


def verdict(true: Mapping[str, float], controls: Mapping[str, Mapping[str, float]],
            alpha: float, stat: str = "ks") -> tuple[str, list[str]]:
    """(status, the controls that give the test its power); see the module doc.

    Each test is a dict with its p-value "p" and its distance under `stat` (the KS
    statistic; "max_abs_z" for the z-tests of `common.z_test`)."""
    powered = [name for name, c in controls.items() if c["p"] < alpha and c[stat] > true[stat]]
    if true["p"] < alpha:
        return "FAIL", powered
    return ("PASS" if powered else "NO POWER"), powered


@dataclass
class LawComparison:
    """One statistic of finite networks against the SDE and the controls."""

    statistic: str
    alpha: float
    true: dict[str, float]
    controls: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return verdict(self.true, self.controls, self.alpha)[0]

    @property
    def powered_by(self) -> list[str]:
        return verdict(self.true, self.controls, self.alpha)[1]

    def controls_text(self) -> str:
        """'name D=0.123 p=1e-05, ...' for a verdict line."""
        return ", ".join(f"{name} D={c['ks']:.3f} p={c['p']:.2g}"
                         for name, c in self.controls.items())


def compare_law(finite: np.ndarray, sde: np.ndarray,
                controls: Mapping[str, np.ndarray] | None = None, *, stat: str = "",
                alpha: float = 0.05) -> LawComparison:
    """Samples of one statistic: finite networks against the SDE and each control."""
    return LawComparison(stat, alpha, distance(finite, sde, stat, alpha),
                         {name: distance(finite, c, stat, alpha)
                          for name, c in (controls or {}).items()})


def compare_laws(finite: Mapping[str, np.ndarray], sde: Mapping[str, np.ndarray],
                 controls: Mapping[str, Mapping[str, np.ndarray]] | None = None, *,
                 stats: tuple[str, ...] = STATISTICS, alpha: float = 0.05
                 ) -> dict[str, LawComparison]:
    """`compare_law` for each statistic of `statistics` outputs (finite, SDE, controls)."""
    controls = controls or {}
    return {k: compare_law(finite[k], sde[k], {name: c[k] for name, c in controls.items()},
                           stat=k, alpha=alpha) for k in stats}


def solve_quiet(coef: Any, V0: Any, T: float, **kwargs: Any) -> Any:
    """`shapedsde.sde.solve` with its non-finite-path warning silenced (the caller counts
    those paths from `result.meta` and reports them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return solve(coef, V0, T, **kwargs)
