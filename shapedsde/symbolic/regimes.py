"""Scaling regimes by power counting in the width n (docs/regimes.md).

A block's per-entry update is written with every scale a power of n:

- the branch weight gamma = gamma0 n^{-alpha} (lam = sqrt(1 - gamma^2); alpha = 0 is the
  paper's, alpha = 1/2 the 1/sqrt(depth) branch at depth proportional to width);
- the attention logits Z = n^{-kappa} z, z = Y / (tau0 sqrt(n_k)) O(1) and Gaussian: the
  temperature is tau = tau0 n^kappa sqrt(n_k) (kappa = 1/2: the paper's shaped attention;
  kappa = 0: standard attention's sqrt(n_k)); or zero logits (W^Q = 0 at initialisation,
  as in He et al.'s SAS), when Softmax(Z) = 11^T / m exactly;
- the mixing A = a I + b Softmax(Z) - c 11^T / m ((a, b, c) = (1, 1, 1): shaped,
  (0, 1, 0): standard, SAS's identity / softmax / centring weights in general);
- the MLP's slopes 1 + c_pm n^{-beta} (beta = 1/2: the shaped ReLU), or fixed slopes
  (an unshaped ReLU with c_+ = 0, c_- = -1);
- the width-sum fluctuations n^{-1/2} (`width_sums`).

The increment dV = V' - V = gamma^2 (A S A^T - V) + lam gamma (A M + M^T A^T) (the value
sums S = V + n^{-1/2} xi_S, M = n^{-1/2} xi_M; the MLP's S has mean K(V), its kernel) is
expanded as a polynomial in these bookkeeping scales, and its monomials are grouped by
their power of n: dV = sum_p n^p D_p, each D_p a polynomial in the Gaussian noise symbols.
With p_b the largest p whose D_p has a non-zero mean and p_s the largest p whose D_p has a
non-zero centred part, the increments' mean is O(n^{p_b}) and their fluctuation
O(n^{p_s}) per layer; the centred parts are martingale differences, so over d = n^delta
layers the accumulated drift is n^{delta + p_b} and the accumulated fluctuation
n^{delta / 2 + p_s}. At depth n^delta the regime is

- SDE if both are O(1), ODE if the drift is O(1) and the fluctuation vanishes, SDE without
  drift if only the fluctuation is O(1), frozen if both vanish,
- no limit if either grows with n.

The natural depth scale n^{delta*}, delta* = min(-p_b, -2 p_s), is where the leading term
becomes O(1); below it the block is frozen, above it the limit's t -> infinity is reached.
delta* = 0 (a term of order 1 per layer) means the chain moves O(1) per layer and has no
continuum limit at any depth: at depth n it has no limit (standard attention's collapse).
At delta* the surviving coefficients are b = E[D_{-delta*}] and
Sigma^{ab,cd} = E[D_{p_s}^{ab} D_{p_s}^{cd}] (centred, p_s = -delta*/2), by Wick's theorem,
with lam at its limit (sqrt(1 - gamma0^2) for alpha = 0, else 1).

The Softmax is expanded to `order` in n^{-kappa}; the largest power of n among the dropped
terms is reported, and checked to vanish at the natural depth of the kept ones (else the
count raises: raise `order`). With kappa = 0
(O(1) logits) the series is not small: the exponents still follow (every order of the
logits carries the same power of n), but the coefficient at that power is the Gaussian
expectation of the full Softmax, not the truncated polynomial; it is then marked not
derived (`Regime.exact` False).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import sympy as sp

from .activation import RHO, S_MINUS, S_PLUS, V_AA, V_BB, activation_kernel, shaped_kernel_series
from .layers import C_MINUS, C_PLUS, TAU0, covariance_symbols
from .softmax import softmax_expansion
from .wick import gaussian_expectation
from .width_sums import WidthSum, gaussian_vector, independent

GAMMA0 = sp.Symbol("gamma_0", positive=True)
LAM = sp.Symbol("lambda", positive=True)  # sqrt(1 - gamma^2); its limit is put in at the end
# Bookkeeping scales, each a power of n.
E_V = sp.Symbol("e_v", positive=True)  # n^{-1/2}: width-sum fluctuations
E_Z = sp.Symbol("e_z", positive=True)  # n^{-kappa}: the logits
E_G = sp.Symbol("e_g", positive=True)  # n^{-alpha}: the branch weight, gamma = gamma0 e_g
E_A = sp.Symbol("e_a", positive=True)  # n^{-beta}: the MLP's slope shaping
SCALES = (E_V, E_Z, E_G, E_A)
NO_LIMIT, SDE, ODE, DIFFUSION, FROZEN = "no limit", "SDE", "ODE", "SDE (no drift)", "frozen"
Exponent = sp.Rational


def _q(x) -> sp.Rational:
    return sp.nsimplify(x, rational=True) if not isinstance(x, sp.Rational) else x


@dataclass(frozen=True)
class Parametrisation:
    """A block and the exponents of its scales (see the module docstring).

    block: "attention", "mlp" or "linear"; alpha: gamma = gamma0 n^{-alpha};
    kappa: logits n^{-kappa} (tau = tau0 n^kappa sqrt(n_k)), None for zero logits;
    mixing: (a, b, c) of A = a I + b Softmax(Z) - c 11^T/m; shaping: MLP slopes
    1 + c_pm n^{-shaping}, None for fixed slopes 1 + c_pm (c_+ = 0, c_- = -1: ReLU);
    residual: X' = lam X + gamma Branch(X), False for X' = Branch(X) (gamma = 1, lam = 0).
    """

    label: str
    block: str
    alpha: sp.Rational = sp.Integer(0)
    kappa: sp.Rational | None = sp.Rational(1, 2)
    mixing: tuple[sp.Expr, sp.Expr, sp.Expr] = (1, 1, 1)
    shaping: sp.Rational | None = sp.Rational(1, 2)
    residual: bool = True

    def __post_init__(self) -> None:
        if self.block not in ("attention", "mlp", "linear"):
            raise ValueError(f"block must be attention, mlp or linear; got {self.block!r}")
        object.__setattr__(self, "alpha", _q(self.alpha))
        if self.kappa is not None:
            object.__setattr__(self, "kappa", _q(self.kappa))
        if self.shaping is not None:
            object.__setattr__(self, "shaping", _q(self.shaping))
        object.__setattr__(self, "mixing", tuple(sp.sympify(x) for x in self.mixing))
        if self.alpha < 0 or (self.kappa is not None and self.kappa < 0):
            raise ValueError("alpha and kappa must be >= 0 (scales that do not grow with n)")
        if not self.residual and self.alpha != 0:
            raise ValueError("without a residual the branch weight is 1 (alpha = 0)")

    def exponent(self, powers: tuple[int, ...]) -> sp.Rational:
        """The power of n of E_V^i E_Z^j E_G^k E_A^l."""
        i, j, k, s = powers
        return -(sp.Rational(i, 2) + (self.kappa or 0) * j + self.alpha * k
                 + (self.shaping or 0) * s)

    @property
    def lam_limit(self) -> sp.Expr:
        if not self.residual:
            return sp.Integer(0)
        return sp.sqrt(1 - GAMMA0**2) if self.alpha == 0 else sp.Integer(1)


@dataclass
class ScaledIncrement:
    """dV = sum_p n^p terms[p] (m x m, polynomials in `noise` ~ N(0, noise_cov)).

    dropped: the largest power of n among the terms the Softmax series dropped (None:
    nothing dropped); approximate: powers whose coefficient is only the truncation of a
    non-polynomial one (O(1) logits)."""

    V: sp.Matrix
    terms: dict[sp.Rational, sp.Matrix]
    noise: list[sp.Symbol]
    noise_cov: sp.Matrix
    labels: dict[sp.Rational, list[str]]
    dropped: sp.Rational | None = None
    approximate: frozenset = frozenset()


def _value_noise(V: sp.Matrix) -> tuple[dict[str, sp.Matrix], list[sp.Symbol], sp.Matrix]:
    h, Vh = gaussian_vector("h", V)
    x, Vx = gaussian_vector("x", V)
    variables, cov = independent((h, Vh), (x, Vx))
    hv, xv = sp.Matrix(h), sp.Matrix(x)
    return WidthSum(variables, cov, {"S": hv * hv.T, "M": hv * xv.T}).noise()


def _label(powers: tuple[int, ...], lam: bool) -> str:
    i, j, k, s = powers
    parts = [f"gamma^{k}" if k != 1 else "gamma"] if k else []
    parts += ["lam"] if lam else []
    parts += [("values" if i == 1 else f"values^{i}")] if i else []
    parts += [("logits" if j == 1 else f"logits^{j}")] if j else []
    parts += [f"shaping^{s}"] if s else []
    return " ".join(parts) or "1"


def scaled_increment(p: Parametrisation, m: int = 2, order: int = 2) -> ScaledIncrement:
    """The increment of `p`'s block for m tokens, grouped by powers of n."""
    V = covariance_symbols(m)
    Id, C = sp.eye(m), sp.ones(m, m) / m
    xi, noise, cov = _value_noise(V)
    S = V + E_V * xi["S"]
    M = E_V * xi["M"]
    A = Id
    dropped: list[sp.Rational] = []
    if p.block == "attention":
        a, b, c = p.mixing
        if p.kappa is None:
            A = a * Id + (b - c) * C  # Softmax(0) = 11^T / m
        else:
            q, Vq = gaussian_vector("q", V)
            k, Vk = gaussian_vector("k", V)
            variables, qk_cov = independent((q, Vq), (k, Vk))
            logits = WidthSum(variables, qk_cov, {"z": sp.Matrix(q) * sp.Matrix(k).T / TAU0})
            zs, znoise, zcov = logits.noise()
            rows = [softmax_expansion(list(zs["z"].row(r)), order) for r in range(m)]
            soft = sum((E_Z**j * sp.Matrix(m, m, lambda r, s, j=j: rows[r][j][s])
                        for j in range(order + 1)), sp.zeros(m, m))
            A = a * Id + b * soft - c * C
            noise, cov = znoise + noise, sp.diag(zcov, cov)
            dropped.append(p.exponent((0, order + 1, 2, 0)))  # gamma^2 logits^(order+1)
            if p.residual:
                dropped.append(p.exponent((1, order + 1, 1, 0)))
    kernel = V
    if p.block == "mlp":
        g, Vg = gaussian_vector("g", V)
        gv = sp.Matrix(g)
        xk, nk_, ck = WidthSum(tuple(g), Vg, {"K": gv * gv.T}).noise()
        noise, cov = nk_ + noise, sp.diag(ck, cov)
        kernel = sp.Matrix(m, m, lambda r, s: _kernel_entry(V, r, s, p.shaping)) + E_V * xk["K"]
        S = S - V + kernel
    gamma = GAMMA0 * E_G if p.residual else sp.Integer(1)
    lam = LAM if p.residual else sp.Integer(0)
    dV = gamma**2 * A * S * A.T - (gamma**2 if p.residual else 1) * V
    dV += lam * gamma * (A * M + (A * M).T)
    terms: dict[sp.Rational, sp.Matrix] = {}
    labels: dict[sp.Rational, set[str]] = {}
    for r in range(m):
        for s in range(m):
            poly = sp.Poly(sp.expand(dV[r, s]), *SCALES)
            for powers, coeff in poly.terms():
                if p.block == "attention" and p.kappa is not None and powers[1] > order:
                    continue  # incomplete: the dropped Softmax orders contribute here
                e = p.exponent(powers)
                terms.setdefault(e, sp.zeros(m, m))[r, s] += coeff
                labels.setdefault(e, set()).add(_label(powers, coeff.has(LAM)))
    terms = {e: t.applyfunc(sp.expand) for e, t in terms.items()}
    terms = {e: t for e, t in terms.items() if t != sp.zeros(m, m)}
    approximate = set()
    if p.block == "attention" and p.kappa == 0:
        approximate = {e for e in terms if dropped and e <= max(dropped)}
    return ScaledIncrement(V, terms, noise, cov, {e: sorted(v) for e, v in labels.items()},
                           max(dropped) if dropped else None, frozenset(approximate))


