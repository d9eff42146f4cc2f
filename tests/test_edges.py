"""Bad inputs at the edges: each ends in one `error:` line (CLI) or a ValueError (API),
or in a correct answer; never in a traceback, NaN output or a silently wrong result."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import assert_one_line_error, run
from hypothesis import given, settings
from hypothesis import strategies as st

import shapedsde
from shapedsde import _io, block, cli
from shapedsde import _validation as val
from shapedsde.cli import main

V2 = np.array([[1.0, 0.2], [0.2, 1.0]])
V3 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])
GEN = torch.Generator().manual_seed(0)


def save(tmp_path: Path, arr, name: str = "V") -> str:
    path = tmp_path / f"{name}.npy"
    np.save(path, np.asarray(arr))
    return str(path)


def sde_args(V0: str, out: str, *extra: str) -> list[str]:
    return ["sde", "--block", "linear", "--gamma", "0.5", "--V0", V0, "--T", "0.05",
            "--paths", "4", "--seed", "0", "--steps", "5", "--out", out, "--quiet", *extra]


def finite_args(V0: str, out: str, *extra: str, block_: str = "linear") -> list[str]:
    return ["finite", "--block", block_, "--gamma", "0.5", "--V0", V0, "--width", "4",
            "--T", "0.5", "--nets", "2", "--seed", "0", "--out", out, "--quiet", *extra]


# ---------------------------------------------------------------------------
# 1. Unreadable input files


def _unreadable(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.npy"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("1 0.2\n0.2 1\n")
    elif kind == "npz":
        with open(p, "wb") as f:
            np.savez(f, V=V2)
    elif kind == "objects":
        np.save(p, np.array([[1.0, None], [None, 1.0]], dtype=object), allow_pickle=True)
    elif kind == "truncated":
        np.save(p, np.eye(50))
        p.write_bytes(p.read_bytes()[:200])
    elif kind == "header_only":
        np.save(p, np.eye(3))
        p.write_bytes(p.read_bytes()[:128])
    return p


@pytest.mark.parametrize("kind, needle", [
    ("empty", "empty"), ("text", "not a .npy file"), ("npz", ".npz"),
    ("objects", "Python objects"), ("truncated", "cannot read"), ("header_only", "cannot read"),
])
def test_unreadable_V_is_one_line_error(kind: str, needle: str, tmp_path: Path, capsys) -> None:
    path = _unreadable(tmp_path, kind)
    code, out, err = run(["coeffs", "--block", "linear", "--gamma", "0.5", "--V", str(path)],
                         capsys)
    assert out == ""
    assert_one_line_error(code, err, needle)
    assert "pickled" not in err or kind == "objects"


# ---------------------------------------------------------------------------
# 2. Overflow / underflow: scale-safe kernels, finite-or-refused coeffs

MLP = block("mlp", gamma=0.7, c_plus=0.5, c_minus=-1.5)
TRANSFORMER_MLP = block("transformer", gamma=0.6, tau0=0.9, c_plus=0.2, c_minus=-1.0)


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-160, 1e160, 1e200, 1e300])
def test_mlp_drift_is_homogeneous_of_degree_one(scale: float, as_torch: bool) -> None:
    ref = MLP.drift(V3)
    V = torch.tensor(V3 * scale) if as_torch else V3 * scale
    got = np.asarray(MLP.drift(V)) / scale
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("scale", [1e-150, 1e-100, 1e100, 1e150])
def test_mlp_diffusion_is_homogeneous_of_degree_two(scale: float, as_torch: bool) -> None:
    ref = MLP.diffusion(V3)
    V = torch.tensor(V3 * scale) if as_torch else V3 * scale
    got = np.asarray(MLP.diffusion(V)) / scale**2
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max())


def test_entrywise_kernel_handles_a_zero_diagonal() -> None:
    V = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.5, 2.0]])
    for arr in (V, torch.tensor(V)):
        b = np.asarray(MLP.drift(arr))
        assert np.all(np.isfinite(b)) and b[0].tolist() == [0.0, 0.0, 0.0]


def test_coeffs_mlp_large_but_finite_matches_scaling(tmp_path: Path, capsys) -> None:
    code, out, err = run(["coeffs", "--block", "mlp", "--gamma", "0.7", "--c-plus", "0.5",
                          "--c-minus", "-1.5", "--V", save(tmp_path, V3 * 1e140)], capsys)
    assert code == 0, err
    assert err == ""
    data = json.loads(out)
    np.testing.assert_allclose(np.array(data["drift"]) / 1e140, MLP.drift(V3), rtol=1e-12)
    np.testing.assert_allclose(np.array(data["diffusion"]) / 1e280, MLP.diffusion(V3),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("blk, scale", [("mlp", 1e200), ("mlp", 1e300), ("linear", 1e250),
                                        ("attention", 1e120), ("transformer", 1e160)])
def test_coeffs_overflow_is_refused(blk: str, scale: float, tmp_path: Path, capsys) -> None:
    code, out, err = run(["coeffs", "--block", blk, "--gamma", "0.5",
                          "--V", save(tmp_path, V2 * scale)], capsys)
    assert out == ""
    assert_one_line_error(code, err, "not finite", "rescale V")
    assert "NaN" not in out and "Infinity" not in out


# ---------------------------------------------------------------------------
# 3. Parameters the formulas cannot take


@pytest.mark.parametrize("opts, needle", [
    (["--block", "attention", "--tau0", "1e-300"], "tau0"),
    (["--block", "attention", "--tau0", "1e300"], "tau0"),
    (["--block", "mlp", "--c-plus", "1e300"], "c_plus"),
    (["--block", "mlp", "--c-minus=-1e7"], "c_minus"),
    (["--block", "transformer", "--c-plus", "1e300"], "c_plus"),
    (["--block", "transformer", "--tau0", "1e-200"], "tau0"),
])
def test_coeffs_out_of_range_params(opts: list[str], needle: str, tmp_path: Path,
                                    capsys) -> None:
    code, _, err = run(["coeffs", *opts, "--gamma", "0.5", "--V", save(tmp_path, V2)], capsys)
    assert_one_line_error(code, err, needle)


def test_tau0_and_c_at_their_bounds_give_finite_coefficients() -> None:
    for blk in (block("attention", gamma=0.5, tau0=val.TAU0_MIN),
                block("attention", gamma=0.5, tau0=val.TAU0_MAX),
                block("mlp", gamma=0.5, c_plus=val.C_MAX, c_minus=-val.C_MAX)):
        assert np.all(np.isfinite(blk.drift(V2 * 1e-100))), blk
        assert np.all(np.isfinite(blk.diffusion(V2 * 1e-100))), blk


def test_finite_both_slopes_zero_is_refused(tmp_path: Path, capsys) -> None:
    args = finite_args(save(tmp_path, V2), str(tmp_path / "f.npy"), "--c-plus", "-2",
                       "--c-minus", "-2", block_="mlp")
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, "both MLP slopes", "width")
    assert not (tmp_path / "f.npy").exists()
    blk = block("mlp", gamma=0.5, c_plus=-2.0, c_minus=-2.0)
    with pytest.raises(ValueError, match="both MLP slopes"):
        blk.finite(torch.ones(1, 2, 4, dtype=torch.float64), GEN)
    assert blk.check_width(9) == 9  # only n = 4 has both slopes 0
    with pytest.raises(ValueError, match="both MLP slopes"):
        block("transformer", gamma=0.5, c_plus=-2.0, c_minus=-2.0).check_width(4)


# ---------------------------------------------------------------------------
# 4. Seeds: an integer in [0, 2^63), everywhere


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64, 1.5, 1.0, True, "3", None, np.float64(2)])
def test_check_seed_rejects(seed) -> None:
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^63\)"):
        val.check_seed(seed)


@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1, np.int64(7), np.uint8(3)])
def test_check_seed_accepts(seed) -> None:
    assert val.check_seed(seed) == int(seed)


@pytest.mark.parametrize("cmd", ["sde", "finite"])
@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**64), "1.5", "x"])
def test_cli_seed_policy(cmd: str, seed: str, tmp_path: Path, capsys) -> None:
    args = (sde_args if cmd == "sde" else finite_args)(save(tmp_path, V2),
                                                       str(tmp_path / "o.npy"))
    args[args.index("--seed") + 1] = seed
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, "--seed")
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("seed", [1.5, -1, 2**64, True])
def test_finite_api_seed_policy(seed) -> None:
    from shapedsde.finite import initial_hidden, simulate

    with pytest.raises(ValueError, match="seed must be an integer"):
        simulate(block("linear", gamma=0.5), V2, width=4, T=0.5, nets=2, seed=seed)
    with pytest.raises(ValueError, match="seed must be an integer"):
        initial_hidden(V2, 4, seed=seed)


@pytest.mark.parametrize("gen", [None, 0, "seed", np.random.default_rng(0)])
def test_block_finite_requires_a_generator(gen) -> None:
    X = torch.randn(2, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for blk in (block("linear", gamma=0.5), block("attention", gamma=0.5),
                block("mlp", gamma=0.5), block("transformer", gamma=0.5)):
        with pytest.raises(ValueError, match=r"torch\.Generator\(\)\.manual_seed"):
            blk.finite(X, gen)


# ---------------------------------------------------------------------------
# 5. API type errors


@pytest.mark.parametrize("V, needle", [
    (torch.tensor([[2, 1], [1, 2]]), "floating-point"),
    (torch.tensor([[True, False], [False, True]]), "floating-point"),
    (torch.tensor(V2, dtype=torch.complex128), "floating-point"),
    (V2.astype(np.complex128), "real numbers"),
    (np.array([[True, False], [False, True]]), "real numbers"),
    (np.array([["1", "0"], ["0", "1"]]), "real numbers"),
    ([[1.0, 0.0], [0.0]], "real numbers"),
    (np.zeros((0, 3, 3)), "empty batch"),
    (torch.zeros(0, 3, 3, dtype=torch.float64), "empty batch"),
])
def test_check_covariance_type_errors(V, needle: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning cast
        with pytest.raises(ValueError, match=needle):
            val.check_covariance(V)
        with pytest.raises(ValueError, match=needle):
            block("mlp", gamma=0.5).drift(V)


def test_integer_numpy_V_is_still_accepted() -> None:
    V = np.array([[2, 1], [1, 2]])
    np.testing.assert_allclose(block("linear", gamma=0.5).drift(V),
                               block("linear", gamma=0.5).drift(V.astype(float)))


@pytest.mark.parametrize("X, needle", [
    (torch.ones(2, 3, 4, dtype=torch.int64), "floating-point"),
    (torch.ones(2, 3, 4, dtype=torch.bool), "floating-point"),
    (torch.ones(2, 3, 4, dtype=torch.complex64), "floating-point"),
    (torch.full((2, 3, 4), math.nan, dtype=torch.float64), "NaN"),
    (torch.ones(0, 3, 4, dtype=torch.float64), "B >= 1"),
    (np.ones((2, 3, 4)), "Torch tensor"),
])
def test_block_finite_bad_X(X, needle: str) -> None:
    for name in ("linear", "attention", "mlp", "transformer"):
        with pytest.raises(ValueError, match=needle):
            block(name, gamma=0.5).finite(X, GEN)


def test_finite_nan_check_can_be_skipped() -> None:
    X = torch.full((1, 2, 4), math.nan, dtype=torch.float64)
    out = block("linear", gamma=0.5).finite(X, GEN, check=False)
    assert torch.isnan(out).all()


def test_structured_noise_needs_matching_kinds() -> None:
    blk = block("attention", gamma=0.5)
    k = blk.noise_groups
    with pytest.raises(ValueError, match="same kind"):
        blk.structured_noise(V2, torch.randn(k, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="same kind"):
        blk.structured_noise(torch.tensor(V2), np.zeros((k, 2, 2)))


@pytest.mark.parametrize("m", ["3", 2.0, True, 1, None])
def test_symbolic_needs_an_int_m(m) -> None:
    with pytest.raises(ValueError, match="m .* must be an int >= 2"):
        block("linear", gamma=0.5).symbolic(m)


@pytest.mark.parametrize("name", [["attention"], None, 3])
def test_block_name_must_be_a_string(name) -> None:
    with pytest.raises(ValueError, match="block name must be a string"):
        block(name, gamma=0.5)


@pytest.mark.parametrize("params, needle", [
    ({"gamma": "0.5"}, "gamma"), ({"gamma": True}, "gamma"), ({"gamma": 1j}, "gamma"),
    ({"gamma": 0.5, "heads": "2"}, "heads"), ({"gamma": 0.5, "heads": None}, "heads"),
    ({"gamma": 0.5, "nk": 2.5}, "nk"),
])
def test_block_param_types(params: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        block("attention", **params)


# ---------------------------------------------------------------------------
# 6. Atomic outputs


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bad_out_is_reported_before_the_computation(tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    import shapedsde.finite
    import shapedsde.sde

    def boom(*a, **k):
        raise AssertionError("computation started")

    monkeypatch.setattr(shapedsde.sde, "solve", boom)
    monkeypatch.setattr(shapedsde.finite, "simulate", boom)
    V0 = save(tmp_path, V2)
    (tmp_path / "o.json").mkdir()
    (tmp_path / "d.npy").mkdir()
    (tmp_path / "afile").write_text("x")
    for out, needle in [(tmp_path / "o.npy", "is a directory"),
                        (tmp_path / "d.npy", "is a directory"),
                        (tmp_path / "afile" / "o.npy", "cannot create the folder")]:
        for args in (sde_args(V0, str(out)), finite_args(V0, str(out))):
            code, _, err = run(args, capsys)
            assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root can write to read-only folders")
def test_unwritable_folder_is_reported(tmp_path: Path, capsys) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = run(sde_args(save(tmp_path, V2), str(ro / "o.npy")), capsys)
        assert_one_line_error(code, err, "cannot write")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("cmd", ["sde", "finite", "coeffs"])
def test_interrupted_write_leaves_the_old_result(cmd: str, tmp_path: Path, capsys,
                                                 monkeypatch) -> None:
    V0 = save(tmp_path, V2)
    run_dir = tmp_path / "run"
    out = run_dir / "o.npy"
    args = {"sde": sde_args(V0, str(out)), "finite": finite_args(V0, str(out)),
            "coeffs": ["coeffs", "--block", "linear", "--gamma", "0.5", "--V", V0,
                       "--out", str(out)]}[cmd]
    code, _, err = run(args, capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert "o.npy" in before and "o.json" in before

    real_dumps = json.dumps

    def interrupted(*a, **k):  # the data file's temporary is written by now
        staged = [p for p in run_dir.iterdir() if p.name.endswith(_io.TEMP_SUFFIX)]
        assert staged, "the data should be staged before the metadata"
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.json, "dumps", interrupted)
    args[args.index("--block") + 3] = "0.9"  # another gamma: different numbers
    code, _, err = run(args, capsys)
    assert code == 130 and "interrupted" in err
    monkeypatch.setattr(_io.json, "dumps", real_dumps)
    after = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert after == before  # old files intact, no temporary left


def test_failed_data_write_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "o.npy"
    output = _io.prepare_output(out, extras=("exit",))
    _io.write_outputs(output, np.zeros(3), {"a": 1}, extras={"exit": np.ones(2)})
    assert _listing(tmp_path) == ["o.exit.npy", "o.json", "o.npy"]
    old = {p: p.read_bytes() for p in tmp_path.iterdir()}
    calls = []

    def save_then_fail(f, arr):
        calls.append(1)
        if len(calls) == 2:  # the extra array, after the data file's temporary
            raise OSError("disk full")
        np.lib.format.write_array(f, np.asarray(arr))

    monkeypatch.setattr(_io.np, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        _io.write_outputs(output, np.ones(3), {"a": 2}, extras={"exit": np.zeros(2)})
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == old


def test_sigint_during_the_renames_is_delivered_after_them() -> None:
    import os
    import signal

    done = []
    # Python's own SIGINT handler, as in a terminal: a background job starts with SIGINT
    # ignored, and an ignored signal is rightly not delivered.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with _io._signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("renamed")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done == ["renamed"]


# ---------------------------------------------------------------------------
# 7. Bounds on work


def with_options(args: list[str], opts: list[str]) -> list[str]:
    """`args` with each `--key value` of `opts` replacing the same key's value, or added."""
    args = list(args)
    for k, v in zip(opts[::2], opts[1::2], strict=True):
        if k in args:
            args[args.index(k) + 1] = v
        else:
            args += [k, v]
    return args


