"""Many tokens: accuracy against steps of the two noise maps (docs/solver.md, "Many tokens").

    OMP_NUM_THREADS=1 python benchmarks/many_tokens.py [--ms 3 16 64] [--paths 400]
        [--attention-paths 200] [--parts rates,linear,attention]

Prints, in one run (one thread; ratios of steps and of wall times, not absolute times):
  rates:     which term of the step rate binds at V0 (`scheme.step_rate`'s three parts);
  linear:    the linear block (gamma 0.5) from V0 = I, fixed steps and the adaptive default
             of each map, errors against the exact answers (mean log-eigenvalue
             -k (m+1) T / 2, E tr V / m = 1, E tr V^2 / m from `free_limit.exact_moments`),
             with Monte-Carlo SEs (same seed for every row of one m);
  attention: attention gamma 0.5, tau0 1, V0 = G G^T / (2m), T = 1, exit at 5 tr V0:
             P(exit), the survivors' mean tr V_T / tr V0 and their mean largest and median
             log-eigenvalue (`spectrum.log_spectrum`), for the corrected default, the
             matched map at dt_max 0.01 and 0.02, and a step-refined reference (the
             matched map at rtol 0.04, dt_max 0.005), with SEs and steps a path.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import shapedsde
from shapedsde import scheme
from shapedsde.sde import solve
from shapedsde.spectrum import log_spectrum
from shapedsde.symbolic.free_limit import exact_moments

GAMMA = 0.5
K = GAMMA**2 * (2 - GAMMA**2)
LINEAR_T = {3: 1.0, 16: 0.5, 64: 0.25}  # c m T about 1.75-7: V not rounding-limited


def gram(m: int, seed: int = 0) -> np.ndarray:
    G = np.random.default_rng(seed).standard_normal((m, 2 * m))
    return G @ G.T / (2 * m)


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    x = x[torch.isfinite(x)]
    return float(x.mean()), float(x.std() / math.sqrt(max(len(x), 1)))


def rates(ms: list[int]) -> None:
    print("\n(rates) the step rate's parts at V0 = G G^T / (2m): |K_d|_inf, max |D_jj|, "
          "max |(L Phi(D))_i| / |L_i|")
    for m in ms:
        V = torch.as_tensor(gram(m))[None]
        for name, blk in (("linear", shapedsde.block("linear", gamma=GAMMA)),
                          ("attention", shapedsde.block("attention", gamma=GAMMA, tau0=1.0))):
            b, Kv = scheme.drift_and_ito(blk, V)
            L = torch.linalg.cholesky(V)
            Linv = scheme.triangular_inverse(L)
            D, Kd = scheme.sandwich(Linv, b), scheme.sandwich(Linv, Kv)
            rows = scheme.cholesky_velocity(L, D).norm(dim=-1) / L.norm(dim=-1)
            djj = float(D.diagonal(0, -2, -1).abs().max())
            print(f"  m={m:3d} {name:9s} |K_d|={float(scheme.noise_rate(Kd)):8.3f} "
                  f"(k(m+1)={K * (m + 1):.3f})  |D_jj|={djj:.3f}  rows={float(rows.max()):.3f}")


def linear(ms: list[int], paths: int) -> None:
    blk = shapedsde.block("linear", gamma=GAMMA)
    print("\n(linear) errors against exact answers (value - exact +- SE); kmh = k (m+1) h")
    for m in ms:
        T = LINEAR_T.get(m, 0.25)
        ex2 = exact_moments(2, K, m, T)[(2,)] / m
        exact = (-K * (m + 1) * T / 2, 1.0, ex2)
        print(f" m={m} T={T} paths={paths}: exact mean log-eig {exact[0]:.4f}, "
              f"E tr V/m 1, E tr V^2/m {ex2:.4f}")
        runs = [(n, dict(steps=n)) for n in (2, 4, 8, 16, 32)]
        runs += [("default", {}), ("dt_max .02", dict(dt_max=0.02))]
        for label, kw in runs:
            for nm in ("corrected", "matched"):
                if label == "dt_max .02" and nm == "corrected":
                    continue
                start = time.perf_counter()
                r = solve(blk, np.eye(m), T, paths=paths, seed=11 + m, noise_map=nm, **kw)
                wall = time.perf_counter() - start
                ev = torch.linalg.eigvalsh(r.V)
                st = (ev.log().mean(-1), ev.mean(-1), (ev**2).mean(-1))
                errs = " ".join(f"{mu - e:+.4f}+-{se:.4f}" for (mu, se), e
                                in zip(map(mean_se, st), exact, strict=True))
                steps = r.meta["steps_mean"]
                print(f"  {nm:9s} {label!s:>10s} steps {steps:6.1f} kmh "
                      f"{K * (m + 1) * T / steps:5.2f} | log-eig, trV/m, trV2/m: {errs} "
                      f"| {wall:.1f} s", flush=True)


def stopped(r) -> dict:
    surv = r.survivors
    tr0 = float(torch.diagonal(r.meta_V0, 0, -2, -1).sum())
    tr = torch.diagonal(r.V[surv], 0, -2, -1).sum(-1) / tr0
    ls = log_spectrum(r.V[surv], nonpositive="nan")
    m = ls.shape[-1]
    return dict(p=(r.meta["p_exit"], r.meta["p_exit_se"]), tr=mean_se(tr),
                top=mean_se(ls[:, -1]), med=mean_se(ls[:, m // 2]))


def attention(ms: list[int], paths: int) -> None:
    blk = shapedsde.block("attention", gamma=GAMMA, tau0=1.0)
    print("\n(attention) gamma 0.5, tau0 1, V0 = G G^T/(2m), T = 1, exit 5 tr V0: value +- SE")
    for m in ms:
        V0 = gram(m)
        runs = [("corrected (default)", dict(noise_map="corrected")),
                ("matched", dict(noise_map="matched")),
                ("matched dt_max .02", dict(noise_map="matched", dt_max=0.02)),
                ("reference", dict(noise_map="matched", rtol=0.04, dt_max=0.005))]
        print(f" m={m} paths={paths}")
        walls = {}
        for label, kw in runs:
            start = time.perf_counter()
            r = solve(blk, V0, 1.0, paths=paths, seed=21 + m, exit_trace=5, **kw)
            walls[label] = time.perf_counter() - start
            r.meta_V0 = torch.as_tensor(V0)
            s = stopped(r)
            print(f"  {label:20s} steps {r.meta['steps_mean']:6.1f} | P(exit) "
                  f"{s['p'][0]:.4f}+-{s['p'][1]:.4f} | surv trV/trV0 {s['tr'][0]:.4f}+-"
                  f"{s['tr'][1]:.4f} | log lam_max {s['top'][0]:.4f}+-{s['top'][1]:.4f} "
                  f"| median log-eig {s['med'][0]:.4f}+-{s['med'][1]:.4f} "
                  f"| wall {walls[label] / walls['corrected (default)']:.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", type=int, nargs="+", default=[3, 16, 64])
    ap.add_argument("--paths", type=int, default=400)
    ap.add_argument("--attention-paths", type=int, default=200)
    ap.add_argument("--parts", default="rates,linear,attention")
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = args.parts.split(",")
    if "rates" in parts:
        rates(args.ms)
    if "linear" in parts:
        linear(args.ms, args.paths)
    if "attention" in parts:
        attention(args.ms, args.attention_paths)


if __name__ == "__main__":
    main()
