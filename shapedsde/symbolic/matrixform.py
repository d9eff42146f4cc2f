"""Matrix-form derivation of b(V) and Sigma(V), valid for every number of tokens m.

The update rule is written with SymPy matrix expressions (m symbolic):

    V' = lam^2 V + gam^2 A S A^T + lam gam (A M + M^T A^T),
    S = V + eps xi_S,  M = eps xi_M,  A = I + eps A1 + eps^2 A2,

(one head's copy; with n_H heads the value fluctuations carry sqrt(n_H) and the
covariance of the head average is divided by n_H), with the shaped-attention
expansion A1 = z P / m, A2 = ((z P) o (z P)) P / (2m)
(P = I - 11^T/m; proved equal to the per-entry Softmax series in the tests).
Expanding in eps and applying the Wick rules of `kron` term by term gives
b = E[D2] and Sigma = Cov[D1, D1] as matrix expressions and Kronecker patterns.

Causal attention (`"causal"`) has one centring projector per row: row x of A is row x
of A_x = I + eps z P_x / l_x + eps^2 ((z P_x) o (z P_x)) P_x / (2 l_x), with P_x the
centring projector on the prefix of length l_x = x + 1. So entry (a, b) of V' is entry
(a, b) of the same update with A_a on the left and A_b^T on the right, and the result
is read per entry: b^{ab} is entry (a, b) of a matrix expression in P_a, P_b, l_a, l_b,
and the Kronecker factors of Sigma^{ab,cd} carry P_x, l_x for x = a, b, c, d
(`ROW_PROJECTORS`, `ROW_LENGTHS`; `evaluate.explicit` reads them so).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from . import smooth
from .activation import shaped_kernel_series
from .derivation import Derivation, find
from .entrywise_kernel import Entrywise
from .kron import (
    CovarianceTable,
    Kron,
    Linear,
    covariance,
    mean_chain,
    mean_hadamard,
    outer_product_covariances,
)
from .layers import GAMMA, LAM, TAU0

M_TOKENS = sp.Symbol("m", integer=True, positive=True)
V = sp.MatrixSymbol("V", M_TOKENS, M_TOKENS)
P = sp.MatrixSymbol("P", M_TOKENS, M_TOKENS)  # centring projector I - 11^T/m
EPS = sp.Symbol("epsilon", positive=True)
#: Causal attention: the centring projector P_x on the prefix of token x (row x of an
#: entry's reading), and the prefix length l_x = x + 1, for each label x of b^{ab}, Sigma^{ab,cd}.
ROW_PROJECTORS = {x: sp.MatrixSymbol(f"P_{x}", M_TOKENS, M_TOKENS) for x in "abcd"}
ROW_LENGTHS = {x: sp.Symbol(f"l_{x}", integer=True, positive=True) for x in "abcd"}
SYMMETRIC = (V, P, *ROW_PROJECTORS.values())


@dataclass(frozen=True)
class MatrixCoefficients:
    name: str
    drift: MatrixExpr
    diffusion: tuple[Kron, ...]


#: The layer's noise sources, each an outer product u w^T of Gaussian vectors (by name)
#: times its scale: xi_S ~ h h^T, xi_M ~ h x^T (value weights), z ~ q k^T / tau0 (logits),
#: xi_K ~ g g^T (the activation's input).
SOURCE_VECTORS = {"xi_S": ("h", "h"), "xi_M": ("h", "x"), "z": ("q", "k"), "xi_K": ("g", "g")}
SOURCE_SCALE = {"xi_S": sp.Integer(1), "xi_M": sp.Integer(1), "z": 1 / TAU0,
                "xi_K": sp.Integer(1)}


def _sources() -> tuple[dict[str, sp.MatrixSymbol], CovarianceTable]:
    """The layer's noise sources (`SOURCE_VECTORS`) and their covariances."""
    vec_cov = {(v, v): V for v in "hxqkg"}
    table = outer_product_covariances(SOURCE_VECTORS, vec_cov, SOURCE_SCALE)
    return {s: sp.MatrixSymbol(s, M_TOKENS, M_TOKENS) for s in SOURCE_VECTORS}, table


