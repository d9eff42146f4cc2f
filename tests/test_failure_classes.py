"""One test per failure class of issue 18, item 2: each ends in a one-line `error:` with
exit 2 from the CLI, a ValueError from the API, or a correct answer. Each builds a
fresh input of its kind; none copies an expectation from the code's own output."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import assert_one_line_error, run

import shapedsde
from shapedsde.blocks import AttentionBlock
from shapedsde.finite import simulate
from shapedsde.sde import MAX_STEPS, WorkLimitError, solve

ROOT = Path(__file__).resolve().parent.parent
V2 = np.array([[1.0, 0.3], [0.3, 0.8]])
ATT = ["--block", "attention", "--gamma", "0.6", "--tau0", "0.8"]


@pytest.fixture
def v0(tmp_path: Path) -> str:
    path = tmp_path / "V0.npy"
    np.save(path, V2)
    return str(path)


def _sde(v0: str, out: str, *extra: str) -> list[str]:
    return ["sde", *ATT, "--V0", v0, "--paths", "3", "--seed", "1", "--quiet", "--out", out,
            *extra]


# ---------------------------------------------------------------------------
# Tracebacks


@pytest.mark.parametrize("command", ["sde", "finite"])
def test_huge_T_is_an_error_not_an_overflow(command, v0, tmp_path, capsys) -> None:
    argv = ([*_sde(v0, str(tmp_path / "o.npy")), "--T", "1e308"] if command == "sde" else
            ["finite", *ATT, "--V0", v0, "--T", "1e308", "--width", "4", "--nets", "2",
             "--seed", "0", "--quiet", "--out", str(tmp_path / "o.npy")])
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "1e+308")
    assert not list(tmp_path.glob("o.*"))


def test_npy_header_claiming_a_huge_shape_is_refused_before_loading(tmp_path, capsys) -> None:
    path = tmp_path / "V.npy"
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
        f.write(b"\0" * 32)
    code, _, err = run(["coeffs", *ATT, "--V", str(path)], capsys)
    assert_one_line_error(code, err, "header claims shape (1000000, 1000000)", "32 bytes")


USER_FILES = {
    "derivation_raises": ("""
        from dataclasses import dataclass
        from typing import ClassVar
        from shapedsde.blocks import Block
        from shapedsde.symbolic.derivation import Derivation

        def update(src, heads):
            raise KeyError("no rule")

        @dataclass(frozen=True)
        class B(Block):
            name: ClassVar[str] = "fc-raises"
            derivations: ClassVar[tuple] = (Derivation("fc_raises", update=update),)

        def blk():
            return B(gamma=0.5)
        """, "sde", ["KeyError", "no rule", "in update"]),
    "derivation_not_a_matrix": ("""
        from dataclasses import dataclass
        from typing import ClassVar
        from shapedsde.blocks import Block
        from shapedsde.symbolic.derivation import Derivation

        @dataclass(frozen=True)
        class B(Block):
            name: ClassVar[str] = "fc-not-matrix"
            derivations: ClassVar[tuple] = (Derivation("fc_not_matrix",
                                                       update=lambda src, heads: 3),)

        def blk():
            return B(gamma=0.5)
        """, "sde", ["fc_not_matrix", "must return", "got int"]),
    "finite_raises": ("""
        from dataclasses import dataclass
        from shapedsde.blocks import LinearBlock

        @dataclass(frozen=True)
        class B(LinearBlock):
            def finite(self, X, generator, check=True):
                return broken(X)

        def broken(X):
            raise RuntimeError("finite face broke")

        blk = B(gamma=0.5)
        """, "finite", ["its finite raised RuntimeError", "in broken"]),
    "finite_wrong_shape": ("""
        from dataclasses import dataclass
        from shapedsde.blocks import LinearBlock

        @dataclass(frozen=True)
        class B(LinearBlock):
            def finite(self, X, generator, check=True):
                return X[:, :1]

        blk = B(gamma=0.5)
        """, "finite", ["its finite returned a tensor of shape (1, 1, 4)", "(1, 2, 4)"]),
    "finite_wrong_type": ("""
        from dataclasses import dataclass
        from shapedsde.blocks import LinearBlock

        @dataclass(frozen=True)
        class B(LinearBlock):
            def finite(self, X, generator, check=True):
                return X.numpy()

        blk = B(gamma=0.5)
        """, "finite", ["its finite returned ndarray, not a Torch tensor"]),
    "drift_raises": ("""
        from dataclasses import dataclass
        from shapedsde.blocks import LinearBlock

        @dataclass(frozen=True)
        class B(LinearBlock):
            def drift(self, V, check=True):
                return 1 / 0

        blk = B(gamma=0.5)
        """, "sde", ["its drift raised ZeroDivisionError", "in drift"]),
    "base_exception_at_import": ("""
        class Stop(BaseException):
            pass

        raise Stop("user stop")
        """, "sde", ["importing it raised Stop: user stop"]),
    "sys_exit_at_import": ("""
        import sys
        sys.exit("leaving early")
        """, "sde", ["SystemExit('leaving early')", "not a success"]),
    "sys_exit_zero_in_function": ("""
        import sys
        def blk():
            sys.exit(0)
        """, "finite", ["calling blk() raised SystemExit(0)"]),
}


@pytest.mark.parametrize("case", sorted(USER_FILES))
def test_user_block_file_failures_are_one_line_errors(case, v0, tmp_path, capsys) -> None:
    """Whatever the user's file does wrong (raise, exit, return the wrong thing), the run
    ends in exit 2 and one line naming the file, not a traceback nor exit 0."""
    source, command, needles = USER_FILES[case]
    path = tmp_path / f"{case}.py"
    path.write_text(textwrap.dedent(source))
    spec = f"{path}:blk"
    out = str(tmp_path / "o.npy")
    argv = ["--block", spec, "--V0", v0, "--seed", "0", "--quiet", "--out", out]
    argv = (["sde", *argv, "--T", "0.02", "--paths", "2"] if command == "sde" else
            ["finite", *argv, "--T", "0.5", "--width", "4", "--nets", "1"])
    code, _, err = run(argv, capsys)
    # A wrong return of the derivation is named by the derivation (found after the call).
    named = [] if case == "derivation_not_a_matrix" else [f"--block {spec}"]
    assert_one_line_error(code, err, *named, *needles)
    assert not Path(out).exists()


def test_one_step_limit_checked_up_front(v0, tmp_path, capsys) -> None:
    """The CLI allowed 1e7 steps where the solver stopped at 1e6 with a RuntimeError."""
    code, _, err = run([*_sde(v0, str(tmp_path / "o.npy")), "--T", "1",
                        "--steps", str(MAX_STEPS + 1)], capsys)
    assert_one_line_error(code, err, f"{MAX_STEPS + 1:.3g} steps", "over the limit")
    with pytest.raises(ValueError, match="max_steps"):
        solve(shapedsde.block("linear", gamma=0.5), V2, 1.0, paths=1, seed=0, steps=11,
              max_steps=10)
    assert issubclass(WorkLimitError, RuntimeError)


# ---------------------------------------------------------------------------
# API


BLK = shapedsde.block("attention", gamma=0.6, tau0=0.8)


def test_api_tensor_with_requires_grad_gives_the_same_answer() -> None:
    V = torch.tensor(V2, requires_grad=True)
    a = solve(BLK, V, 0.05, paths=3, seed=2)
    b = solve(BLK, V2, 0.05, paths=3, seed=2)
    assert torch.equal(a.V, b.V)


def test_api_empty_save_times_keeps_zero_and_T() -> None:
    res = solve(BLK, V2, 0.05, paths=2, seed=0, save_times=[])
    assert res.times.tolist() == [0.0, 0.05]
    np.testing.assert_allclose(res.trajectory[0].numpy(), np.broadcast_to(V2, (2, 2, 2)))
    assert torch.equal(res.trajectory[-1], res.V)


@pytest.mark.parametrize("call", [
    lambda: solve(AttentionBlock, V2, 0.05, paths=2, seed=0),
    lambda: simulate(AttentionBlock, V2, width=4, T=0.5, nets=2, seed=0),
    lambda: simulate(BLK, V2, width=4, T=0.5, nets=2, seed=0, device="tpu"),
    lambda: solve(BLK, V2, 1e308, paths=2, seed=0),
    lambda: solve(BLK, V2, 1e308, paths=2, seed=0, steps=10),
    lambda: simulate(BLK, V2, width=4, T=1e308, nets=2, seed=0),
    lambda: simulate(shapedsde.block("attention", gamma=0.6, tau0=0.8, nk=10**12), V2,
                     width=4, T=0.5, nets=1, seed=0),
    lambda: solve(BLK, V2, 0.05, paths=2, seed=0, blowup=1.0),
    lambda: solve(BLK, V2, 0.05, paths=2, seed=0, blowup=0.5),
    lambda: solve(BLK, V2 * 1e-310, 0.05, paths=2, seed=0),
    lambda: shapedsde.block("attention", gamma=0.6, tau0=1e-150),
    lambda: solve(BLK, V2, 0.05, paths=10**20, seed=0),
    lambda: solve(BLK, V2, 0.05, paths=3 * 10**12, seed=0),
    lambda: solve(BLK, V2, 0.05, paths=2 * 10**11, seed=0),
], ids=["solve-class", "simulate-class", "simulate-device", "T-1e308", "T-1e308-steps",
        "simulate-T-1e308", "nk-1e12", "blowup-1", "blowup-half", "subnormal-V",
        "tau0-1e-150", "paths-1e20", "paths-3e12", "paths-2e11"])
def test_api_bad_inputs_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_api_huge_nk_runs_with_the_gram_chain() -> None:
    """nk = 1e12 is a valid key width: the exact chain draws its logits in O(m^2)."""
    blk = shapedsde.block("attention", gamma=0.6, tau0=0.8, nk=10**12)
    V = simulate(blk, V2, width=4, T=0.5, nets=3, seed=0, method="gram")
    assert V.shape == (3, 2, 2) and bool(torch.isfinite(V).all())


# ---------------------------------------------------------------------------
# Writes outside the folder; clobbered inputs


@pytest.mark.parametrize("name", ["../escape", "sub/name", "/tmp/abs_name", "../../..", ".."])
def test_stability_name_stays_inside_out(name, tmp_path, capsys) -> None:
    out = tmp_path / "deep" / "out"
    code, _, err = run(["stability", "--quick", "--T", "0.01", "--out", str(out),
                        "--name", name], capsys)
    assert_one_line_error(code, err, "--name must be a plain file name")
    assert not (tmp_path / "deep").exists()


def test_derive_block_name_with_a_separator_stays_inside_out(tmp_path, capsys) -> None:
    path = tmp_path / "evil.py"
    path.write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from typing import ClassVar
        from shapedsde.blocks import LinearBlock

        @dataclass(frozen=True)
        class Evil(LinearBlock):
            name: ClassVar[str] = "../../escaped"

            @property
            def kernel_name(self):
                return self.name

        blk = Evil(gamma=0.5)
        """))
    out = tmp_path / "a" / "b"
    code, _, err = run(["derive", "--block", f"{path}:blk", "--out", str(out)], capsys)
    assert_one_line_error(code, err, "plain file name")
    assert not list(tmp_path.rglob("escaped*"))
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("command", ["sde", "finite", "coeffs"])
def test_out_equal_to_an_input_is_refused(command, v0, tmp_path, capsys) -> None:
    before = Path(v0).read_bytes()
    argv = {"sde": [*_sde(v0, v0), "--T", "0.02"],
            "finite": ["finite", *ATT, "--V0", v0, "--T", "0.5", "--width", "4", "--nets",
                       "1", "--seed", "0", "--quiet", "--out", v0],
            "coeffs": ["coeffs", *ATT, "--V", v0, "--out", v0]}[command]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "would overwrite the input")
    assert Path(v0).read_bytes() == before


