"""Finite-network checks of the scaling-regime table (docs/regimes.md).

Each row of `shapedsde.symbolic.regimes.PARAMETRISATIONS` is realised as a finite block at
width n (gamma = gamma0 n^{-alpha}; the temperature tau0 n^kappa sqrt(n_k) as the shaped
block's tau0 n^{kappa - 1/2}) and run from V0 (m = 2, rho0 = 0.3) with the exact V chain
(`method="gram"`) where the block has one, else the reduced sampler (the MLPs):

- rows with a limit at depth n (SDE, ODE, frozen): rho^{01} at depth d = n for
  n = 64, 256, 1024; the log-log slope of its sd against n is compared with the count's
  accumulated fluctuation exponent (0: SDE; negative: ODE, frozen), and where the drift
  is derived in closed form (ODE rows) the means of rho and V^{00} against the ODE's
  solution at t = 1 (at m = 2 the shaped attention drift is proportional to V, so it
  moves the scale V^{00}, not rho);
- rows with no limit (O(1) per layer): the mean rho over the first layers for each n, to
  show the collapse happens at O(1) depth whatever n;
- the 1/sqrt(n)-branch shaped attention also at its natural depth d = n^2 (n = 16, 32, 64),
  where the count puts an SDE: its sd of rho should not change with n.

    python -m shapedsde.experiments.regimes [--quick] [--out docs/figures/regimes.json]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sympy as sp
import torch

from .. import _io
from ..baselines import StandardAttentionBlock
from ..blocks import AttentionBlock, Block, LinearBlock, MlpBlock
from ..finite import simulate, supports_gram
from ..sde import solve
from ..symbolic import regimes as R

GAMMA0, TAU0, RHO0 = 0.7, 1.0, 0.3
WIDTHS = (64, 256, 1024)
COLLAPSE_DEPTHS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class ConstantMixing(LinearBlock):
    """X' = lam X + gam A0 X W^V / sqrt(n) with a constant A0 = a I + (b - c) 11^T / m: SAS's
    a I + b Softmax(Z) - c 11^T/m at zero logits (a finite face for the table; not a named
    block). Its drift and diffusion are the linear block's, right only where A0 = I."""

    a: float = 1.0
    b: float = 1.0
    c: float = 1.0

    def _A(self, B: int, m: int, like: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(m, dtype=like.dtype, device=like.device)
        return (self.a * eye + (self.b - self.c) / m).expand(B, m, m)

    def branch_mixing(self, X, generator):
        return self._A(X.shape[0], X.shape[1], X)

    def gram_mixing(self, L, n, generator):
        return self._A(L.shape[0], L.shape[1], L)


def finite_block(p: R.Parametrisation, n: int) -> Block:
    """The finite block of row p at width n."""
    gamma = GAMMA0 * n ** -float(p.alpha) if p.residual else 1.0
    if p.block == "linear":
        return LinearBlock(gamma)
    if p.block == "mlp":
        if p.shaping is None:  # fixed slopes (1, 0): s_- = 1 + c_- / sqrt(n) = 0
            return MlpBlock(gamma, c_plus=0.0, c_minus=-math.sqrt(n))
        if p.shaping != sp.Rational(1, 2):
            raise ValueError("the finite MLP shapes its slopes as 1 + c / sqrt(n)")
        return MlpBlock(gamma)
    if p.kappa is None:
        return ConstantMixing(gamma, *(float(x) for x in p.mixing))
    if tuple(p.mixing) == (1, 1, 1):
        return AttentionBlock(gamma, tau0=TAU0 * n ** (float(p.kappa) - 0.5))
    if tuple(p.mixing) == (0, 1, 0) and p.kappa == 0:
        return StandardAttentionBlock(gamma)
    raise ValueError(f"no finite face for {p}")


def sde_rho(p: R.Parametrisation, paths: int, seed: int = 7) -> dict | None:
    """mean and sd of rho^{01} at t = 1 of the block's own SDE (`shapedsde.sde.solve`), for
    the rows the count puts at an SDE at depth n with the paper's scales (alpha = 0): there
    the finite block at every width is one block whose kernels are the limit."""
    r = R.regime(p)
    if r.at(1) not in (R.SDE, R.DIFFUSION) or p.alpha != 0:
        return None
    blk = finite_block(p, 1)
    if isinstance(blk, ConstantMixing):
        if tuple(p.mixing) != (1, 1, 1):
            return None
        blk = LinearBlock(blk.gamma)  # A = I: the linear block, exactly
    res = solve(blk, np.array([[1.0, RHO0], [RHO0, 1.0]]), T=1.0, paths=paths, seed=seed)
    rho = _rho(res.V)
    rho = rho[np.isfinite(rho)]
    return {"mean": float(rho.mean()), "sd": float(rho.std(ddof=1)),
            "se": float(rho.std(ddof=1) / math.sqrt(len(rho)))}


def _rho(V: torch.Tensor) -> np.ndarray:
    V = V.double().cpu().numpy()
    return V[:, 0, 1] / np.sqrt(V[:, 0, 0] * V[:, 1, 1])


def _run(blk: Block, n: int, depth: int, nets: int, seed: int, record_every=None):
    V0 = np.array([[1.0, RHO0], [RHO0, 1.0]])
    method = "gram" if supports_gram(blk) else "reduced"
    return simulate(blk, V0, width=n, T=depth / n, nets=nets, seed=seed, method=method,
                    record_every=record_every), method


def ode_solution(p: R.Parametrisation, T: float = 1.0, steps: int = 400) -> dict | None:
    """V^{00}(T) and rho^{01}(T) of the derived ODE dV/dt = b(V) (RK4), where b is derived
    in closed form: the count's coefficients at depth n, evaluated at gamma0, tau0,
    c_+ = 0, c_- = -1 (None where the row is no ODE, or its drift is not derived)."""
    r = R.regime(p)
    if r.at(1) != R.ODE or not r.exact:
        return None
    b = r.coefficients(1).drift
    vals = {R.GAMMA0: GAMMA0, sp.Symbol("tau_0", positive=True): TAU0,
            sp.Symbol("c_+", real=True): 0.0, sp.Symbol("c_-", real=True): -1.0}
    Vs = [sp.Symbol("V_00"), sp.Symbol("V_01"), sp.Symbol("V_11")]
    f = sp.lambdify(Vs, [b[0, 0].subs(vals), b[0, 1].subs(vals), b[1, 1].subs(vals)], "math")
    y = np.array([1.0, RHO0, 1.0])
    h = T / steps

    def F(y):
        return np.array([float(v) for v in f(*y)])

    for _ in range(steps):
        k1 = F(y)
        k2 = F(y + h / 2 * k1)
        k3 = F(y + h / 2 * k2)
        k4 = F(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return {"V00": float(y[0]), "rho": float(y[1] / math.sqrt(y[0] * y[2]))}


def check_row(p: R.Parametrisation, nets: int, widths=WIDTHS, seed: int = 0) -> dict:
    r = R.regime(p)
    out = {"label": p.label, "alpha": str(p.alpha), "kappa": str(p.kappa),
           "mixing": [str(x) for x in p.mixing], "residual": p.residual,
           "at_n": r.at(1), "natural_depth": str(r.natural_depth), "summary": r.summary(),
           "drift_exponent": str(r.drift_exponent), "noise_exponent": str(r.noise_exponent)}
    t0 = time.time()
    if r.natural_depth == 0:  # O(1) per layer: the collapse over the first layers
        curves = {}
        for i, n in enumerate(widths):
            run, method = _run(finite_block(p, n), n, max(COLLAPSE_DEPTHS), nets, seed + i, 1)
            traj = run.trajectory  # (k, nets, m, m)
            rho = np.stack([_rho(traj[d]) for d in COLLAPSE_DEPTHS])
            curves[n] = {"mean": rho.mean(1).tolist(),
                         "collapsed": (rho > 0.99).mean(1).tolist(), "method": method}
        means = np.array([c["mean"] for c in curves.values()])
        out.update(kind="collapse", depths=list(COLLAPSE_DEPTHS), curves=curves,
                   max_spread_over_n=float(np.ptp(means, axis=0).max()))
    else:
        stats = {}
        for i, n in enumerate(widths):
            run, method = _run(finite_block(p, n), n, n, nets, seed + i)
            rho_ = _rho(run)
            rho_ = rho_[np.isfinite(rho_)]
            v00 = run[:, 0, 0].double().cpu().numpy()
            stats[n] = {"mean": float(rho_.mean()), "se": float(rho_.std(ddof=1)
                        / math.sqrt(len(rho_))), "sd": float(rho_.std(ddof=1)),
                        "V00_mean": float(v00.mean()),
                        "V00_se": float(v00.std(ddof=1) / math.sqrt(len(v00))),
                        "nets": int(len(rho_)), "method": method}
        ns = np.array(widths, dtype=float)
        sds = np.array([stats[n]["sd"] for n in widths])
        slope = float(np.polyfit(np.log(ns), np.log(sds), 1)[0])
        out.update(kind="depth n", stats=stats, sd_slope=slope,
                   predicted_sd_slope=str(min(r.accumulated(1)[1], 0)),
                   predicted_mean_shift_exponent=str(r.accumulated(1)[0]),
                   ode=ode_solution(p), sde=sde_rho(p, nets))
    out["seconds"] = round(time.time() - t0, 1)
    return out


def check_natural_depth(p: R.Parametrisation, nets: int, widths=(16, 32, 64),
                        seed: int = 100) -> dict:
    """sd of rho at depth n^{delta*} (delta* = 2 rows): constant in n where the count says
    SDE (or SDE without drift) at that depth."""
    r = R.regime(p)
    d = int(r.natural_depth)
    stats = {}
    for i, n in enumerate(widths):
        run, method = _run(finite_block(p, n), n, n**d, nets, seed + i)
        rho_ = _rho(run)
        stats[n] = {"mean": float(rho_.mean()), "sd": float(rho_.std(ddof=1)),
                    "se": float(rho_.std(ddof=1) / math.sqrt(len(rho_))), "method": method}
    sds = np.array([stats[n]["sd"] for n in widths])
    slope = float(np.polyfit(np.log(np.array(widths, float)), np.log(sds), 1)[0])
    return {"label": p.label, "depth": f"n^{d}", "regime": r.at(d), "stats": stats,
            "sd_slope": slope, "predicted_sd_slope": "0"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer networks, widths 32-256")
    ap.add_argument("--out", type=Path, default=Path("results/regimes.json"))
    ap.add_argument("--rows", type=str, default=None, help="comma-separated row indices")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    widths = (32, 64, 128, 256) if args.quick else WIDTHS
    rows = [int(i) for i in args.rows.split(",")] if args.rows else range(
        len(R.PARAMETRISATIONS))
    results, natural = [], []
    for i in rows:
        p = R.PARAMETRISATIONS[i]
        nets = (128 if args.quick else 256) if p.block == "mlp" else (
            500 if args.quick else 2000)
        res = check_row(p, nets, widths, seed=10 * i)
        print(_io.dumps(res), flush=True)
        results.append(res)
        r = R.regime(p)
        if r.natural_depth == 2 and p.block == "attention":
            nd = check_natural_depth(p, 500 if args.quick else 2000)
            print(_io.dumps(nd), flush=True)
            natural.append(nd)
    cmd = "python -m shapedsde.experiments.regimes" + (" --quick" if args.quick else "")
    summary = {"command": cmd, "gamma0": GAMMA0, "tau0": TAU0, "rho0": RHO0,
               "rows": results, "natural_depth": natural}
    _io.write_files({args.out: (_io.dumps(summary) + "\n").encode()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ConstantMixing", "finite_block", "check_row", "check_natural_depth",
           "ode_solution", "sde_rho", "main"]
