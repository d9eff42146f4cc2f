"""Fuzz the command line with Hypothesis: random V0 files and option values.

Every run of `shapedsde.cli.main` must either succeed (exit 0) with finite outputs, or
with paths/networks that failed flagged in the metadata and named in a `warning:` line,
or refuse with exit 2 and exactly one `error: ...` line on stderr; never another
exception or exit status. Sizes stay tiny (a few paths, widths <= 8, short T, a few
fixed SDE steps for extreme magnitudes) so the module runs in a few tens of seconds.

The examples are derandomised, so the default suite is reproducible; to hunt for new
failures, run with SHAPEDSDE_FUZZ_EXAMPLES=2000 SHAPEDSDE_FUZZ_RANDOM=1.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _shared import assert_one_line_error, run
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shapedsde.cli import main

FUZZ = settings(max_examples=int(os.environ.get("SHAPEDSDE_FUZZ_EXAMPLES", "60")),
                deadline=None, derandomize=not os.environ.get("SHAPEDSDE_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                database=None)

# ----------------------------------------------------------------------------
# V0 files


@st.composite
def covariances(draw: st.DrawFn) -> np.ndarray:
    """A PSD matrix (m = 2, 3) at a magnitude from 1e-300 to 1e300, sometimes spoiled:
    non-symmetric, indefinite, a NaN or inf entry, or float32/int storage."""
    m = draw(st.integers(2, 3))
    A = draw(hnp.arrays(np.float64, (m, m + 1), elements=st.floats(-1, 1)))
    V = A @ A.T + 1e-3 * np.eye(m)
    V = V * 10.0 ** draw(st.one_of(st.integers(-2, 2), st.integers(-300, 300)))
    spoil = draw(st.sampled_from(["asym", "indefinite", "nan", "inf"])) if _rarely(draw, 2) \
        else "none"
    i, j = draw(st.integers(0, m - 1)), draw(st.integers(0, m - 1))
    if spoil == "asym" and i != j:
        V[i, j] += abs(V).max()
    elif spoil == "indefinite":
        V = V - 2 * abs(V).max() * np.eye(m)
    elif spoil in ("nan", "inf"):
        V[i, j] = float(spoil)
    batch = draw(st.sampled_from([(), (), (2,)]))
    V = np.broadcast_to(V, batch + V.shape).copy()
    with np.errstate(all="ignore"):  # float32 / int64 storage over- or underflows
        return V.astype(draw(st.sampled_from([np.float64, np.float64, np.float32, np.int64])))


odd_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.float16, np.int8, np.uint8, np.bool_,
                           np.complex128, np.dtype("<U3")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))

raw_files = st.one_of(
    st.sampled_from([b"", b"1 0\n0 1\n", b"\x93NUMPY", b"PK\x03\x04", b"\x93NUMPY\x01\x00vw"]),
    st.binary(max_size=64))


@st.composite
def v0_file(draw: st.DrawFn) -> Any:
    """What the V0 file holds: an array (saved with numpy.save) or raw bytes, or None
    for a file that does not exist."""
    kind = draw(st.integers(0, 7))
    return draw([odd_arrays, raw_files, st.none()][kind - 5] if kind >= 5 else covariances())


def _write_v0(folder: Path, content: Any) -> str:
    path = folder / "V0.npy"
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    return str(path)


# ----------------------------------------------------------------------------
# Option values: mostly plausible (so that runs get through), with edge cases and garbage

BAD = ("nan", "inf", "-inf", "-1", "0", "x", "", "1e400")


def _values(*good: Any, bad: tuple = BAD) -> Any:
    """A good value five times in six, else garbage or any float. (Hypothesis favours
    small integers, so the rare branch is the largest one.)"""
    garbage = st.one_of(st.sampled_from(bad), st.floats().map(repr))
    return st.integers(0, 5).flatmap(
        lambda k: garbage if k == 5 else st.sampled_from([str(g) for g in good]))


def _rarely(draw: st.DrawFn, one_in: int) -> bool:
    return draw(st.integers(1, one_in)) == one_in


BLOCK_OPTIONS = {"--tau0": _values(0.5, 1.0, 1e-200), "--heads": _values(1, 2),
                 "--c-plus": _values(0.0, 0.5, 1e7), "--c-minus": _values(-1.0, 2.0),
                 "--causal": st.just(None)}
TAKES = {"linear": (), "attention": ("--tau0", "--heads", "--causal"),
         "mlp": ("--c-plus", "--c-minus"), "transformer": ("--tau0", "--c-plus", "--c-minus")}


@st.composite
def options(draw: st.DrawFn, values: dict[str, Any], required: tuple[str, ...] = ()
            ) -> list[str]:
    """The `required` options (each left out once in 32 draws) and some of the others
    (each present once in three); a value None makes a flag."""
    argv: list[str] = []
    for flag, strategy in values.items():
        if not _rarely(draw, 32) if flag in required else _rarely(draw, 3):
            value = draw(strategy)
            argv += [flag] if value is None else [flag, value]
    return argv


@st.composite
def block_args(draw: st.DrawFn) -> list[str]:
    """--block and --gamma, the block's own options, and once in eight a foreign one."""
    name = "nope" if _rarely(draw, 10) else draw(st.sampled_from([*TAKES, "attention"]))
    own = {k: v for k, v in BLOCK_OPTIONS.items()
           if k in TAKES.get(name, ()) or _rarely(draw, 8)}
    return ["--block", name, *draw(options({"--gamma": _values(0.5, 0.9, 1.0), **own},
                                           required=("--gamma",)))]