def test_derive_keeps_causal_and_plain_attention_apart(tmp_path, capsys) -> None:
    out = tmp_path / "tex"
    assert run(["derive", "--block", "attention", "--gamma", "0.5", "--out", str(out)],
               capsys)[0] == 0
    plain = {p.name: p.read_text() for p in out.iterdir()}
    assert run(["derive", "--block", "attention", "--gamma", "0.5", "--causal", "--out",
                str(out)], capsys)[0] == 0
    for name, text in plain.items():  # untouched by the causal run
        assert (out / name).read_text() == text
    assert len(list(out.iterdir())) == 2 * len(plain)


def test_stability_failure_leaves_an_earlier_result_set(tmp_path, capsys) -> None:
    """A run that fails (here: a spot width below m) rewrites nothing, and does so before
    any work."""
    out = tmp_path / "st"
    out.mkdir()
    earlier = {out / f"s{tail}": b"earlier" for tail in (".json", ".npz", "_summary.txt")}
    for p, data in earlier.items():
        p.write_bytes(data)
    code, _, err = run(["stability", "--quick", "--m", "40", "--T", "0.01", "--out", str(out),
                        "--name", "s"], capsys)
    assert_one_line_error(code, err, "width 32 must be >= m = 40")
    assert {p: p.read_bytes() for p in out.iterdir()} == earlier


