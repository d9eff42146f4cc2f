"""Batched Monte-Carlo solver for the covariance SDE dV = b(V) dt + Sigma(V)^{1/2} dB (Ito).

Conventions (see docs/ and `shapedsde.blocks`):

- V is a symmetric PSD (m, m) matrix; a batch of paths is a tensor (paths, m, m).
- "coefficients" is any object with `drift(V, check=False) -> (..., m, m)` and
  `diffusion(V, check=False) -> (..., m, m, m, m)` on Torch tensors, e.g. a
  `shapedsde.block(...)`. Sigma^{ab,cd} = lim n Cov[dV^{ab}, dV^{cd}]; viewed as
  an (m^2 x m^2) matrix it is symmetric PSD, and B is an m^2-dimensional
  standard Brownian motion.
- Structured-noise hook: if the coefficients object also has
  `diffusion_prod(V, dB, check=False) -> (..., m, m)`, it is used instead of the
  generic factorisation. Contract: linear in dB; when dB has iid N(0, dt) entries
  (shape (..., m, m)), the result has mean 0 and Cov[out^{ab}, out^{cd}] =
  dt Sigma^{ab,cd}(V). Any square root of Sigma will do (the law is the same).

The scheme ("tamed Euler-Maruyama with PSD projection"), per step of size dt,
for each path independently, with s = tr(V_0)/m the path's initial scale (1 if
V_0 = 0):

1. drift, tamed as in Hutzenthaler, Jentzen & Kloeden (Ann. Appl. Probab. 2012):
   dt * b / (1 + dt * ||b||_F / s), ||.||_F the Frobenius norm over the m^2
   entries. This changes a step by O(dt^2) where b is moderate (weak order one
   is kept) and bounds the drift part of any step by s, so the cubic growth of
   the attention drift cannot overflow in one step;
2. noise N = sqrt(dt) Sigma(V)^{1/2} xi, xi ~ N(0, I_{m^2}); if ||N||_F exceeds
   max(||V||_F, s) it is scaled down to that norm (a Gaussian increment larger
   than the state itself is where Euler stops describing a diffusion on the PSD
   cone; the attention noise grows like |V|^2 and would otherwise overflow on
   the paths that approach the SDE's finite-time blow-up). At moderate dt the
   cap essentially never acts (it is counted when it does);
3. V <- (V + V^T)/2, then if the smallest eigenvalue is negative the step is
   projected back to the PSD cone by clipping eigenvalues at 0 (the noise on the
   smallest eigenvalue scales like its square root, so Euler steps can leave the
   cone). Negatives within round-off (Cholesky of V + delta I succeeds, delta =
   min(16 eps tr(V), the counting tolerance below)) are left in the running state,
   whose noise then uses that jittered factor; states handed out (`V`,
   `trajectory`) have them clipped. At many tokens this is the common case: the
   spectrum spreads like exp(-c m t), so V is numerically singular after a few
   steps, and an eigen-decomposition per path and step would dominate the cost.

Counters (all in `SDEResult.meta`): a "tamed" event is one (path, step) where
taming reduced the drift or the noise by more than 1% (factor < 0.99); a PSD
projection is one (path, step) with smallest eigenvalue below -sqrt(eps) s (smaller,
round-off negatives are clipped silently; eps is the dtype's machine epsilon); a
non-finite path is one whose drift, noise or state became NaN/inf. Such a path
is frozen, its entries in `V` and in the trajectory from then on are NaN,
`SDEResult.finite` is False for it, and by default a `RuntimeWarning` is issued
(`nonfinite="raise"` raises `FloatingPointError` at the first one instead). The
summary line reports it.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import _linalg
from . import _validation as val

#: Default step rule: dt <= DT_MAX and at least MIN_STEPS steps.
DT_MAX = 0.005
MIN_STEPS = 20
#: A taming factor below this counts as "material" (the drift or noise shrank by >1%).
TAMED_FACTOR = 0.99
#: The summary line adds a note when more than this fraction of paths was tamed.
TAMED_PATHS_NOTE = 0.5
#: Noise cap: ||noise step||_F <= NOISE_CAP * max(||V||_F, s).
NOISE_CAP = 1.0
#: Eigenvalues below -sqrt(eps) * s count as leaving the PSD cone. Smaller negatives
#: are round-off: the clipped eigen-square-root of a singular Sigma is only accurate
#: to about sqrt(eps) relative, so a singular V picks up noise of that size.
PSD_COUNT_RTOL = {torch.float64: math.sqrt(torch.finfo(torch.float64).eps),
                  torch.float32: math.sqrt(torch.finfo(torch.float32).eps)}
#: A state whose Cholesky fails but that of V + JITTER * eps * tr(V) * I succeeds is
#: PSD up to round-off: it is kept, and the jittered factor drives the next noise.
JITTER = 16

SCHEME = ("tamed Euler-Maruyama: drift dt*b/(1+dt*|b|_F/s), noise capped at "
          "max(|V|_F, s) in Frobenius norm, symmetrised, eigenvalues clipped at 0 "
          "when a step leaves the PSD cone (s = tr(V0)/m)")

NONFINITE_POLICIES = ("warn", "raise")


def default_steps(T: float) -> int:
    """The default number of steps for horizon T: max(MIN_STEPS, ceil(T / DT_MAX)).

    So dt <= 0.005 and short horizons still get 20 steps. For scale: Euler's weak
    error on E[(V^aa_T)^2] for the linear block is about 2 k^2 T dt relative
    (k = gamma^2 (2 - gamma^2)), i.e. about 1% at gamma = 1, T = 1.
    """
    T = val.check_time(T)
    return max(MIN_STEPS, math.ceil(T / DT_MAX - 1e-9))


@dataclass
class SDEResult:
    """Output of `solve`.

    V: (paths, m, m) states at time T (NaN for non-finite paths, see `finite`).
    times: (n_saved,) float64 CPU tensor of saved times, or None.
    trajectory: (n_saved, paths, m, m) saved states (same device as V), or None.
    finite: (paths,) bool, False for paths that became non-finite.
    meta: JSON-serialisable run description and counters: steps, dt, T, m, paths,
        seed, scheme, device, dtype, coefficients, n_tamed (= n_tamed_drift +
        n_tamed_noise, in (path, step) events), n_paths_tamed, n_psd_projections
        ((path, step) events), n_paths_projected, n_nonfinite (paths),
        first_nonfinite_step (or None), nonfinite_policy, wall_s.
    """

    V: torch.Tensor
    times: torch.Tensor | None
    trajectory: torch.Tensor | None
    finite: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: what was solved, the step, and every counter."""
        d = self.meta
        line = (f"SDE {d['coefficients']}: {d['paths']} paths, m={d['m']}, T={d['T']:g}, "
                f"{d['steps']} steps (dt={d['dt']:.3g}), seed {d['seed']}, "
                f"{d['device']} {d['dtype']} | tamed (>1%) {d['n_tamed']} path-steps "
                f"({d['n_paths_tamed']} paths), PSD projections {d['n_psd_projections']} "
                f"({d['n_paths_projected']} paths), non-finite paths {d['n_nonfinite']} "
                f"| {d['wall_s']:.2f} s")
        if d["n_nonfinite"]:
            line += (f" | WARNING: {d['n_nonfinite']} paths became non-finite; "
                     "their V is NaN (see result.finite)")
        if d["n_paths_tamed"] > TAMED_PATHS_NOTE * d["paths"]:
            line += (f" | NOTE: {d['n_paths_tamed'] / d['paths']:.0%} of paths were tamed: "
                     "near the SDE's finite-time blow-up the tamed scheme's upper tail is "
                     "not accurate (docs/stability.md); shorten T, raise tau0 or refine the step")
        return line


