"""Tests for the `shapedsde` command line, run in-process through `main(argv)`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _shared import assert_one_line_error, run

import shapedsde

V2 = np.array([[1.0, 0.2], [0.2, 1.0]])
V3 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])


@pytest.fixture
def vfile(tmp_path: Path):
    """Write an array to tmp_path/<name>.npy and return the path as a string."""
    def write(arr, name: str = "V") -> str:
        path = tmp_path / f"{name}.npy"
        np.save(path, np.asarray(arr))
        return str(path)

    return write


# ---------------------------------------------------------------------------
# --help


@pytest.mark.parametrize("cmd", [[], ["coeffs"], ["sde"], ["finite"], ["derive"], ["verify"]])
def test_help_for_every_command(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([*cmd, "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: shapedsde")
    assert len(out.splitlines()) > 5


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and shapedsde.__version__ in out


def test_missing_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert_one_line_error(code, err, "missing command")


def test_python_dash_m_works(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "shapedsde", "coeffs", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: shapedsde coeffs" in proc.stdout


# ---------------------------------------------------------------------------
# coeffs


@pytest.mark.parametrize("args, m", [
    (["--block", "attention", "--gamma", "0.8", "--tau0", "1.0"], 3),
    (["--block", "linear", "--gamma", "0.5"], 2),
])
def test_coeffs_prints_json(args: list[str], m: int, vfile, capsys) -> None:
    V = V3 if m == 3 else V2
    code, out, err = run(["coeffs", *args, "--V", vfile(V)], capsys)
    assert code == 0, err
    data = json.loads(out)
    drift, diff = np.array(data["drift"]), np.array(data["diffusion"])
    assert drift.shape == (m, m) and diff.shape == (m, m, m, m)
    blk = shapedsde.block(data["block"], **data["params"])
    np.testing.assert_allclose(drift, blk.drift(V), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(diff, blk.diffusion(V), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------
# sde


def test_sde_writes_array_metadata_and_summary(tmp_path: Path, vfile, capsys) -> None:
    out = tmp_path / "run" / "vt.npy"
    code, stdout, err = run(["sde", "--block", "attention", "--gamma", "0.8", "--tau0", "1",
                             "--V0", vfile(V3), "--T", "0.1", "--paths", "16", "--seed", "3",
                             "--steps", "10", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    V = np.load(out)
    assert V.shape == (16, 3, 3) and np.allclose(V, V.transpose(0, 2, 1))
    meta = json.loads(out.with_suffix(".json").read_text())
    for key in ("steps", "dt", "scheme", "seed", "n_exploded", "exploded_file",
                "n_nonfinite", "paths", "block", "params"):
        assert key in meta
    assert meta["steps"] == 10 and meta["seed"] == 3 and meta["paths"] == 16
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SDE attention")
    # Same seed, same numbers.
    out2 = tmp_path / "again.npy"
    run(["sde", "--block", "attention", "--gamma", "0.8", "--tau0", "1", "--V0", vfile(V3),
         "--T", "0.1", "--paths", "16", "--seed", "3", "--steps", "10", "--out", str(out2),
         "--quiet"], capsys)
    assert np.array_equal(np.load(out2), V)


def test_sde_linear_takes_only_gamma(tmp_path: Path, vfile, capsys) -> None:
    out = tmp_path / "lin.npy"
    code, _, err = run(["sde", "--block", "linear", "--gamma", "0.5", "--V0", vfile(V2),
                        "--T", "0.05", "--paths", "4", "--seed", "0", "--out", str(out),
                        "--quiet"], capsys)
    assert code == 0, err
    assert np.load(out).shape == (4, 2, 2)
    code, _, err = run(["sde", "--block", "linear", "--gamma", "0.5", "--tau0", "1",
                        "--V0", vfile(V2), "--T", "0.05", "--paths", "4", "--seed", "0",
                        "--out", str(out)], capsys)
    assert_one_line_error(code, err, "--tau0")


# ---------------------------------------------------------------------------
# One-line errors for bad inputs.

BAD_V = {
    "nonsymmetric": (np.array([[1.0, 0.5], [0.1, 1.0]]), "symmetric"),
    "not_psd": (np.array([[1.0, 2.0], [2.0, 1.0]]), "semi-definite"),
    "nan": (np.array([[1.0, np.nan], [np.nan, 1.0]]), "NaN"),
    "m1": (np.array([[1.0]]), "m >= 2"),
    "vector": (np.array([1.0, 2.0]), "shape"),
    "strings": (np.array([["a", "b"], ["c", "d"]]), "real numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_V))
def test_coeffs_bad_V_is_one_line_error(case: str, vfile, capsys) -> None:
    arr, needle = BAD_V[case]
    code, out, err = run(["coeffs", "--block", "attention", "--gamma", "0.8", "--V",
                          vfile(arr)], capsys)
    assert out == ""
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("case", sorted(BAD_V))
def test_sde_bad_V0_is_one_line_error(case: str, tmp_path: Path, vfile, capsys) -> None:
    arr, needle = BAD_V[case]
    out = tmp_path / "o.npy"
    code, _, err = run(["sde", "--block", "linear", "--gamma", "0.5", "--V0", vfile(arr),
                        "--T", "0.1", "--paths", "2", "--seed", "0", "--out", str(out)], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_missing_file_is_one_line_error(tmp_path: Path, capsys) -> None:
    code, _, err = run(["coeffs", "--block", "linear", "--gamma", "0.5", "--V",
                        str(tmp_path / "nope.npy")], capsys)
    assert_one_line_error(code, err, "not found")


def test_unreadable_file_is_one_line_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "garbage.npy"
    bad.write_text("this is not an npy file\n")
    code, _, err = run(["coeffs", "--block", "linear", "--gamma", "0.5", "--V", str(bad)], capsys)
    assert_one_line_error(code, err, "cannot read")


@pytest.mark.parametrize("opts, needle", [
    (["--gamma", "0"], "gamma"),
    (["--gamma", "1.5"], "gamma"),
    (["--gamma", "nan"], "gamma"),
    (["--gamma", "abc"], "--gamma"),
    (["--gamma", "0.5", "--tau0", "0"], "tau0"),
    (["--gamma", "0.5", "--tau0", "-1"], "tau0"),
    (["--gamma", "0.5", "--heads", "0"], "heads"),
])
def test_coeffs_bad_block_params(opts: list[str], needle: str, vfile, capsys) -> None:
    code, _, err = run(["coeffs", "--block", "attention", *opts, "--V", vfile(V2)], capsys)
    assert_one_line_error(code, err, needle)


def test_unknown_block_and_missing_gamma(vfile, capsys) -> None:
    code, _, err = run(["coeffs", "--block", "mlp9", "--gamma", "0.5", "--V", vfile(V2)], capsys)
    assert_one_line_error(code, err, "unknown block", "attention")
    code, _, err = run(["coeffs", "--block", "linear", "--V", vfile(V2)], capsys)
    assert_one_line_error(code, err, "--gamma")


@pytest.mark.parametrize("opts, needle", [
    (["--T", "-0.5"], "T"),
    (["--T", "inf"], "T"),
    (["--paths", "0"], "paths"),
    (["--paths", "2.5"], "--paths"),
    (["--steps", "0"], "steps"),
    (["--seed", "-3"], "seed"),
    (["--device", "tpu"], "device"),
])
def test_sde_bad_numbers(opts: list[str], needle: str, tmp_path: Path, vfile, capsys) -> None:
    args = {"--T": "0.1", "--paths": "2", "--seed": "0"}
    args.update(dict(zip(opts[::2], opts[1::2], strict=True)))
    flat = [x for kv in args.items() for x in kv]
    code, _, err = run(["sde", "--block", "linear", "--gamma", "0.5", "--V0", vfile(V2), *flat,
                        "--out", str(tmp_path / "o.npy")], capsys)
    assert_one_line_error(code, err, needle)


def test_sde_out_must_be_npy(tmp_path: Path, vfile, capsys) -> None:
    code, _, err = run(["sde", "--block", "linear", "--gamma", "0.5", "--V0", vfile(V2),
                        "--T", "0.1", "--paths", "2", "--seed", "0",
                        "--out", str(tmp_path / "o.txt")], capsys)
    assert_one_line_error(code, err, ".npy")


def test_cuda_without_gpu_is_one_line_error(tmp_path: Path, vfile, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run(["sde", "--block", "linear", "--gamma", "0.5", "--V0", vfile(V2),
                        "--T", "0.1", "--paths", "2", "--seed", "0", "--device", "cuda",
                        "--out", str(tmp_path / "o.npy")], capsys)
    assert_one_line_error(code, err, "CUDA")


def test_finite_validates_before_running(tmp_path: Path, vfile, capsys) -> None:
    # Bad V0 and bad block options are rejected by the CLI itself, before
    # shapedsde.finite is imported.
    base = ["finite", "--block", "attention", "--width", "8", "--T", "0.5", "--nets", "2",
            "--seed", "0", "--out", str(tmp_path / "f.npy")]
    code, _, err = run([*base, "--gamma", "0.5", "--V0", vfile(BAD_V["not_psd"][0])], capsys)
    assert_one_line_error(code, err, "semi-definite")
    code, _, err = run([*base, "--gamma", "2", "--V0", vfile(V2)], capsys)
    assert_one_line_error(code, err, "gamma")
    code, _, err = run([*base, "--gamma", "0.5", "--V0", vfile(V2), "--width", "x"], capsys)
    assert_one_line_error(code, err, "--width")
    code, _, err = run([*base, "--gamma", "0.5", "--V0", vfile(V2), "--width", "0"], capsys)
    assert_one_line_error(code, err, "width")
    code, _, err = run([*base, "--gamma", "0.5", "--V0", vfile(V2), "--T", "-1"], capsys)
    assert_one_line_error(code, err, "T")
    code, _, err = run([*base, "--gamma", "0.5", "--V0", vfile(np.eye(1))], capsys)
    assert_one_line_error(code, err, "m >= 2")


def test_finite_reduced_float32_writes_float64_V(tmp_path: Path, vfile, capsys) -> None:
    out = tmp_path / "f.npy"
    code, stdout, _ = run(["finite", "--block", "mlp", "--gamma", "0.5", "--V0", vfile(V2),
                           "--width", "16", "--T", "0.25", "--nets", "3", "--seed", "0",
                           "--method", "reduced", "--dtype", "float32", "--quiet",
                           "--out", str(out)], capsys)
    assert code == 0 and "finite mlp" in stdout
    V = np.load(out)
    assert V.shape == (3, 2, 2) and V.dtype == np.float64
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["method"] == "reduced" and meta["dtype"] == "float32"


def test_finite_seed_policy_matches_sde(tmp_path: Path, vfile, capsys) -> None:
    base = ["finite", "--block", "linear", "--gamma", "0.5", "--V0", vfile(V2), "--width", "4",
            "--T", "0.5", "--nets", "2", "--out", str(tmp_path / "f.npy")]
    for seed in ("-1", str(2**64)):
        code, _, err = run([*base, "--seed", seed], capsys)
        assert_one_line_error(code, err, "--seed", "[0, 2^63)")


def test_coeffs_out_writes_arrays_and_metadata(tmp_path: Path, vfile, capsys) -> None:
    out = tmp_path / "c" / "coef.npy"
    code, stdout, err = run(["coeffs", "--block", "mlp", "--gamma", "0.7", "--V", vfile(V3),
                             "--out", str(out)], capsys)
    assert code == 0, err
    blk = shapedsde.block("mlp", gamma=0.7)
    np.testing.assert_allclose(np.load(out), blk.drift(V3), rtol=1e-13)
    np.testing.assert_allclose(np.load(out.with_suffix(".diffusion.npy")), blk.diffusion(V3),
                               rtol=1e-13)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["block"] == "mlp" and "coef.npy" in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["coef.diffusion.npy", "coef.json",
                                                            "coef.npy"]