# ---------------------------------------------------------------------------
# Signals, concurrent runs, stale sidecars


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from shapedsde import _io
    out = _io.prepare_output(sys.argv[1])
    _io.write_outputs(out, np.zeros(2), {"a": 1})  # an earlier, complete set

    def slow(f):
        f.write(b"half a file")
        print("staging", flush=True)
        time.sleep(60)

    _io._write_all([(out.data, lambda f: np.save(f, np.ones(2))), (out.meta, slow)])
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_the_write_leaves_no_partial_file(sig, tmp_path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    out = tmp_path / "res" / "r.npy"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The writer starts with the signal's default action even where this process ignores
    # it (a run under nohup ignores SIGHUP, and children inherit that: the writer would
    # then rightly keep running).
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True,
                            preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "staging"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not list(out.parent.glob("*.partial")), list(out.parent.iterdir())
    assert np.load(out).tolist() == [0.0, 0.0]  # the earlier, complete set is intact


def test_a_rerun_removes_stale_sidecars(v0, tmp_path, capsys) -> None:
    out = tmp_path / "o.npy"
    assert run([*_sde(v0, str(out)), "--T", "0.02", "--exit-trace", "3", "--save-times", "2"],
               capsys)[0] == 0
    assert {p.name for p in tmp_path.glob("o.*")} >= {"o.exit.npy", "o.trajectory.npy",
                                                      "o.times.npy"}
    assert run([*_sde(v0, str(out)), "--T", "0.02"], capsys)[0] == 0
    assert {p.name for p in tmp_path.glob("o.*")} == {"o.npy", "o.json", "o.exploded.npy"}
    meta = json.loads((tmp_path / "o.json").read_text())
    assert meta["exit_trace"] is None


def test_two_writers_into_one_out_leave_one_complete_set(tmp_path) -> None:
    """Many writers, each writing a set whose files all carry its id: whatever the
    interleaving, the files left all carry one id."""
    out = tmp_path / "o.npy"
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from shapedsde import _io
        k = int(sys.argv[1])
        tags = ("exit",) if k % 2 else ("trajectory", "times")
        o = _io.prepare_output({str(out)!r}, extras=tags)
        for _ in range(20):
            _io.write_outputs(o, np.full(50000, k), {{"id": k}},
                              extras={{t: np.full(3, k) for t in tags}})
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)], env=env)
             for k in range(4)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    ids = {int(np.load(p).flat[0]) for p in tmp_path.glob("o*.npy")}
    ids.add(json.loads((tmp_path / "o.json").read_text())["id"])
    assert len(ids) == 1, ids
    k = ids.pop()
    want = {"o.npy", "o.json", *(["o.exit.npy"] if k % 2 else ["o.trajectory.npy",
                                                               "o.times.npy"])}
    assert {p.name for p in tmp_path.iterdir()} == want


