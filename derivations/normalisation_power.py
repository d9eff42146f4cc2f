"""The tables of docs/normalisation.md "Pre-normalisation: a check with power" and "The
Transformer block: each sub-layer normalised".

    PYTHONPATH=. python derivations/normalisation_power.py ratio
    PYTHONPATH=. python derivations/normalisation_power.py pre [--widths 256,1024,4096]
    PYTHONPATH=. python derivations/normalisation_power.py transformer [--nets 500]
        [--widths 128,256] [--heads 1]

ratio: the averaged pre-norm correction of rho^{01} against the diffusion's standard
deviation (C^{01,01})^{1/2}, from the kernels. pre: the verifier's pre-RMS setting and seeds
(`shapedsde.verification.normalised`, root seed 0), exact chains against the averaged SDE
and the naive one. transformer: normalised(transformer, "rms", post|pre) (gamma 0.7, tau0
0.5, V0 all correlations 0.5, T = 1), finite networks (method "reduced") against the SDE;
controls: post, the unnormalised SDE; pre, the naive (post-norm) SDE. Cells: finite mean vs
SDE mean, z of the difference of means, two-sample KS D and p.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import stats

import shapedsde
from shapedsde.finite import simulate
from shapedsde.normalised import normalised
from shapedsde.verification.common import derive_seed
from shapedsde.verification.engine import solve_quiet
from shapedsde.verification.normalised import SETTINGS, V_DEPTH, V_PRE, law_statistics

STATS = ("rho01", "lmin_over_tr")


def cmp(x: np.ndarray, y: np.ndarray) -> str:
    z = (x.mean() - y.mean()) / np.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
    k = stats.ks_2samp(x, y)
    return f"{x.mean():.4f} vs {y.mean():.4f} z {z:+.2f} D {k.statistic:.3f} p {k.pvalue:.2g}"


def ratio() -> None:
    for gamma, tau0, V in [(0.9, 0.5, V_DEPTH), (0.9, 0.5, V_PRE), (0.7, 0.5, V_PRE),
                           (0.6, 0.25, V_PRE), (0.7, 0.25, V_PRE), (0.5, 0.25, V_PRE)]:
        att = shapedsde.block("attention", gamma=gamma, tau0=tau0)
        V = np.array(V)
        pre, post = normalised(att, at="pre"), normalised(att, at="post")
        corr = pre.drift(V)[0, 1] - post.drift(V)[0, 1]
        sd = float(np.sqrt(post.diffusion(V)[0, 1, 0, 1]))
        print(f"gamma {gamma} tau0 {tau0} rho {V[0, 1]}: correction {corr:.4f}, post drift "
              f"{post.drift(V)[0, 1]:.3f}, sd {sd:.3f}, ratio {abs(corr) / sd:.3f}")


def pre(widths: list[int]) -> None:
    label, at, params, _, V0 = next(s for s in SETTINGS if s[1] == "pre")
    seed = derive_seed(0, f"normalised/{label}")
    att = shapedsde.block("attention", **params)
    blk, V0, N, T = normalised(att, "rms", "pre"), np.array(V0), 4000, 1.0
    t = time.time()
    s_sde = law_statistics(solve_quiet(blk, V0, T, paths=N, seed=derive_seed(seed, "sde")).V)
    s_ctl = law_statistics(solve_quiet(normalised(att, "rms", "post"), V0, T, paths=N,
                                       seed=derive_seed(seed, "control")).V)
    print(f"SDEs {time.time() - t:.0f}s", flush=True)
    for n in widths:
        t = time.time()
        V = simulate(blk, V0, width=n, T=T, nets=N, seed=derive_seed(seed, f"n={n}"),
                     method="gram")
        s, raw = law_statistics(V, correlation=True), law_statistics(V)
        for k in STATS:
            print(f"n={n} {k}: finite vs SDE {cmp(s[k], s_sde[k])} | vs naive "
                  f"{cmp(s[k], s_ctl[k])}")
        print(f"n={n} lmin_over_tr of V itself vs SDE "
              f"{cmp(raw['lmin_over_tr'], s_sde['lmin_over_tr'])}; {time.time() - t:.0f}s",
              flush=True)


def transformer(nets: int, widths: list[int], heads: int) -> None:
    V0, T, paths = np.array(V_PRE), 1.0, 2000
    tr = shapedsde.block("transformer", gamma=0.7, tau0=0.5, heads=heads)
    for at in ("post", "pre"):
        blk = normalised(tr, "rms", at)
        t = time.time()
        s_sde = law_statistics(solve_quiet(blk, V0, T, paths=paths, seed=10).V)
        control = tr if at == "post" else normalised(tr, "rms", "post")
        s_ctl = law_statistics(solve_quiet(control, V0, T, paths=paths, seed=11).V)
        print(f"{at}: SDEs {time.time() - t:.0f}s; control "
              f"{'unnormalised' if at == 'post' else 'naive'}: "
              f"{len(s_ctl['rho01'])} of {paths} paths finite", flush=True)
        for n in widths:
            t = time.time()
            V = simulate(blk, V0, width=n, T=T, nets=nets, seed=20 + n, method="reduced")
            s = law_statistics(V, correlation=at == "pre")
            for k in STATS:
                print(f"  {at} heads={heads} n={n} {k}: finite vs SDE {cmp(s[k], s_sde[k])} "
                      f"| vs control {cmp(s[k], s_ctl[k])}")
            print(f"  n={n}, {nets} nets: {time.time() - t:.0f}s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("ratio", "pre", "transformer"))
    p.add_argument("--widths", default=None)
    p.add_argument("--nets", type=int, default=500)
    p.add_argument("--heads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.what == "ratio":
        ratio()
    elif a.what == "pre":
        pre([int(w) for w in (a.widths or "256,1024,4096").split(",")])
    else:
        transformer(a.nets, [int(w) for w in (a.widths or "128,256").split(",")], a.heads)


if __name__ == "__main__":
    main()
