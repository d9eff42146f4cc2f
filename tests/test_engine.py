"""The one law comparison: distances, the PASS / FAIL / NO POWER rule, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp, kstwobign

from shapedsde.verification.engine import (
    compare_law,
    compare_laws,
    distance,
    ks_critical,
    rho01,
    statistics,
    verdict,
)

N = 4000


def _normal(seed: int, shift: float = 0.0, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n) + shift


def test_distance_is_scipys_and_drops_nonfinite() -> None:
    x, y = _normal(0), _normal(1, 0.1)
    d = distance(np.append(x, np.nan), np.append(y, np.inf))
    ref = ks_2samp(x, y)
    assert d["ks"] == ref.statistic and d["p"] == ref.pvalue
    assert (d["n_x"], d["n_y"]) == (N, N)
    assert d["ks_crit"] == pytest.approx(kstwobign.isf(0.05) * math.sqrt(2 / N))


def test_ks_critical_holds_its_level() -> None:
    """Under one law the distance exceeds the critical value in about alpha of the draws:
    200 draws at alpha = 0.2 give 40 +- 5.7 (binomial SD); allow 4 SD."""
    crit = ks_critical(300, 300, 0.2)
    over = sum(distance(_normal(2 * i, n=300), _normal(2 * i + 1, n=300))["ks"] > crit
               for i in range(200))
    assert abs(over - 40) < 4 * math.sqrt(200 * 0.2 * 0.8)


def test_verdicts() -> None:
    """Same law with a far control: PASS; a far true SDE: FAIL; a control as close as
    the truth: NO POWER. Shifts of 0.3 SD at 4000 samples are ~13 SE of the KS distance."""
    fin = _normal(0)
    assert compare_law(fin, _normal(1), {"wrong": _normal(2, 0.3)}, alpha=1e-3).status == "PASS"
    assert compare_law(fin, _normal(1, 0.3), {"wrong": _normal(2, 0.6)},
                       alpha=1e-3).status == "FAIL"
    c = compare_law(fin, _normal(1), {"wrong": _normal(2)}, alpha=1e-3)
    assert c.status == "NO POWER" and c.powered_by == []
    # a control rejected but closer than the truth gives no power
    assert verdict({"ks": 0.2, "p": 0.01}, {"c": {"ks": 0.1, "p": 1e-9}}, 1e-3) == ("NO POWER", [])
    assert "wrong D=" in c.controls_text()


def test_statistics_and_rho() -> None:
    V = torch.tensor([[4.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    s = statistics(torch.stack([V, 2 * V, torch.full((3, 3), math.nan)]))
    np.testing.assert_allclose(s["rho01"], [0.5, 0.5])
    np.testing.assert_allclose(s["V00"], [4.0, 8.0])
    P = np.eye(3) - 1 / 3
    np.testing.assert_allclose(s["centred"], np.trace(P @ V.numpy() @ P) / 6.0)
    assert np.isnan(rho01(np.full((2, 2), np.nan)))
    laws = compare_laws(s, s, {"same": s}, alpha=0.01)
    assert set(laws) == {"rho01", "V00", "centred"} and laws["V00"].true["ks"] == 0.0
    assert "w1_raw" in laws["V00"].true
