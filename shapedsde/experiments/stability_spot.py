"""Spot checks of the stability map: finite networks (width n, depth d = round(T n))
against SDE paths at one (gamma, tau0), on the map's statistics (with standard errors and
z-scores), and on the law of rho^{01}_T by the verifier's one law comparison
(`verification.engine.compare_law`), with the attention-free SDE as the negative control:
if that is not rejected either, the check has no power."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _io
from .. import _validation as val
from ..finite import simulate, supports_gram
from ..sde import default_steps
from ..seeds import spawn_seeds
from ..verification.common import LINE_ALPHA
from ..verification.engine import compare_law
from . import stability_stats as vt
from ._common import stem
from .stability_scales import attention_free, map_block
from .stability_stats import BOOTSTRAP, EIG_THRESHOLD, RHO_THRESHOLD, STAT_LABELS

#: Statistics compared by `spot_check`.
SPOT_STATS = ("rho_mean", "rho_std", "rho_q10", "rho_q90", "rho_range", "p_degenerate",
              "p_collapse", "trace_median")

@dataclass
class SpotCheck:
    """Finite networks against SDE paths at one (gamma, tau0); see `spot_check`."""

    block: str
    block_params: dict[str, Any]
    gamma: float
    tau0: float
    T: float
    V0: np.ndarray
    width: int
    depth: int
    nets: int
    paths: int
    seed: int
    method: str
    eig_threshold: float
    rho_threshold: float
    finite: dict[str, float]
    finite_se: dict[str, float]
    sde: dict[str, float]
    sde_se: dict[str, float]
    z: dict[str, float]
    ks: dict[str, float]
    control_ks: dict[str, float]
    verdict: str
    sde_counters: dict[str, float]
    seeds: dict[str, int]
    wall_s: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["V0"] = self.V0.tolist()
        return _io.jsonable(d)

    def to_json(self, indent: int | None = 1) -> str:
        return _io.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        p = stem(path).with_suffix(".json")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_json() + "\n")
        return p

    @property
    def max_abs_z(self) -> float:
        return max((abs(v) for v in self.z.values() if np.isfinite(v)), default=0.0)

    def summary(self) -> str:
        """A table: statistic, finite +- SE, SDE +- SE, z; then the KS lines."""
        head = (f"spot check {self.block} gamma={self.gamma:g} tau0={self.tau0:g} T={self.T:g}: "
                f"{self.nets} finite nets (n={self.width}, d={self.depth}, {self.method}) vs "
                f"{self.paths} SDE paths")
        rows = [head, f"  {'statistic':<32}{'finite':>18}{'SDE':>18}{'z':>8}"]
        for k in SPOT_STATS:
            lab = STAT_LABELS[k].format(eig=f"{self.eig_threshold:g}",
                                        rho=f"{self.rho_threshold:g}")
            rows.append(f"  {lab:<32}{_pm(self.finite[k], self.finite_se[k]):>18}"
                        f"{_pm(self.sde[k], self.sde_se[k]):>18}{self.z[k]:>8.2f}")
        rows.append(f"  {self.verdict}: KS rho01 finite vs SDE: D={self.ks['statistic']:.4f} "
                    f"p={self.ks['pvalue']:.3g}; control (attention terms removed): "
                    f"D={self.control_ks['statistic']:.4f} p={self.control_ks['pvalue']:.3g}")
        c = self.sde_counters
        rows.append(f"  SDE P(exit by T) {c['p_exit']:.3f} (statistics of the survivors), "
                    f"non-finite {c['frac_nonfinite']:.3f} | finite {self.wall_s['finite']:.1f}"
                    f" s, SDE {self.wall_s['sde']:.1f} s")
        return "\n".join(rows)


def spot_check(block_name: str, gamma: float, tau0: float, *, T: float, V0: Any, width: int,
               nets: int, paths: int, seed: int, device: str = "cpu", progress: bool = False,
               steps: int | None = None, method: str = "auto",
               eig_threshold: float = EIG_THRESHOLD, rho_threshold: float = RHO_THRESHOLD,
               bootstrap: int = BOOTSTRAP, **block_params: Any) -> SpotCheck:
    """`nets` finite networks of width n = `width` and depth d = round(T n) against
    `paths` SDE paths from the same V0, on the statistics of the map.

    z = (finite - SDE) / sqrt(SE_finite^2 + SE_SDE^2) per statistic; KS: two-sample
    Kolmogorov-Smirnov on rho^{01}_T, finite vs SDE, and finite vs the attention-free
    SDE (negative control), by `compare_law`; `verdict` is its PASS / FAIL / NO POWER at
    the verifier's line level LINE_ALPHA. method: the finite sampler ("auto": the exact-in-law
    m x m chain where the block has one, else every weight drawn; see
    `shapedsde.finite.simulate`). Seeds: `shapedsde.seeds.spawn_seeds(seed, 5)` for
    the finite nets, the SDE, the control SDE and the two bootstraps.
    """
    blk = map_block(block_name, float(gamma), float(tau0), **block_params)
    T = val.check_time(T)
    V0 = vt.check_v0(V0)
    width = val.check_positive_int("width", width)
    nets = val.check_positive_int("nets", nets)
    paths = val.check_positive_int("paths", paths)
    steps = default_steps(T) if steps is None else val.check_positive_int("steps", steps)
    names = ("finite", "sde", "control", "boot_finite", "boot_sde")
    seeds = dict(zip(names, spawn_seeds(seed, len(names)), strict=True))
    kw = dict(eig_threshold=eig_threshold, rho_threshold=rho_threshold, bootstrap=bootstrap)
    used = ("gram" if supports_gram(blk) else "full") if method == "auto" else method

    t0 = time.perf_counter()
    run = simulate(blk, V0, width=width, T=T, nets=nets, seed=seeds["finite"], device=device,
                   progress=progress, method=method, exit_trace=vt.exit_trace_for(blk))
    # The stopped networks' survivors, as for the SDE (all of them without an exit level).
    Vf = run if isinstance(run, torch.Tensor) else run.V[~run.exited.to(run.V.device)]
    t_fin = time.perf_counter() - t0
    t0 = time.perf_counter()
    Vs, meta = vt.solve_survivors(blk, V0, T, paths, seeds["sde"], steps, device)
    Vc, _ = vt.solve_survivors(attention_free(blk), V0, T, paths, seeds["control"], steps, device)
    t_sde = time.perf_counter() - t0

    xf, xs, xc = (vt.path_statistics(v, V0) for v in (Vf, Vs, Vc))
    f, f_se = vt.summarize(xf, seed=seeds["boot_finite"], **kw)
    s, s_se = vt.summarize(xs, seed=seeds["boot_sde"], **kw)
    z = {k: _z(f[k] - s[k], f_se[k], s_se[k]) for k in SPOT_STATS}
    law = compare_law(xf["rho01"], xs["rho01"], {"attention-free": xc["rho01"]},
                      stat="rho01", alpha=LINE_ALPHA)
    ctrl = law.controls["attention-free"]
    return SpotCheck(
        block=block_name, block_params=dict(block_params), gamma=float(gamma), tau0=float(tau0),
        T=T, V0=V0, width=width, depth=int(round(T * width)), nets=nets, paths=paths,
        seed=int(seed), method=used, eig_threshold=eig_threshold,
        rho_threshold=rho_threshold, finite=f, finite_se=f_se, sde=s,
        sde_se=s_se, z=z, ks={"statistic": law.true["ks"], "pvalue": law.true["p"]},
        control_ks={"statistic": ctrl["ks"], "pvalue": ctrl["p"]}, verdict=law.status,
        sde_counters=vt.counter_stats(meta)[0], seeds=seeds,
        wall_s={"finite": t_fin, "sde": t_sde})


def _z(diff: float, se1: float, se2: float) -> float:
    den = math.sqrt(se1**2 + se2**2) if np.isfinite(se1) and np.isfinite(se2) else math.nan
    if not np.isfinite(diff):
        return math.nan
    if den == 0 or not np.isfinite(den):
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / den


def _pm(v: float, se: float) -> str:
    return f"{v:.4f} +- {se:.4f}" if np.isfinite(se) else f"{v:.4f}"
