"""The matched noise map's coefficients, derived: one step of the solver against the SDE's
own joint moments of the spectrum, to second order in the step.

The solver's factor step (docs/solver.md, "Many tokens") is C = exp(M) in factor
coordinates, V' = L C L^T, with

    M = -K_d h / 2 + W + a (W^2 - K_d h) + b W^3 + beta (tr W) W^2,

W the Gaussian noise in factor coordinates (E[W (x) W] = h Sigma_d) and K_d h = E[W^2].
For the linear block Sigma_d is isotropic (Sigma^{ab,cd} = c (delta^{ac} delta^{bd} +
delta^{ad} delta^{bc}) at V = I; c = 1 below, h carries it), so M is a polynomial in one
symmetric Gaussian matrix W whose coefficients are traces of powers of W, and
K_d = (m + 1) I.

Which moments. The law of C is invariant under conjugation by O(m), so it is fixed by the
joint law of its eigenvalues, whose polynomial moments are E p_lambda(C), p_lambda =
prod_r tr C^{lambda_r} over partitions lambda. To O(h^2) a step only the increments'
tensors E[(C - I)^{(x) k}], k <= 4, enter (k >= 5 is O(h^3) on both sides), and an
invariant tensor of order k is fixed by the p(k) numbers E p_lambda(C - I), |lambda| = k.
So matching E p_lambda(C) at O(h^2) for every |lambda| <= 4 makes the step's law right to
second order in every polynomial test function: weak order 2 for the linear block.

Exact side: from V = I, E p_lambda(V_h) = p_lambda + h L p_lambda + h^2 / 2 L^2 p_lambda
+ O(h^3) at p_i = m, with L the generator on traces (`free_limit.generator`, itself checked
against the block's derived b and Sigma).

Scheme side: with W = sqrt(h) w, tr exp(q M) is a series in sqrt(h) whose coefficients are
products of T_j = tr W^j (everything is a polynomial in the one matrix W); to O(h^2) it
needs E prod_r T_{j_r} with sum j_r <= 4, a polynomial in m by Wick's theorem
(`gaussian_multi_trace_moment`).

Result (`matched_coefficients`): the O(h) terms agree for every (a, b, beta); the O(h^2)
terms of the six partitions with |lambda| <= 3 have the one solution

    a = 0,   b = (m^2 + m + 4) / (24 (2 m^2 + 5 m - 1)),
             beta = -(m + 1) / (8 (2 m^2 + 5 m - 1)),

and then every partition up to |lambda| = 6 (29 of them) matches. At m = 1 the two cubic
terms cancel (b = -beta = 1/24): exp of a scalar Gaussian is exact. For large m, b -> 1/48
and beta ~ -1/(16 m).

History (kept as functions, the tests read them): the map with beta = 0 matched the
single-trace moments (1/m) E tr C^p for every p with b = (m + 2)(m - 1) /
(24 (2 m^2 + 5 m + 5)) (`single_trace_coefficient`) but not the joint ones (E (tr C)^2
is high by m (m - 1)(m + 1)(m + 2) h^2 / (2 (2 m^2 + 5 m + 5))), which the trace moments
of V read after two or more steps; before it, b = 0 and a from the mean alone
(`mean_only_coefficient`). E tr W^3 = E (tr W) tr W^2 = 0, so E tr M = E tr X for every
version: E log det C stays exact to second order.
"""

from __future__ import annotations

from functools import cache
from itertools import product

import sympy as sp

from .free_limit import c, generator, m, p, p_of, partitions

a, b, beta, h, r, w = sp.symbols("a b beta h r w")
#: T_j = tr W^j, the scalar coefficients of the step's polynomial in W.
T = {j: sp.Symbol(f"T{j}") for j in range(1, 5)}
ORDER = 4  # powers of r = sqrt(h) kept: O(h^2)


def _pairings(items: tuple[int, ...]) -> list[list[tuple[int, int]]]:
    """All perfect matchings of `items` (an even number of positions)."""
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    out = []
    for i, other in enumerate(rest):
        for tail in _pairings(rest[:i] + rest[i + 1:]):
            out.append([(first, other)] + tail)
    return out


def _components(n: int, edges: list[tuple[int, int]]) -> int:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in edges:
        parent[find(u)] = find(v)
    return len({find(x) for x in range(n)})


@cache
def gaussian_multi_trace_moment(powers: tuple[int, ...]) -> sp.Expr:
    """E prod_r tr W^{powers_r} for symmetric Gaussian W with E[W_ab W_cd] = delta_ac
    delta_bd + delta_ad delta_bc, a polynomial in m, by Wick's theorem. Trace r is a
    cycle W_{i0 i1} W_{i1 i2} ... W_{i(k-1) i0} over its own index variables; each pairing
    of all the factors and each choice of the two delta terms per pair identifies index
    variables, and the term is m^(index classes). tr W^0 = m."""
    nonzero = tuple(sorted(k for k in powers if k > 0))
    scalar = m ** (len(powers) - len(nonzero))
    n = sum(nonzero)
    if n % 2:
        return sp.Integer(0)
    ends, start = [], 0  # factor u is W_{left, right} over index variables 0..n-1
    for k in nonzero:
        ends += [(start + i, start + (i + 1) % k) for i in range(k)]
        start += k
    total = sp.Integer(0)
    for pairing in _pairings(tuple(range(n))):
        for choice in product((0, 1), repeat=len(pairing)):
            edges = []
            for (u, v), straight in zip(pairing, choice, strict=True):
                (lu, ru), (lv, rv) = ends[u], ends[v]
                edges += [(lu, lv), (ru, rv)] if straight else [(lu, rv), (ru, lv)]
            total += m ** _components(n, edges)
    return sp.expand(scalar * total)


