"""One-step and law-at-T checks for every block (plain estimators, any block).

The attention-specific checks in `one_step.py` use exact conditional expectations over
the value weights; here each block's finite face is sampled as it is, so the same code
covers the MLP, the Transformer block, multi-head and causal attention:
- one step: n E[dV] and n Cov[dV] at fixed V from independent layers, with standard
  errors from batch means (20 batches), z-scores against b and Sigma, at two widths;
- law at T: KS distance of rho^{01}_T between finite networks (widths growing) and SDE
  paths, sampled as seeded tasks through `shapedsde.distributed.run_tasks`, so a Dask
  cluster gives the same numbers as one process.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from ..distributed import run_tasks
from ..finite import initial_hidden
from ..registry import block as make_block
from ..seeds import spawn_seeds
from .engine import compare_law, finite_rows, rho01
from .tasks import sample_finite, sample_sde

#: (label, block name, parameters) checked by default.
BLOCK_SETTINGS = [
    ("mlp", "mlp", {"gamma": 0.9, "c_plus": 0.0, "c_minus": -1.0}),
    ("transformer", "transformer", {"gamma": 0.7, "tau0": 0.7}),
    ("attention heads=2", "attention", {"gamma": 0.9, "tau0": 0.5, "heads": 2}),
    ("attention causal", "attention", {"gamma": 0.9, "tau0": 0.5, "causal": True}),
    ("transformer heads=4", "transformer", {"gamma": 0.7, "tau0": 0.7, "heads": 4}),
    # A composition through the public serial API: two-head attention, then a smooth MLP.
    ("serial attention heads=2 + smooth mlp", "serial",
     {"parts": [["attention", {"gamma": 0.9, "tau0": 0.5, "heads": 2}],
                ["mlp", {"gamma": 0.8, "activation": "cubic", "scale": 0.7}]]}),
]
V_CHECK = [[1.0, 0.4, 0.1], [0.4, 1.2, 0.3], [0.1, 0.3, 0.8]]
ALPHA = 1e-3  # per check, Bonferroni over the entries compared; also the law's level


def one_step_moments(blk, V: np.ndarray, width: int, layers: int, seed: int,
                     batches: int = 20) -> dict[str, np.ndarray]:
    """Batch-mean estimates (and SEs) of n E[dV] and n Cov[dV] at V."""
    X = initial_hidden(V, width, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    per = max(layers // batches, 2)
    drifts, covs = [], []
    for _ in range(batches):
        Xb = X.expand(per, *X.shape).contiguous()
        Xn = blk.finite(Xb, gen)
        dV = (Xn @ Xn.transpose(-1, -2) / width - torch.as_tensor(V)).reshape(per, -1)
        dV = dV.numpy() * width
        drifts.append(dV.mean(0))
        covs.append(np.cov(dV.T) / width)
    d, c = np.array(drifts), np.array(covs)
    return {"drift": d.mean(0), "drift_se": d.std(0, ddof=1) / math.sqrt(batches),
            "cov": c.mean(0), "cov_se": c.std(0, ddof=1) / math.sqrt(batches)}


def _z(est: np.ndarray, se: np.ndarray, theory: np.ndarray) -> float:
    return float(np.max(np.abs(est - theory) / np.maximum(se, 1e-12)))


def _coefficients(blk, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """b(V) flattened (m^2,) and Sigma(V) as an (m^2, m^2) covariance."""
    m = V.shape[0]
    return (np.asarray(blk.drift(V)).reshape(-1),
            np.asarray(blk.diffusion(V)).reshape(m * m, m * m))


def linear_control(name: str, params: dict) -> tuple[str, dict]:
    """The wrong SDE of a block's control: every sub-layer replaced by a linear one of the
    same gamma (no attention or activation terms)."""
    if name == "serial":
        return "serial", {"parts": [["linear", {"gamma": p[1]["gamma"]}]
                                    for p in params["parts"]]}
    return "linear", {"gamma": params["gamma"]}


def check_block(label: str, name: str, params: dict, *, widths: list[int], layers: int,
                law_widths: list[int], nets: int, paths: int, T: float, seed: int,
                device: str = "cpu", workers: int = 1, scheduler: str | None = None
                ) -> dict[str, Any]:
    blk = make_block(name, **params)
    wrong_name, wrong_params = linear_control(name, params)
    wrong = make_block(wrong_name, **wrong_params)
    V = np.array(V_CHECK)
    m = V.shape[0]
    b, S = _coefficients(blk, V)
    crit = float(norm.isf(ALPHA / 2 / (m * m)))
    seeds = spawn_seeds(seed, len(widths) + len(law_widths) + 1)
    steps = []
    for n, s in zip(widths, seeds, strict=False):
        est = one_step_moments(blk, V, n, layers, s)
        steps.append({"width": n, "drift_z": _z(est["drift"], est["drift_se"], b),
                      "diffusion_z": _z(est["cov"], est["cov_se"], S),
                      "diffusion_rel_err": float(np.linalg.norm(est["cov"] - S)
                                                 / np.linalg.norm(S))})
    # The same one-step samples against the control's coefficients: the check has power
    # where either these or the law reject the wrong SDE.
    bw, Sw = _coefficients(wrong, V)
    step_control = {"drift_z": _z(est["drift"], est["drift_se"], bw),
                    "diffusion_z": _z(est["cov"], est["cov_se"], Sw)}
    # Weight products drawn in law (method="reduced"): the networks' exact law at n/m
    # times fewer random numbers, so the law check affords wider nets and more of them.
    tasks = [dict(block=name, params=params, V0=V_CHECK, width=n, T=T, nets=nets, seed=s,
                  device=device, method="reduced")
             for n, s in zip(law_widths, seeds[len(widths):], strict=False)]
    finite = run_tasks(sample_finite, tasks, workers=workers, scheduler=scheduler)
    sde = sample_sde(name, params, V_CHECK, T=T, paths=paths, seed=seeds[-1], device=device)
    control = sample_sde(*linear_control(name, params), V_CHECK, T=T, paths=paths,
                         seed=seeds[-1], device=device)

    # SDE paths that blew up before T (NaN rows, `SDEResult.exploded`) have no V_T: they
    # are left out of the law and counted in the verdict line, never hidden.
    blown = int((~np.isfinite(sde).all(axis=(-2, -1))).sum())
    sde_rho, control_rho = rho01(finite_rows(sde)), rho01(finite_rows(control))
    laws = [compare_law(rho01(f), sde_rho, {"linear": control_rho}, stat="rho01", alpha=ALPHA)
            for f in finite]
    law = [{"width": n, "ks": c.true["ks"], "p": c.true["p"]}
           for n, c in zip(law_widths, laws, strict=True)]
    ctrl = laws[-1].controls["linear"]
    last = steps[-1]
    one_step_ok = last["drift_z"] < crit and last["diffusion_z"] < crit
    step_powered = max(step_control.values()) > crit
    status = laws[-1].status
    verdict = ("FAIL" if not one_step_ok or status == "FAIL" else
               "PASS" if status == "PASS" or step_powered else status)
    rel = " -> ".join(f"{x['diffusion_rel_err']:.3f}" for x in steps)
    ks = " -> ".join(f"{x['ks']:.3f}" for x in law)
    line = (f"{verdict} every-block {label} {params}: one-step n={last['width']} "
            f"max|z| drift {last['drift_z']:.2f}, diffusion {last['diffusion_z']:.2f} "
            f"(crit {crit:.2f}), Sigma rel err "
            f"{rel} "
            f"(n={'->'.join(str(s_['width']) for s_ in steps)}); law T={T} KS rho "
            f"{ks} "
            f"(n={'->'.join(str(x['width']) for x in law)}), p={law[-1]['p']:.2g} "
            f"({blown} of {paths} SDE paths blew up before T, left out); "
            f"control (no attention/MLP terms: linear) KS {ctrl['ks']:.3f} "
            f"p={ctrl['p']:.2g}, one-step max|z| drift {step_control['drift_z']:.2f}, "
            f"diffusion {step_control['diffusion_z']:.2f}")
    return {"label": label, "block": name, "params": params, "one_step": steps, "law": law,
            "control": {"ks": ctrl["ks"], "p": ctrl["p"], "one_step": step_control},
            "sde_paths_blown_up": blown,
            "crit": crit, "verdict": verdict, "line": line}


def every_block(*, quick: bool, seed: int, device: str = "cpu", workers: int = 1,
                scheduler: str | None = None) -> list[dict[str, Any]]:
    """Run `check_block` for every setting in BLOCK_SETTINGS."""
    size = (dict(widths=[64, 256], layers=1000, law_widths=[32, 128], nets=3000, paths=6000)
            if quick else
            dict(widths=[128, 512], layers=8000, law_widths=[32, 64, 128, 256, 512],
                 nets=10000, paths=20000))
    seeds = spawn_seeds(seed, len(BLOCK_SETTINGS))
    return [check_block(label, name, params, T=0.25, seed=s, device=device, workers=workers,
                        scheduler=scheduler, **size)
            for (label, name, params), s in zip(BLOCK_SETTINGS, seeds, strict=True)]