def attention_expansion(z: MatrixExpr, projector: MatrixExpr = P,
                        length: sp.Expr = M_TOKENS) -> MatrixExpr:
    """A = I + Softmax(eps z) - 11^T/m to O(eps^2), in matrix form.

    With a prefix projector P_x and its length l_x: the matrix whose row x is row x of
    causal attention's A (the Softmax of row x runs over the prefix of length l_x)."""
    zP = z * projector
    return (sp.Identity(M_TOKENS) + EPS * zP / length
            + EPS**2 * sp.HadamardProduct(zP, zP) * projector / (2 * length))


#: Entry (a, b)'s row projectors and lengths -> those of entry (c, d).
_ROW_RENAME = {row[x]: row[y] for row in (ROW_PROJECTORS, ROW_LENGTHS)
               for x, y in (("a", "c"), ("b", "d"))}


def relu_kernel_correction() -> Entrywise:
    """kappa(V): the eps^2 term of c E[phi(g) phi(g)^T], g ~ N(0, V) (by integration)."""
    return Entrywise(sp.Symbol("kappa"), shaped_kernel_series()[2], V)


def residual_update(src: dict[str, sp.MatrixSymbol], heads: sp.Expr = sp.S.One,
                    mixing: MatrixExpr | None = None, kernel: MatrixExpr | None = None,
                    right: MatrixExpr | None = None) -> MatrixExpr:
    """V' = lam^2 V + gam^2 A S B^T + lam gam (A M + M^T B^T) of one head's copy, in eps.

    `mixing`: A to O(eps^2) (None: A = I); `right`: B (None: B = A), e.g. causal
    attention's rows read per entry. `kernel`: the eps^2 term kappa(V) of the value
    step's input Gram (1/n) U U^T = V + eps xi_K + eps^2 kappa(V), for U = sqrt(c) phi(G)
    (None: U = X). With `heads` copies a head's value sums run over n / n_H columns, so
    its value fluctuations carry sqrt(n_H).
    """
    A = sp.Identity(M_TOKENS) if mixing is None else mixing
    B = A if right is None else right
    scale = sp.sqrt(heads)
    S = V + EPS * scale * src["xi_S"]
    if kernel is not None:
        S = S + EPS * src["xi_K"] + EPS**2 * kernel
    M = EPS * scale * src["xi_M"]
    return LAM**2 * V + GAMMA**2 * A * S * B.T + LAM * GAMMA * (A * M + M.T * B.T)


def linear_update(src: dict[str, sp.MatrixSymbol], heads: sp.Expr) -> MatrixExpr:
    """The linear block: A = I, U = X."""
    return residual_update(src, heads)


def attention_update(src: dict[str, sp.MatrixSymbol], heads: sp.Expr) -> MatrixExpr:
    """Shaped attention: A = I + Softmax(eps z) - 11^T/m to O(eps^2)."""
    return residual_update(src, heads, mixing=attention_expansion(src["z"]))


def causal_update(src: dict[str, sp.MatrixSymbol], heads: sp.Expr) -> MatrixExpr:
    """Causal attention, read per entry: entry (a, b) of V' with A_a on the left and A_b^T
    on the right, A_x the expansion with the prefix projector P_x and length l_x."""
    A, B = (attention_expansion(src["z"], ROW_PROJECTORS[x], ROW_LENGTHS[x]) for x in "ab")
    return residual_update(src, heads, mixing=A, right=B)


def mlp_update(src: dict[str, sp.MatrixSymbol], heads: sp.Expr) -> MatrixExpr:
    """The shaped ReLU MLP: the value step acts on U = sqrt(c) phi(G)."""
    return residual_update(src, heads, kernel=relu_kernel_correction())


def mlp_smooth_update(src: dict[str, sp.MatrixSymbol], heads: sp.Expr) -> MatrixExpr:
    """The shaped smooth MLP: kappa(V) is the activation's polynomial kernel."""
    return residual_update(src, heads, kernel=smooth.kernel_node(V))


def _symmetrise(expr):
    """Use V^T = V, P^T = P."""
    return expr.xreplace({sp.Transpose(s): s for s in SYMMETRIC})


def by_order(expr: MatrixExpr) -> dict[int, list[tuple[sp.Expr, list[MatrixExpr]]]]:
    """Expanded terms grouped by power of eps: {k: [(coef, factors), ...]}."""
    out: dict[int, list] = {}
    expr = _symmetrise(sp.expand(expr).doit())
    for term in sp.Add.make_args(expr) if not isinstance(expr, sp.MatAdd) else expr.args:
        coef, mat = term.as_coeff_mmul()
        coef = sp.expand(coef)
        factors = list(mat.args) if isinstance(mat, sp.MatMul) else [mat]
        for c in sp.Add.make_args(coef):
            k = sp.degree(c, EPS)
            out.setdefault(int(k), []).append((c / EPS**k, factors))
    return out