def solve(coefficients: Any, V0: Any, T: float, *, paths: int, seed: int,
          steps: int | None = None, device: str | torch.device = "cpu",
          dtype: torch.dtype = torch.float64, save_every: int | None = None,
          progress: bool = False, nonfinite: str = "warn",
          noise: str = "auto") -> SDEResult:
    """Simulate `paths` independent paths of the covariance SDE from V0 to time T.

    coefficients: object with `drift`/`diffusion` (and optionally `diffusion_prod`),
        see the module docstring.
    V0: (m, m) symmetric PSD NumPy array or Torch tensor, or (paths, m, m) for one
        initial state per path.
    T: horizon (depth-to-width ratio), >= 0.
    paths, seed: number of paths (>= 1) and seed (int >= 0) of the `torch.Generator`
        on `device` from which every random draw is taken (the same seed gives the
        same result on the same device and dtype).
    steps: number of Euler steps (default `default_steps(T)`: dt <= 0.005, >= 20).
    device, dtype: where and in what precision to compute (float32 or float64).
    save_every: also keep the states every `save_every` steps (plus t = 0 and T).
    progress: show a tqdm progress bar on stderr.
    nonfinite: "warn" (default: flag the paths, NaN in V, RuntimeWarning) or
        "raise" (FloatingPointError at the first non-finite path).
    noise: "auto" (default: the block's structured O(m^3) factorisation,
        `structured_noise` with `noise_groups` Gaussian m x m matrices per step, where
        it has one; else the generic one) or "generic" (eigen-factorise the
        (m^2, m^2) Sigma every step: O(m^6)). Same law, different random streams.

    Raises ValueError for invalid inputs. See the module docstring for the scheme.
    """
    _check_coefficients(coefficients)
    T = val.check_time(T)
    paths = val.check_positive_int("paths", paths)
    seed = _check_seed(seed)
    steps = default_steps(T) if steps is None else val.check_positive_int("steps", steps)
    save_every = None if save_every is None else val.check_positive_int("save_every", save_every)
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}; got {nonfinite!r}")
    if noise not in ("auto", "generic"):
        raise ValueError(f"noise must be 'auto' or 'generic'; got {noise!r}")
    device, dtype = check_device(device), val.check_float_dtype(dtype)
    V = _initial_state(V0, paths, device, dtype)

    start = time.perf_counter()
    stepper = _Stepper(coefficients, V, T / steps, torch.Generator(device=device).manual_seed(seed),
                       nonfinite, structured=noise == "auto")
    saved_idx, saved = [], []
    if save_every is not None:
        saved_idx, saved = [0], [stepper.state()]
    bar = _progress_bar(steps, progress)
    try:
        for k in range(1, steps + 1):
            stepper.step(k)
            if save_every is not None and (k % save_every == 0 or k == steps):
                saved_idx.append(k)
                saved.append(stepper.state())
            bar.update(1)
    finally:
        bar.close()
    wall = time.perf_counter() - start

    meta = stepper.counters()
    n_dead = meta["n_nonfinite"]
    if n_dead and nonfinite == "warn":
        warnings.warn(f"{n_dead} of {paths} SDE paths became non-finite; their V is NaN "
                      "(see SDEResult.finite)", RuntimeWarning, stacklevel=2)
    meta.update(steps=steps, dt=T / steps, T=T, m=V.shape[-1], paths=paths, seed=seed,
                scheme=SCHEME, device=str(device), dtype=str(dtype).removeprefix("torch."),
                coefficients=_describe(coefficients), nonfinite_policy=nonfinite,
                noise="structured" if stepper.uses_structured else "generic",
                wall_s=wall)
    times = None
    trajectory = None
    if save_every is not None:
        times = torch.tensor(saved_idx, dtype=torch.float64) * (T / steps)
        trajectory = torch.stack(saved)
    return SDEResult(V=stepper.state(), times=times, trajectory=trajectory,
                     finite=stepper.alive.clone(), meta=meta)


