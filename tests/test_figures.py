"""Smoke tests of the figures: each figure function at minimal sizes, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shapedsde import experiments as F
from shapedsde.cli import main

TINY = {
    "fig1": dict(nets=48, width=16, depth=6),
    "fig1n": dict(nets=32, width=16, depth=6),
    "fig2": dict(widths=(8, 16), nets=48, sde_paths=48),
    "fig3": dict(transformer_widths=(8,), transformer_nets=24, multihead_widths=(8,),
                 multihead_nets=24, sde_paths=48),
    "fig4": dict(nets=48, width=16, depth=6),
    "fig5": {},
}


def _check_files(res: F.FigureOutput, out: Path) -> None:
    name = F.NAMES[res.key]
    for ext in ("png", "pdf", "npz", "md"):
        path = out / f"{name}.{ext}"
        assert path in res.files and path.stat().st_size > 0
    data = np.load(out / f"{name}.npz", allow_pickle=False)
    settings = json.loads(str(data["settings_json"]))
    assert settings.get("root_seed", settings.get("fig2_settings", {}).get("root_seed")) == 0
    caption = (out / f"{name}.md").read_text()
    assert "Made by:" in caption and "Settings:" in caption
    assert res.paragraph and res.numbers


@pytest.mark.parametrize("key", F.FIGURES)
def test_figure_functions(key: str, tmp_path: Path) -> None:
    if key == "fig5":  # it plots figure 2's data
        F.figure2(tmp_path, seed=0, **TINY["fig2"])
    res = F.FUNCS[key](tmp_path, seed=0, **TINY[key])
    _check_files(res, tmp_path)
    if key == "fig1":
        assert set(res.numbers["final_mean_rho"]) == {"standard", "pre-LN", "shaped"}
        assert 0 <= res.numbers["ks_final_rho"]["ks"] <= 1
        assert 0 <= res.numbers["ks_final_rho_reference"]["ks"] <= 1
    if key == "fig1n":
        shaped = ("shaped", "shaped pre-RMS", "shaped post-RMS")
        assert set(res.numbers["final_mean_rho"]) == {"standard", "pre-LN", *shaped}
        assert set(res.numbers["ks_final_rho"]) == set(shaped)
        # post-RMS keeps tr V = m: its SDE never blows up
        assert res.numbers["sde_meta"]["shaped post-RMS"]["n_exploded"] == 0
    if key == "fig2":
        assert list(res.numbers) == ["case0", "case1"]
        assert len(res.numbers["case1"]["ks_rho"]) == 2
        assert res.numbers["case1"]["setting"] == F.POWERED
    if key == "fig4":
        assert res.numbers["collapsed_fraction"]["standard-noresidual"] == 1.0
    if key == "fig5":
        assert res.numbers["widths"] == [8, 16] and len(res.numbers["slopes"]) == 2
        assert 0 < res.numbers["noise_floor"] < 1


def test_make_figures_readme_merges_runs(tmp_path: Path, capsys) -> None:
    F.make_figures(tmp_path, quick=True, only="4", progress=False, sizes=TINY)
    F.make_figures(tmp_path, quick=True, only=["fig1"], progress=False, sizes=TINY)
    readme = (tmp_path / "README.md").read_text()
    assert "fig1_paper_figure1.png" in readme and "fig4_rank_collapse.png" in readme
    assert "shapedsde figures --quick" in readme
    summary = json.loads((tmp_path / "summary.json").read_text())  # strict JSON
    assert list(summary["figures"]) == ["fig1", "fig4"]
    caption = (tmp_path / "fig4_rank_collapse.md").read_text()
    assert f"shapedsde figures --quick --out {tmp_path} --seed 0 --device cpu --only 4" in caption


def test_figures_reproducible(tmp_path: Path) -> None:
    a = F.figure4(tmp_path / "a", **TINY["fig4"])
    b = F.figure4(tmp_path / "b", **TINY["fig4"])
    assert a.numbers["final_mean_rho"] == b.numbers["final_mean_rho"]


def test_parse_only() -> None:
    assert F.parse_only(None) == F.FIGURES
    assert F.parse_only("3,1") == ("fig1", "fig3")
    assert F.parse_only("5") == ("fig5",)
    assert F.parse_only("2,1n,1") == ("fig1", "fig1n", "fig2")
    for bad in ("6", "", "x"):
        with pytest.raises(ValueError):
            F.parse_only(bad)


def test_multihead_widths_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiples of heads"):
        F.figure3(tmp_path, multihead_widths=(10,), **{k: v for k, v in TINY["fig3"].items()
                                                        if k != "multihead_widths"})


def test_cli_figures_help_and_errors(capsys) -> None:
    assert main(["figures", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out
    for argv, needle in ((["figures", "--only", "9"], "unknown figure"),
                         (["figures", "--seed", "-2"], "--seed"),
                         (["figures", "--only", "5", "--out", "/nonexistent/x"], "figure 2"),
                         (["figures", "--device", "tpu"], "device")):
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0]


def test_figure1_normalised_reuses_the_paper_figures_draws(tmp_path: Path) -> None:
    """The first three rows of fig1n are fig1's networks and shaped SDE (same seeds)."""
    a = F.figure1(tmp_path / "a", seed=0, reference_dt=None, **TINY["fig1n"])
    b = F.figure1_normalised(tmp_path / "b", seed=0, **TINY["fig1n"])
    for label in ("standard", "pre-LN", "shaped"):
        assert a.numbers["final_mean_rho"][label] == b.numbers["final_mean_rho"][label]
    assert a.numbers["sde_final_mean_rho"] == b.numbers["sde_final_mean_rho"]["shaped"]