def _is_source(f: MatrixExpr, src: dict) -> bool:
    base = f.arg if isinstance(f, sp.Transpose) else f
    return isinstance(base, sp.MatrixSymbol) and base.name in src


def _product(factors: list[MatrixExpr]) -> MatrixExpr:
    return sp.MatMul(*factors).doit() if factors else sp.Identity(M_TOKENS)


def as_linear(coef: sp.Expr, factors: list[MatrixExpr], src: dict) -> Linear:
    """coef * L G N (or L G^T N) from a factor list with exactly one source."""
    idx = [i for i, f in enumerate(factors) if _is_source(f, src)]
    if len(idx) != 1:
        raise NotImplementedError(f"expected one random factor in {factors}")
    i = idx[0]
    f = factors[i]
    transposed = isinstance(f, sp.Transpose)
    G = f.arg if transposed else f
    return Linear(coef, _product(factors[:i]), G, transposed, _product(factors[i + 1:]))


def _hadamard_pair(f: MatrixExpr) -> tuple[MatrixExpr, MatrixExpr] | None:
    """(X, Y) for a Hadamard product X o Y (or square X o X), else None."""
    if isinstance(f, sp.HadamardPower) and f.exp == 2:
        return f.base, f.base
    if isinstance(f, sp.HadamardProduct) and len(f.args) == 2:
        return f.args[0], f.args[1]
    return None


def _linear_of(e: MatrixExpr, src: dict) -> Linear:
    """A Hadamard factor's argument, coef * L G N with one source G, as a `Linear`."""
    e = _symmetrise(e)
    coef, mat = e.as_coeff_mmul()
    factors = list(mat.args) if isinstance(mat, sp.MatMul) else [mat]
    return as_linear(coef, factors, src)


def expectation(coef: sp.Expr, factors: list[MatrixExpr], src: dict,
                table: CovarianceTable) -> MatrixExpr:
    """E[coef * prod(factors)] for a term at most quadratic in the sources."""
    m = M_TOKENS
    had = [i for i, f in enumerate(factors)  # random Hadamard products (V o V is not)
           if _hadamard_pair(f) is not None and any(
               a.name in src for a in f.atoms(sp.MatrixSymbol))]
    rnd = [i for i, f in enumerate(factors) if _is_source(f, src)]
    if had and not rnd and len(had) == 1:
        i = had[0]
        t1, t2 = (_linear_of(x, src) for x in _hadamard_pair(factors[i]))
        inner = mean_hadamard(t1, t2, table, m)
        return coef * _product(factors[:i]) * inner * _product(factors[i + 1:])
    if had:
        raise NotImplementedError(f"Hadamard term beyond second order: {factors}")
    if not rnd:
        return coef * _product(factors)
    if len(rnd) == 1:
        return sp.ZeroMatrix(m, m)  # centred sources
    if len(rnd) == 2:
        i, j = rnd
        s1 = as_linear(sp.Integer(1), [factors[i]], src)
        s2 = as_linear(sp.Integer(1), [factors[j]], src)
        return mean_chain(coef, _product(factors[:i]), s1, _product(factors[i + 1:j]), s2,
                          _product(factors[j + 1:]), table, m)
    raise NotImplementedError(f"term with {len(rnd)} random factors: {factors}")


def _updated(d: Derivation, src: dict) -> sp.MatrixExpr:
    """d.update(src, heads), checked to be an m x m matrix expression (the update may be
    a user's function: ValueError naming the derivation, not an error deep in SymPy)."""
    out = d.update(src, d.heads)
    if not isinstance(out, sp.MatrixExpr) or tuple(out.shape) != (M_TOKENS, M_TOKENS):
        what = (f"a {tuple(out.shape)} matrix" if isinstance(out, sp.MatrixExpr)
                else type(out).__name__)
        raise ValueError(f"derivation {d.name!r}: its update rule must return V' as an m x m "
                         f"SymPy matrix expression (matrixform.residual_update); got {what}")
    return out