class _Stepper:
    """The state of all paths and the counters; `step` advances every path by dt."""

    def __init__(self, coefficients: Any, V: torch.Tensor, dt: float,
                 generator: torch.Generator, nonfinite: str, structured: bool = True) -> None:
        self.coef, self.V, self.dt, self.gen = coefficients, V, dt, generator
        self.nonfinite = nonfinite
        self.structured = structured
        self.factor: torch.Tensor | None = None  # R R^T = current V, from the PSD check
        P, m = V.shape[0], V.shape[-1]
        trace = torch.diagonal(V, 0, -2, -1).sum(-1) / m
        # s: the path's initial scale; taming thresholds are relative to it.
        self.scale = torch.where(trace > 0, trace, torch.ones_like(trace))
        self.safe = V.clone()  # stand-in state for frozen (non-finite) paths
        self.alive = torch.ones(P, dtype=torch.bool, device=V.device)
        zeros = dict(dtype=torch.int64, device=V.device)
        self.n_tamed_drift = torch.zeros((), **zeros)
        self.n_tamed_noise = torch.zeros((), **zeros)
        self.n_psd = torch.zeros((), **zeros)
        self.paths_tamed = torch.zeros(P, dtype=torch.bool, device=V.device)
        self.paths_projected = torch.zeros(P, dtype=torch.bool, device=V.device)
        self.first_nonfinite_step: int | None = None

    def step(self, k: int) -> None:
        V, dt, s = self.V, self.dt, self.scale
        b = self.coef.drift(V, check=False)
        noise = self._draw_noise(V, dt)
        # A NaN/inf in b or the noise makes `new` non-finite (inf norms give 0 * inf),
        # so one check on `new` catches all three.
        f_drift = 1.0 / (1.0 + dt * _fro(b) / s)
        cap = NOISE_CAP * torch.maximum(_fro(V), s)
        f_noise = torch.clamp(cap / _fro(noise).clamp_min(torch.finfo(V.dtype).tiny), max=1.0)
        new = V + (dt * f_drift)[:, None, None] * b + f_noise[:, None, None] * noise
        new = 0.5 * (new + new.transpose(-1, -2))
        ok = _finite_rows(new)
        new = torch.where(ok[:, None, None], new, self.safe)
        new, projected, self.factor = _project_psd(new, PSD_COUNT_RTOL[V.dtype] * s)

        live = self.alive & ok
        tamed_d, tamed_n = live & (f_drift < TAMED_FACTOR), live & (f_noise < TAMED_FACTOR)
        self.n_tamed_drift += tamed_d.sum()
        self.n_tamed_noise += tamed_n.sum()
        self.paths_tamed |= tamed_d | tamed_n
        self.n_psd += (live & projected).sum()
        self.paths_projected |= live & projected
        self._kill(self.alive & ~ok, k)
        # Frozen paths keep their stand-in state so the kernels never see NaN.
        self.V = torch.where(self.alive[:, None, None], new, self.safe)

    @property
    def uses_structured(self) -> bool:
        return self.structured and getattr(self.coef, "noise_groups", None) is not None

    def _draw_noise(self, V: torch.Tensor, dt: float) -> torch.Tensor:
        """Sigma(V)^{1/2} dB: structured (O(m^3)) where the coefficients offer it."""
        k = getattr(self.coef, "noise_groups", None) if self.structured else None
        shape = V.shape if k is None else (V.shape[0], k, *V.shape[1:])
        xi = torch.randn(shape, generator=self.gen, device=V.device, dtype=V.dtype)
        if k is None:
            return _noise(self.coef, V, math.sqrt(dt) * xi)
        return self.coef.structured_noise(V, math.sqrt(dt) * xi, check=False,
                                          factor=self.factor)

    def _kill(self, dead: torch.Tensor, k: int) -> None:
        if not bool(dead.any()):
            return
        if self.first_nonfinite_step is None:
            self.first_nonfinite_step = k
        if self.nonfinite == "raise":
            raise FloatingPointError(f"{int(dead.sum())} SDE paths became non-finite at step {k} "
                                     f"(t = {k * self.dt:.4g}); pass nonfinite='warn' to flag them")
        self.alive &= ~dead

    def state(self) -> torch.Tensor:
        """Current states (paths, m, m), PSD (round-off negatives clipped), NaN for
        non-finite paths."""
        return torch.where(self.alive[:, None, None], _clip_psd(self.V),
                           torch.full_like(self.V, math.nan))

    def counters(self) -> dict[str, Any]:
        nd, nn = int(self.n_tamed_drift), int(self.n_tamed_noise)
        return dict(n_tamed=nd + nn, n_tamed_drift=nd, n_tamed_noise=nn,
                    n_paths_tamed=int(self.paths_tamed.sum()),
                    n_psd_projections=int(self.n_psd),
                    n_paths_projected=int(self.paths_projected.sum()),
                    n_nonfinite=int((~self.alive).sum()),
                    first_nonfinite_step=self.first_nonfinite_step)


