"""Batched Monte-Carlo solver for the covariance SDE dV = b(V) dt + Sigma(V)^{1/2} dB (Ito).

Conventions (see docs/solver.md and `shapedsde.blocks`):

- V is a symmetric positive-definite (m, m) matrix; a batch of paths is (paths, m, m).
- "coefficients" is any object with `drift(V, check=False) -> (..., m, m)` and
  `diffusion(V, check=False) -> (..., m, m, m, m)` on Torch tensors, e.g. a
  `shapedsde.block(...)`. Sigma^{ab,cd} = lim n Cov[dV^{ab}, dV^{cd}]. Optional hooks, used
  where present: `ito_contraction(V)` and `trace_variance(V)` (generated kernels; else
  computed from the full Sigma), `noise_groups` + `structured_noise(V, N, factor=R)` (an
  O(m^3) draw with covariance Sigma; else Sigma is eigen-factorised, O(m^6)),
  `project_factor(L)`: for an SDE that keeps V on an invariant set (post-normalised
  blocks: unit diagonal, `shapedsde.normalised`), the Cholesky factor of the state put
  back on it after each step (the step leaves it by O(h) pathwise, O(h^2) in mean).

The scheme (`shapedsde.scheme`): the Cholesky factor of V is stepped multiplicatively,
L' = L chol(exp(M)) with a positive-definite approximation of exp, so every state is
positive definite by construction (no projection, no clipping, no taming); weak order 1.
By default the step adapts to the state (`rtol`); `steps=N` gives N equal steps instead.

Stopping and explosion, per path:
- `exit_trace=R` stops a path at the first time tr V_t >= R tr V_0 (for coefficients with
  `monitored_tokens(m)`, e.g. a tangent, the trace of that leading block; between two steps the
  crossing is detected with the Brownian-bridge probability of the trace, so the exit
  time is not biased by the step); `exit_time` is that time (inf where the path stayed
  inside up to T) and V, the trajectory included, is frozen there: the stopped process.
- a path whose trace reaches `blowup` times tr V_0 has exploded (the attention drift is
  cubic: the SDE blows up in finite time); it is flagged in `exploded`, its
  `explosion_time` recorded, and its V is NaN: never folded into the sample.
- a path whose numbers become non-finite is flagged in `finite` (NaN in V); by default a
  RuntimeWarning is issued, `nonfinite="raise"` raises FloatingPointError instead.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import _validation as val
from . import on_range, scheme
from .progress import progress_bar
from .spectrum import log_spectrum

#: Adaptive step: tolerance on the size of the factor increment M (see `shapedsde.scheme`),
#: and the largest step at m <= DT_MAX_TOKENS tokens. Chosen by the error targets in
#: docs/solver.md (P(exit) within 0.004 on the depth grid at m = 3, 4).
RTOL = 0.1
DT_MAX = 0.01
#: Beyond this many tokens the default cap grows like m + 1 (`default_dt_max`).
DT_MAX_TOKENS = 7
#: The default noise map (`scheme.SCHEMES`; docs/solver.md, "Many tokens").
NOISE_MAP = "matched"
#: A path whose trace reaches BLOWUP * tr(V_0) has exploded. Under a cubic drift the time
#: left from that level is about BLOWUP^-2 (1e-12) of the blow-up time scale, far below any
#: step; higher levels cost float64 its accuracy: exploding attention states turn nearly
#: rank one, and at m = 16-64 some reached lambda_min / tr V ~ 1e-17 past 1e9 tr V_0 and
#: failed their factorisation (counted as non-finite, not exploded: docs/solver.md).
BLOWUP = 1e6
#: On the CPU a step's arithmetic runs on chunks of paths whose (paths, m, m) arrays hold at
#: most this many numbers (2 MiB in float64): beyond the cache, each elementwise pass over
#: a batch costs several times more per path (`_Run.step`). Measured best of 2^15 ... 2^22
#: at m = 8, 16 and 64 (docs/benchmarks.md, part f). On a GPU: one batch.
CHUNK_ELEMENTS = 2**18
#: Most steps any one path may take before the run is stopped with an error.
MAX_STEPS = 10**6
#: A fixed step is refused where dt r(V0) (`scheme.step_rate`: the size of the first
#: step's factor increment) is over this: exp(50) = 5e21, a few such steps overflow.
MAX_FIXED_INCREMENT = 50.0
#: The most numbers one (paths, m, m) state array may hold (2^40: 8 TiB in float64): a
#: larger request is refused as a ValueError before Torch is asked to allocate it.
MAX_ELEMENTS = 2**40
#: A run estimated at more steps a path than this is announced (`LongRunWarning`) before
#: it starts: within the step limit, but long (1e5 steps at m = 3 is minutes, at m = 64
#: hours).
LONG_RUN_STEPS = 1e5
#: A fixed step with h r(V) above this (`scheme.step_rate`; ten times the default rtol) is
#: coarse for the state it starts from: its error is no longer small (measured: causal
#: attention from lambda_min / tr V = 1e-4 at 20 fixed steps made up 6 explosions in 100
#: paths, none at the adaptive default). Such path-steps are counted per path and warned of.
COARSE = 1.0

SCHEME = scheme.NAME
NONFINITE_POLICIES = ("warn", "raise")
check_device = val.check_device


class WorkLimitError(ValueError, RuntimeError):
    """A run that would take (or took) more steps than its limit `max_steps`: a
    ValueError for callers that validate inputs, a RuntimeError as it was before."""


class LongRunWarning(UserWarning):
    """A run within the step limit whose estimated number of steps is large."""


def exit_summary(exit_time: Any, exit_trace: float | None) -> dict[str, Any]:
    """R, the number of exits and P(exit) with its binomial standard error, from exit
    times (inf: no exit), for SDE paths and finite networks alike."""
    t = np.asarray(exit_time, dtype=np.float64)
    n = int(np.isfinite(t).sum())
    p = n / t.size
    return {"exit_trace": exit_trace, "n_exits": n, "p_exit": p,
            "p_exit_se": math.sqrt(p * (1 - p) / t.size)}


def default_dt_max(m: int) -> float:
    """The default cap on the adaptive step for m tokens: DT_MAX up to DT_MAX_TOKENS,
    DT_MAX (m + 1) / (DT_MAX_TOKENS + 1) beyond. The cap resolves the exit problem of
    tr V, whose relative variance rate falls like 1 / (m + 1) (0.44, 0.08, 0.021, 0.005 at
    m = 3, 16, 64, 256 for attention gamma 0.5), so the cap grows in proportion; at many
    tokens the noise then sets the step (docs/solver.md, "Many tokens": the measured
    P(exit), survivors' and log-spectrum errors at m = 3, 16, 64)."""
    return DT_MAX * max(1.0, (m + 1) / (DT_MAX_TOKENS + 1))


def default_steps(T: float) -> int:
    """The number of equal steps with dt <= DT_MAX (for callers that want a fixed grid)."""
    T = val.check_time(T)
    n = T / DT_MAX - 1e-9
    if not n <= 2**62:  # T = 1e308 overflowed math.ceil
        raise WorkLimitError(f"T = {T:g} would take {n:.3g} steps of dt <= {DT_MAX:g}, over any "
                             f"limit (max_steps = {MAX_STEPS:.3g}); lower T")
    return max(1, math.ceil(n))


@dataclass
class SDEResult:
    """Output of `solve`.

    V: (paths, m, m) states at time min(T, exit time) (NaN for exploded or non-finite paths).
    times: (n_saved,) float64 CPU tensor of saved times, or None.
    trajectory: (n_saved, paths, m, m) saved states of the stopped process (same device as
        V; NaN from the explosion on), or None.
    finite: (paths,) bool, False for paths whose numbers became NaN/inf.
    exit_time: (paths,) float64 CPU, first time tr V >= exit_trace tr V_0 (inf: none, or
        exit_trace not given).
    exploded: (paths,) bool; explosion_time: (paths,) float64 (inf where none).
    steps: (paths,) int64, steps each path took.
    meta: JSON-serialisable run description and counters (see `summary`).
    log_spectrum(): (paths, m) log eigenvalues of V, ascending (`shapedsde.spectrum`).
    coarse_steps: (paths,) int64, fixed steps each path took with h r(V) > COARSE (too
        coarse for its state: `scheme.step_rate`); zeros for adaptive steps.
    """

    V: torch.Tensor
    times: torch.Tensor | None
    trajectory: torch.Tensor | None
    finite: torch.Tensor
    exit_time: torch.Tensor
    exploded: torch.Tensor
    explosion_time: torch.Tensor
    steps: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    coarse_steps: torch.Tensor | None = None

    @property
    def exited(self) -> torch.Tensor:
        """(paths,) bool: the path reached the exit ball before T."""
        return torch.isfinite(self.exit_time)

    @property
    def survivors(self) -> torch.Tensor:
        """(paths,) bool: inside the ball up to T, not exploded, finite."""
        return ~self.exited & ~self.exploded & self.finite.cpu()

    def survival(self, times: Any) -> tuple[np.ndarray, np.ndarray]:
        """P(stopping time > t) at each t of `times` (exit or explosion), and its SE."""
        t = np.asarray(times, dtype=np.float64)
        stop = np.minimum(self.exit_time.numpy(), self.explosion_time.numpy())
        S = (stop[None, :] > t[:, None]).mean(axis=1)
        return S, np.sqrt(S * (1 - S) / stop.size)

    def log_spectrum(self, nonpositive: str = "warn") -> torch.Tensor:
        """(paths, m) float64: log eigenvalues of V, ascending (`shapedsde.spectrum`):
        NaN rows for exploded or non-finite paths, NaN (and a warning, or ValueError with
        nonpositive="raise") for an eigenvalue <= 0 of rounding."""
        return log_spectrum(self.V, nonpositive=nonpositive)

    def summary(self) -> str:
        """One line: what was solved, the steps, exits, explosions and failures."""
        d = self.meta
        steps = (f"{d['steps']} steps (dt={d['dt']:.3g})" if d["step_rule"] == "fixed" else
                 f"adaptive rtol={d['rtol']:g}: {d['steps_mean']:.0f} steps/path "
                 f"(min dt {d['dt_min']:.2g})")
        size = (f"m={d['m']}" if d.get("tokens") is None
                else f"{d['tokens']} tokens and their tangents ({d['m']} x {d['m']})")
        line = (f"SDE {d['coefficients']}: {d['paths']} paths, {size}, T={d['T']:g}, "
                f"{steps}, seed {d['seed']}, {d['device']} {d['dtype']}")
        if d["exit_trace"] is not None:
            line += (f" | exit at tr V >= {val.fmt_level(d['exit_trace'])} tr V0: "
                     f"{d['n_exits']} paths, "
                     f"P(exit) = {d['p_exit']:.4f} +- {d['p_exit_se']:.4f}")
        line += f" | exploded {d['n_exploded']}, non-finite {d['n_nonfinite']}"
        line += f" | {d['wall_s']:.2f} s"
        if d["n_exploded"]:
            line += (f" | NOTE: {d['n_exploded']} paths blew up (tr V >= "
                     f"{val.fmt_level(d['blowup'])} tr V0) "
                     "before T; their V is NaN (result.exploded, result.explosion_time); "
                     "pass exit_trace to study the stopped process")
        if d["n_nonfinite"]:
            line += (f" | WARNING: {d['n_nonfinite']} paths became non-finite; their V is NaN "
                     "(see result.finite)")
        if d.get("n_coarse_paths"):
            line += (f" | WARNING: {d['n_coarse_paths']} paths took fixed steps too coarse "
                     "for their state (result.coarse_steps); use more steps or the adaptive "
                     "default")
        return line


def solve(coefficients: Any, V0: Any, T: float, *, paths: int, seed: int,
          steps: int | None = None, rtol: float = RTOL, dt_max: float | None = None,
          exit_trace: float | None = None, blowup: float = BLOWUP,
          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
          save_every: int | None = None, save_times: Any = None, progress: bool = False,
          nonfinite: str = "warn", noise: str = "auto", max_steps: int = MAX_STEPS,
          noise_map: str = NOISE_MAP) -> SDEResult:
    """Simulate `paths` independent paths of the covariance SDE from V0 to time T.

    coefficients: object with `drift`/`diffusion` (and optional hooks, module docstring).
    V0: (m, m) symmetric positive-definite NumPy array or Torch tensor, or (paths, m, m).
    T: horizon (depth-to-width ratio), >= 0.
    paths, seed: number of paths (>= 1) and seed (integer in [0, 2^63)) of the
        `torch.Generator` on `device` that every draw comes from (same seed, device and
        dtype: same result).
    steps: None (default) for adaptive steps with tolerance `rtol` and dt <= `dt_max`
        (docs/solver.md: the default meets its error targets); an integer N for N equal
        steps of T / N.
    dt_max: the largest adaptive step; None (default): `default_dt_max(m)` (0.01 up to
        m = 7 tokens, growing like m + 1 beyond), m the state's size.
    exit_trace: R > 1 stops each path at the first time tr V_t >= R tr V_0 (see the
        module docstring); None: no stopping.
    blowup: a path with tr V >= blowup tr V_0 has exploded (flagged, V NaN).
    save_every (fixed steps only): keep the states every `save_every` steps (and t = 0, T).
    save_times: an int k (k + 1 equally spaced times in [0, T]) or an increasing sequence
        of times in [0, T]; the steps land exactly on them. Not together with save_every.
    device, dtype: where and in what precision to compute (float32 or float64).
    progress: a tqdm bar on stderr. nonfinite: "warn" or "raise" (module docstring).
    noise: "auto" (structured O(m^3) noise where the coefficients offer it) or "generic".
    noise_map: "matched" (default: M = X + b_m W^3 + beta_m (tr W) W^2, Pade exp, noise
        tolerance 5 rtol: about a fifth of the steps where the noise sets the step, many tokens) or
        "corrected" (M = X - excess(X), exp_+, noise tolerance rtol; the default before
        issue 21); docs/solver.md, "Many tokens".
    max_steps: most steps one path may take: a run that needs more (fixed steps, or
        T / dt_max) is refused up front, and an adaptive run that reaches it stops with a
        WorkLimitError (a ValueError and RuntimeError).

    Raises ValueError for invalid inputs.
    """
    _check_coefficients(coefficients)
    T = val.check_time(T)
    paths = val.check_positive_int("paths", paths)
    seed = val.check_seed(seed)
    steps = None if steps is None else val.check_positive_int("steps", steps)
    rtol = _check_positive("rtol", rtol)
    dt_max = None if dt_max is None else _check_positive("dt_max", dt_max)
    blowup = val.check_blowup(blowup)
    max_steps = val.check_positive_int("max_steps", max_steps)
    check_step_count(T, steps, DT_MAX if dt_max is None else dt_max, max_steps)
    if exit_trace is not None:
        exit_trace = _check_positive("exit_trace", exit_trace)
        if not 1.0 < exit_trace < blowup:
            raise ValueError(f"exit_trace must lie in (1, blowup = {blowup:g}); got {exit_trace}")
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}; got {nonfinite!r}")
    if noise_map not in scheme.SCHEMES:
        raise ValueError(f"noise_map must be one of {scheme.SCHEMES}; got {noise_map!r}")
    if noise not in ("auto", "generic"):
        raise ValueError(f"noise must be 'auto' or 'generic'; got {noise!r}")
    device, dtype = check_device(device), val.check_float_dtype(dtype)
    keep = save_every is not None or save_times is not None
    grid = _save_grid(T, steps, save_every, save_times)
    if len(grid) > max_steps:  # every saved time ends a step
        raise WorkLimitError(f"{len(grid)} saved times would take at least as many steps, over "
                             f"max_steps = {max_steps:.3g}; save fewer times")
    V = _initial_state(V0, paths, device, dtype)
    dt_max = default_dt_max(V.shape[-1]) if dt_max is None else dt_max
    scheme.check_state(coefficients, V)
    if exit_trace is not None:
        scheme.check_exit_trace(coefficients, "sde")
    coefficients, Q = _restrict_to_range(coefficients, V)
    if Q is not None:  # V0 singular with a kept null space: solve for Q^T V Q
        V = Q.T @ V @ Q
    weight = scheme.noise_weight(noise_map)
    rate, rate_K = _probe(coefficients, V[:1], weight)
    if steps is None:
        # The adaptive step is at most about rtol / |K_d|, which is bounded on every state
        # (the drift's rate can be large for a few steps only: scheme's docstring).
        least = T * max(1.0 / dt_max, rate_K / rtol)  # rate_K: weighted by _probe
        if least > max_steps:
            raise WorkLimitError(f"at rtol = {rtol:g} the step at V0 is about "
                                 f"{T / least:.3g}, so the run to T = {T:g} would take about "
                                 f"{least:.3g} steps, over max_steps = {max_steps:.3g}; raise "
                                 "rtol, lower T, or raise max_steps")
    estimate = float(steps) if steps is not None else least
    if estimate > LONG_RUN_STEPS:
        warnings.warn(f"the run to T = {T:g} will take about {estimate:.3g} steps a path "
                      f"({'fixed' if steps is not None else f'rtol = {rtol:g}, estimated at V0'}"
                      f"), {paths} paths of {V.shape[-1]} x {V.shape[-1]}: it may take long",
                      LongRunWarning, stacklevel=2)
    if steps is not None and T / steps * rate > MAX_FIXED_INCREMENT:
        need = T / MAX_FIXED_INCREMENT * rate
        raise ValueError(f"a fixed step dt = T / steps = {T / steps:.3g} is too coarse for this "
                         f"SDE at V0 (its factor increment would be {T / steps * rate:.3g}, "
                         f"which the scheme's exponential turns into overflow); give steps >= "
                         f"{need:.3g} or leave steps out for the adaptive default")

    start = time.perf_counter()
    run = _Run(coefficients, V, T, steps, rtol, dt_max, exit_trace, blowup, grid,
               torch.Generator(device=device).manual_seed(seed), nonfinite,
               structured=noise == "auto", noise_map=noise_map)
    run.solve(progress, max_steps)
    wall = time.perf_counter() - start

    meta = run.counters()
    if meta["n_coarse_paths"]:
        warnings.warn(f"{meta['n_coarse_paths']} of {paths} SDE paths took fixed steps too "
                      f"coarse for their state (dt r(V) > {COARSE:g}, {meta['n_coarse_steps']} "
                      "path-steps; SDEResult.coarse_steps): their law may be wrong; use more "
                      "steps or the adaptive default", RuntimeWarning, stacklevel=2)
    if meta["n_nonfinite"] and nonfinite == "warn":
        warnings.warn(f"{meta['n_nonfinite']} of {paths} SDE paths became non-finite; their V "
                      "is NaN (see SDEResult.finite)", RuntimeWarning, stacklevel=2)
    m = V.shape[-1] if Q is None else Q.shape[0]
    meta.update(T=T, m=m, paths=paths, seed=seed,
                scheme=SCHEME if noise_map == "corrected" else scheme.MATCHED_NAME,
                noise_map=noise_map, weak_order=scheme.WEAK_ORDER, device=str(device),
                dtype=str(dtype).removeprefix("torch."),
                coefficients=_describe(coefficients), nonfinite_policy=nonfinite,
                noise="structured" if run.uses_structured else "generic", wall_s=wall)
    if Q is not None:
        meta.update(range_rank=Q.shape[1])
    if run.k != V.shape[-1]:  # a joint state (a tangent): its leading rows are the tokens
        meta.update(tokens=run.k)
    res = run.result(meta, keep)
    return res if Q is None else _lifted(res, coefficients)


