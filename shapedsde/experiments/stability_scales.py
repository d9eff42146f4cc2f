"""How gamma and tau0 set the attention terms of a block's coefficients.

The attention part of a block's coefficients is the block's minus those of the same block
with every attention term removed (`attention_free`: the linear block with the same
gamma, i.e. the value-matrix noise; for the Transformer block also the MLP sub-layer).
The derivation (docs/derivation.md) gives
    b_att(V)     = gamma^2 / tau0^2 * b_1(V),
    Sigma_att(V) = gamma^4 / (n_H tau0^2) * Sigma_1(V),
so `fit_exponents` recovers the exponents (2, -2) and (4, -2) of `coefficient_scales` by
a log-log least-squares fit, exactly up to rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _validation as val
from ..blocks import Block, LinearBlock, MlpBlock, SumOfCoefficients
from ..normalised import Normalised, normalised
from ..registry import block as make_block
from ..serial import serial

#: Blocks with attention terms that the map and the spot check cover.
MAP_BLOCKS = ("attention", "transformer")
#: Exponents of gamma and tau0 in the attention part of the coefficients (derivation).
EXPECTED_EXPONENTS = {"drift": {"gamma": 2.0, "tau0": -2.0},
                      "diffusion": {"gamma": 4.0, "tau0": -2.0}}


def map_block(block_name: str, gamma: float, tau0: float, **block_params: Any) -> Block:
    """The block at one grid point (ValueError for a block without attention terms).

    block_params may hold `norm` ("rms" or "layer") and `norm_at` ("post", the default,
    or "pre"): the block is then `shapedsde.normalised(blk, norm, at)`."""
    if block_name not in MAP_BLOCKS:
        raise ValueError(f"block must be one of {MAP_BLOCKS} (blocks with attention terms); "
                         f"got {block_name!r}")
    params = dict(block_params)
    norm, at = params.pop("norm", None), params.pop("norm_at", None)
    blk = make_block(block_name, gamma=gamma, tau0=tau0, **params)
    if norm is None:
        if at is not None:
            raise ValueError("norm_at needs norm (rms or layer)")
        return blk
    return normalised(blk, norm=norm, at=at or "post")


def is_normalised(block_params: dict[str, Any]) -> bool:
    """Whether a map's block_params ask for a normalised block (tr V = m on every path)."""
    return block_params.get("norm") is not None


def attention_free(blk: Block) -> Any:
    """The coefficients of `blk` with every attention term removed (tau0 -> infinity).

    attention: the linear block with the same gamma (the value-matrix noise);
    transformer: linear + MLP with the same gamma, c_plus, c_minus; a normalised block:
    the same normalisation around its inner block's (linear + MLP in series for the
    Transformer block, each sub-layer normalised, as `normalised` does for the block).
    """
    if isinstance(blk, Normalised):
        inner = blk.inner
        rest: Block = LinearBlock(inner.gamma)
        if inner.name == "transformer":
            rest = serial(rest, MlpBlock(inner.gamma, c_plus=inner.c_plus,
                                         c_minus=inner.c_minus))
        elif inner.name != "attention":
            raise ValueError(f"block {inner.name!r} has no attention terms")
        return normalised(rest, norm=blk.norm, at=blk.at)
    if blk.name == "attention":
        return LinearBlock(blk.gamma)
    if blk.name == "transformer":
        mlp = MlpBlock(blk.gamma, c_plus=blk.c_plus, c_minus=blk.c_minus)
        return SumOfCoefficients((LinearBlock(blk.gamma), mlp), name="linear+mlp")
    raise ValueError(f"block {blk.name!r} has no attention terms")


def attention_part(blk: Block, V: Any) -> tuple[np.ndarray, np.ndarray]:
    """(b_att(V), Sigma_att(V)) = the block's coefficients minus `attention_free(blk)`'s."""
    V = np.asarray(val.check_covariance(V), dtype=np.float64)
    rest = attention_free(blk)
    return (np.asarray(blk.drift(V)) - np.asarray(rest.drift(V)),
            np.asarray(blk.diffusion(V)) - np.asarray(rest.diffusion(V)))