def _noise(coefficients: Any, V: torch.Tensor, dB: torch.Tensor) -> torch.Tensor:
    """Sigma(V)^{1/2} dB, shape (paths, m, m), for dB of iid N(0, dt) entries (paths, m, m)."""
    prod = getattr(coefficients, "diffusion_prod", None)
    if callable(prod):
        return prod(V, dB, check=False)
    P, m = V.shape[0], V.shape[-1]
    S = coefficients.diffusion(V, check=False).reshape(P, m * m, m * m)
    bad = ~_finite_rows(S)  # such paths get NaN noise, so the caller freezes them
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


def _project_psd(V: torch.Tensor, tol: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bring symmetric V (P, m, m) back to the PSD cone; return a factor of the result.

    Returns the states, a (P,) mask of the paths whose smallest eigenvalue was below
    -tol (the ones that count as having left the cone), and R (P, m, m) with
    R R^T = the returned state (up to round-off), which the next step's structured
    noise reuses (any square root gives the same noise law).

    Three tiers, cheapest first: a Cholesky factor (proves positive definiteness);
    else a Cholesky factor of V + delta I with delta = min(JITTER eps tr(V), tol), i.e.
    V is PSD up to round-off (its eigenvalues are > -delta), V is left as it is and the
    noise uses the factor of V + delta I (relative change of Sigma ~ delta / |V|);
    else an eigen-decomposition, eigenvalues clipped at 0, R = Q diag(w_+)^{1/2}.
    At many tokens V is numerically singular after a few steps (the spectrum spreads
    like exp(-c m t)), so the middle tier is what keeps such runs at O(m^3/3).
    """
    R, info = torch.linalg.cholesky_ex(V)
    projected = torch.zeros(V.shape[0], dtype=torch.bool, device=V.device)
    bad = (info != 0).nonzero()[:, 0]
    if bad.numel() == 0:
        return V, projected, R
    Vb = V[bad]
    eye = torch.eye(V.shape[-1], dtype=V.dtype, device=V.device)
    # Never more than the counting tolerance: a state kept here has left the cone by
    # less than tol, i.e. not at all by the counters' definition.
    delta = torch.minimum(JITTER * torch.finfo(V.dtype).eps * torch.diagonal(Vb, 0, -2, -1)
                          .sum(-1), tol[bad])
    Rb, info_b = torch.linalg.cholesky_ex(Vb + delta[:, None, None] * eye)
    R[bad] = Rb
    hard = bad[info_b != 0]
    if hard.numel():
        w, Rh = _linalg.clipped_factor(V[hard])
        projected[hard] = w[:, 0] < -tol[hard]
        V = V.clone()
        V[hard] = Rh @ Rh.transpose(-1, -2)
        R[hard] = Rh
    return V, projected, R


def _clip_psd(V: torch.Tensor) -> torch.Tensor:
    """V with eigenvalues clipped at 0 where Cholesky fails (for states handed out)."""
    bad = (torch.linalg.cholesky_ex(V)[1] != 0).nonzero()[:, 0]
    if bad.numel() == 0:
        return V
    R = _linalg.clipped_factor(V[bad])[1]
    Vc = R @ R.transpose(-1, -2)
    V = V.clone()
    V[bad] = 0.5 * (Vc + Vc.transpose(-1, -2))
    return V


def _fro(X: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(X.flatten(1), dim=1)


def _finite_rows(X: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(X.flatten(1)).all(dim=1)


def _zero_where(mask: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (X.ndim - 1))), torch.zeros_like(X), X)


def _initial_state(V0: Any, paths: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    V0 = torch.as_tensor(val.check_covariance(V0, name="V0")).to(device=device, dtype=dtype)
    if V0.ndim == 3 and V0.shape[0] != paths:
        raise ValueError(f"V0 of shape (P, m, m) needs P = paths = {paths}; got {tuple(V0.shape)}")
    if V0.ndim > 3:
        raise ValueError(f"V0 must have shape (m, m) or (paths, m, m); got {tuple(V0.shape)}")
    V = V0.expand(paths, *V0.shape[-2:]).clone()
    return 0.5 * (V + V.transpose(-1, -2))


def _check_coefficients(obj: Any) -> None:
    for name in ("drift", "diffusion"):
        if not callable(getattr(obj, name, None)):
            raise ValueError(f"coefficients must have a callable .{name}(V, check=False); "
                             f"got {type(obj).__name__}")


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63); got {seed!r}")
    return int(seed)


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device; ValueError if unknown or if CUDA is asked for but absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available here; use 'cpu'")
    return dev


def _describe(coefficients: Any) -> str:
    name = getattr(coefficients, "name", "") or type(coefficients).__name__
    params = getattr(coefficients, "kernel_params", None)
    if callable(params):
        inner = ", ".join(f"{k}={v:g}" for k, v in params().items())
        return f"{name}({inner})"
    return name


def _progress_bar(steps: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=steps, desc="sde", unit="step", file=sys.stderr, disable=not enabled)