def _kernel_entry(V: sp.Matrix, r: int, s: int, shaping: sp.Rational | None) -> sp.Expr:
    """c E[phi(g_r) phi(g_s)] for the MLP's activation: V + E_A^2 kappa (shaped, exact to
    the orders kept: the series in the shaping has no E_A^1 term) or the exact kernel."""
    rho = sp.Integer(1) if r == s else V[r, s] / sp.sqrt(V[r, r] * V[s, s])
    sub = {V_AA: V[r, r], V_BB: V[s, s], RHO: rho}
    if shaping is None:
        sp_, sm_ = 1 + C_PLUS, 1 + C_MINUS
        k = 2 / (sp_**2 + sm_**2) * activation_kernel().subs({S_PLUS: sp_, S_MINUS: sm_})
        return sp.simplify(k.subs(sub))
    series = shaped_kernel_series()
    if series[1] != 0:
        raise AssertionError("the shaped kernel has an O(n^{-shaping}) term")
    return V[r, s] + E_A**2 * sp.simplify(series[2].subs(sub))


@dataclass(frozen=True)
class Coefficients:
    drift: sp.Matrix
    diffusion: sp.Array | None  # (m, m, m, m), None where the fluctuation vanishes


@dataclass
class Regime:
    """Power counting of one parametrisation (`regime`)."""

    parametrisation: Parametrisation
    increment: ScaledIncrement
    drift_exponent: sp.Expr  # p_b (-oo: no drift at any kept order)
    noise_exponent: sp.Expr  # p_s
    mean_exponents: tuple = field(default=())
    noisy_exponents: tuple = field(default=())

    @property
    def natural_depth(self) -> sp.Expr:
        """delta*: the depth n^{delta*} at which the leading term becomes O(1)."""
        return sp.Min(-self.drift_exponent, -2 * self.noise_exponent)

    def accumulated(self, delta) -> tuple[sp.Expr, sp.Expr]:
        """Powers of n of the accumulated drift and fluctuation at depth n^delta."""
        delta = _q(delta)
        return delta + self.drift_exponent, delta / 2 + self.noise_exponent

    def at(self, delta=1) -> str:
        """The regime at depth n^delta (delta = 1: depth proportional to width)."""
        eb, es = self.accumulated(delta)
        if eb > 0 or es > 0:
            return NO_LIMIT
        if eb == 0:
            return SDE if es == 0 else ODE
        return DIFFUSION if es == 0 else FROZEN

    @property
    def exact(self) -> bool:
        """Whether the coefficients at the natural depth are the derived polynomials."""
        d = self.natural_depth
        return not any(e in self.increment.approximate for e in (-d, -d / 2))

    def summary(self) -> str:
        d = self.natural_depth
        if d == 0:
            return ("O(1) per layer: a discrete chain with no continuum limit; "
                    f"at depth n: {self.at(1)}")
        if d == sp.oo:
            return "the identity at every depth"
        lead = self.at(d)
        if d == 1:
            return f"{lead} at depth n (frozen below, no limit above)"
        where = "frozen below" if d > 1 else "no limit above"
        return f"{self.at(1)} at depth n; {lead} at depth {depth_of(d)} ({where})"

    @cached_property
    def _E(self):
        inc = self.increment
        return lambda e, other=None: gaussian_expectation(e, inc.noise, inc.noise_cov, other)

    def coefficients(self, delta=None) -> Coefficients:
        """b = lim n^delta E[dV], Sigma = lim n^delta Cov[dV] at depth n^delta (default:
        the natural depth), lam at its limit; b is 0 where the drift vanishes there and
        Sigma None where the fluctuation does. Raises where a term grows."""
        delta = self.natural_depth if delta is None else _q(delta)
        if self.at(delta) == NO_LIMIT:
            raise ValueError(f"{self.parametrisation.label}: no limit at depth n^{delta}")
        inc, m = self.increment, self.increment.V.shape[0]
        lam = {LAM: self.parametrisation.lam_limit}
        Dm = inc.terms.get(-delta, sp.zeros(m, m))
        drift = Dm.applyfunc(lambda e: _tidy(self._E(e), lam))
        diffusion = None
        if self.at(delta) in (SDE, DIFFUSION):
            D = inc.terms[-delta / 2]
            D = D - D.applyfunc(self._E)
            flat = list(D)
            ent = {}
            for i in range(m * m):
                for j in range(i, m * m):
                    ent[i, j] = ent[j, i] = _tidy(self._E(flat[i], flat[j]), lam)
            diffusion = sp.Array([ent[i, j] for i in range(m * m) for j in range(m * m)],
                                 (m, m, m, m))
        return Coefficients(drift, diffusion)

    def terms_table(self, delta=1) -> list[tuple[sp.Rational, str, bool, bool, str]]:
        """(power of n per layer, term labels, has mean, has noise, what it does at depth
        n^delta) for each group of terms, largest first."""
        delta = _q(delta)
        out = []
        for e in sorted(self.increment.terms, reverse=True):
            mean, noisy = e in self.mean_exponents, e in self.noisy_exponents
            eb, es = delta + e, delta / 2 + e
            acc = [eb] if mean else []
            acc += [es] if noisy else []
            top = max(acc) if acc else -sp.oo
            what = "grows" if top > 0 else ("survives" if top == 0 else "vanishes")
            out.append((e, ", ".join(self.increment.labels[e]), mean, noisy, what))
        return out


