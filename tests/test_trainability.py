"""The trainability map (`shapedsde.experiments.trainability_map`, `shapedsde trainability`).

Fast: the per-point statistics on hand-built joint Grams, and the map's table on a 2 x 2
grid whose points solve the tangent of the linear block (its kernels build in well under a
second; the attention tangent's take ~30 s on first use, too slow here)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

import shapedsde.experiments.trainability_map as tmm
from shapedsde.blocks import LinearBlock
from shapedsde.cli import main as cli_main
from shapedsde.seeds import child_seed

V0 = 0.8 * np.eye(3) + 0.2
SMALL = dict(block_name="attention", gammas=[0.3, 0.9], tau0s=[0.5, 2.0], T=0.05, V0=V0,
             paths=50, seed=7)


@pytest.fixture
def linear_points(monkeypatch):
    """Every grid point solves tangent(linear(gamma)) (fast kernels)."""
    monkeypatch.setattr(tmm, "map_block", lambda name, g, t, **kw: LinearBlock(g))


def _joint(V, U, C=None):
    m = V.shape[-1]
    Q = np.zeros((*V.shape[:-2], 2 * m, 2 * m))
    Q[..., :m, :m], Q[..., m:, m:] = V, U
    if C is not None:
        Q[..., :m, m:], Q[..., m:, :m] = C, np.swapaxes(C, -1, -2)
    return Q


def _counts(paths, n_exit=0, n_exploded=0, n_nonfinite=0):
    return dict(paths=paths, n_exit=n_exit, n_exploded=n_exploded, n_nonfinite=n_nonfinite)


def test_statistics_on_hand_built_batch():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 3, 3))
    V = A @ np.swapaxes(A, -1, -2) + 0.1 * np.eye(3)
    c = 2.5
    Q0 = _joint(V0, c * V0)
    Q = _joint(V, c * V, C=0.1 * V)
    row = tmm.point_statistics(Q, Q0, 0.5, _counts(9, n_exit=2, n_exploded=1))
    # U = c V at 0 and at T: the sensitivity vanishes, the growth is the trace's
    assert row["sens_mean"] == pytest.approx(0.0, abs=1e-14)
    assert row["sens_sd"] == pytest.approx(0.0, abs=1e-14)
    g = np.log(np.trace(V, axis1=1, axis2=2) / np.trace(V0))
    assert row["growth_mean"] == pytest.approx(g.mean(), rel=1e-13)
    assert row["growth_sd"] == pytest.approx(g.std(ddof=1), rel=1e-12)
    assert row["growth_se"] == pytest.approx(g.std(ddof=1) / math.sqrt(6), rel=1e-12)
    assert row["growth_rate"] == pytest.approx(2 * g.mean(), rel=1e-13)
    assert row["n_survivors"] == 6
    assert row["p_exit"] == pytest.approx(3 / 9)
    assert row["p_exit_se"] == pytest.approx(math.sqrt(3 / 9 * 6 / 9 / 9))


def test_growth_sensitivity_singular_and_correlation():
    V = np.array([np.diag([1.0, 1.0, 1.0]), np.diag([2.0, 1.0, 1e-4])])
    U = np.array([np.eye(3) * 2.0, np.eye(3)])
    Q0 = tmm.initial_joint(np.eye(3))
    x = tmm.path_quantities(_joint(V, U), Q0)
    np.testing.assert_allclose(x["growth"], [np.log(2.0), 0.0], atol=1e-15)
    np.testing.assert_allclose(x["sens"], [np.log(2.0), -np.log((3 + 1e-4) / 3)], atol=1e-15)
    assert x["singular"].tolist() == [False, True]  # 1e-4 / 3.0001 < 1e-2
    assert x["corr"].shape == (2, 6)
    rho = 0.6
    Vc = np.full((3, 3), rho) + (1 - rho) * np.eye(3)
    row = tmm.point_statistics(_joint(Vc[None], np.eye(3)[None]), Q0, 1.0, _counts(1))
    assert row["corr_median"] == pytest.approx(rho)
    assert math.isnan(row["growth_sd"])  # one survivor: no spread


def test_counts_must_add_up_and_no_survivors():
    Q0 = tmm.initial_joint(V0)
    with pytest.raises(ValueError, match="add up"):
        tmm.point_statistics(np.zeros((0, 6, 6)), Q0, 1.0, _counts(5, n_exit=3))
    row = tmm.point_statistics(np.zeros((0, 6, 6)), Q0, 1.0, _counts(5, n_exit=4,
                                                                     n_nonfinite=1))
    assert row["p_exit"] == 0.8 and math.isnan(row["growth_mean"])
    assert tmm.predict(row) == "exploding"


def test_predict_thresholds():
    base = dict(p_exit=0.0, growth_rate=0.0, sens_rate=0.0, p_singular=0.0)
    assert tmm.predict(base) == "healthy"
    assert tmm.predict(base | {"p_exit": tmm.EXIT_MAX + 0.01}) == "exploding"
    assert tmm.predict(base | {"growth_rate": tmm.GROWTH_MAX + 0.1}) == "exploding"
    assert tmm.predict(base | {"growth_rate": -tmm.GROWTH_MAX - 0.1}) == "collapsing"
    assert tmm.predict(base | {"sens_rate": tmm.SENSITIVITY_MIN - 0.1}) == "collapsing"
    assert tmm.predict(base | {"p_singular": 0.9}) == "collapsing"
    both = base | {"p_exit": 0.5, "growth_rate": -2.0}
    assert tmm.predict(both) == "exploding"
    assert tmm.criteria(both) == [f"P(exit) > {tmm.EXIT_MAX:g}",
                                  f"growth/T < -{tmm.GROWTH_MAX:g}"]
    assert tmm.criteria(base) == []


def test_map_table_columns_counts_and_files(linear_points, tmp_path):
    tm, files = tmm.run_trainability(tmp_path, **SMALL)
    assert len(tm.rows) == 4
    for r in tm.rows:
        assert tuple(r) == tmm.COLUMNS
        assert r["paths"] == 50
        assert r["n_exit"] + r["n_exploded"] + r["n_nonfinite"] + r["n_survivors"] == 50
        assert r["prediction"] in tmm.CLASSES
    assert [(r["gamma"], r["tau0"]) for r in tm.rows] == [(0.3, 0.5), (0.3, 2.0),
                                                          (0.9, 0.5), (0.9, 2.0)]
    assert {p.suffix for p in files} == {".json", ".csv", ".png", ".txt"}
    with open(tmp_path / "trainability_attention_m3.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == tmm.COLUMNS and len(rows) == 4
    d = json.loads((tmp_path / "trainability_attention_m3.json").read_text())
    assert d["columns"] == list(tmm.COLUMNS) and d["m"] == 3 and d["steps"] == 5
    back = tmm.TrainabilityMap.load(tmp_path)
    assert back.rows == tm.rows
    assert tm.grid("p_exit").shape == (2, 2)


def test_seeds_reproducible(linear_points):
    small = SMALL | {"gammas": [0.9], "paths": 20}
    a = tmm.trainability_map(**small)
    b = tmm.trainability_map(**small)
    c = tmm.trainability_map(**(small | {"seed": 8}))
    drop = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert drop(a.rows) == drop(b.rows)
    assert drop(a.rows) != drop(c.rows)
    assert [r["seed"] for r in a.rows] == [child_seed(7, 0, k) for k in range(2)]


@pytest.mark.parametrize("change, match", [
    ({"gammas": [0.3, 1.5]}, "gammas"),
    ({"tau0s": [0.0, 1.0]}, "tau0s"),
    ({"tau0s": [1.0, 1.0]}, "repeated"),
    ({"T": 0.0}, "T must be > 0"),
    ({"paths": 1}, "paths"),
    ({"exit_trace": 1.0}, "exit_trace"),
    ({"V0": np.ones((3, 3))}, "positive definite"),
    ({"V0": np.ones((2, 3))}, "V0"),
    ({"block_name": "mlp"}, "block must be one of"),
])
def test_bad_inputs(change, match):
    with pytest.raises(ValueError, match=match):
        tmm.trainability_map(**(SMALL | change))


def test_cli_errors_and_help(tmp_path, capsys):
    assert cli_main(["trainability", "--help"]) == 0
    assert "example" in capsys.readouterr().out
    for argv in (["--gammas", "0.5,2"], ["--paths", "0"], ["--exit-trace", "0.5"],
                 ["--V0", str(tmp_path / "missing.npy")], ["--block", "mlp"],
                 ["--workers", "0"]):
        assert cli_main(["trainability", "--out", str(tmp_path), *argv]) == 2, argv
    assert not list(tmp_path.glob("trainability_*"))


def test_join_training():
    rows = [{"gamma": g, "tau0": t, "p_exit": pe, "p_exit_se": 0.01, "growth_rate": gr,
             "growth_rate_se": 0.1, "sens_rate": 0.0, "p_singular": 0.0, "prediction": pr}
            for g, t, pe, gr, pr in ((0.3, 1.0, 0.0, 0.1, "healthy"),
                                     (0.9, 0.2, 0.9, 5.0, "exploding"))]
    tm = tmm.TrainabilityMap(block="transformer", block_params={}, gammas=np.array([0.3, 0.9]),
                             tau0s=np.array([0.2, 1.0]), T=0.5, V0=V0, paths=10, seed=0,
                             steps=50, exit_trace=5.0, singular_threshold=0.01, rows=rows)
    def summ(g, t, lr, med, worse, div):
        return {"kind": "shaped", "label": f"{g},{t}", "gamma": g, "tau0": t, "lr": lr,
                "final_excess_mean": med, "final_excess_median": med, "seeds": 3,
                "worse_than_uniform": worse, "diverged": div}
    results = {"summary": [summ(0.3, 1.0, 0.01, 0.5, 0, 0), summ(0.3, 1.0, 0.03, 0.9, 0, 0),
                           summ(0.9, 0.2, 0.003, 300.0, 2, 0), summ(0.5, 0.2, 0.003, 0.4, 1, 0),
                           {**summ(math.nan, math.nan, 0.01, math.nan, 0, 3),
                            "kind": "standard", "label": "std"}]}
    j = tmm.join_training(tm, results)
    assert [(r["gamma"], r["tau0"], r["lr"], r["trained"], r["agree"]) for r in j] == [
        (0.3, 1.0, 0.01, "yes", "yes"), (0.9, 0.2, 0.003, "no", "yes"),
        (0.5, 0.2, 0.003, "partly", None)]
    assert j[2]["prediction"] is None
    assert "not on grid" in tmm.join_markdown(j)


def test_cli_refuses_an_option_the_block_does_not_take(tmp_path, capsys):
    from shapedsde.cli import main

    rc = main(["trainability", "--block", "attention", "--c-plus", "1", "--gammas", "0.5",
               "--tau0s", "1", "--paths", "5", "--T", "0.01", "--out", str(tmp_path)])
    assert rc == 2
    assert "takes no --c-plus" in capsys.readouterr().err
