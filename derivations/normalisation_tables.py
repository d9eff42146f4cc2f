"""The measured tables of docs/normalisation.md.

    PYTHONPATH=. python derivations/normalisation_tables.py [--paths 4000] [--seed 0]

Shaped attention (gamma 0.9, tau0 0.5), m = 3, V0 = [[1,.3,.1],[.3,1,.2],[.1,.2,1]], T = 0.5:
(1) post-norm SDE and the unnormalised SDE against finite post-norm networks (exact Gram
    chain, RMSNorm and LayerNorm); (2) LayerNorm against RMSNorm on finite networks, post
    (Gram chain) and pre (reduced sampler); (3) pre-norm: the averaged SDE, the post-norm
    SDE (the naive one) against finite pre-norm networks (Gram chain, RMSNorm).
Each row: difference of means in standard errors (z) and the two-sample KS p-value.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch
from scipy import stats

import shapedsde
from shapedsde.finite import simulate
from shapedsde.normalised import normalised
from shapedsde.sde import solve

V0 = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])
T = 0.5


def laws(V: torch.Tensor) -> dict[str, np.ndarray]:
    V = V[torch.isfinite(V).all(-1).all(-1)]
    rho = V[:, 0, 1] / torch.sqrt(V[:, 0, 0] * V[:, 1, 1])
    lmin = torch.linalg.eigvalsh(V)[:, 0] / torch.diagonal(V, 0, -2, -1).sum(-1)
    return {"rho01": rho.numpy(), "lmin/trV": lmin.numpy()}


def row(label: str, a: dict, b: dict) -> None:
    cells = []
    for k in ("rho01", "lmin/trV"):
        x, y = a[k], b[k]
        z = (x.mean() - y.mean()) / math.sqrt(x.var() / x.size + y.var() / y.size)
        p = stats.ks_2samp(x, y).pvalue
        cells.append(f"{x.mean():.4f} vs {y.mean():.4f} | z {z:+.2f} | KS p {p:.3g}")
    print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--widths", default="256,1024")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    P, s = args.paths, args.seed
    widths = [int(w) for w in args.widths.split(",")]
    att = shapedsde.block("attention", gamma=0.9, tau0=0.5)
    t0 = time.time()
    sde = {at: laws(solve(normalised(att, at=at), V0, T, paths=P, seed=s).V)
           for at in ("post", "pre")}
    plain = solve(att, V0, T, paths=P, seed=s)
    print(f"SDE runs: {time.time() - t0:.0f} s; unnormalised: {int(plain.exploded.sum())} "
          f"exploded of {P}, tr V_T quantiles (5/50/95%) "
          f"{np.nanquantile(torch.diagonal(plain.V, 0, -2, -1).sum(-1).numpy(), [.05, .5, .95])}")
    unn = laws(plain.V)
    print("\n(1) post-norm: SDE (rows) against finite networks, Gram chain")
    print("| SDE vs finite | rho01 mean | lambda_min / tr V mean |\n|---|---|---|")
    fin = {}
    for n in widths:
        for norm in ("rms", "layer"):
            # independent seeds for RMS and LayerNorm (table 2 compares them)
            fin[(n, norm)] = laws(simulate(normalised(att, norm), V0, width=n, T=T, nets=P,
                                           seed=s + 1 + 4 * (norm == "layer"), method="gram"))
            row(f"post-norm SDE vs {norm} n={n}", sde["post"], fin[(n, norm)])
            row(f"unnormalised SDE vs {norm} n={n}", unn, fin[(n, norm)])
    print("\n(2) LayerNorm against RMSNorm, finite networks (independent seeds)")
    print("| LN vs RMS | rho01 mean | lambda_min / tr V mean |\n|---|---|---|")
    for n in widths:
        row(f"post, Gram, n={n}", fin[(n, "layer")], fin[(n, "rms")])
    for n in (64, 256):
        pre = {norm: laws(simulate(normalised(att, norm, at="pre"), V0, width=n, T=T, nets=P,
                                   seed=s + 2 + (norm == "layer"), method="reduced"))
               for norm in ("rms", "layer")}
        row(f"pre, reduced, n={n}", pre["layer"], pre["rms"])
    print("\n(3) pre-norm (RMS): SDEs against finite networks, Gram chain")
    print("| SDE vs finite pre-norm | rho01 mean | lambda_min / tr V mean |\n|---|---|---|")
    for n in widths:
        f = laws(simulate(normalised(att, at="pre"), V0, width=n, T=T, nets=P, seed=s + 1,
                          method="gram"))
        row(f"pre-norm (averaged) SDE, n={n}", sde["pre"], f)
        row(f"post-norm (naive) SDE, n={n}", sde["post"], f)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