class _Run:
    """All paths' factors, clocks and flags; `solve` advances the paths that are not done.

    Each path has its own time t and step (adaptive steps differ between paths); only the
    paths still running are gathered for a step, so a few slow paths cost only their share.
    """

    def __init__(self, coefficients: Any, V: torch.Tensor, T: float, steps: int | None,
                 rtol: float, dt_max: float, exit_trace: float | None, blowup: float,
                 grid: np.ndarray, generator: torch.Generator, nonfinite: str,
                 structured: bool, noise_map: str = "corrected") -> None:
        self.coef, self.T, self.fixed = coefficients, T, steps
        self.rtol, self.dt_max, self.gen, self.nonfinite = rtol, dt_max, generator, nonfinite
        self.structured = structured
        self.matched = noise_map == "matched"
        self.noise_weight = scheme.noise_weight(noise_map)
        project = getattr(coefficients, "project_factor", None)
        self.project = project if callable(project) else None
        P, m = V.shape[0], V.shape[-1]
        dev, f64 = V.device, dict(dtype=torch.float64, device=V.device)
        self.L = _initial_factor(V)
        self.V = V
        self.k = scheme.monitored_tokens(coefficients, m)  # the exit trace's rows
        trace0 = torch.diagonal(V, 0, -2, -1).sum(-1).to(torch.float64)
        exit0 = scheme.monitored_trace(V, self.k).to(torch.float64)
        self.exit_level = None if exit_trace is None else exit_trace * exit0
        self.blow_level = blowup * trace0
        self.exit_trace, self.blowup = exit_trace, blowup
        self.t = torch.zeros(P, **f64)
        self.done = torch.zeros(P, dtype=torch.bool, device=dev)
        self.alive = torch.ones(P, dtype=torch.bool, device=dev)
        self.exploded = torch.zeros(P, dtype=torch.bool, device=dev)
        self.exit_time = torch.full((P,), math.inf, **f64)
        self.explosion_time = torch.full((P,), math.inf, **f64)
        self.n_steps = torch.zeros(P, dtype=torch.int64, device=dev)
        self.dt_min = math.inf
        self.first_nonfinite_step: int | None = None
        self.grid = torch.as_tensor(grid, **f64)  # saved times, always ending at T
        self.next_save = torch.zeros(P, dtype=torch.int64, device=dev)
        self.saved = torch.full((len(grid), P, m, m), math.nan, dtype=V.dtype, device=dev)
        for _ in range(int((grid <= 0.0).sum())):  # t = 0, as often as it is asked for
            self._record(torch.arange(P, device=dev))
        self.iterations = 0
        self.n_uncorrected = 0  # path-steps without the mean correction (scheme.step_matrix)
        self.coarse = torch.zeros(P, dtype=torch.int64, device=dev)  # COARSE fixed steps

    @property
    def uses_structured(self) -> bool:
        return self.structured and getattr(self.coef, "noise_groups", None) is not None

    def solve(self, progress: bool, max_steps: int) -> None:
        bar = _progress_bar(self.T, progress)
        try:
            while not bool(self.done.all()):
                if self.iterations >= max_steps:
                    raise WorkLimitError(
                        f"{int((~self.done).sum())} paths did not reach T = {self.T:g} in "
                        f"{max_steps} steps (smallest step {self.dt_min:.3g}); raise max_steps "
                        "or rtol, or pass exit_trace to stop paths near blow-up")
                self.step(self.iterations + 1)
                self.iterations += 1
                if progress:  # a reduction over the paths: only when it is shown
                    running = self.t[~self.done]
                    bar.update((float(running.min()) if running.numel() else self.T) - bar.n)
        finally:
            bar.close()

    def step(self, k: int) -> None:
        """One step of every running path. The step's random numbers are drawn first, for
        all of them at once; the arithmetic then runs (on the CPU) in chunks of at most
        CHUNK_ELEMENTS numbers per (paths, m, m) array, so that a large batch stays in
        cache (at m = 16, 16384 paths in one batch ran 2.4x slower per path-step than in
        chunks of 1024), with the same draws, hence the same result, as one batch."""
        idx = (~self.done).nonzero()[:, 0]
        n, m = idx.numel(), self.V.shape[-1]
        xi = self._gaussians(n)
        u = None if self.exit_level is None else torch.rand(
            n, generator=self.gen, device=idx.device, dtype=torch.float64)
        # On a GPU one batch: its step is latency-bound (about 4 ms whatever m, docs/
        # benchmarks.md), so chunks would multiply the time.
        size = n if self.V.is_cuda else max(1, CHUNK_ELEMENTS // m**2)
        whole = n == self.done.numel() and n <= size  # no gather or scatter of states
        for s in range(0, n, size):
            self._advance(k, idx[s:s + size], xi[s:s + size],
                          None if u is None else u[s:s + size], whole)

    def _advance(self, k: int, idx: torch.Tensor, xi: torch.Tensor, u: torch.Tensor | None,
                 whole: bool) -> None:
        """Step paths `idx` with their Gaussians `xi` and exit uniforms `u`."""
        L, V = (self.L, self.V) if whole else (self.L[idx], self.V[idx])
        t = self.t[idx]
        target = self.grid[self.next_save[idx]]  # the next saved time, never stepped over
        Sigma = self._generic_sigma(V)
        b, K = scheme.drift_and_ito(self.coef, V, Sigma)
        Linv = scheme.triangular_inverse(L)
        D, Kd = scheme.sandwich(Linv, b), scheme.sandwich(Linv, K)  # factor coordinates
        h = scheme.land_evenly(self._dt(L, D, Kd, t, idx), target - t)
        hs = h.to(V.dtype)
        if self.matched:
            M = scheme.matched_step_matrix(Linv, -0.5 * Kd, *self._noise(xi, V, L, Linv, Sigma), hs)
            L_new = scheme.factor_step(L @ scheme.drift_factor(D, hs), M, scheme.pade_exp)
        else:
            M, small = scheme.step_matrix(Linv, -0.5 * Kd, *self._noise(xi, V, L, Linv, Sigma), hs)
            self.n_uncorrected += int((~small).sum())
            L_new = scheme.factor_step(L @ scheme.drift_factor(D, hs), M)
        if self.project is not None:
            L_new = self.project(L_new)
        V_new = L_new @ L_new.transpose(-1, -2)
        t_new = scheme.advance_clock(t, h, target)
        ok = _finite_rows(V_new)
        self._kill(idx[~ok], k)
        trace = torch.diagonal(V_new, 0, -2, -1).sum(-1).to(torch.float64)
        blown = ok & (trace >= self.blow_level[idx])
        level = (trace if self.k == V.shape[-1]
                 else scheme.monitored_trace(V_new, self.k).to(torch.float64))
        exits = ok & ~blown & self._exits(V, Linv, K, level, h, idx, u)
        keep = ok & ~blown
        if whole and bool(keep.all()):
            self.L, self.V = L_new, V_new
        else:
            self.L[idx[keep]], self.V[idx[keep]] = L_new[keep], V_new[keep]
        self.t[idx] = t_new
        self.n_steps[idx] += 1
        self.dt_min = min(self.dt_min, float(h.min()))
        self.exploded[idx[blown]] = True
        self.explosion_time[idx[blown]] = t_new[blown]
        self.exit_time[idx[exits]] = t_new[exits]
        landed = keep & (t_new == target)
        self._record(idx[landed])
        self._freeze(idx[exits])
        self.done[idx[~keep | exits | (t_new >= self.T)]] = True

    def _dt(self, L: torch.Tensor, D: torch.Tensor, Kd: torch.Tensor, t: torch.Tensor,
            idx: torch.Tensor) -> torch.Tensor:
        """The per-path step (float64): fixed T / steps (path-steps with h r(V) > COARSE
        counted), or adaptive (`scheme.step_rate`)."""
        rate = scheme.step_rate(L, D, Kd, self.noise_weight).to(torch.float64)
        if self.fixed is not None:
            h = torch.full_like(t, self.T / self.fixed)
            coarse = ~(h * rate <= COARSE)  # NaN rates count as coarse
            if bool(coarse.any()):
                self.coarse[idx[coarse]] += 1
            return h
        return scheme.adaptive_dt(rate, self.rtol, self.dt_max)

    def _gaussians(self, n: int) -> torch.Tensor:
        """The standard Gaussians of one step for n paths: (n, groups, m, m) for the
        structured noise, else (n, m, m)."""
        m = self.V.shape[-1]
        shape = (n, self.coef.noise_groups, m, m) if self.uses_structured else (n, m, m)
        # Drawn in float32 whatever the state's precision: a float64 Gaussian costs about 4x
        # more on the CPU (at m = 64 a fifth of the step), and the draw's rounding (2^-24
        # relative) and tail (|xi| <= 5.7) are far below the scheme's O(h) weak error.
        return torch.randn(shape, generator=self.gen, device=self.V.device,
                           dtype=torch.float32).to(self.V.dtype)

    def _generic_sigma(self, V: torch.Tensor) -> torch.Tensor | None:
        """Sigma(V) where the step's noise is factorised from it (no structured noise, no
        `diffusion_prod`), computed once a step for the noise and, without an
        `ito_contraction` hook, for K; else None."""
        if self.uses_structured or callable(getattr(self.coef, "diffusion_prod", None)):
            return None
        return self.coef.diffusion(V, check=False)

    def _noise(self, xi: torch.Tensor, V: torch.Tensor, L: torch.Tensor, Linv: torch.Tensor,
               Sigma: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """(Sigma(V)^{1/2} dB_1, False) per path, or (L^{-1} Sigma(V)^{1/2} dB_1 L^{-T},
        True) where the coefficients offer the structured noise in factor coordinates
        (the step scales it by sqrt(h): it is linear in dB), from the Gaussians `xi`.
        Structured (O(m^3)) where the coefficients offer it; else from `Sigma`
        (`_generic_sigma`)."""
        if not self.uses_structured:
            if Sigma is None:  # the coefficients' own product
                return _noise(self.coef, V, xi), False
            return _factor_coordinates_noise(Sigma, Linv, xi), True
        if callable(getattr(self.coef, "factor_noise", None)):
            return self.coef.factor_noise(V, xi, L, Linv), True
        return self.coef.structured_noise(V, xi, check=False, factor=L), False

    def _exits(self, V: torch.Tensor, Linv: torch.Tensor, K: torch.Tensor,
               trace: torch.Tensor, h: torch.Tensor, idx: torch.Tensor,
               u: torch.Tensor | None) -> torch.Tensor:
        """Paths that reached the exit level during the step (Brownian-bridge test with the
        uniforms `u`, drawn by `step` only where there is an exit level)."""
        if u is None:
            return torch.zeros_like(trace, dtype=torch.bool)
        level = self.exit_level[idx]
        x0 = scheme.monitored_trace(V, self.k).to(torch.float64)
        gap = 2.0 * (level - x0).clamp_min(0) * (level - trace).clamp_min(0)
        # P(a Brownian bridge from x0 to x1 with variance s2 h crosses the level) is
        # exp(-gap / (s2 h)), increasing in s2: a path that does not cross with s2 replaced
        # by an upper bound (twice |V|_F^2 tr(V^-1 K), a margin for rounding) cannot cross,
        # so the exact s2 (a kernel call) is evaluated only where it might.
        bound = 2.0 * scheme.trace_variance_bound(V, Linv, K, self.k).to(
            torch.float64).clamp_min(1e-300)
        cross = trace >= level
        maybe = (~cross & (u < torch.exp(-gap / (bound * h)))).nonzero()[:, 0]
        if maybe.numel():
            s2 = scheme.trace_variance(self.coef, V[maybe], self.k).to(
                torch.float64).clamp_min(1e-300)
            cross[maybe] = u[maybe] < torch.exp(-gap[maybe] / (s2 * h[maybe]))
        return cross

    def _record(self, idx: torch.Tensor) -> None:
        """Save the states of paths `idx`, which have just landed on their next saved time."""
        if idx.numel() == 0:
            return
        self.saved[self.next_save[idx], idx] = self.V[idx]
        self.next_save[idx] = (self.next_save[idx] + 1).clamp(max=len(self.grid) - 1)

    def _freeze(self, idx: torch.Tensor) -> None:
        """Stopped paths keep their state at the exit for every later saved time."""
        later = (self.grid[:, None] > self.t[idx][None, :])[..., None, None]  # (k, n, 1, 1)
        self.saved[:, idx] = torch.where(later, self.V[idx], self.saved[:, idx])

    def _kill(self, dead: torch.Tensor, k: int) -> None:
        if dead.numel() == 0:
            return
        if self.first_nonfinite_step is None:
            self.first_nonfinite_step = k
        if self.nonfinite == "raise":
            raise FloatingPointError(f"{dead.numel()} SDE paths became non-finite at step {k}; "
                                     "pass nonfinite='warn' to flag them")
        self.alive[dead] = False

    def result(self, meta: dict[str, Any], keep: bool) -> SDEResult:
        bad = ~self.alive | self.exploded
        V = torch.where(bad[:, None, None], math.nan, self.V)
        # NaN from the explosion / failure on.
        stop = torch.minimum(self.explosion_time, self.t)
        after = bad[None, :] & (self.grid[:, None] >= stop[None, :])
        saved = torch.where(after[..., None, None], math.nan, self.saved)
        return SDEResult(V=V, times=self.grid.cpu() if keep else None,
                         trajectory=saved if keep else None,
                         finite=self.alive.clone(), exit_time=self.exit_time.cpu(),
                         exploded=self.exploded.cpu(),
                         explosion_time=self.explosion_time.cpu(),
                         steps=self.n_steps.cpu(), meta=meta,
                         coarse_steps=self.coarse.cpu())

    def counters(self) -> dict[str, Any]:
        steps = self.n_steps.to(torch.float64)
        return dict(step_rule="fixed" if self.fixed is not None else "adaptive",
                    steps=int(self.n_steps.max()), steps_mean=float(steps.mean()),
                    dt=self.T / self.fixed if self.fixed else None,
                    dt_min=self.dt_min if math.isfinite(self.dt_min) else None,
                    rtol=None if self.fixed else self.rtol,
                    dt_max=None if self.fixed else self.dt_max,
                    **exit_summary(self.exit_time.cpu(), self.exit_trace), blowup=self.blowup,
                    n_exploded=int(self.exploded.sum()),
                    n_uncorrected_steps=self.n_uncorrected,
                    n_coarse_steps=int(self.coarse.sum()),
                    n_coarse_paths=int((self.coarse > 0).sum()),
                    n_nonfinite=int((~self.alive).sum()),
                    first_nonfinite_step=self.first_nonfinite_step)


def _save_grid(T: float, steps: int | None, save_every: int | None, save_times: Any
               ) -> np.ndarray:
    """The times the steps land on and the trajectory keeps; always ends at T."""
    if save_every is not None and save_times is not None:
        raise ValueError("give save_every or save_times, not both")
    if save_every is not None:
        if steps is None:
            raise ValueError("save_every counts fixed steps: pass steps=N too, or use "
                             "save_times with adaptive steps")
        every = val.check_positive_int("save_every", save_every)
        k = np.unique(np.r_[np.arange(0, steps + 1, every), steps])
        return k * (T / steps)
    if save_times is None:
        return np.array([0.0, T])
    if np.ndim(save_times) == 0:
        k = val.check_positive_int("save_times", save_times)
        return np.linspace(0.0, T, k + 1)
    try:
        grid = np.asarray(save_times, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"save_times must be an int or a sequence of times; got "
                         f"{save_times!r}") from None
    if grid.size == 0:  # no times besides 0 and T
        return np.array([0.0, T])
    if grid.ndim != 1 or not np.all(np.isfinite(grid)) or np.any(np.diff(grid) <= 0) \
            or grid[0] < 0 or grid[-1] > T:
        raise ValueError("save_times must be increasing finite times in [0, T]")
    return np.unique(np.r_[0.0, grid, T])


def _initial_factor(V: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(V)
    if bool((info != 0).any()):
        raise ValueError("V0 must be positive definite, or one singular (m, m) V0 whose null "
                         "space the block keeps (exactly duplicated tokens); smallest "
                         f"eigenvalue {float(torch.linalg.eigvalsh(V).min()):.3g}")
    return L


def _restrict_to_range(coefficients: Any, V: torch.Tensor
                       ) -> tuple[Any, torch.Tensor | None]:
    """(coefficients, None) for a positive-definite V0; for one singular V0 (every path
    the same) whose null space the coefficients keep, (their SDE on its range, Q), with
    Q (m, r) an orthonormal basis of the range (`shapedsde.on_range`)."""
    V0 = V[0].to(torch.float64)
    w = torch.linalg.eigvalsh(V0)
    if float(w[0]) > on_range.NULL_RTOL * float(w[-1]) or not bool((V == V[:1]).all()):
        return coefficients, None  # positive definite (or per-path: _initial_factor checks)
    m = V0.shape[0]
    if scheme.monitored_tokens(coefficients, m) != m:  # its exit trace reads leading rows
        raise ValueError(f"the initial state of {_describe(coefficients)} is singular to "
                         f"working precision (eigenvalues from {float(w[0]):.3g} to "
                         f"{float(w[-1]):.3g}): give a positive-definite V0 of comparable "
                         "scales (duplicated tokens have no tangent SDE on a range here)")
    Q, N = on_range.null_split(V0)
    if Q.shape[1] == 0:
        raise ValueError("V0 is zero: there is no SDE to solve")
    reason = on_range.kept_null_space(coefficients, V0, N)
    if reason is not None and bool((torch.linalg.cholesky_ex(V)[1] == 0).all()):
        # Below NULL_RTOL but positive definite in the solver's precision (a generic
        # dependency at an eigenvalue ratio ~1e-14): not a kept null space, so it is
        # solved as any positive-definite V0 (its step rate refuses what it cannot do).
        return coefficients, None
    if reason is not None and V.dtype != torch.float64:
        raise ValueError(f"V0 is singular to {str(V.dtype).removeprefix('torch.')} rounding "
                         f"(smallest eigenvalue {float(w[0]):.3g}, largest "
                         f"{float(w[-1]):.3g}) and the SDE of {_describe(coefficients)} "
                         f"leaves that null space ({reason}); solve in float64")
    if reason is not None:
        raise ValueError(f"V0 is singular (rank {Q.shape[1]} of {V0.shape[0]}) and the SDE of "
                         f"{_describe(coefficients)} leaves its null space: {reason}; give a "
                         "positive-definite V0, or a singular one whose null space the block "
                         "keeps (exactly duplicated tokens)")
    return on_range.OnRange(coefficients, Q.to(V.dtype)), Q.to(V.dtype)


def _lifted(res: SDEResult, restricted: on_range.OnRange) -> SDEResult:
    """The result of the SDE on the range, as (m, m) states Q V_r Q^T."""
    res.V = restricted.lift(res.V)
    if res.trajectory is not None:
        res.trajectory = restricted.lift(res.trajectory)
    return res


def _check_positive(name: str, value: Any) -> float:
    x = val._finite_scalar(name, value)
    if x <= 0:
        raise ValueError(f"{name} must be > 0; got {x}")
    return x


def _noise(coefficients: Any, V: torch.Tensor, dB: torch.Tensor) -> torch.Tensor:
    """Sigma(V)^{1/2} dB, shape (paths, m, m), for dB of iid N(0, dt) entries (paths, m, m)."""
    prod = getattr(coefficients, "diffusion_prod", None)
    if callable(prod):
        return prod(V, dB, check=False)
    return _sqrt_times(coefficients.diffusion(V, check=False), dB)


def _factor_coordinates_noise(S: torch.Tensor, Linv: torch.Tensor, dB: torch.Tensor
                              ) -> torch.Tensor:
    """L^{-1} dN L^{-T} for dN with covariance S = Sigma(V), drawn from dB (paths, m, m) with the
    square root taken in factor coordinates: Sigma_d = (L^{-1} (x) L^{-1}) Sigma (L^{-T} (x)
    L^{-T}) is O(1) however ill-conditioned V is (its eigen-factor then has relative, not
    absolute, accuracy in V's small directions), and the draw is equivariant under
    V -> D V D (L -> D L) path by path, as the structured noise is."""
    for spec in ("pai,pibcd->pabcd", "pbi,paicd->pabcd", "pci,pabid->pabcd",
                 "pdi,pabci->pabcd"):
        S = torch.einsum(spec, Linv, S)
    return _sqrt_times(S, dB)


def _sqrt_times(S: torch.Tensor, dB: torch.Tensor) -> torch.Tensor:
    """S^{1/2} dB per path for S (paths, m, m, m, m) read as (m^2, m^2) and dB (paths, m, m);
    NaN where S is not finite (such paths get NaN noise, so the caller freezes them)."""
    P, m = dB.shape[0], dB.shape[-1]
    S = S.reshape(P, m * m, m * m)
    bad = ~_finite_rows(S)
    out = _psd_sqrt_times(_zero_where(bad, S), dB.reshape(P, m * m)).reshape(P, m, m)
    return torch.where(bad[:, None, None], math.nan, out)


def _psd_sqrt_times(S: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """S^{1/2} x for symmetric PSD S (P, k, k) and x (P, k); negative eigenvalues -> 0."""
    # Normalise each matrix first: eigh then never sees huge entries, and scaling
    # commutes with the square root.
    norm = S.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(S.dtype).tiny)
    S = 0.5 * (S + S.transpose(-1, -2)) / norm[:, None, None]
    w, Q = torch.linalg.eigh(S)
    coef = w.clamp_min(0.0).sqrt() * (Q.transpose(-1, -2) @ x[..., None])[..., 0]
    return (Q @ coef[..., None])[..., 0] * norm.sqrt()[:, None]


def _finite_rows(X: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(X.flatten(1)).all(dim=1)


def _zero_where(mask: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (X.ndim - 1))), torch.zeros_like(X), X)


def _initial_state(V0: Any, paths: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    V0 = val.check_covariance(V0, name="V0")
    if val.is_torch(V0):  # the solver computes no gradients: V0's graph is not followed
        V0 = V0.detach()
    V0 = torch.as_tensor(V0).to(device=device, dtype=dtype)
    if V0.ndim == 3 and V0.shape[0] != paths:
        raise ValueError(f"V0 of shape (P, m, m) needs P = paths = {paths}; got {tuple(V0.shape)}")
    if V0.ndim > 3:
        raise ValueError(f"V0 must have shape (m, m) or (paths, m, m); got {tuple(V0.shape)}")
    m = V0.shape[-1]
    if paths * m * m > MAX_ELEMENTS:  # torch.expand would fail with a TypeError or OOM
        raise ValueError(f"paths = {paths} of {m} x {m} states hold {paths * m * m:.3g} "
                         f"numbers per array, over the {MAX_ELEMENTS:.3g} that one tensor "
                         "may hold here; run fewer paths (several runs with other seeds)")
    nbytes = paths * m * m * V0.element_size()
    if device.type == "cpu" and nbytes > _physical_memory():  # one array, of several
        raise ValueError(f"paths = {paths} of {m} x {m} states need {nbytes / 2**30:.3g} GiB "
                         "per state array, over this machine's memory; run fewer paths")
    V = V0.expand(paths, *V0.shape[-2:]).clone()
    return 0.5 * (V + V.transpose(-1, -2))


def _physical_memory() -> float:
    """This machine's memory in bytes (inf where it cannot be read)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return math.inf


def check_step_count(T: float, steps: int | None, dt_max: float, max_steps: int) -> int:
    """The fewest steps a run to T takes (`steps`, or T / dt_max for adaptive steps);
    WorkLimitError when that is over `max_steps`, before any work."""
    least = steps if steps is not None else T / dt_max
    if least > max_steps:
        how = (f"steps = {steps:.3g}" if steps is not None
               else f"at least T / dt_max = {T:g} / {dt_max:g} = {least:.3g} steps")
        raise WorkLimitError(f"the run to T = {T:g} would take {how}, over the limit of "
                             f"max_steps = {max_steps:.3g}; lower T (or steps), or raise "
                             "max_steps")
    return math.ceil(least)


def _probe(coefficients: Any, V: torch.Tensor, noise_weight: float = 1.0
           ) -> tuple[float, float]:
    """Evaluate the drift (with its Ito contraction) once at V (1, m, m) before any work:
    a coefficient object whose faces return something else than (1, m, m) arrays, or
    raise, fails here with its name instead of deep inside a step. Returns the step's
    rate r (`scheme.step_rate`) and the noise's, |L^-1 K L^-T|_inf (V = L L^T), at V, inf
    where not finite."""
    shape = tuple(V.shape)
    try:
        out = scheme.drift_and_ito(coefficients, V)
    except (ValueError, KeyboardInterrupt):
        raise
    except Exception as err:
        raise ValueError(f"the coefficients {_describe(coefficients)} failed at V0: "
                         f"{type(err).__name__}: {err}") from err
    names = ("drift", "Ito contraction")
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"the coefficients {_describe(coefficients)} returned "
                         f"{type(out).__name__} for (drift, Ito contraction), not a pair")
    for name, x in zip(names, out, strict=True):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
            got = (f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
                   else type(x).__name__)
            raise ValueError(f"the {name} of {_describe(coefficients)} must be a Torch tensor "
                             f"of shape {shape} (like V); got {got}")
    b, K = (x.to(torch.float64) for x in out)
    L, info = torch.linalg.cholesky_ex(V.to(torch.float64))
    if bool((info != 0).any()):
        return 0.0, 0.0  # not positive definite: _initial_factor says so

    with torch.no_grad():
        Linv = scheme.triangular_inverse(L)
        D, Kd = scheme.sandwich(Linv, b), scheme.sandwich(Linv, K)
        rates = (scheme.step_rate(L, D, Kd, noise_weight), noise_weight * scheme.noise_rate(Kd))
        return tuple(float(r) if math.isfinite(float(r)) else math.inf for r in rates)


def _check_coefficients(obj: Any) -> None:
    if isinstance(obj, type):
        raise ValueError(f"coefficients must be an instance, not the class {obj.__name__}; "
                         f"build one, e.g. {obj.__name__}(gamma=0.5) or "
                         "shapedsde.block(name, ...)")
    for name in ("drift", "diffusion"):
        if not callable(getattr(obj, name, None)):
            raise ValueError(f"coefficients must have a callable .{name}(V, check=False); "
                             f"got {type(obj).__name__}")


def _describe(coefficients: Any) -> str:
    name = (getattr(coefficients, "label", "") or getattr(coefficients, "name", "")
            or type(coefficients).__name__)
    params = getattr(coefficients, "kernel_params", None)
    if callable(params):
        inner = ", ".join(f"{k}={v:g}" for k, v in params().items())
        return f"{name}({inner})"
    return name


def _progress_bar(T: float, enabled: bool) -> Any:
    return progress_bar(total=T, desc="sde (t of the slowest path)", enabled=enabled,
                        bar_format="{l_bar}{bar}| t={n:.3g}/{total:.3g} "
                "[{elapsed}<{remaining}]")
