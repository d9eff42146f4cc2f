# PLACEHOLDER until shapedsde.codegen writes this file (hand formulas, to be replaced).
import math
import numpy as xp

def _eye(V):
    m = V.shape[-1]
    return xp.eye(m, dtype=V.dtype) if "numpy" == "numpy" else xp.eye(m, dtype=V.dtype, device=V.device)

def _kron(X, Y, spec):
    return xp.einsum(spec, X, Y)

def _lin_sigma(V, gamma):
    c = gamma**2 * (2 - gamma**2)
    return c * (_kron(V, V, "...ac,...bd->...abcd") + _kron(V, V, "...ad,...bc->...abcd"))

def linear_drift(V, gamma):
    return 0 * V

def linear_diffusion(V, gamma):
    return _lin_sigma(V, gamma)

def attention_drift(V, gamma, tau0):
    m = V.shape[-1]
    P = _eye(V) - 1.0 / m
    PVP = P @ V @ P
    d = xp.diagonal(PVP, 0, -2, -1) if "numpy" == "numpy" else xp.diagonal(PVP, 0, -2, -1)
    v = xp.diagonal(V, 0, -2, -1)
    trVPVP = xp.einsum("...ij,...ji->...", V, PVP)
    VPd = xp.einsum("...ij,...j->...i", V @ P, d)
    outer = v[..., :, None] * VPd[..., None, :]
    return gamma**2 / tau0**2 * (V * trVPVP[..., None, None] / m**2 + (outer + xp.swapaxes(outer, -1, -2)) / (2 * m))

def attention_diffusion(V, gamma, tau0):
    m = V.shape[-1]
    P = _eye(V) - 1.0 / m
    Vt = V @ P @ V @ P @ V
    c = gamma**4 / (m**2 * tau0**2)
    att = (_kron(V, Vt, "...ac,...bd->...abcd") + _kron(V, Vt, "...ad,...bc->...abcd")
           + _kron(V, Vt, "...bc,...ad->...abcd") + _kron(V, Vt, "...bd,...ac->...abcd"))
    return _lin_sigma(V, gamma) + c * att
