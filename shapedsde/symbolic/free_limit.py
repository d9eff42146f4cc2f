"""The linear block at many tokens: trace moments of V exactly for every m, their large-m
limit at t = s / m (free positive multiplicative Brownian motion) and its density.

The SDE. For the linear block the derivation gives b = 0 and

    Sigma^{ab,cd}(V) = c (V^{ac} V^{bd} + V^{ad} V^{bc}),   c = gamma^2 (2 - gamma^2)

(lam^2 + gamma^2 = 1; `linear_diffusion` in the generated kernels; the tests read c from
the block instead of trusting this line).

Ito on traces of powers. Let p_k = tr V^k. Its first derivative is k tr(V^{k-1} dV)
and its second k sum_{j=0}^{k-2} tr(V^j dV V^{k-2-j} dV). With the Sigma above,
E tr(A dV B dV) = c [tr(A V B^T V) + tr(A V) tr(B V)] dt and
E tr(A dV) tr(B dV) = 2 c tr(A V B V) dt for symmetric A, B, so

    L p_k = (c k / 2) [ (k - 1) p_k + sum_{i=1}^{k-1} p_i p_{k-i} ],      (drift 0)
    Gamma(p_i, p_j) = d<p_i, p_j>/dt = 2 c i j p_{i+j},

and the generator on any polynomial F(p_1, p_2, ...) is Ito's formula in the p's:
L F = sum_i F_i L p_i + 1/2 sum_{ij} F_ij Gamma(p_i, p_j) (`generator`). It maps the
products p_lambda = prod_r p_{lambda_r} over the partitions lambda of k into themselves:
d E[p_lambda] / dt = c sum_mu A_{lambda mu} E[p_mu], a closed linear system whose matrix
A (`moment_matrix`) does not depend on m; m enters only through the initial values
(p_i(0) = m for V_0 = I). So E tr V_t^k is exact for every m (`exact_moments`); e.g.
E tr V_t^2 = m(m+2)/3 e^{2ct} + m(1-m)/3 e^{-ct} from V_0 = I. These rules are checked
against Ito's formula applied entry by entry to the block's own derived b and Sigma
(`entry_generator`, tests/test_free_limit.py), at m = 2 and 3.

Large m. Normalise q_lambda = E[p_lambda] / m^{l(lambda)} (l: the number of parts) and
take t = s / m. A term of L p_lambda that splits a part (p_i p_{k-i}) raises l by one, the
(k-1) p_k term keeps it, Gamma merges two parts and lowers it, so

    dq/ds = c (A_0 + A_1 / m + A_2 / m^2) q,    q(0) = 1,

with A_0 the splitting terms (nilpotent: parts only increase). Hence
q = q^(0) + q^(1) / m + O(m^-2) with polynomial q^(0), q^(1) (`large_m_moments`):
q^(0)_lambda = prod_r mu_{lambda_r} (factorisation: the variance of (1/m) tr V^k is
O(1/m^2)), and mu_k(s) = lim E[(1/m) tr V_{s/m}^k] solves

    d mu_k / ds = (c k / 2) sum_{i=1}^{k-1} mu_i mu_{k-i},   mu_k(0) = 1,

the moment equation of the free SDE dv = sqrt(c) v^{1/2} dx v^{1/2} (x a free additive
Brownian motion; free Ito: tau(a dx b dx e) = tau(b) tau(a e) dt). Its law is the
free multiplicative convolution semigroup with S-transform S(z) = exp(-c s z), and
Lagrange inversion of chi(w) = w exp(-t w) / (1 + w), t = c s, gives the closed form

    mu_n = (1/n) sum_{j=0}^{n-1} binom(n, j) (n t)^{n-1-j} / (n-1-j)!   (`lagrange_moment`),

which is Biane's (1997) moment formula of the free unitary Brownian motion,
tau(u_t^n) = e^{-nt/2} sum_{k<n} (-t)^k / k! n^{k-1} binom(n, k+1) (`biane_unitary_moment`),
continued to negative time: writing tau(u_t^n) = e^{-nt/2} P_n(t), mu_n(s) = P_n(-c s),
the free positive multiplicative
Brownian motion (normalised to mean one). Three routes (the generator's factorised limit,
Lagrange inversion, Biane's formula) are checked equal in the tests.

The density of that law (`limit_density`): with psi(z) = sum mu_n z^n = w and
chi(w) = 1 / x, i.e. x w e^{-t w} = 1 + w, the Cauchy transform is G(x) = (1 + w) / x
and the density -Im G(x + i0) / pi = -Im w / (pi x) on the root with Im w < 0, found by
Newton's method continued along x from x = 1 outwards until the root turns real (the edge
of the support, one interval); checked: it integrates to one and has the moments mu_n.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import sympy as sp
from sympy.utilities.iterables import partitions as _partitions

c, s, t, m = sp.symbols("c s t m", positive=True)


def p(k: int) -> sp.Symbol:
    """The symbol p_k = tr V^k."""
    return sp.Symbol(f"p{k}")


def partitions(k: int) -> list[tuple[int, ...]]:
    """The partitions of k, parts descending, fewest parts first."""
    out = [tuple(sorted((i for i, n in d.items() for _ in range(n)), reverse=True))
           for d in _partitions(k)]
    return sorted(out, key=lambda lam: (len(lam), [-x for x in lam]))


def p_of(lam: tuple[int, ...]) -> sp.Expr:
    """p_lambda = prod_r p_{lambda_r}."""
    return sp.Mul(*(p(i) for i in lam))


def trace_drift(k: int) -> sp.Expr:
    """L p_k for the linear block (module docstring)."""
    return c * k / 2 * ((k - 1) * p(k) + sum((p(i) * p(k - i) for i in range(1, k)),
                                             sp.Integer(0)))


def trace_covariation(i: int, j: int) -> sp.Expr:
    """Gamma(p_i, p_j) = d<p_i, p_j>/dt = 2 c i j p_{i+j}."""
    return 2 * c * i * j * p(i + j)


def generator(F: sp.Expr) -> sp.Expr:
    """Ito's generator of the linear block's SDE on a polynomial F in the p_k."""
    ks = sorted(int(str(x)[1:]) for x in F.free_symbols if str(x).startswith("p"))
    out = sum((sp.diff(F, p(i)) * trace_drift(i) for i in ks), sp.Integer(0))
    out += sum((sp.diff(F, p(i), p(j)) * trace_covariation(i, j) / 2 for i in ks for j in ks),
               sp.Integer(0))
    return sp.expand(out)


def entry_generator(F: sp.Expr, drift: sp.Matrix, diffusion: sp.Array, Vm: sp.Matrix
                    ) -> sp.Expr:
    """Ito's generator applied entry by entry: F a function of the independent entries
    v_(ij) = V_ij (i <= j) of the symmetric symbol matrix Vm (one symbol for V^{ij} and
    V^{ji}), drift (m, m) and diffusion Sigma^{ab,cd} (m, m, m, m) from a derivation:
    sum_u F_u b_u + 1/2 sum_{u,w} F_uw Sigma_{u,w} over i <= j, k <= l."""
    n = Vm.shape[0]
    idx = [(i, j) for i in range(n) for j in range(i, n)]
    grad = {u: sp.diff(F, Vm[u]) for u in idx}
    out = sum((grad[u] * drift[u] for u in idx), sp.Integer(0))
    out += sum((sp.diff(grad[u], Vm[w]) * diffusion[u[0], u[1], w[0], w[1]] / 2
                for u in idx for w in idx), sp.Integer(0))
    return sp.expand(out)


def traces_of(Vm: sp.Matrix, k: int) -> dict[sp.Symbol, sp.Expr]:
    """{p_i: tr Vm^i} for i = 1..k (to evaluate polynomials in the p's on entries)."""
    out, P = {}, sp.eye(Vm.shape[0])
    for i in range(1, k + 1):
        P = P * Vm
        out[p(i)] = sp.expand(P.trace())
    return out


@cache
def moment_matrix(k: int) -> tuple[tuple[tuple[int, ...], ...], sp.Matrix]:
    """(partitions of k, A) with L p_lambda = c sum_mu A_{lambda mu} p_mu."""
    lams = tuple(partitions(k))
    A = sp.zeros(len(lams), len(lams))
    for a, lam in enumerate(lams):
        poly = sp.Poly(generator(p_of(lam)) / c, *[p(i) for i in range(1, k + 1)])
        for b, mu in enumerate(lams):
            A[a, b] = poly.coeff_monomial(p_of(mu))
        if sp.expand(poly.as_expr() - sum(A[a, b] * p_of(mu) for b, mu in enumerate(lams))):
            raise AssertionError(f"L p_{lam} leaves the partitions of {k}")
    return lams, A


def exact_moments(k: int, c_value: float, m_value: int, t_value: float) -> dict:
    """E[p_lambda(V_t)] for every partition lambda of k, V_0 = I (p_i(0) = m), exactly for
    the SDE (the linear system's matrix exponential, in float64)."""
    lams, A = moment_matrix(k)
    M = np.array(A.tolist(), dtype=np.float64) * c_value * t_value
    x0 = np.array([float(m_value) ** len(lam) for lam in lams])
    return dict(zip(lams, _expm(M) @ x0, strict=True))


def exact_normalised_moment(k: int, c_value: float, m_value: int, s_value: float) -> float:
    """E[(1/m) tr V_t^k] at t = s / m from V_0 = I, exactly for every m."""
    return exact_moments(k, c_value, m_value, s_value / m_value)[(k,)] / m_value


def exact_second_moment() -> sp.Expr:
    """E tr V_t^2 from V_0 = I in closed form (m, c, t symbols): sympy's exp of c t A."""
    lams, A = moment_matrix(2)
    x0 = sp.Matrix([m ** len(lam) for lam in lams])
    return sp.simplify(((c * t * A).exp() * x0)[lams.index((2,))])


@cache
def large_m_moments(k: int) -> tuple[tuple[tuple[int, ...], ...], sp.Matrix, sp.Matrix]:
    """(partitions of k, q0, q1): E[p_lambda] / m^{l(lambda)} at t = s / m from V_0 = I is
    q0 + q1 / m + O(m^-2), q0 and q1 polynomials in s and c (module docstring)."""
    lams, A = moment_matrix(k)
    n = len(lams)
    parts = [len(lam) for lam in lams]
    A0, A1 = sp.zeros(n, n), sp.zeros(n, n)
    for a in range(n):
        for b in range(n):
            d = parts[b] - parts[a]
            if A[a, b] == 0:
                continue
            if d == 1:
                A0[a, b] = c * A[a, b]
            elif d == 0:
                A1[a, b] = c * A[a, b]
            elif d != -1:
                raise AssertionError("a generator term changes the number of parts by 2")
    r = sp.Symbol("r", positive=True)
    E = _nilpotent_exp(A0, n)  # exp(A0 x) as a polynomial in x (A0 is nilpotent)
    x = sp.Symbol("x")
    q0 = sp.expand(E.subs(x, s) * sp.ones(n, 1))
    q1 = (E.subs(x, s - r) * A1 * q0.subs(s, r)).applyfunc(
        lambda e: sp.expand(sp.integrate(sp.expand(e), (r, 0, s))))
    return lams, q0, q1


def _nilpotent_exp(A0: sp.Matrix, n: int) -> sp.Matrix:
    x = sp.Symbol("x")
    out, P = sp.eye(n), sp.eye(n)
    for j in range(1, n + 1):
        P = P * A0
        if P.is_zero_matrix:
            break
        out += P * x**j / math.factorial(j)
    else:
        raise AssertionError("the splitting matrix is not nilpotent")
    return out


def limit_moment(k: int) -> sp.Expr:
    """mu_k(s) = lim_m E[(1/m) tr V_{s/m}^k] (V_0 = I), from the generator's system."""
    lams, q0, _ = large_m_moments(k)
    return q0[lams.index((k,))]


def first_correction(k: int) -> sp.Expr:
    """delta_k(s): E[(1/m) tr V_{s/m}^k] = mu_k(s) + delta_k(s) / m + O(m^-2)."""
    lams, _, q1 = large_m_moments(k)
    return q1[lams.index((k,))]


def recursion_moments(K: int) -> list[sp.Expr]:
    """mu_1..mu_K from d mu_k/ds = (c k / 2) sum_{i<k} mu_i mu_{k-i}, mu_k(0) = 1."""
    r = sp.Symbol("r", positive=True)
    mu: list[sp.Expr] = [sp.Integer(1)]
    for k in range(2, K + 1):
        rate = c * k / 2 * sum(mu[i - 1] * mu[k - i - 1] for i in range(1, k))
        mu.append(sp.expand(1 + sp.integrate(rate.subs(s, r), (r, 0, s))))
    return mu


def lagrange_moment(n: int) -> sp.Expr:
    """mu_n by Lagrange inversion of chi(w) = w e^{-tw} / (1 + w), t = c s."""
    tt = c * s
    return sp.expand(sum(sp.binomial(n, j) * (n * tt) ** (n - 1 - j) / sp.factorial(n - 1 - j)
                         for j in range(n)) / n)


def biane_unitary_moment(n: int, time: sp.Expr = t) -> sp.Expr:
    """Biane (1997): tau(u_t^n) of the free unitary Brownian motion."""
    return sp.exp(-n * time / 2) * sum((-time) ** k / sp.factorial(k) * sp.Integer(n) ** (k - 1)
                                       * sp.binomial(n, k + 1) for k in range(n))


def limit_moment_value(k: int, c_value: float, s_value: float) -> float:
    """mu_k(s) as a number."""
    return float(lagrange_moment(k).subs({c: c_value, s: s_value}))


def limit_density(x: np.ndarray, time: float) -> np.ndarray:
    """Density of the limit law at x > 0 (ascending grid), t = c s (module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    centre = int(np.argmin(np.abs(x - 1.0)))
    start = -1.0 - 1j / math.sqrt(time)  # the semicircle's value at x = 1 for small t
    for order in (range(centre, len(x)), range(centre, -1, -1)):
        w = start
        for i in order:
            w = _root(x[i], time, w)
            if w.imag > -1e-12:  # past the edge: the support is one interval
                break
            out[i] = -w.imag / (math.pi * x[i])
    return out


def _root(x: float, time: float, w: complex) -> complex:
    """Newton's method on f(w) = log(1 + w) + t w - log w - log x (the branch near w)."""
    for _ in range(100):
        f = np.log(1 + w) + time * w - np.log(w) - math.log(x)
        step = f / (1 / (1 + w) + time - 1 / w)
        w = w - step
        if abs(step) < 1e-14 * max(1.0, abs(w)):
            break
    return complex(w)


def _expm(M: np.ndarray) -> np.ndarray:
    """exp(M) of a small matrix: scaling and squaring of a Taylor series."""
    norm = float(np.abs(M).sum(axis=1).max())
    j = max(0, int(math.ceil(math.log2(norm))) + 1) if norm > 0 else 0
    X = M / 2.0**j
    out, term = np.eye(len(M)), np.eye(len(M))
    for n in range(1, 30):
        term = term @ X / n
        out = out + term
    for _ in range(j):
        out = out @ out
    return out