def _tidy(e: sp.Expr, subs: dict) -> sp.Expr:
    return sp.expand(sp.expand(e).subs(subs))


def regime(p: Parametrisation, m: int = 2, order: int = 2) -> Regime:
    """Power-count `p`'s block (m tokens, Softmax to `order` in n^{-kappa})."""
    inc = scaled_increment(p, m, order)
    E = lambda e: gaussian_expectation(e, inc.noise, inc.noise_cov)  # noqa: E731
    means, noisy = [], []
    for e, D in inc.terms.items():
        mean = D.applyfunc(lambda x: sp.simplify(E(x)))
        if mean != sp.zeros(*D.shape):
            means.append(e)
        if (D - mean).applyfunc(sp.expand) != sp.zeros(*D.shape):
            noisy.append(e)
    pb = max(means) if means else -sp.oo
    ps = max(noisy) if noisy else -sp.oo
    out = Regime(p, inc, pb, ps, tuple(sorted(means)), tuple(sorted(noisy)))
    # A dropped term of power n^e could add a drift that is O(1) at depth n^{-e}: it must
    # vanish at the natural depth of the kept terms (its noise then vanishes too).
    if inc.dropped is not None and (p.kappa or 0) > 0 and not inc.dropped < -out.natural_depth:
        raise ValueError(f"{p.label}: the dropped Softmax orders (n^{inc.dropped} per layer) "
                         f"are not negligible at the natural depth n^{out.natural_depth} of "
                         "the kept ones; raise `order`")
    return out