# ---------------------------------------------------------------------------
# Silent wrong answers


def test_T_zero_with_saved_times_saves_V0_at_every_time(v0, tmp_path, capsys) -> None:
    out = tmp_path / "o.npy"
    assert run([*_sde(v0, str(out)), "--T", "0", "--save-times", "4"], capsys)[0] == 0
    traj = np.load(tmp_path / "o.trajectory.npy")
    assert traj.shape == (5, 3, 2, 2)
    np.testing.assert_allclose(traj, np.broadcast_to(V2, traj.shape))


def test_tiny_tau0_is_refused(v0, tmp_path, capsys) -> None:
    code, _, err = run(["sde", "--block", "attention", "--gamma", "0.6", "--tau0", "1e-150",
                        "--V0", v0, "--T", "0.02", "--paths", "2", "--seed", "0", "--quiet",
                        "--out", str(tmp_path / "o.npy")], capsys)
    assert_one_line_error(code, err, "tau0 must lie in")


def test_subnormal_V_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "V.npy"
    np.save(path, V2 * 1e-312)
    code, _, err = run(["coeffs", *ATT, "--V", str(path)], capsys)
    assert_one_line_error(code, err, "subnormal")


def test_coarse_fixed_steps_are_refused_not_nan(v0, tmp_path, capsys) -> None:
    code, _, err = run([*_sde(v0, str(tmp_path / "o.npy")), "--T", "1e300", "--steps", "10"],
                       capsys)
    assert_one_line_error(code, err, "too coarse")


