"""Many tokens: accuracy against steps and cost of the noise maps (docs/solver.md,
"Many tokens").

    OMP_NUM_THREADS=1 python benchmarks/many_tokens.py [--ms 3 16 64] [--paths 400]
        [--attention-paths 200] [--parts rates,linear,attention,order] [--timed 64 256]

Prints, in one run (one thread; ratios of steps and of wall times, not absolute times):
  rates:     which term of the step rate binds at V0 (`scheme.step_rate`'s three parts);
  linear:    the linear block (gamma 0.5) from V0 = I, fixed steps and the adaptive default
             of each map (the old default: corrected map, dt_max 0.01), errors against the
             exact answers (mean log-eigenvalue -k (m+1) T / 2, E tr V / m = 1,
             E tr V^2 / m from `free_limit.exact_moments`), with Monte-Carlo SEs (same
             seed for every row of one m);
  attention: attention gamma 0.5, tau0 1, V0 = G G^T / (2m), T = 1, exit at 5 tr V0:
             P(exit), the survivors' mean tr V_T / tr V0 and their mean largest and median
             log-eigenvalue (`spectrum.log_spectrum`) for the old default, the default and
             a step-refined reference (the matched map at rtol 0.04, dt_max 0.005), with
             SEs, z against the reference, steps a path and wall time against the old;
  order:     attention gamma 0.5, tau0 1, m = 16, T = 1, fixed steps 8-64: E log det V_T / m,
             E tr V_T / m and E log lambda_min against 256 steps, both maps;
  --timed:   the issue's run (1000 paths, T = 1, exit at 5, default settings) on 2 threads.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

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
        runs += [("default", {})]
        for label, kw in runs:
            for nm in ("corrected", "matched"):
                # the old default is the corrected map at dt_max 0.01; the default's cap is
                # `default_dt_max(m)` (kw is not reassigned: the matched run must not inherit)
                old = dict(dt_max=0.01) if label == "default" and nm == "corrected" else {}
                start = time.perf_counter()
                r = solve(blk, np.eye(m), T, paths=paths, seed=11 + m, noise_map=nm, **kw,
                          **old)
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


ATTENTION_RUNS = [("old default", dict(noise_map="corrected", dt_max=0.01)),
                  ("default", {}),
                  ("reference", dict(noise_map="matched", rtol=0.04, dt_max=0.005))]


def attention(ms: list[int], paths: int) -> None:
    blk = shapedsde.block("attention", gamma=GAMMA, tau0=1.0)
    print("\n(attention) gamma 0.5, tau0 1, V0 = G G^T/(2m), T = 1, exit 5 tr V0: value +- SE;"
          " [z against the reference]")
    for m in ms:
        V0 = gram(m)
        print(f" m={m} paths={paths}")
        walls, stats = {}, {}
        for label, kw in ATTENTION_RUNS:
            start = time.perf_counter()
            r = solve(blk, V0, 1.0, paths=paths, seed=21 + m, exit_trace=5, **kw)
            walls[label] = time.perf_counter() - start
            r.meta_V0 = torch.as_tensor(V0)
            stats[label] = (stopped(r), r.meta["steps_mean"])
        ref = stats["reference"][0]
        for label, _ in ATTENTION_RUNS:
            s, steps = stats[label]
            cells = []
            for key, name in (("p", "P(exit)"), ("tr", "surv trV/trV0"),
                              ("top", "log lam_max"), ("med", "median log-eig")):
                (mu, se), (mr, sr) = s[key], ref[key]
                z = (mu - mr) / math.hypot(se, sr) if label != "reference" else 0.0
                cells.append(f"{name} {mu:.4f}+-{se:.4f} [{z:+.1f}]")
            print(f"  {label:12s} steps {steps:6.1f} | " + " | ".join(cells)
                  + f" | wall {walls[label] / walls['old default']:.2f}x", flush=True)


def order(m: int, paths: int) -> None:
    """Weak order on attention against a step-refined reference: E log det V_T / m,
    E tr V_T / m and E log lambda_min at fixed steps, both maps, the same seed."""
    blk = shapedsde.block("attention", gamma=GAMMA, tau0=1.0)
    V0, T = gram(m), 1.0
    print(f"\n(order) attention gamma {GAMMA}, tau0 1, m={m}, T={T}, {paths} paths, fixed "
          "steps; error against the matched map at 256 steps (value +- SE of the difference)")

    def stats(r) -> tuple[torch.Tensor, ...]:  # exploded paths (NaN) are dropped below
        ls = log_spectrum(r.V, nonpositive="nan")
        return ls.mean(-1), torch.diagonal(r.V, 0, -2, -1).mean(-1), ls[:, 0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = stats(solve(blk, V0, T, paths=paths, seed=31, steps=256))
    for nm in ("corrected", "matched"):
        for n in (8, 16, 32, 64):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                r = solve(blk, V0, T, paths=paths, seed=31, steps=n, noise_map=nm)
            cells = []
            for name, x, y in zip(("log det/m", "tr V/m", "log lam_min"), stats(r), ref,
                                  strict=True):
                d = (x - y)[torch.isfinite(x - y)]
                cells.append(f"{name} {float(d.mean()):+.4f}+-"
                             f"{float(d.std()) / math.sqrt(len(d)):.4f}")
            print(f"  {nm:9s} steps {n:3d} | " + " | ".join(cells), flush=True)


def timed(m: int, paths: int, threads: int, label: str = "default") -> None:
    """The issue's run: attention gamma 0.5, tau0 1, V0 = G G^T/(2m), T = 1, exit at 5,
    at the default settings ("default") or the old default's ("old default"), on
    `threads` threads."""
    torch.set_num_threads(threads)
    blk = shapedsde.block("attention", gamma=GAMMA, tau0=1.0)
    settings = dict(ATTENTION_RUNS)[label]
    start = time.perf_counter()
    r = solve(blk, gram(m), 1.0, paths=paths, seed=0, exit_trace=5.0, **settings)
    wall = time.perf_counter() - start
    print(f"\n(timed) m={m}, {paths} paths, {threads} threads, {label} settings: {wall:.1f} s, "
          f"{r.meta['steps_mean']:.1f} steps a path, P(exit) {r.meta['p_exit']:.4f} +- "
          f"{r.meta['p_exit_se']:.4f}, non-finite {r.meta['n_nonfinite']}", flush=True)
    torch.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", type=int, nargs="+", default=[3, 16, 64])
    ap.add_argument("--paths", type=int, default=400)
    ap.add_argument("--attention-paths", type=int, default=200)
    ap.add_argument("--parts", default="rates,linear,attention,order")
    ap.add_argument("--order-m", type=int, default=16)
    ap.add_argument("--order-paths", type=int, default=2000)
    ap.add_argument("--timed", type=int, nargs="*", default=[], metavar="M",
                    help="also time the issue's run at these m (1000 paths, 2 threads)")
    ap.add_argument("--timed-paths", type=int, default=1000)
    ap.add_argument("--timed-old", action="store_true",
                    help="time the old default (corrected map, dt_max 0.01) after the default")
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = args.parts.split(",")
    if "rates" in parts:
        rates(args.ms)
    if "linear" in parts:
        linear(args.ms, args.paths)
    if "attention" in parts:
        attention(args.ms, args.attention_paths)
    if "order" in parts:
        order(args.order_m, args.order_paths)
    for m in args.timed:
        timed(m, args.timed_paths, 2)
        if args.timed_old:
            timed(m, args.timed_paths, 2, "old default")


if __name__ == "__main__":
    main()
