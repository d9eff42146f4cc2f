"""Where does shaped attention's floor on the smallest eigenvalue come from?
docs/spectrum.md ("Against depth at m = 64", "The floor against width and the Softmax's
order") shows the output.

    python -m shapedsde.experiments.spectrum_floor --m 64 --widths 256 1024 2048 --nets 50
    python -m shapedsde.experiments.spectrum_floor --m 64 --widths 256 1024 --nets 50 \
        --orders 2 1 --no-sde
    python -m shapedsde.experiments.spectrum_floor --m 16 --widths 256 1024 --nets 100

Exact-in-law Gram chains of `attention(gamma=0.5, tau0=1)` (the step of
`finite._residual_gram_step`, re-run here so that the mixing matrix can be swapped):
`exact` uses A = I + Softmax(Z) - 11^T/m (the network); `2` replaces the Softmax by its
second-order expansion in the logits, A = I + (W + (W o W - rowmean(W o W)) / 2) / m with
W = Z - rowmean(Z) (what the SDE keeps); `1` keeps only A = I + W / m. Against the SDE
(`solve`, default map). V_0 = G G^T / 128, G (m x 128) iid N(0, 1), `default_rng(0)`.
Prints medians and 10/90% quantiles over nets of log lambda_min and of
log(lambda_min / lambda_max) at t = 1/8, 1/4, 1/2, 3/4, 1 (eigvalsh in float64).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from .._linalg import psd_factor
from ..blocks import gram_logits, shaped_mixing
from ..finite import wishart_identity
from ..registry import block
from ..sde import solve
from ..weights import standard_normal

TIMES = (0.125, 0.25, 0.5, 0.75, 1.0)


def wishart_start(m: int, k: int = 128, seed: int = 0) -> np.ndarray:
    G = np.random.default_rng(seed).standard_normal((m, k))
    return G @ G.T / k


def mixing(Z: torch.Tensor, order: str) -> torch.Tensor:
    """A from logits Z: the exact shaped Softmax or its expansion to `order` (1 or 2)."""
    if order == "exact":
        return shaped_mixing(Z)
    m = Z.shape[-1]
    W = Z - Z.mean(-1, keepdim=True)
    E = W
    if order == "2":
        W2 = W * W
        E = W + 0.5 * (W2 - W2.mean(-1, keepdim=True))
    return torch.eye(m, dtype=Z.dtype) + E / m


def chain(blk, V0: np.ndarray, n: int, T: float, nets: int, seed: int, order: str,
          times=TIMES) -> dict[float, np.ndarray]:
    """V at the depths round(t n) (t in `times`, t <= T) of `nets` Gram chains."""
    gen = torch.Generator().manual_seed(seed)
    m = V0.shape[0]
    V = torch.as_tensor(V0, dtype=torch.float64).expand(nets, m, m).clone()
    keep = {int(round(t * n)): t for t in times if t <= T + 1e-12}
    out, depth, t0 = {}, int(round(T * n)), time.perf_counter()
    for layer in range(depth + 1):
        if layer in keep:
            out[keep[layer]] = V.numpy().copy()
        if layer == depth:
            break
        L = psd_factor(V)
        AL = mixing(gram_logits(blk, L, n, gen), order) @ L
        H = standard_normal(gen, V, nets, m, m)
        cross = AL @ H @ L.transpose(-1, -2)
        wish = H @ H.transpose(-1, -2) + wishart_identity(nets, m, n - m, gen, V)
        V = (blk.lam**2 * V + blk.lam * blk.gamma * (cross + cross.transpose(-1, -2))
             / math.sqrt(n) + blk.gamma**2 * AL @ wish @ AL.transpose(-1, -2) / n)
        V = 0.5 * (V + V.transpose(-1, -2))
        if (layer + 1) % max(1, depth // 4) == 0:
            print(f"    n={n} order={order}: layer {layer + 1}/{depth}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    return out


def stats(V: np.ndarray) -> dict[str, list[float]]:
    """10/50/90% quantiles over nets of log lambda_min and log(lambda_min / lambda_max)
    (finite nets with lambda_min > 0; `n_bad` counts the others)."""
    fin = np.isfinite(V).all(axis=(-1, -2))
    ev = np.full(V.shape[:-1], np.nan)
    ev[fin] = np.linalg.eigvalsh(V[fin])
    ok = fin & (ev[:, 0] > 0)
    lmin, lcond = np.log(ev[ok, 0]), np.log(ev[ok, 0] / ev[ok, -1])
    q = (0.1, 0.5, 0.9)
    return {"log_min": np.quantile(lmin, q).tolist(), "log_min_over_max":
            np.quantile(lcond, q).tolist(), "log_max": np.quantile(np.log(ev[ok, -1]),
                                                                   q).tolist(),
            "n_bad": int((~ok).sum())}


def show(label: str, res: dict[float, dict]) -> None:
    for t, s in res.items():
        lo, md, hi = s["log_min"]
        print(f"  {label:>22} t={t:<6} log_min {md:7.2f} [{lo:7.2f}, {hi:7.2f}]  "
              f"log_min/max {s['log_min_over_max'][1]:7.2f}  log_max "
              f"{s['log_max'][1]:5.2f}  bad {s['n_bad']}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=64)
    p.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048])
    p.add_argument("--nets", type=int, default=50)
    p.add_argument("--T", type=float, default=1.0)
    p.add_argument("--orders", nargs="+", default=["exact"], choices=["exact", "2", "1"])
    p.add_argument("--paths", type=int, default=100)
    p.add_argument("--no-sde", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    blk = block("attention", gamma=0.5, tau0=1.0)
    V0 = wishart_start(a.m)
    times = [t for t in TIMES if t <= a.T + 1e-12]
    out: dict = {"m": a.m, "nets": a.nets, "T": a.T, "runs": {}}
    if not a.no_sde:
        t0 = time.perf_counter()
        r = solve(blk, V0, a.T, paths=a.paths, seed=0, save_times=[0.0, *times])
        traj = r.trajectory.cpu().numpy()
        res = {t: stats(traj[i + 1]) for i, t in enumerate(times)}
        out["runs"]["SDE"] = res
        show(f"SDE ({a.paths} paths)", res)
        print(f"    {time.perf_counter() - t0:.0f} s", flush=True)
    for order in a.orders:
        for n in a.widths:
            t0 = time.perf_counter()
            Vs = chain(blk, V0, n, a.T, a.nets, seed=1000 + n, order=order, times=times)
            res = {t: stats(V) for t, V in Vs.items()}
            out["runs"][f"n={n} {order}"] = res
            show(f"n={n} {order}", res)
            print(f"    {time.perf_counter() - t0:.0f} s", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