def test_float32_saved_states_are_positive_semidefinite_to_rounding(tmp_path) -> None:
    """From a nearly singular V0 (the issue's 2e-7, 0.8, 1.5) in float32, every saved
    state is PSD to float32 rounding of its trace: an eigenvalue of -5e-6 is such a
    rounding where tr V is large (exiting paths), not a loss of definiteness."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    V0 = Q @ np.diag([2e-7, 0.8, 1.5]) @ Q.T
    res = solve(BLK, V0, 0.1, paths=100, seed=0, dtype=torch.float32, save_times=3,
                exit_trace=5.0)
    states = res.trajectory.double()
    states = states[torch.isfinite(states).all(-1).all(-1)]
    lo = torch.linalg.eigvalsh(states).min(-1).values
    trace = torch.diagonal(states, 0, -2, -1).sum(-1)
    assert bool((lo >= -8 * torch.finfo(torch.float32).eps * trace).all())


# ---------------------------------------------------------------------------
# Unbounded work, ignored options, folders of failed runs, messages


def test_tiny_rtol_is_refused_up_front(v0, tmp_path, capsys) -> None:
    code, _, err = run([*_sde(v0, str(tmp_path / "o.npy")), "--T", "1", "--rtol", "1e-8"],
                       capsys)
    assert_one_line_error(code, err, "rtol = 1e-08", "over max_steps")


def test_many_saved_times_are_counted_as_steps(v0, tmp_path, capsys) -> None:
    code, _, err = run([*_sde(v0, str(tmp_path / "o.npy")), "--T", "0.02",
                        "--save-times", str(10 * MAX_STEPS)], capsys)
    assert_one_line_error(code, err, "over the limit")


def test_sde_at_many_tokens_does_not_build_the_full_sigma(tmp_path, capsys, monkeypatch):
    """m = 200: Sigma(V0) alone is 12.8 GB; the check must not build it."""
    m = 200
    path = tmp_path / "V0.npy"
    np.save(path, np.eye(m))
    blk_cls = type(shapedsde.block("attention", gamma=0.5))

    def no_sigma(self, V, check=True):
        raise AssertionError("the full Sigma was built")

    monkeypatch.setattr(blk_cls, "diffusion", no_sigma)
    code, _, err = run(["sde", *ATT, "--V0", str(path), "--T", "0.001", "--steps", "1",
                        "--paths", "1", "--seed", "0", "--quiet",
                        "--out", str(tmp_path / "o.npy")], capsys)
    assert code == 0, err


def test_spot_paths_zero_is_refused(tmp_path, capsys) -> None:
    code, _, err = run(["stability", "--quick", "--T", "0.01", "--spot-paths", "0",
                        "--out", str(tmp_path / "st")], capsys)
    assert_one_line_error(code, err, "spot_paths")


def test_verify_tiny_refuses_scheduler(tmp_path, capsys) -> None:
    code, _, err = run(["verify", "--tiny", "--scheduler", "tcp://127.0.0.1:1",
                        "--out", str(tmp_path / "v")], capsys)
    assert_one_line_error(code, err, "--tiny", "--scheduler")


def test_a_failed_run_creates_no_folder(v0, tmp_path, capsys) -> None:
    out = tmp_path / "new" / "deeper" / "o.npy"
    code, _, err = run([*_sde(v0, str(out)), "--T", "0.02", "--exit-trace", "0.5"], capsys)
    assert code == 2, err
    assert not (tmp_path / "new").exists()


def test_exit_level_and_zero_time_are_printed_exactly(v0, tmp_path, capsys) -> None:
    R = 1.0000000001
    code, out, err = run([*_sde(v0, str(tmp_path / "o.npy")), "--T", "0.02",
                          "--exit-trace", repr(R)], capsys)
    assert code == 0, err
    assert f"tr V >= {R!r} tr V0" in out
    code, out, err = run([*_sde(v0, str(tmp_path / "o.npy")), "--T", "-0"], capsys)
    assert code == 0, err
    assert "T=0," in out and "T=-0" not in out


@pytest.mark.parametrize(("block", "m"), [("attention", "4"), ("linear", "7"),
                                          ("transformer", "5")])
def test_derive_entries_above_the_limit_need_insist(tmp_path: Path, block: str, m: str,
                                                    capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    """`derive --m` beyond its measured limit is refused up front, nothing written
    (attention at m = 4 ran over 4 minutes; the README once offered the Transformer at
    m = 5)."""
    out = tmp_path / "tex"
    code, _, err = run(["derive", "--block", block, "--gamma", "0.8", "--m", m,
                        "--out", str(out)], capsys)
    assert_one_line_error(code, err, "--insist")
    assert not out.exists()


def test_a_long_run_is_announced_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run within the step limit but estimated long (`--rtol 3e-6`: 4.5e5 steps) is
    announced with its estimate before any step (here with the threshold lowered, so
    that the run itself is short)."""
    import shapedsde.sde as sde_module

    monkeypatch.setattr(sde_module, "LONG_RUN_STEPS", 50)
    with pytest.warns(sde_module.LongRunWarning, match="about"):
        solve(shapedsde.block("linear", gamma=0.5), np.eye(2), 1.0, paths=2, seed=0,
              steps=60)