def derive_matrix_form(d: Derivation | str) -> MatrixCoefficients:
    """b(V) and Sigma(V) of a block's derivation (or its name) in matrix form."""
    d = _find(d)
    if d.parts:  # independent sub-layers in sequence: the coefficients add
        parts = [derive_matrix_form(p) for p in d.parts]
        drift = _tidy_matrix(sum((p.drift for p in parts[1:]), parts[0].drift))
        diffusion = [k for p in parts for k in p.diffusion]
        return MatrixCoefficients(d.name, drift, tuple(_collect(diffusion)))
    if d.update is None:
        raise ValueError(f"{d.name!r} has no matrix-form update rule: it is derived per "
                         "entry only (pass m)")
    src, table = _sources()
    orders = by_order(_updated(d, src))
    zero = sp.ZeroMatrix(M_TOKENS, M_TOKENS)
    check_identity_at_zero(orders.get(0, []), V, "update")
    first = [as_linear(c, f, src) for c, f in orders.get(1, [])]
    second = first  # the first-order terms of entry (c, d)
    if d.rows:  # entry (c, d) reads its rows with P_c, P_d
        second = [as_linear(c, f, src)
                  for c, f in by_order(_updated(d, src).xreplace(_ROW_RENAME))[1]]
    drift = sum((expectation(c, f, src, table) for c, f in orders.get(2, [])), zero)
    diffusion = [Kron(k.coef / d.heads, k.X, k.xl, k.Y, k.yl)
                 for t1 in first for t2 in second for k in covariance(t1, t2, table)]
    return MatrixCoefficients(d.name, _tidy_matrix(drift), tuple(_collect(diffusion)))


def check_identity_at_zero(terms: list[tuple[sp.Expr, list[MatrixExpr]]],
                           target: MatrixExpr, what: str) -> None:
    """The eps^0 terms (coef, factors) of an update sum to `target` (lam^2 + gamma^2 = 1):
    the update is the identity at eps = 0."""
    zero = sp.ZeroMatrix(M_TOKENS, M_TOKENS)
    D0 = sum((c * _product(f) for c, f in terms), zero)
    if sp.simplify(sp.expand((D0 - target).doit())) not in (zero, 0):
        D0c = sp.expand(sp.factor_terms(D0 - target))
        if sp.simplify(D0c.subs(LAM, sp.sqrt(1 - GAMMA**2))) not in (zero, 0):
            raise AssertionError(f"{what} is not the identity at eps = 0: {D0}")


def _find(d: Derivation | str) -> Derivation:
    """A derivation, or the one of that name among the blocks' definitions."""
    if isinstance(d, Derivation):
        return d
    return find(d)


def _tidy_matrix(expr: MatrixExpr) -> MatrixExpr:
    expr = _symmetrise(sp.expand(expr).doit())
    return _symmetrise(expr.subs(sp.sqrt(1 - GAMMA**2) ** 2, 1 - GAMMA**2))


def _collect(terms: list[Kron]) -> list[Kron]:
    """Merge Kronecker patterns with identical factors and labels."""
    merged: dict[tuple, sp.Expr] = {}
    for k in map(_canonical, terms):
        key = (k.X, k.xl, k.Y, k.yl)
        merged[key] = merged.get(key, sp.Integer(0)) + k.coef
    out = []
    for (X, xl, Y, yl), c in merged.items():
        c = sp.factor(sp.expand(c).subs(sp.sqrt(1 - GAMMA**2) ** 2, 1 - GAMMA**2))
        if c != 0:
            out.append(Kron(c, X, xl, Y, yl))
    return out


def _canonical(k: Kron) -> Kron:
    """Orient each factor as F^{(a|b)(c|d)} and put the factor carrying a first."""
    def orient(F: MatrixExpr, labels: tuple[str, str]) -> tuple[MatrixExpr, tuple[str, str]]:
        F = _tidy_matrix(F)
        return (F, labels) if labels[0] in "ab" else (_tidy_matrix(F.T), labels[::-1])

    (X, xl), (Y, yl) = orient(k.X, k.xl), orient(k.Y, k.yl)
    if xl[0] != "a":
        (X, xl), (Y, yl) = (Y, yl), (X, xl)
    return Kron(k.coef, X, xl, Y, yl)


def matrix_form(d: Derivation | str) -> MatrixCoefficients:
    """Cached `derive_matrix_form` (by derivation, so a redefined block is rederived)."""
    return _matrix_form(_find(d))


@cache
def _matrix_form(d: Derivation) -> MatrixCoefficients:
    return derive_matrix_form(d)
