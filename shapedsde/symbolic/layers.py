"""Symbolic update rules of the residual sub-layers, per entry, for explicit m.

Each builder returns a `LayerModel`: V' as a truncated series in
eps = n^{-1/2}, V' = D0 + eps D1 + eps^2 D2 + O(eps^3), whose coefficients are
polynomials in centred Gaussian noise symbols with a known joint covariance.
`shapedsde.symbolic.entrywise.derive` turns it into b(V) and Sigma(V).

Model (DESIGN.md): X' = lam X + gam Branch(X), lam = sqrt(1 - gam^2),
Branch(X) = A X W^V / sqrt(n). With H = X W^V / sqrt(n) (columns h_j iid
N(0, V)) and x_j the columns of X,

    V' = lam^2 V + gam^2 A S A^T + lam gam (A M + M^T A^T),
    S = H H^T / n = (1/n) sum_j h_j h_j^T,   M = H X^T / n = (1/n) sum_j h_j x_j^T.

M is linear in h, so only the second moment (1/n) sum_j x_j x_j^T = V of the
fixed columns enters; x is represented by an independent N(0, V) draw, which
has the same second moments. The shaped attention matrix is
A = I + Softmax(Z) - 11^T/m with Z = Y / (tau0 sqrt(n nk)) = eps z, where
z = nk^{-1/2} sum_k q_k k_k^T / tau0 and q_k, k_k iid N(0, V).

Multi-head attention with n_H heads: head h owns the value columns of block h
(width n / n_H) and its own logits, so V' - V is the average over heads of n_H iid
copies U_h of a single-head update whose value sums run over n / n_H columns:
their fluctuations are sqrt(n_H) times larger. The mean of the average is the
mean of one copy; its covariance is Cov(U_h) / n_H (`LayerModel.heads`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from . import derivation, smooth
from .activation import RHO, V_AA, V_BB, shaped_kernel_series
from .softmax import softmax_expansion
from .width_sums import WidthSum, gaussian_vector, independent

EPS = sp.Symbol("epsilon", positive=True)  # n^{-1/2}
GAMMA = sp.Symbol("gamma", positive=True)
TAU0 = sp.Symbol("tau_0", positive=True)
HEADS = sp.Symbol("n_H", positive=True)
C_PLUS, C_MINUS = sp.symbols("c_+ c_-", real=True)
LAM = sp.sqrt(1 - GAMMA**2)
ORDER = 2  # eps^2 = 1/n: enough for the drift; eps^1 gives the diffusion


@dataclass
class LayerModel:
    """V' = sum_k eps^k series[k], polynomial in `noise` ~ N(0, noise_cov).

    With `heads` != 1, V' - V is the average of `heads` iid copies of that update.
    """

    name: str
    V: sp.Matrix
    series: list[sp.Matrix]
    noise: list[sp.Symbol]
    noise_cov: sp.Matrix
    params: tuple[sp.Symbol, ...] = field(default=(GAMMA,))
    heads: sp.Expr = sp.Integer(1)

    @property
    def m(self) -> int:
        return self.V.shape[0]


def covariance_symbols(m: int) -> sp.Matrix:
    """Symmetric matrix of symbols V_ab (a <= b) for m tokens."""
    return sp.Matrix(m, m, lambda a, b: sp.Symbol(f"V_{min(a, b)}{max(a, b)}"))


def _mul(a: list[sp.Matrix], b: list[sp.Matrix]) -> list[sp.Matrix]:
    """Product of two matrix-valued series in eps, truncated at ORDER."""
    return [sum((a[i] * b[k - i] for i in range(k + 1)), sp.zeros(*a[0].shape))
            for k in range(ORDER + 1)]


def _const(M: sp.Matrix) -> list[sp.Matrix]:
    return [M] + [sp.zeros(*M.shape)] * ORDER


def _linear(M: sp.Matrix) -> list[sp.Matrix]:
    """eps * M as a series."""
    return [sp.zeros(*M.shape), M] + [sp.zeros(*M.shape)] * (ORDER - 1)


def _residual_update(V: sp.Matrix, A: list[sp.Matrix], value: WidthSum,
                     scale: sp.Expr = sp.S.One
                     ) -> tuple[list[sp.Matrix], list[sp.Symbol], sp.Matrix]:
    """V' = lam^2 V + gam^2 A S A^T + lam gam (A M + M^T A^T) as a series in eps.

    `scale` multiplies the value-sum fluctuations (sqrt(n_H) for a head's n/n_H columns).
    """
    xi, noise, cov = value.noise()
    S = [value.mean("S") + sp.zeros(*V.shape), scale * xi["S"]]
    S += [sp.zeros(*V.shape)] * (ORDER - 1)
    M = _linear(scale * xi["M"])
    At = [a.T for a in A]
    ASA = _mul(_mul(A, S), At)
    AM = _mul(A, M)
    series = [LAM**2 * (V if k == 0 else sp.zeros(*V.shape)) + GAMMA**2 * ASA[k]
              + LAM * GAMMA * (AM[k] + AM[k].T) for k in range(ORDER + 1)]
    return series, noise, cov


def _value_noise(V: sp.Matrix) -> WidthSum:
    h, Vh = gaussian_vector("h", V)
    x, Vx = gaussian_vector("x", V)
    variables, cov = independent((h, Vh), (x, Vx))
    hv, xv = sp.Matrix(h), sp.Matrix(x)
    return WidthSum(variables, cov, {"S": hv * hv.T, "M": hv * xv.T})


def linear_layer(m: int) -> LayerModel:
    """X' = lam X + gam X W / sqrt(n): A = I."""
    V = covariance_symbols(m)
    series, noise, cov = _residual_update(V, _const(sp.eye(m)), _value_noise(V))
    return LayerModel("linear", V, series, noise, cov)


def shaped_attention_matrix(z: sp.Matrix, causal: bool = False) -> list[sp.Matrix]:
    """A(eps z) = I + Softmax(eps z) - C, row-wise, as a series in eps.

    C = 11^T/m; causal: row a attends to keys 0..a only, its Softmax runs over that
    prefix and C's row a is the uniform row over the prefix, 1/(a+1).
    """
    m = z.shape[0]
    keys = [a + 1 if causal else m for a in range(m)]
    rows = [softmax_expansion(list(z.row(a))[:keys[a]], ORDER) for a in range(m)]

    def entry(a: int, b: int, k: int) -> sp.Expr:
        return rows[a][k][b] if b < keys[a] else sp.Integer(0)

    A = [sp.Matrix(m, m, lambda a, b, k=k: entry(a, b, k)) for k in range(ORDER + 1)]
    C = sp.Matrix(m, m, lambda a, b: sp.Rational(1, keys[a]) if b < keys[a] else 0)
    A[0] = A[0] + sp.eye(m) - C
    return A


def attention_layer(m: int, heads: sp.Expr = HEADS, causal: bool = False) -> LayerModel:
    """Shaped attention sub-layer with n_H heads (n_H = 1: single head); `causal`
    restricts token a to keys 0..a (decoder attention)."""
    V = covariance_symbols(m)
    q, Vq = gaussian_vector("q", V)
    k, Vk = gaussian_vector("k", V)
    variables, qk_cov = independent((q, Vq), (k, Vk))
    logits = WidthSum(variables, qk_cov, {"z": sp.Matrix(q) * sp.Matrix(k).T / TAU0})
    zsym, znoise, zcov = logits.noise()
    if any(e != 0 for e in logits.mean("z")):
        raise AssertionError("logits must be centred")  # they are: q, k independent
    A = shaped_attention_matrix(zsym["z"], causal=causal)
    series, noise, cov = _residual_update(V, A, _value_noise(V), sp.sqrt(heads))
    params = (GAMMA, TAU0) + ((heads,) if isinstance(heads, sp.Symbol) else ())
    return LayerModel("causal" if causal else "attention", V, series, znoise + noise,
                      sp.diag(zcov, cov), params=params, heads=sp.sympify(heads))


def multihead_attention_layer(m: int, heads: int) -> LayerModel:
    """Shaped attention with `heads` explicit heads, each with its own logits and its own
    value block of n / heads columns, as one single-copy model.

    With H heads, V' = lam^2 V + sum_h [gam^2 A_h S_h A_h^T + lam gam (A_h M_h + M_h^T A_h^T)]
    where S_h = (1/n) sum_{j in block h} h_j h_j^T = (V + eps sqrt(H) xi_S^h) / H (a mean
    over n/H columns: fluctuations sqrt(H) larger) and M_h likewise. So V' is the average
    of H updates with independent noise. Nothing divides a covariance by n_H here: the
    per-entry derivation of this model yields it (tests/test_symbolic.py proves it equal to
    `attention_layer`'s n_H rule for explicit H).
    """
    one = attention_layer(m, heads=sp.Integer(heads))  # a head's update; heads only scales
    series: list[sp.Matrix] = [sp.zeros(m, m) for _ in range(ORDER + 1)]
    noise: list[sp.Symbol] = []
    for h in range(heads):
        rename = {x: sp.Symbol(f"{x.name}_h{h}") for x in one.noise}
        for k in range(ORDER + 1):
            series[k] += one.series[k].xreplace(rename) / heads
        noise += [rename[x] for x in one.noise]
    return LayerModel(f"attention_{heads}_heads", one.V, series, noise,
                      sp.diag(*[one.noise_cov] * heads), params=(GAMMA, TAU0))


def relu_drift_entry(Vm: sp.Matrix, a: int, b: int) -> sp.Expr:
    """eps^2 coefficient of c E[phi(g_a) phi(g_b)], g ~ N(0, V) (derived by integration)."""
    kappa = shaped_kernel_series()[2]
    rho = sp.Integer(1) if a == b else Vm[a, b] / sp.sqrt(Vm[a, a] * Vm[b, b])
    return sp.simplify(kappa.subs({V_AA: Vm[a, a], V_BB: Vm[b, b], RHO: rho}))


def mlp_layer(m: int) -> LayerModel:
    """Shaped ReLU MLP: Branch(X) = sqrt(c/n) phi(X W^pre / sqrt(n)) W^post.

    With U = sqrt(c) phi(G), G = X W^pre / sqrt(n) (columns g_j iid N(0, V)), the
    branch is U W^post / sqrt(n): the linear block's value step with X replaced by U.
    So S = (1/n) U U^T + eps xi_S, where (1/n) U U^T = c (1/n) sum_j phi(g_j) phi(g_j)^T
    is a width sum with mean c E[phi phi^T] = V + eps^2 kappa(V) + O(eps^3)
    (`activation.shaped_kernel_series`) and fluctuation eps xi_K, Cov(xi_K) =
    Cov(g g^T) + O(eps) since phi -> identity and c -> 1 as n grows. At the orders
    kept, the value step's Gaussians have covariance V (their O(eps) corrections
    only change Sigma at O(eps)).
    """
    V = covariance_symbols(m)
    series, noise, cov = _residual_update(V, _const(sp.eye(m)), _value_noise(V))
    g, Vg = gaussian_vector("g", V)
    gv = sp.Matrix(g)
    xi, noise_k, cov_k = WidthSum(tuple(g), Vg, {"K": gv * gv.T}).noise()
    kappa = sp.Matrix(m, m, lambda a, b: relu_drift_entry(V, a, b))
    series[1] = series[1] + GAMMA**2 * xi["K"]
    series[2] = series[2] + GAMMA**2 * kappa
    return LayerModel("mlp", V, series, noise_k + noise, sp.diag(cov_k, cov),
                      params=(GAMMA, C_PLUS, C_MINUS))


def smooth_mlp_layer(m: int) -> LayerModel:
    """Shaped smooth MLP: the ReLU MLP's update with phi_s(x) = s F(x / s), s = A sqrt(n).

    (1/n) U U^T has mean c E[phi_s phi_s^T] = V + eps^2 kappa(V) + O(eps^4)
    (`smooth.kernel_series`, by Taylor expansion and Wick). Its fluctuation xi_K is
    taken with phi_s at eps^0 (the identity, as the series gives): the O(eps) terms of
    phi_s change Cov(xi_K), hence Sigma, only at O(eps^2) (odd orders pair an odd number
    of Gaussians; checked in the tests).
    """
    V = covariance_symbols(m)
    series, noise, cov = _residual_update(V, _const(sp.eye(m)), _value_noise(V))
    g, Vg = gaussian_vector("g", V)
    u = sp.Matrix([smooth.phi_series(gi, 0) for gi in g])
    xi, noise_k, cov_k = WidthSum(tuple(g), Vg, {"K": u * u.T}).noise()
    kappa = sp.Matrix(m, m, lambda a, b: smooth.drift_entry(V, a, b))
    series[1] = series[1] + GAMMA**2 * xi["K"]
    series[2] = series[2] + GAMMA**2 * kappa
    return LayerModel("mlp_smooth", V, series, noise_k + noise, sp.diag(cov_k, cov),
                      params=(GAMMA, smooth.F2, smooth.F3, smooth.SCALE))


def compose(first: LayerModel, second: LayerModel) -> LayerModel:
    """The update V -> second(first(V)) as one LayerModel (sub-layers in sequence).

    The second sub-layer's series terms f_k(V) are evaluated at V' = first(V) by a
    Taylor expansion in V to the order that survives at eps^2; its noise keeps the
    covariance at V, since the change is O(eps) on a centred eps-order noise and so
    moves neither E[D2] nor Cov[D1]. The sub-layers' weights are independent, so the
    noises are independent (block-diagonal covariance).
    """
    if first.heads != 1 or second.heads != 1:
        raise NotImplementedError("compose expects single-copy models")
    # Independent weights: give the second sub-layer's noise symbols their own names.
    rename = {x: sp.Symbol(f"{x.name}_2") for x in second.noise}
    second_series = [term.xreplace(rename) for term in second.series]
    syms = sorted(first.V.free_symbols, key=str)
    delta = [first.series[0] - first.V] + list(first.series[1:])
    entry = {sym: next((a, b) for a in range(first.m) for b in range(first.m)
                       if first.V[a, b] == sym) for sym in syms}

    def shift(f: sp.Expr, order: int) -> list[sp.Expr]:
        """[f(V'), ...]: eps-coefficients of f(V + sum_k eps^k delta_k) up to `order`."""
        d = [{s: delta[k][entry[s]] for s in syms} for k in range(ORDER + 1)]
        out = [f]
        if order >= 1:
            grad = {s: sp.diff(f, s) for s in syms}
            out.append(sum(grad[s] * d[1][s] for s in syms))
        if order >= 2:
            hess = sum(sp.diff(grad[s], t) * d[1][s] * d[1][t] for s in syms for t in syms)
            out.append(sum(grad[s] * d[2][s] for s in syms) + hess / 2)
        return out

    series = [sp.zeros(first.m, first.m) for _ in range(ORDER + 1)]
    for k, term in enumerate(second_series):
        for a in range(first.m):
            for b in range(first.m):
                for j, c in enumerate(shift(term[a, b], ORDER - k)):
                    series[k + j][a, b] += c
    params = tuple(dict.fromkeys(first.params + second.params))
    return LayerModel(f"{first.name}+{second.name}", first.V, series,
                      first.noise + [rename[x] for x in second.noise],
                      sp.diag(first.noise_cov, second.noise_cov),
                      params=params)


def transformer_layer(m: int) -> LayerModel:
    """Shaped Transformer block: shaped attention (single head), then the shaped MLP."""
    return compose(attention_layer(m, heads=1), mlp_layer(m))


def causal_layer(m: int) -> LayerModel:
    """Causal shaped attention (n_H heads)."""
    return attention_layer(m, causal=True)


def layer_model(name: str, m: int) -> LayerModel:
    """The per-entry update rule of the derivation `name` (a block's) for m tokens."""
    if m < 2:
        raise ValueError(f"m must be >= 2; got {m}")
    return derivation.find(name).entries(m)