# ---------------------------------------------------------------------------
# Tangents and normalised blocks (fuzzing of the tangent / normalisation features)

Q2 = np.array([[1.0, 0.3, 0.0, 0.0], [0.3, 0.8, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0],
               [0.0, 0.0, 0.0, 1.0]])


def _att() -> shapedsde.Block:
    return shapedsde.block("attention", gamma=0.6, tau0=0.8)


@pytest.mark.parametrize("size", [2, 5])
@pytest.mark.parametrize("face", ["sde", "full", "gram"])
def test_a_tangents_initial_state_needs_2m_rows(size: int, face: str) -> None:
    """The solvers evaluate the faces unchecked: a (2, 2) V0 was solved as a tangent of
    m = 1 token (a silently wrong (paths, 2, 2) answer), a (5, 5) one failed deep in Torch.
    Both are refused at V0, naming initial_joint."""
    from shapedsde.tangent import tangent

    V0 = np.eye(size) * 0.9 + 0.1
    with pytest.raises(ValueError, match="2m >= 4 of rows; got " + str(size)):
        if face == "sde":
            solve(tangent(_att()), V0, 0.05, paths=2, seed=0)
        else:
            simulate(tangent(_att()), V0, width=8, T=0.05, nets=2, seed=0, method=face)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf, "a", True])
