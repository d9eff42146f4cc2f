"""The matched noise map's coefficient, derived: one step of the solver against the SDE's
own moments of the spectrum, to second order in the step.

The solver's factor step (docs/solver.md, "Many tokens") is C = exp(M) in factor
coordinates, V' = L C L^T, with

    M = -K_d h / 2 + W + a (W^2 - K_d h) + b W^3,

W the Gaussian noise in factor coordinates (E[W (x) W] = h Sigma_d) and K_d h = E[W^2].
For the linear block Sigma_d is isotropic (Sigma^{ab,cd} = c (delta^{ac} delta^{bd} +
delta^{ad} delta^{bc}) at V = I; c = 1 below, h carries it), so M is a polynomial in one
symmetric Gaussian matrix W and K_d = (m + 1) I.

Exact side: from V = I the SDE's single-trace moments after h are
E tr V_h^p = p_p + h L p_p + h^2 / 2 L^2 p_p + O(h^3) at p_i = m, with L the generator
on traces (`free_limit.generator`, itself checked against the block's derived b and Sigma).

Scheme side: tr exp(p M) = tr f(W) with f a power series (everything commutes), and
E tr W^j is a polynomial in m (`gaussian_trace_moment`, by Wick's theorem). Writing
W = sqrt(h) w, the series in h to second order needs E tr W^j for j <= 4 (odd j vanish).

Matching (1/m) E tr C^p for p = 1, 2, 3 at O(h^2) (O(h) matches for any a, b) gives

    a = 0,    b_m = (m + 2)(m - 1) / (24 (2 m^2 + 5 m + 5)),

and then every p (checked to p = 6) matches: the step's whole spectrum is right to
second order, for every m (`matched_coefficients`). b_1 = 0 (a scalar: exp of a Gaussian
is exact), b_m -> 1/48. The former map (b = 0, a_m from a^2 + a = (m+2)(m-1) /
(12 (m^2+3m+4))) matched p = 1 only (the mean) and moved the higher moments, i.e. the
spectrum's edges, by O(h^2) a step: a first-order bias of the smallest eigenvalues
(docs/solver.md). E tr M = E tr X either way (E tr W^3 = 0), so E log det stays exact.
"""

from __future__ import annotations

from functools import cache
from itertools import product

import sympy as sp

from .free_limit import c, generator, m, p

a, b, h, w = sp.symbols("a b h w")


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
def gaussian_trace_moment(j: int) -> sp.Expr:
    """E tr W^j for symmetric Gaussian W with E[W_ab W_cd] = delta_ac delta_bd +
    delta_ad delta_bc, a polynomial in m, by Wick's theorem: tr W^j = sum W_{i0 i1}
    W_{i1 i2} ... W_{i(j-1) i0}; each pairing of the j factors and each choice of the
    two delta terms per pair identifies indices, and the term is m^(free index classes)."""
    if j % 2:
        return sp.Integer(0)
    if j == 0:
        return m
    total = sp.Integer(0)
    for pairing in _pairings(tuple(range(j))):
        for choice in product((0, 1), repeat=len(pairing)):
            edges = []
            for (u, v), straight in zip(pairing, choice, strict=True):
                # factor u is W_{i_u, i_(u+1)}; delta_ac delta_bd or delta_ad delta_bc
                left_u, right_u, left_v, right_v = u, (u + 1) % j, v, (v + 1) % j
                if straight:
                    edges += [(left_u, left_v), (right_u, right_v)]
                else:
                    edges += [(left_u, right_v), (right_u, left_v)]
            total += m ** _components(j, edges)
    return sp.expand(total)


def exact_step_moment(power: int) -> sp.Expr:
    """(1/m) E tr V_h^power from V = I to O(h^2), the linear block with c = 1."""
    F = p(power)
    L1 = generator(F)
    L2 = generator(L1)
    at_identity = {p(i): m for i in range(1, 4 * power + 2)}
    value = F + h * L1 + h**2 / 2 * L2
    return sp.expand(value.subs(c, 1).subs(at_identity) / m)


def scheme_step_moment(power: int) -> sp.Expr:
    """(1/m) E tr exp(power M) to O(h^2), M = -(m+1) h / 2 + W + a (W^2 - (m+1) h) + b W^3
    (module docstring), as a polynomial in m, a, b, h."""
    K = (m + 1) * h
    root = sp.sqrt(h)
    g = -K / 2 + root * w + a * (h * w**2 - K) + b * root**3 * w**3
    series = sp.series(sp.exp(power * g), h, 0, 3).removeO()
    series = sp.expand(series)
    poly = sp.Poly(series, w)
    out = sp.Integer(0)
    for (j,), coeff in poly.terms():
        out += coeff * gaussian_trace_moment(j) / m
    return sp.expand(out)


@cache
def matched_coefficients(check_up_to: int = 6) -> dict[str, sp.Expr]:
    """(a, b) that match (1/m) E tr C^p at O(h^2) for p = 1, 2, 3; raises if any p up to
    `check_up_to` is then left unmatched (module docstring)."""
    residual = {q: sp.expand(scheme_step_moment(q) - exact_step_moment(q))
                for q in range(1, check_up_to + 1)}
    for q, r in residual.items():
        if sp.simplify(r.coeff(h, 0)) != 0 or sp.simplify(r.coeff(h, 1)) != 0:
            raise ArithmeticError(f"the step's moment p = {q} differs below O(h^2)")
    solutions = sp.solve([residual[q].coeff(h, 2) for q in (1, 2, 3)], [a, b], dict=True)
    if len(solutions) != 1:
        raise ArithmeticError(f"expected one solution for (a, b); got {solutions}")
    sol = {str(k): sp.factor(v) for k, v in solutions[0].items()}
    for q, r in residual.items():
        if sp.simplify(r.coeff(h, 2).subs({a: sol["a"], b: sol["b"]})) != 0:
            raise ArithmeticError(f"the matched map leaves the moment p = {q} off at O(h^2)")
    return sol


def mean_only_coefficient() -> sp.Expr:
    """The former map's condition (b = 0, p = 1 only): the O(h^2) part of (1/m) E tr C,
    whose root a_m (`scheme`'s old spread coefficient) matched the mean alone."""
    return sp.factor(sp.expand(scheme_step_moment(1) - exact_step_moment(1)).coeff(h, 2)
                     .subs(b, 0))
