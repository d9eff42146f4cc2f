"""Speed and scale benchmarks (run by a person; not a test).

    python benchmarks/run_benchmarks.py [--quick] [--device cpu|cuda] [--out benchmarks/results]

Prints, in one run, ratios measured against each other (absolute times are noisy):
  (a) SDE paths/s with structured noise vs the generic (m^2 x m^2) factorisation;
  (b) finite sampler FLOP/s vs a bare batched matmul of the same shapes;
  (c) wall time of SDE vs finite-network sampling for the same KS accuracy on rho at T;
  (d) SymPy derivation time per block (m = 2, 3, 4) and kernel generation time;
  (e) peak memory (resident set) of the process.
Writes benchmarks/results/<device>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

import shapedsde
from shapedsde._io import write_files
from shapedsde.finite import simulate
from shapedsde.sde import default_steps, solve
from shapedsde.verification.engine import distance, rho01
from shapedsde.weights import WeightSource


def random_cov(m: int, seed: int = 0) -> np.ndarray:
    G = np.random.default_rng(seed).normal(size=(m, 2 * m))
    V = G @ G.T / (2 * m)
    d = np.sqrt(np.diag(V))
    return V / np.outer(d, d)  # unit diagonal, moderate correlations


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls (CUDA work is waited for)."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def bench_sde(ms: list[int], paths: int, steps: int, device: str) -> list[dict]:
    """(a) paths/s of the solver, structured vs generic noise."""
    blk = shapedsde.block("attention", gamma=0.8, tau0=1.0)
    for noise in ("auto", "generic"):  # warm-up: first calls pay for imports and caches
        solve(blk, random_cov(2), 0.01, paths=4, seed=0, steps=2, device=device, noise=noise)
    rows = []
    for m in ms:
        V0 = random_cov(m)
        T = steps * 0.005
        row = {"m": m, "paths": paths, "steps": steps}
        for noise in ("auto", "generic"):
            if noise == "generic" and m > 8:
                row["generic_paths_per_s"] = None  # O(m^6) per step: minutes per step here
                continue
            t = timed(partial(solve, blk, V0, T, paths=paths, seed=0, steps=steps,
                              device=device, noise=noise))
            row[("structured" if noise == "auto" else "generic") + "_paths_per_s"] = paths / t
        g = row.get("generic_paths_per_s")
        row["speedup"] = row["structured_paths_per_s"] / g if g else None
        rows.append(row)
        generic = f"{g:9.1f}" if g else "  skipped"
        speedup = f"{row['speedup']:.1f}x" if g else "n/a"
        print(f"(a) m={m:3d}: structured {row['structured_paths_per_s']:9.1f} paths/s, "
              f"generic {generic} paths/s, speed-up {speedup}", flush=True)
    return rows


def bench_m64(device: str, paths: int) -> list[dict]:
    """The m = 64, 1000-path, T = 1 run at the default step, float64 and float32."""
    blk = shapedsde.block("attention", gamma=0.8, tau0=1.0)
    rows = []
    for dtype in (torch.float32, torch.float64):
        start = time.perf_counter()
        res = solve(blk, random_cov(64), 1.0, paths=paths, seed=0, device=device, dtype=dtype)
        t = time.perf_counter() - start
        counters = {k: res.meta[k] for k in ("steps_mean", "n_exploded", "n_nonfinite")}
        rows.append({"m": 64, "paths": paths, "T": 1.0, "steps": res.meta["steps"],
                     "dtype": str(dtype), "seconds": t, **counters})
        print(f"    m=64, {paths} paths to T=1, {res.meta['steps']} steps, {dtype}: {t:.1f} s "
              f"({counters})", flush=True)
    return rows


def bench_depth(paths: int, device: str) -> dict:
    """(f) At depth: the adaptive default against equal fixed steps of the same scheme, on
    P(exit) at the strong-attention setting of docs/solver.md (reference: rtol = 0.02);
    and path-steps/s of one step against its arithmetic floor (the batched products and
    the two factorisations a step must do) at m = 2 ... 128."""
    blk = shapedsde.block("attention", gamma=0.9, tau0=0.5)
    V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])
    runs = {"reference rtol=0.02": dict(rtol=0.02), "default rtol=0.1": {},
            "fixed 100 steps": dict(steps=100), "fixed 25 steps": dict(steps=25)}
    rows, ref = [], None
    for label, kw in runs.items():
        start = time.perf_counter()
        res = solve(blk, V0, 1.0, paths=paths, seed=len(rows), exit_trace=5.0, device=device,
                    **kw)
        t = time.perf_counter() - start
        p = res.meta["p_exit"]
        ref = p if ref is None else ref
        rows.append({"label": label, "seconds": t, "p_exit": p, "se": res.meta["p_exit_se"],
                     "steps_mean": res.meta["steps_mean"], "error": p - ref})
        print(f"(f) {label:22s} P(exit) {p:.4f} +- {res.meta['p_exit_se']:.4f} "
              f"(vs reference {p - ref:+.4f}), {res.meta['steps_mean']:.0f} steps/path, "
              f"{t:.1f} s", flush=True)
    floor = []
    for m in (2, 4, 8, 16, 32, 64, 128):
        P = max(8, 8192 // m)
        A = torch.randn(P, m, m, dtype=torch.float64, device=device)
        V = A @ A.transpose(-1, -2) / m + 0.1 * torch.eye(m, dtype=torch.float64, device=device)
        L = torch.linalg.cholesky(V)
        steps = 10
        t_solve = timed(partial(solve, shapedsde.block("attention", gamma=0.9, tau0=0.5),
                                V[0].cpu().numpy(), 0.01 * steps, paths=P, seed=0, steps=steps,
                                device=device)) / steps

        def arithmetic(V: torch.Tensor = V, L: torch.Tensor = L) -> None:
            # A fixed step of attention: b and K (2 products), the noise in factor
            # coordinates (2), the drift's sandwich (2), the mean correction (6), exp_+ (3),
            # L U and L L^T (2); one Cholesky (of exp_+) and one triangular solve (L^-1).
            for _ in range(17):
                V @ V
            torch.linalg.cholesky_ex(V)
            torch.linalg.solve_triangular(L, V, upper=False)

        t_floor = timed(arithmetic)
        floor.append({"m": m, "paths": P, "step_s": t_solve, "floor_s": t_floor,
                      "ratio": t_solve / t_floor})
        print(f"(f) m={m:3d}, {P} paths: {P / t_solve:10.0f} path-steps/s, "
              f"{t_solve / t_floor:.2f}x the arithmetic floor", flush=True)
    return {"exit_accuracy": rows, "step_vs_floor": floor}


def bench_finite(widths: list[int], m: int, nets: int, device: str) -> list[dict]:
    """(b) finite sampler (full networks) vs a bare bmm of the same shapes, same run.

    Per attention sub-layer a network multiplies X (m, n) by W^Q, W^K (n, nk = n) and
    W^V (n, n): 3 x 2 m n^2 FLOPs, and draws 3 n^2 Gaussian weights. "bare" is the three
    batched products on weights drawn beforehand; "bare + draw" adds drawing them
    (torch.randn), the floor for any sampler that draws every weight. The reduced
    sampler (method="reduced", same law of every hidden state) is timed against the
    same bare products.
    """
    blk = shapedsde.block("attention", gamma=0.8, tau0=1.0)
    rows, depth = [], 4
    for n in widths:
        k = max(1, min(nets, nets * 1024**2 // n**2))  # bounded memory for the bare weights
        for dtype in (torch.float32, torch.float64):
            run = partial(simulate, blk, random_cov(m), width=n, T=depth / n, nets=k,
                          seed=0, device=device, batch_size=k, dtype=dtype)
            t_fin = timed(partial(run, method="full"), repeat=2)
            t_red = timed(partial(run, method="reduced"), repeat=2)
            gen = torch.Generator(device=device).manual_seed(0)
            X = torch.randn(k, m, n, device=device, dtype=dtype, generator=gen)
            W = torch.randn(3, k, n, n, device=device, dtype=dtype, generator=gen)

            def bare(X=X, W=W, depth=depth) -> None:
                for _ in range(depth):
                    for k in range(3):
                        torch.bmm(X, W[k])

            def draw(W=W, gen=gen, depth=depth) -> None:
                for _ in range(depth):
                    torch.randn(W.shape, out=W, generator=gen)

            t_bare, t_draw = timed(bare, repeat=3), timed(draw, repeat=2)
            flops = depth * 3 * 2 * k * m * n * n
            row = {"width": n, "m": m, "nets": k, "dtype": str(dtype).removeprefix("torch."),
                   "finite_gflops": flops / t_fin / 1e9, "bare_gflops": flops / t_bare / 1e9,
                   "ratio_to_bare": t_bare / t_fin,
                   "ratio_to_bare_plus_draw": (t_bare + t_draw) / t_fin,
                   "draw_share": t_draw / t_fin,
                   "reduced_over_bare_time": t_red / t_bare}
            rows.append(row)
            print(f"(b) n={n:5d} {row['dtype']}: finite {row['finite_gflops']:6.2f} GFLOP/s, "
                  f"bare bmm {row['bare_gflops']:6.2f} GFLOP/s, ratio {row['ratio_to_bare']:.2f}"
                  f"; vs bmm + drawing the weights {row['ratio_to_bare_plus_draw']:.2f} "
                  f"(drawing = {row['draw_share']:.0%} of the sampler's time); reduced "
                  f"weights (same law) take {row['reduced_over_bare_time']:.2f}x the bare bmm "
                  "time", flush=True)
    return rows


def bench_accumulation(n: int, m: int, nets: int, device: str) -> dict:
    """(b') float32 networks: V accumulated in float32 vs float64 from the same X, and
    float32 vs float64 networks in law (mean of V, z-scores from standard errors).
    Uses the reduced weights (same law as the full networks, n/m times fewer draws)."""
    from shapedsde.finite import gram_matrix, initial_hidden

    blk = shapedsde.block("attention", gamma=0.8, tau0=1.0)
    V0 = random_cov(m)
    X = initial_hidden(V0, n, dtype=torch.float32, seed=0, device=device)
    gen = WeightSource(torch.Generator(device=device).manual_seed(1), reduced=True)
    Xb = X.expand(nets, m, n).contiguous()
    for _ in range(n // 4):
        Xb = blk.finite(Xb, gen)
    acc32 = (Xb @ Xb.transpose(-1, -2) / n).double()
    acc64 = gram_matrix(Xb)
    rel = float(((acc32 - acc64).abs().amax((-2, -1)) / acc64.abs().amax((-2, -1))).max())
    laws = {}
    for dtype in (torch.float32, torch.float64):
        laws[dtype] = simulate(blk, V0, width=n, T=0.25, nets=nets, seed=2, device=device,
                               dtype=dtype, method="reduced").cpu()
    a, b = laws[torch.float32], laws[torch.float64]
    se = torch.sqrt(a.var(0) / nets + b.var(0) / nets)
    z = float(((a.mean(0) - b.mean(0)) / se).abs().max())
    print(f"(b') n={n}, m={m}, depth n/4: float32 accumulation of V differs from float64 "
          f"accumulation of the same X by {rel:.1e} (relative, max over {nets} nets); "
          f"float32 vs float64 networks, E[V] max |z| {z:.2f} over {m * m} entries", flush=True)
    return {"width": n, "m": m, "nets": nets, "depth": n // 4,
            "float32_accumulation_rel_error": rel, "float32_vs_float64_mean_max_abs_z": z}


def _timed_ks(sample, ref: np.ndarray, seeds: range) -> tuple[float, float]:
    """Median KS distance to `ref` over the seeds and the mean wall time of one sample."""
    sample(seeds[0])  # warm-up, not timed
    ks, t = [], 0.0
    for seed in seeds:
        start = time.perf_counter()
        rho = rho01(sample(seed))
        t += time.perf_counter() - start
        ks.append(distance(rho, ref)["ks"])
    return float(np.median(ks)), t / len(seeds)


def bench_accuracy(widths: list[int], T: float, nets: int, device: str,
                   full_nets: int) -> list[dict]:
    """(c) wall time to reach the same KS accuracy on the law of rho^{01} at T.

    Reference: 40 x nets SDE paths at a quarter of the default step (the n -> inf law).
    Finite: `nets` networks at width n (median KS over 3 seeds) with the exact-in-law
    V chain ("gram", O(m^2) numbers per sub-layer) and, timed on `full_nets` networks
    and scaled linearly, the full networks (every weight drawn; float64 like everything
    else here, after a warm-up call). SDE: the fewest paths
    on a doubling grid whose median KS (3 seeds) is at most the finite one's.
    """
    blk = shapedsde.block("attention", gamma=0.8, tau0=1.0)
    V0 = random_cov(3, seed=1)
    fine = 4 * default_steps(T)
    ref = rho01(solve(blk, V0, T, paths=40 * nets, seed=10**6, steps=fine, device=device).V)
    rows = []
    for n in widths:
        ks_fin, t_gram = _timed_ks(lambda s, n=n: simulate(
            blk, V0, width=n, T=T, nets=nets, seed=s, device=device, method="gram"), ref,
            range(3))
        full = partial(simulate, blk, V0, width=n, T=T, seed=0, device=device, method="full",
                       batch_size=full_nets)
        full(T=2 / n, nets=full_nets)  # warm-up
        t_full = timed(partial(full, nets=full_nets)) * nets / full_nets
        paths, ks_sde, t_sde = max(nets // 32, 8), math.inf, math.nan
        while paths <= 16 * nets:
            ks_sde, t_sde = _timed_ks(lambda s, p=paths: solve(
                blk, V0, T, paths=p, seed=100 + s, device=device).V, ref, range(3))
            if ks_sde <= ks_fin:
                break
            paths *= 2
        row = {"width": n, "T": T, "nets": nets, "ks_finite": ks_fin, "gram_seconds": t_gram,
               "full_seconds_scaled": t_full, "full_nets_timed": full_nets,
               "sde_paths": paths, "ks_sde": ks_sde, "sde_seconds": t_sde,
               "sde_over_gram_time": t_sde / t_gram, "sde_over_full_time": t_sde / t_full}
        rows.append(row)
        print(f"(c) n={n:5d}, T={T}: {nets} finite nets reach KS {ks_fin:.3f} in {t_gram:.2f} s "
              f"(V chain) / {t_full:.0f} s (full networks, scaled from {full_nets}); "
              f"{paths} SDE paths reach KS {ks_sde:.3f} in {t_sde:.2f} s; time ratio SDE/finite "
              f"{row['sde_over_gram_time']:.3f} (V chain), {row['sde_over_full_time']:.2e} "
              "(full)", flush=True)
    return rows


def _derive(name: str, m: int) -> None:
    from shapedsde.symbolic.entrywise import derive
    from shapedsde.symbolic.layers import layer_model

    derive(layer_model(name, m))


def bench_derivation() -> list[dict]:
    """(d) per-entry derivation time (m = 2, 3, 4) and matrix form + codegen time."""
    from shapedsde import artifacts
    from shapedsde.symbolic.matrixform import derive_matrix_form

    rows = []
    for name in ("linear", "attention", "mlp", "transformer", "causal"):
        row = {"block": name}
        for m in (2, 3, 4):
            row[f"entrywise_m{m}_s"] = timed(partial(_derive, name, m))
        row["matrix_form_s"] = timed(partial(derive_matrix_form, name))
        rows.append(row)
        print("(d) " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in row.items()), flush=True)
    t = timed(lambda: artifacts.artifacts())
    rows.append({"block": "all", "codegen_s": t})
    print(f"(d) kernel + LaTeX generation (all blocks, cached derivations): {t:.2f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--skip", default="", help="comma-separated parts to skip, e.g. c,d")
    args = p.parse_args(argv)
    skip = set(args.skip.split(","))
    q = args.quick
    report: dict = {"device": args.device, "quick": q, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "platform": platform.platform()}
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    report["peak_rss_mib"] = 0.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.device}{'-quick' if q else ''}.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    parts = {
        "a": lambda: {"sde": bench_sde([2, 4, 8, 16, 32, 64], paths=200 if q else 1000,
                                       steps=5 if q else 20, device=args.device),
                      "sde_m64": bench_m64(args.device, paths=1000)},
        "b": lambda: {"finite": bench_finite([256, 512, 1024] if q else [256, 512, 1024, 2048],
                                             m=4, nets=16, device=args.device),
                      "finite_accumulation": bench_accumulation(
                          512 if q else 1024, m=4, nets=1000 if q else 4000,
                          device=args.device)},
        "c": lambda: {"accuracy": bench_accuracy([256, 1024], T=0.2, nets=500 if q else 2000,
                                                 device=args.device, full_nets=2 if q else 4)},
        "d": lambda: {"derivation": bench_derivation()},
        "f": lambda: {"depth": bench_depth(paths=2000 if q else 8000, device=args.device)},
    }
    for name, run in parts.items():
        if name in skip:
            continue
        report.update(run())
        report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.device == "cuda":
            report["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        # written after every part (a run of some parts updates those parts only), so a run
        # that is cut short keeps what it measured
        write_files({path: json.dumps({**previous, **report}, indent=2).encode()})
    print(f"(e) peak resident memory {report['peak_rss_mib']:.0f} MiB")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