def test_initial_joint_scale_must_be_a_positive_number(scale) -> None:
    """scale <= 0 gave a singular or indefinite Q0, NaN/inf a non-finite one, a string a
    NumPy UFuncTypeError."""
    from shapedsde.tangent import initial_joint

    with pytest.raises(ValueError, match="scale"):
        initial_joint(V2, scale)


def test_tangent_has_no_reduced_sampler() -> None:
    """method='reduced' draws X W in law from X X^T: its JVP failed inside torch.linalg.qr
    (and would not have the joint law of (X W, T W) anyway)."""
    from shapedsde.tangent import initial_joint, tangent

    with pytest.raises(ValueError, match="no reduced sampler"):
        simulate(tangent(_att()), initial_joint(V2), width=8, T=0.05, nets=2, seed=0,
                 method="reduced")


def test_tangent_of_a_normalised_block_says_it_has_no_sde() -> None:
    from shapedsde.tangent import initial_joint, tangent

    with pytest.raises(ValueError, match=r"tangent of 'attention\+rms@post' has no SDE"):
        solve(tangent(shapedsde.normalised(_att())), initial_joint(V2), 0.05, paths=2, seed=0)


@pytest.mark.parametrize(("at", "face", "refused"),
                         [("post", "sde", True), ("pre", "sde", True), ("post", "finite", True),
                          ("pre", "finite", False)])
def test_exit_trace_is_refused_where_the_trace_is_fixed(at: str, face: str,
                                                        refused: bool) -> None:
    """A normalised state has tr V = m at every depth (the SDE's always, the finite
    network's after post-norm): P(exit) = 0 was reported for any R."""
    blk = shapedsde.normalised(_att(), at=at)
    go = ((lambda: solve(blk, V2, 0.05, paths=2, seed=0, exit_trace=1.5)) if face == "sde"
          else (lambda: simulate(blk, V2, width=8, T=0.05, nets=2, seed=0, exit_trace=1.5)))
    if refused:
        with pytest.raises(ValueError, match="exit_trace .* meaningless"):
            go()
    else:
        go()


def test_cli_exit_trace_with_a_post_norm_is_one_error(v0, tmp_path, capsys) -> None:
    code, _, err = run([*_sde(v0, str(tmp_path / "o.npy")), "--T", "0.05", "--norm", "rms",
                        "--exit-trace", "1.5"], capsys)
    assert_one_line_error(code, err, "--exit-trace", "meaningless")
    assert not list(tmp_path.glob("o.*"))


def test_cli_tangent_reduced_is_one_error(v0, tmp_path, capsys) -> None:
    code, _, err = run(["finite", *ATT, "--V0", v0, "--T", "0.05", "--width", "8", "--nets",
                        "2", "--seed", "0", "--quiet", "--tangent", "--method", "reduced",
                        "--out", str(tmp_path / "o.npy")], capsys)
    assert_one_line_error(code, err, "no reduced sampler")
    assert not list(tmp_path.glob("o.*"))


@pytest.mark.parametrize("command", ["sde", "finite"])
def test_cli_tangent_spectrum_is_the_tokens_and_meta_names_the_block(command, tmp_path,
                                                                     capsys) -> None:
    """--save-spectrum with --tangent wrote the spectrum of Q (2m values a row, mixing V with
    the arbitrary scale of U); OUT.json lost the smooth MLP's activation."""
    v0 = tmp_path / "V0.npy"
    np.save(v0, V2)
    out = tmp_path / "o.npy"
    size = (["--paths", "3"] if command == "sde" else ["--width", "8", "--nets", "3"])
    code, _, err = run([command, "--block", "mlp", "--gamma", "0.6", "--activation", "tanh",
                        "--V0", str(v0), "--T", "0.05", *size, "--seed", "0", "--quiet",
                        "--tangent", "--save-spectrum", "--out", str(out)], capsys)
    assert code == 0, err
    Q, spec = np.load(out), np.load(tmp_path / "o.spectrum.npy")
    assert Q.shape == (3, 4, 4) and spec.shape == (3, 2)
    want = np.log(np.linalg.eigvalsh(Q[:, :2, :2]))
    np.testing.assert_allclose(spec, want, rtol=1e-10)
    meta = json.loads((tmp_path / "o.json").read_text())
    assert meta["activation"] == "tanh" and meta["tangent_of"] == "mlp" and meta["tangent"]