@pytest.mark.parametrize("opts, needle", [
    (["--T", "1e6"], "steps (at least"),
    (["--steps", "20000000"], "2e+07 steps"),
    (["--paths", str(10**12)], "GiB"),
])
def test_sde_work_bound(opts: list[str], needle: str, tmp_path: Path, capsys,
                        monkeypatch) -> None:
    import shapedsde.sde

    monkeypatch.setattr(shapedsde.sde, "solve", lambda *a, **k: pytest.fail("ran"))
    args = sde_args(save(tmp_path, V2), str(tmp_path / "o.npy"))
    i = args.index("--steps")
    del args[i:i + 2]  # the default steps, ceil(T / 0.005)
    args = with_options(args, opts)
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, needle, "--insist")


@pytest.mark.parametrize("opts, blk", [
    (["--width", str(10**8), "--T", "1e-8"], "linear"),
    (["--nk", str(10**12)], "attention"),
    (["--nets", str(10**12), "--method", "gram"], "attention"),
    (["--width", "64", "--T", "1e6"], "linear"),
])
def test_finite_work_bound(opts: list[str], blk: str, tmp_path: Path, capsys,
                           monkeypatch) -> None:
    import shapedsde.finite

    monkeypatch.setattr(shapedsde.finite, "simulate", lambda *a, **k: pytest.fail("ran"))
    args = finite_args(save(tmp_path, V2), str(tmp_path / "o.npy"), block_=blk)
    args = with_options(args, opts)
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, "--insist")