def gaussian_trace_moment(j: int) -> sp.Expr:
    """E tr W^j (one trace of `gaussian_multi_trace_moment`)."""
    return gaussian_multi_trace_moment((j,))


def exact_step_moment(lam: tuple[int, ...]) -> sp.Expr:
    """E p_lambda(V_h) / m^{l(lambda)} from V = I to O(h^2), the linear block with c = 1."""
    F = p_of(lam)
    L1 = generator(F)
    L2 = generator(L1)
    at_identity = {p(i): m for i in range(1, 4 * sum(lam) + 2)}
    value = F + h * L1 + h**2 / 2 * L2
    return sp.expand(value.subs(c, 1).subs(at_identity) / m ** len(lam))


def step_argument() -> sp.Expr:
    """M (module docstring) with W = r w, tr W^j = r^j T_j, h = r^2."""
    K = (m + 1) * r**2
    return (-K / 2 + r * w + a * (r**2 * w**2 - K) + b * r**3 * w**3
            + beta * r**3 * T[1] * w**2)


def _truncate(expr: sp.Expr) -> sp.Expr:
    expr = sp.expand(expr)
    return sp.Add(*(expr.coeff(r, k) * r**k for k in range(ORDER + 1)))


def _trace_exp(M: sp.Expr, q: int) -> sp.Expr:
    """tr exp(q M) to O(r^ORDER) as a polynomial in the T_j (M = O(r): ORDER terms)."""
    series, term = sp.Integer(1), sp.Integer(1)
    for n in range(1, ORDER + 1):
        term = _truncate(term * q * M / n)
        series += term
    poly = sp.Poly(sp.expand(series), w)
    return sp.expand(sum(coeff * (T[j] if j else m) for (j,), coeff in poly.terms()))


def _expectation(expr: sp.Expr) -> sp.Expr:
    """E of a polynomial in the T_j (`gaussian_multi_trace_moment`)."""
    keys = list(T)
    out = sp.Integer(0)
    for powers, coeff in sp.Poly(expr, *T.values()).terms():
        js = tuple(j for j, e in zip(keys, powers, strict=True) for _ in range(e))
        out += coeff * gaussian_multi_trace_moment(js)
    return out


def scheme_step_moment(lam: tuple[int, ...], M: sp.Expr | None = None) -> sp.Expr:
    """E p_lambda(exp M) / m^{l(lambda)} to O(h^2), a polynomial in m, h and the
    coefficients (M: `step_argument()` by default)."""
    M = step_argument() if M is None else M
    traces = {q: _trace_exp(M, q) for q in set(lam)}
    value = sp.Integer(1)
    for q in lam:
        value = _truncate(value * traces[q])
    return sp.expand(_expectation(value).subs(r, sp.sqrt(h)) / m ** len(lam))


@cache
def residuals(max_size: int) -> dict[tuple[int, ...], sp.Expr]:
    """{lambda: O(h^2) coefficient of scheme - exact} for |lambda| <= max_size; raises if
    any differs below O(h^2)."""
    out = {}
    for k in range(1, max_size + 1):
        for lam in partitions(k):
            diff = sp.expand(scheme_step_moment(lam) - exact_step_moment(lam))
            if sp.simplify(diff.coeff(h, 0)) != 0 or sp.simplify(diff.coeff(h, 1)) != 0:
                raise ArithmeticError(f"the step's moment {lam} differs below O(h^2)")
            out[lam] = diff.coeff(h, 2)
    return out


@cache
def matched_coefficients(check_up_to: int = 6) -> dict[str, sp.Expr]:
    """(a, b, beta) that match E p_lambda(C) at O(h^2) for |lambda| <= 3; raises if any
    partition up to |lambda| = `check_up_to` is then left unmatched (module docstring)."""
    res = residuals(max(3, check_up_to))
    solutions = sp.solve([e for lam, e in res.items() if sum(lam) <= 3], [a, b, beta],
                         dict=True)
    if len(solutions) != 1:
        raise ArithmeticError(f"expected one solution for (a, b, beta); got {solutions}")
    sol = {str(k): sp.factor(v) for k, v in solutions[0].items()}
    at = {a: sol["a"], b: sol["b"], beta: sol["beta"]}
    for lam, e in res.items():
        if sp.simplify(e.subs(at)) != 0:
            raise ArithmeticError(f"the matched map leaves the moment {lam} off at O(h^2)")
    return sol


def single_trace_coefficient() -> sp.Expr:
    """The previous map's b (a = beta = 0): the root of the O(h^2) part of
    (1/m) E tr C^2, with which every single-trace moment matched but not the joint ones."""
    res = residuals(2)
    (root,) = sp.solve(res[(2,)].subs({a: 0, beta: 0}), b)
    return sp.factor(root)


def mean_only_coefficient() -> sp.Expr:
    """The first map's condition (b = beta = 0, the mean only): the O(h^2) part of
    (1/m) E tr C, whose root a_m matched the mean alone."""
    return sp.factor(residuals(1)[(1,)].subs({b: 0, beta: 0}))