@pytest.mark.parametrize(("V", "needle"), [
    (np.array([[1.0, 0.0], [0.0, -1.0]]), "positive semi-definite"),
    (np.array([[1.0, 5.0], [0.0, 1.0]]), "symmetric"),
    (np.eye(2) * 1j, "real numbers"),
    (np.eye(2, dtype=bool), "real numbers"),
    (np.array(["a"]), "real numbers"),
])
def test_log_spectrum_refuses_what_is_not_a_covariance(V, needle) -> None:
    """An indefinite V had its eigenvalue -1 reported as NaN 'of rounding', a non-symmetric
    one was silently symmetrised, complex input silently lost its imaginary part, and a
    string failed inside torch.as_tensor."""
    from shapedsde.spectrum import log_spectrum

    with pytest.raises(ValueError, match=needle):
        log_spectrum(V)


def test_log_spectrum_rounding_tolerance_follows_the_precision() -> None:
    """A float32 state's rounding (eigenvalue -1e-7 of the largest) is NaN-flagged, not
    refused; the same in float64 beyond 1e-8 is refused, and NaN rows pass."""
    from shapedsde.spectrum import log_spectrum_flags

    V = np.array([[1.0, 0.0], [0.0, -1e-7]])
    _, bad, _ = log_spectrum_flags(V.astype(np.float32))
    assert bool(bad)
    with pytest.raises(ValueError, match="positive semi-definite"):
        log_spectrum_flags(V)
    logw, bad, _ = log_spectrum_flags(np.stack([np.full((2, 2), np.nan), np.eye(2)]))
    assert np.isnan(logw[0]).all() and (logw[1] == 0).all() and not bad.any()


TRAIN = ["train", "--width", "8", "--depth", "2", "--length", "4", "--vocab", "3", "--batch",
         "2", "--steps", "2", "--quiet"]


@pytest.mark.parametrize(("extra", "needle"), [
    (["--points", "0.5,1", "--lrs", "", "--seeds", "0"], "expected comma-separated floats"),
    (["--points", "0.5,1", "0.5,1.0", "--lrs", "0.01", "--seeds", "0"], "points must be distinct"),
    (["--points", "preln", "preln", "--lrs", "0.01", "--seeds", "0"], "points must be distinct"),
    (["--points", "0.5,1", "--lrs", "0.01,0.01", "--seeds", "0"], "rates must be distinct"),
    (["--points", "0.5,1", "--lrs", "0.01", "--seeds", "1", "1"], "seeds must be distinct"),
    (["--points", "0.5,1", "--lrs", "inf", "--seeds", "0"], "finite"),
])
def test_train_refuses_empty_or_repeated_grids(extra, needle, tmp_path, capsys) -> None:
    """`--lrs ''` silently trained the three default rates; a repeated point, rate or seed
    was summarised as independent seeds (2 'seeds' with sd 0 from one seed)."""
    out = tmp_path / "train"
    code, _, err = run([*TRAIN, *extra, "--out", str(out)], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("at", ["post", "pre"])
def test_stability_of_a_normalised_block_runs_without_an_exit_level(at, tmp_path,
                                                                     capsys) -> None:
    """The stability map and its spot check pass no exit level for a normalised block
    (tr V = m: the solver refuses one), on both faces, so that their survivors are the
    same population (pre-norm finite nets were stopped, the SDE's paths never)."""
    code, out, err = run(["stability", "--block", "attention", "--gammas", "0.5", "--tau0s",
                          "1", "--T", "0.05", "--paths", "3", "--m", "2", "--no-reference",
                          "--widths", "8", "--nets", "3", "--spot-paths", "3", "--spot",
                          "0.5,1", "--norm", "rms", "--norm-at", at, "--out",
                          str(tmp_path)], capsys)
    assert code == 0, err
    spot = json.loads(next(tmp_path.glob("*_spot.json")).read_text())
    assert "P(exit by T) 0.000" in out and spot