# ----------------------------------------------------------------------------
# Running and judging


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _judge(code: int, err: str) -> bool:
    """True for a success (to be checked further); asserts the refusal's form."""
    event(f"exit {code}")
    if code == 0:
        return True
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return False


def _failed_rows(V: np.ndarray) -> int:
    return int((~np.isfinite(V).all(axis=(-2, -1))).sum())


def _check_flagged(V: np.ndarray, meta: dict, err: str, flagged: int) -> None:
    """Non-finite rows only as many as the metadata flags, and then a warning line."""
    assert _failed_rows(V) == flagged, (meta, err)
    if meta.get("n_nonfinite"):
        assert "warning:" in err, err
    assert "Traceback" not in err


@FUZZ
@given(content=v0_file(), block=block_args(), out=st.booleans())
def test_fuzz_coeffs(content: Any, block: list[str], out: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        argv = ["coeffs", *block, "--V", _write_v0(folder, content)]
        if out:
            argv += ["--out", str(folder / "b.npy")]
        code, stdout, err = _run(argv)
        if not _judge(code, err):
            return
        if out:
            drift, diffusion = np.load(folder / "b.npy"), np.load(folder / "b.diffusion.npy")
        else:
            res = json.loads(stdout)
            drift, diffusion = np.array(res["drift"]), np.array(res["diffusion"])
        assert np.isfinite(drift).all() and np.isfinite(diffusion).all()
        assert diffusion.shape == drift.shape + drift.shape[-2:]


SDE_OPTIONS = {"--T": _values(0.0, 0.01, 0.05), "--paths": _values(1, 3, 5, bad=("0", "-2", "x")),
               "--seed": _values(0, 7, 2**63 - 1, bad=("-1", str(2**63), "x", "1.5")),
               "--exit-trace": _values(2.0, 5.0, 1.0), "--rtol": _values(0.1, 0.5),
               "--dtype": st.sampled_from(["float64", "float64", "float32", "half"]),
               "--device": st.sampled_from(["cpu", "cpu", "cpu", "cuda", "tpu"])}


@FUZZ
@given(content=v0_file(), block=block_args(),
       opts=options(SDE_OPTIONS, required=("--T", "--paths", "--seed")),
       steps=st.sampled_from([None, "1", "3", "0", "-1", "x"]))
def test_fuzz_sde(content: Any, block: list[str], opts: list[str], steps: str | None) -> None:
    if steps is None and isinstance(content, np.ndarray) and content.size and (
            np.issubdtype(content.dtype, np.number) and np.isfinite(content).all()
            and not 1e-8 < np.abs(content).max() < 1e8):
        steps = "2"  # adaptive steps at extreme magnitudes can take long: bound the work
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        argv = ["sde", *block, "--V0", _write_v0(folder, content), *opts, "--quiet",
                "--out", str(folder / "v.npy")]
        if steps is not None:
            argv += ["--steps", steps]
        code, _, err = _run(argv)
        if not _judge(code, err):
            return
        V, meta = np.load(folder / "v.npy"), json.loads((folder / "v.json").read_text())
        flagged = meta["n_nonfinite"] + meta["n_exploded"]
        _check_flagged(V, meta, err, flagged)


FINITE_OPTIONS = {"--width": _values(2, 4, 8, bad=("0", "1", "-3", "x", "1000000000")),
                  "--T": _values(0.0, 0.25, 1.0), "--nets": _values(1, 3, bad=("0", "-1")),
                  "--seed": _values(0, 5, bad=("-1", "x")),
                  "--nk": _values(1, 4, bad=("0", "-1")),
                  "--method": st.sampled_from(["full", "reduced", "gram", "auto", "auto", "fast"]),
                  "--exit-trace": _values(3.0, 1.5),
                  "--dtype": st.sampled_from(["float64", "float32"])}


@FUZZ
@given(content=v0_file(), block=block_args(),
       opts=options(FINITE_OPTIONS, required=("--width", "--T", "--nets", "--seed")))
def test_fuzz_finite(content: Any, block: list[str], opts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        argv = ["finite", *block, "--V0", _write_v0(folder, content), *opts, "--quiet",
                "--out", str(folder / "v.npy")]
        code, _, err = _run(argv)
        if not _judge(code, err):
            return
        V, meta = np.load(folder / "v.npy"), json.loads((folder / "v.json").read_text())
        _check_flagged(V, meta, err, meta["n_nonfinite"])


# Tokens of the commands that finish in a second (no verify, derive, figures, stability).
TOKENS = ["coeffs", "sde", "finite", "--block", "attention", "linear", "--gamma", "0.5",
          "--tau0", "-1", "--V", "--V0", "missing.npy", "--T", "0.01", "--paths", "2",
          "--seed", "0", "--out", "o.npy", "--width", "4", "--nets", "1", "--quiet", "--",
          "-h", "--version", "=", "--gamma=0.5", "nan"]


@FUZZ
@given(argv=st.lists(st.sampled_from(TOKENS), max_size=14))
def test_fuzz_argument_lists(argv: list[str]) -> None:
    """Random token lists: parse errors and missing files are one-line errors."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        code, _, err = _run(argv)
        if code == 0:
            return
        _judge(code, err)


# ----------------------------------------------------------------------------
# Regressions the fuzzer found


@pytest.mark.parametrize("scale, dtype", [(1e150, "float64"), (1e300, "float64"),
                                          (1e30, "float32")])
def test_sde_refuses_a_v0_at_which_the_coefficients_overflow(scale, dtype, tmp_path, capsys):
    """The attention drift is cubic in V: at such a V0 every path failed at its first
    step, and printing the run's summary raised a TypeError (dt_min was None)."""
    np.save(tmp_path / "V0.npy", scale * np.array([[1.0, 0.2], [0.2, 1.0]]))
    code, _, err = run(["sde", "--block", "attention", "--gamma", "0.9", "--tau0", "0.5",
                        "--V0", str(tmp_path / "V0.npy"), "--T", "0.05", "--paths", "2",
                        "--seed", "0", "--dtype", dtype, "--quiet",
                        "--out", str(tmp_path / "v.npy")], capsys)
    assert_one_line_error(code, err, "drift b(V)", f"not finite in {dtype}", "rescale V")
    assert not (tmp_path / "v.npy").exists()


def test_finite_warns_when_networks_overflow(tmp_path, capsys):
    """Networks started near the float64 limit overflow; their rows were written with
    no word on stderr (only n_nonfinite in the metadata)."""
    np.save(tmp_path / "V0.npy", 1e307 * np.array([[1.0, 0.2], [0.2, 1.0]]))
    code, _, err = run(["finite", "--block", "attention", "--gamma", "0.9", "--tau0", "0.5",
                        "--V0", str(tmp_path / "V0.npy"), "--T", "1", "--width", "8",
                        "--nets", "3", "--seed", "0", "--quiet",
                        "--out", str(tmp_path / "v.npy")], capsys)
    meta = json.loads((tmp_path / "v.json").read_text())
    assert code == 0 and meta["n_nonfinite"] > 0
    assert _failed_rows(np.load(tmp_path / "v.npy")) == meta["n_nonfinite"]
    assert err.strip().splitlines() == [err.strip()] and err.startswith(
        f"warning: {meta['n_nonfinite']} of 3 networks became non-finite")


# ----------------------------------------------------------------------------
# User block files, aliasing of input and output, sidecars of earlier runs

#: What a user's face does: return the right thing, raise (an Exception, a BaseException
#: subclass, SystemExit with a code or a message), or return the wrong type or shape.
USER_ACTIONS = {
    "ok": "return {good}",
    "raise": "raise {exc}('boom')",
    "base": "raise Stop('stop')",
    "exit0": "sys.exit(0)",
    "exitmsg": "sys.exit('bye')",
    "none": "return None",
    "list": "return [[1.0]]",
    "shape": "return {good}[..., :1]",
}
USER_FACES = {"drift": ("drift(self, V, check=True)", "super().drift(V, check=check)"),
              "finite": ("finite(self, X, generator, check=True)",
                         "super().finite(X, generator, check=check)")}


@st.composite
def user_files(draw: st.DrawFn) -> str:
    """A user's block file: a LinearBlock subclass whose drift and finite faces each do one
    of USER_ACTIONS, reached at import, on calling NAME, or in the faces."""
    where = draw(st.sampled_from(["faces", "faces", "import", "call"]))
    exc = draw(st.sampled_from(["ValueError", "TypeError", "ZeroDivisionError", "KeyError",
                                "RuntimeError", "MemoryError", "RecursionError"]))
    lines = ["import sys", "from dataclasses import dataclass",
             "from shapedsde.blocks import LinearBlock", "class Stop(BaseException): pass",
             "@dataclass(frozen=True)", "class B(LinearBlock):"]
    for sig, good in USER_FACES.values():
        action = draw(st.sampled_from(sorted(USER_ACTIONS))) if where == "faces" else "ok"
        lines += [f"    def {sig}:",
                  "        " + USER_ACTIONS[action].format(good=good, exc=exc)]
    top = USER_ACTIONS[draw(st.sampled_from(["raise", "base", "exit0", "exitmsg"]))].format(
        good="", exc=exc)
    if where == "import":
        lines.append(top)
    lines += ["def blk():", "    " + (top if where == "call" else "return B(gamma=0.5)")]
    return "\n".join(lines) + "\n"


@FUZZ
@given(source=user_files(), command=st.sampled_from(["sde", "finite", "coeffs"]),
       out=st.sampled_from(["fresh", "input", "earlier-set"]), exits=st.booleans())
def test_fuzz_user_files_outputs_and_sidecars(source: str, command: str, out: str,
                                              exits: bool) -> None:
    """Exit 0 with a complete, fresh result set and the input untouched, or one `error:`
    line with exit 2 and nothing written: never a traceback, never exit 0 on a user
    file's exit, never a stale sidecar beside a new result or a clobbered input."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        v0 = folder / "V0.npy"
        np.save(v0, np.array([[1.0, 0.2], [0.2, 0.9]]))
        user = folder / "user_block.py"
        user.write_text(source)
        target = v0 if out == "input" else folder / "r.npy"
        stale = {folder / f"r.{tag}.npy" for tag in ("exit", "trajectory", "times")}
        if out == "earlier-set":
            for p in [folder / "r.npy", folder / "r.json", *stale]:
                p.write_bytes(b"earlier")
        before = {p: p.read_bytes() for p in folder.iterdir()}
        argv = {"sde": ["sde", "--V0", str(v0), "--T", "0.02", "--paths", "2", "--seed", "0",
                        "--quiet", *(["--exit-trace", "3"] if exits else [])],
                "finite": ["finite", "--V0", str(v0), "--T", "0.5", "--width", "4", "--nets",
                           "1", "--seed", "0", "--quiet",
                           *(["--exit-trace", "3"] if exits else [])],
                "coeffs": ["coeffs", "--V", str(v0)]}[command]
        argv += ["--block", f"{user}:blk", "--out", str(target)]
        code, _, err = _run(argv)
        assert "Traceback" not in err
        assert v0.read_bytes() == before[v0]
        if not _judge(code, err):
            assert {p: p.read_bytes() for p in folder.iterdir()
                    if p.name != "__pycache__" and p.is_file()} == before
            return
        assert out != "input"
        meta = json.loads((folder / "r.json").read_text())
        written = {folder / "r.npy", folder / "r.json",  # and the arrays the metadata names
                   *(Path(v) for v in meta.values()
                     if isinstance(v, str) and v.endswith(".npy") and Path(v) != v0)}
        left = {p for p in folder.glob("r.*")}
        assert left == written, (left, written)
        assert not (stale - written) & left