# The table of docs/regimes.md.
HALF, QUARTER = sp.Rational(1, 2), sp.Rational(1, 4)
PARAMETRISATIONS: tuple[Parametrisation, ...] = (
    Parametrisation("shaped attention (paper)", "attention", 0, HALF),
    Parametrisation("shaped attention, 1/sqrt(n) branch", "attention", HALF, HALF),
    Parametrisation("shaped attention, alpha = kappa = 1/4", "attention", QUARTER, QUARTER),
    Parametrisation("standard attention", "attention", 0, 0, (0, 1, 0)),
    Parametrisation("standard attention, 1/sqrt(n) branch", "attention", HALF, 0, (0, 1, 0)),
    Parametrisation("SAS at init (a = b = c = 1, zero logits, no skip)", "attention", 0, None,
                    (1, 1, 1), residual=False),
    Parametrisation("SAS, no centring (a = b = 1, c = 0)", "attention", 0, None, (1, 1, 0),
                    residual=False),
    Parametrisation("shaped ReLU MLP", "mlp", 0),
    Parametrisation("ReLU MLP, 1/sqrt(n) branch", "mlp", HALF, shaping=None),
    Parametrisation("linear, 1/sqrt(n) branch", "linear", HALF),
)


def table(parametrisations=PARAMETRISATIONS, m: int = 2) -> list[tuple[Parametrisation, Regime]]:
    return [(p, regime(p, m)) for p in parametrisations]


def fmt_exponent(e: sp.Expr) -> str:
    return "-" if e == -sp.oo else (str(e) if e != sp.oo else "inf")


def depth_of(delta: sp.Expr) -> str:
    return "1" if delta == 0 else ("n" if delta == 1 else f"n^{delta}") if delta != sp.oo \
        else "never"


__all__ = ["Parametrisation", "Regime", "ScaledIncrement", "Coefficients", "regime",
           "scaled_increment", "table", "PARAMETRISATIONS", "GAMMA0", "LAM", "NO_LIMIT",
           "SDE", "ODE", "DIFFUSION", "FROZEN"]