def equicorrelated(m: int, rho0: float, scale: float = 1.0) -> np.ndarray:
    """V0 = scale ((1 - rho0) I + rho0 11^T): unit variances, every correlation rho0."""
    m = val.check_positive_int("m", m)
    if m < 2:
        raise ValueError(f"m must be >= 2; got {m}")
    if not -1.0 / (m - 1) <= rho0 <= 1.0:
        raise ValueError(f"rho0 must lie in [-1/(m-1), 1] for a PSD V0; got {rho0}")
    return scale * ((1.0 - rho0) * np.eye(m) + rho0 * np.ones((m, m)))


def check_grid(name: str, values: Any, upper: float | None = None) -> np.ndarray:
    """A non-empty 1-d float array of positive values (<= upper), else ValueError."""
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a non-empty 1-d list of positive numbers; got {values!r}")
    if upper is not None and np.any(arr > upper):
        raise ValueError(f"{name} must be <= {upper}; got {values!r}")
    return arr


def coefficient_scales(block_name: str, gammas: Any, tau0s: Any, V: Any,
                       **block_params: Any) -> dict[str, Any]:
    """Norms of the attention part of b and Sigma at V over the (gamma, tau0) grid.

    Returns a dict of (len(gammas), len(tau0s)) arrays: "drift" = ||b_att(V)||_F,
    "diffusion" = ||Sigma_att(V)||_F (over the m^4 entries), "drift_total",
    "diffusion_total" (the whole block's), "diffusion_value" (the attention-free part's),
    "ratio" = diffusion / diffusion_value; plus "gammas", "tau0s", "block", "V",
    "block_params". See `fit_exponents`.
    """
    gammas = check_grid("gammas", gammas, upper=1.0)
    tau0s = check_grid("tau0s", tau0s)
    V = np.asarray(val.check_covariance(V), dtype=np.float64)
    if V.ndim != 2:
        raise ValueError(f"V must be one (m, m) matrix; got shape {V.shape}")
    shape = (len(gammas), len(tau0s))
    out = {k: np.zeros(shape) for k in ("drift", "diffusion", "drift_total", "diffusion_total",
                                         "diffusion_value")}
    for i, g in enumerate(gammas):
        for j, t in enumerate(tau0s):
            blk = map_block(block_name, float(g), float(t), **block_params)
            b_att, s_att = attention_part(blk, V)
            out["drift"][i, j] = np.linalg.norm(b_att)
            out["diffusion"][i, j] = np.linalg.norm(s_att)
            out["drift_total"][i, j] = np.linalg.norm(blk.drift(V))
            out["diffusion_total"][i, j] = np.linalg.norm(blk.diffusion(V))
            out["diffusion_value"][i, j] = np.linalg.norm(attention_free(blk).diffusion(V))
    out["ratio"] = out["diffusion"] / out["diffusion_value"]
    out.update(gammas=gammas, tau0s=tau0s, block=block_name, V=V, block_params=block_params)
    return out


def fit_exponents(scales: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Least-squares fit log ||part|| = c + p log gamma + q log tau0 over the grid.

    Returns {"drift": {...}, "diffusion": {...}}, each with "gamma" (p), "tau0" (q),
    "prefactor" (exp c: the norm at gamma = tau0 = 1) and "max_residual" (the largest
    |residual| of the fit in log space; ~1e-15 for an exact power law).
    """
    g, t = np.meshgrid(scales["gammas"], scales["tau0s"], indexing="ij")
    if len(np.unique(scales["gammas"])) < 2 or len(np.unique(scales["tau0s"])) < 2:
        raise ValueError("fit_exponents needs at least two distinct gammas and two tau0s")
    A = np.stack([np.ones(g.size), np.log(g).ravel(), np.log(t).ravel()], axis=1)
    out = {}
    for part in ("drift", "diffusion"):
        y = np.asarray(scales[part], dtype=np.float64).ravel()
        if np.any(y <= 0):
            raise ValueError(f"the attention part of the {part} vanishes at this V "
                             "(e.g. V proportional to 11^T); pick a V with P V P != 0")
        coef, *_ = np.linalg.lstsq(A, np.log(y), rcond=None)
        out[part] = {"gamma": float(coef[1]), "tau0": float(coef[2]),
                     "prefactor": float(np.exp(coef[0])),
                     "max_residual": float(np.max(np.abs(A @ coef - np.log(y))))}
    return out