def test_insist_overrides_the_bound(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli.common, "MEMORY_LIMIT_BYTES", 16)
    args = sde_args(save(tmp_path, V2), str(tmp_path / "o.npy"))
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, "GiB", "--insist")
    code, _, err = run([*args, "--insist"], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "o.npy").shape == (4, 2, 2)


# ---------------------------------------------------------------------------
# Property: any V through check_covariance and `coeffs` ends cleanly

_shapes = st.sampled_from([(2, 2), (3, 3), (2, 3), (1, 1), (3,), (2, 2, 2), (0, 2, 2), (4, 4)])


@st.composite
def matrices(draw) -> np.ndarray:
    shape = draw(_shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    G = rng.normal(size=shape[:-1] + (shape[-1] + 1,)) if shape else rng.normal(size=1)
    if len(shape) >= 2 and shape[-1] == shape[-2] and draw(st.booleans()):
        V = G @ np.swapaxes(G, -1, -2)  # PSD
    else:
        V = rng.normal(size=shape)
    with np.errstate(all="ignore"):
        V = V * 10.0 ** draw(st.integers(-320, 308))
    if V.size and draw(st.booleans()):
        flat = V.reshape(-1)
        flat[draw(st.integers(0, V.size - 1))] = draw(st.sampled_from([np.nan, np.inf,
                                                                       -np.inf]))
    return V


@settings(max_examples=60, deadline=None)
@given(V=matrices(), name=st.sampled_from(["linear", "attention", "mlp", "transformer"]))
def test_property_any_V_ends_cleanly(V: np.ndarray, name: str, tmp_path_factory) -> None:
    try:
        val.check_covariance(V)
    except ValueError:
        pass
    path = tmp_path_factory.mktemp("prop") / "V.npy"
    with np.errstate(all="ignore"):
        np.save(path, V)
    import contextlib
    import io

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["coeffs", "--block", name, "--gamma", "0.7", "--V", str(path)])
    if code == 0:
        data = json.loads(out.getvalue(), parse_constant=lambda c: pytest.fail(c))
        assert np.all(np.isfinite(np.array(data["drift"])))
        assert np.all(np.isfinite(np.array(data["diffusion"])))
        assert err.getvalue() == ""
    else:
        assert code == 2 and out.getvalue() == ""
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()


def test_package_still_exports_block() -> None:
    assert shapedsde.block is block
