"""The tangent of a block in matrix form: the joint SDE of the tokens and their JVP.

Carry a forward-mode tangent T = dX / d eps beside the hidden state X (input X + eps T).
The joint Gram of Z = [X; T] is Q = [[V, C], [C^T, U]] with V = X X^T / n,
C = X T^T / n and U = T T^T / n, and it is again a Markov chain with a covariance SDE.

Its update is derived by differentiating the block's own update rule, with no rule typed
per block. Perturb the input on the left and on the right of the Gram independently,
X(s) = X + s T and X(r) = X + r T, with the same weights. Then V'(s, r) = X'(s) X'(r)^T / n
is the block's update V' with every quantity read on its side:
- the input Gram V -> X(s) X(r)^T / n = V + s C^T + r C + s r U;
- a value-step source (the width sums xi_S ~ h h^T, xi_M ~ h x^T, xi_K ~ g g^T of
  `matrixform`) pairs a left vector with a right one, u w^T -> u(s) w(r)^T, and its
  transpose pairs them the other way;
- the logits z ~ q k^T live inside the mixing matrix A of one side, so both of their
  vectors move together: z -> z(s) in A, z^T -> z(r)^T in A^T (the update writes its
  right factor as the transpose of a left one, `matrixform.residual_update`).
C' and U' are then the coefficients of r and of s r: C' = X' (dX')^T / n and
U' = dX' (dX')^T / n, with dX' the block's JVP. Every perturbed source is again an
outer product of Gaussian vectors, now of the joint columns (x_j, t_j) ~ N(0, Q)
(`tangent_sources`), so the Wick rules of `kron` give b^V, b^C, b^U = E[eps^2 terms] and
the blocks of Sigma = Cov[eps terms] in matrix form, valid for every m.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import combinations_with_replacement, product

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .activation import RHO, V_AA, V_BB, shaped_tangent_diagonal
from .derivation import Derivation, find
from .entrywise_kernel import Entrywise
from .kron import CovarianceTable, Kron, covariance, outer_product_covariances
from .matrixform import (
    _ROW_RENAME,
    EPS,
    M_TOKENS,
    SOURCE_SCALE,
    SOURCE_VECTORS,
    V,
    _collect,
    _symmetrise,
    _tidy_matrix,
    _updated,
    as_linear,
    check_identity_at_zero,
    expectation,
)
from .smooth import SmoothKernel

C = sp.MatrixSymbol("C", M_TOKENS, M_TOKENS)  # X T^T / n: not symmetric
U = sp.MatrixSymbol("U", M_TOKENS, M_TOKENS)  # T T^T / n
#: The left and right perturbation parameters of V'(s, r).
S_LEFT, R_RIGHT = sp.symbols("s_L r_R")
#: The blocks of the joint state, in order.
BLOCKS = ("V", "C", "U")
#: The update's sources (`matrixform.SOURCE_VECTORS`) by role: the logits sit inside one
#: side's mixing matrix; the value step's width sums pair a left vector with a right one.
INSIDE = ("z",)
PAIRED = tuple(name for name in SOURCE_VECTORS if name not in INSIDE)
#: Perturbed copies of a source u w^T: u_t w^T, u w_t^T, u_t w_t^T.
_VARIANTS = {"tx": (True, False), "xt": (False, True), "tt": (True, True)}


#: Entry symbols of a joint entrywise matrix: token a's and b's V, C, U entries.
JOINT_ENTRIES = sp.symbols("V_a V_b V_ab C_a C_b C_ab C_ba U_ab", real=True)
#: The diagonal (a = b) of the kernels' derivatives, by kernel name: an activation whose
#: two-token kernel is not smooth at rho = 1 (ReLU) has it from one-token integrals.
DIAGONALS = {"kappa": shaped_tangent_diagonal}


class JointEntrywise(MatrixExpr):
    """F^{ab} = off(V^aa, V^bb, V^ab, C^aa, C^bb, C^ab, C^ba, U^ab) for a != b and
    diag(V^aa, C^aa, U^aa) for a = b (symbols `JOINT_ENTRIES`; diag reads V_a, C_a, U_ab):
    a derivative of an activation kernel along the tangent."""

    def __new__(cls, name: sp.Symbol, off: sp.Expr, diag: sp.Expr, *_: MatrixExpr):
        return sp.Basic.__new__(cls, name, off, diag, V, C, U)

    def doit(self, **hints) -> JointEntrywise:
        return self

    def _eval_transpose(self) -> MatrixExpr:
        """F^T: the off formula with a and b exchanged (U is symmetric)."""
        va, vb, vab, ca, cb, cab, cba, uab = JOINT_ENTRIES
        swap = {va: vb, vb: va, ca: cb, cb: ca, cab: cba, cba: cab}
        name = self.name.name
        name = name[:-2] if name.endswith("^T") else name + "^T"
        return JointEntrywise(sp.Symbol(name), self.off.xreplace(swap), self.diag)

    @property
    def name(self) -> sp.Symbol:
        return self.args[0]

    @property
    def off(self) -> sp.Expr:
        return self.args[1]

    @property
    def diag(self) -> sp.Expr:
        return self.args[2]

    @property
    def shape(self):
        return V.shape


def kernel_derivatives(node: Entrywise) -> dict[tuple[int, int], MatrixExpr]:
    """The activation kernel kappa(V) read on both sides, kappa(s, r), to first order in s
    and in r: {(i, j): coefficient of s^i r^j} (module docstring).

    Entry (a, b) of kappa(s, r) is the kernel at the covariance of (x_a + s t_a, x_b + r t_b):
    variances V^aa + 2 s C^aa + ..., V^bb + 2 r C^bb + ..., covariance
    V^ab + s C^ba + r C^ab + s r U^ab. Its derivatives in s and r are taken by SymPy.
    """
    va, vb, vab, ca, cb, cab, cba, uab = JOINT_ENTRIES
    s, r = S_LEFT, R_RIGHT
    base = node.formula.subs(RHO, sp.Symbol("_vab") / sp.sqrt(V_AA * V_BB))
    moved = base.subs({V_AA: va + 2 * s * ca, V_BB: vb + 2 * r * cb,
                       sp.Symbol("_vab"): vab + s * cba + r * cab + s * r * uab})
    at0 = {s: 0, r: 0}
    derivs = {(1, 0): sp.diff(moved, s).subs(at0), (0, 1): sp.diff(moved, r).subs(at0),
              (1, 1): sp.diff(moved, s, r).subs(at0)}
    if isinstance(node, SmoothKernel):  # a polynomial: its diagonal is its value at a = b
        same = {vb: va, vab: va, cb: ca, cab: ca, cba: ca}
        diag = {k: sp.expand(v.subs(same)) for k, v in derivs.items()}
    elif node.name.name in DIAGONALS:
        cross, joint = DIAGONALS[node.name.name]()
        one = {sp.Symbol("V_aa", positive=True): va, sp.Symbol("C_aa", real=True): ca,
               sp.Symbol("U_aa", real=True): uab}
        diag = {(1, 0): cross.subs(one), (0, 1): cross.subs(one), (1, 1): joint.subs(one)}
    else:
        raise ValueError(f"no tangent derived for the activation kernel {node.name}: its "
                         "diagonal (one token and its own tangent) is not declared")
    out = {}
    for key, off in derivs.items():
        out[key] = JointEntrywise(sp.Symbol(f"{node.name}_{'sr'[:key[0]]}{'r' * key[1]}"),
                                  sp.simplify(off), diag[key])
    return out


@dataclass(frozen=True)
class TangentCoefficients:
    """b and Sigma of the joint state Q = [[V, C], [C^T, U]] by blocks.

    drift[X] = b^X (m x m matrix expressions in V, C, U) for X in V, C, U;
    diffusion[X, Y] = Cov[dX^{ab}, dY^{cd}] / dt as Kronecker patterns, for X <= Y.
    rows: read per entry with causal attention's row projectors P_x, l_x (`matrixform`):
    b^{X,ab} is entry (a, b) of b^X read with P_a, P_b; each Kronecker factor (and
    coefficient) of Sigma^{ab,cd} with the P_x, l_x of x = a, b, c, d.
    """

    name: str
    drift: dict[str, MatrixExpr]
    diffusion: dict[tuple[str, str], tuple[Kron, ...]]
    rows: bool = False


def tangent_sources() -> tuple[dict[str, sp.MatrixSymbol], CovarianceTable]:
    """Every source and its perturbed copies, and their joint covariances.

    A vector u (a column of X W / sqrt(n), ...) has its tangent partner u_t (the same
    weights applied to T): Cov(u, u) = V, Cov(u, u_t) = C, Cov(u_t, u_t) = U.
    """
    terms: dict[str, tuple[str, str]] = {}
    scale: dict[str, sp.Expr] = {}
    for name, (u, w) in SOURCE_VECTORS.items():
        terms[name], scale[name] = (u, w), SOURCE_SCALE[name]
        for tag, (tu, tw) in _VARIANTS.items():
            terms[f"{name}_{tag}"] = (u + "t" * tu, w + "t" * tw)
            scale[f"{name}_{tag}"] = SOURCE_SCALE[name]
    vec_cov = {}
    for v in "hxqkg":
        vec_cov.update({(v, v): V, (v, v + "t"): C, (v + "t", v + "t"): U})
    table = outer_product_covariances(terms, vec_cov, scale)
    return {s: sp.MatrixSymbol(s, M_TOKENS, M_TOKENS) for s in terms}, table


def _perturbation(src: dict[str, sp.MatrixSymbol], frozen: bool = False
                  ) -> dict[MatrixExpr, MatrixExpr]:
    """Each quantity of V' -> its value in V'(s, r) = X'(s) X'(r)^T / n (module docstring).
    `frozen`: the logits do not move with the input (dA = 0), a control."""
    s, r = S_LEFT, R_RIGHT
    out: dict[MatrixExpr, MatrixExpr] = {V: V + s * C.T + r * C + s * r * U}
    for name in PAIRED:
        base, tx, xt, tt = (src[name], src[f"{name}_tx"], src[f"{name}_xt"], src[f"{name}_tt"])
        out[base] = base + s * tx + r * xt + s * r * tt
        out[base.T] = (base + r * tx + s * xt + s * r * tt).T
    for name in () if frozen else INSIDE:  # second order in one side's parameter: no s r
        base, tx, xt = src[name], src[f"{name}_tx"], src[f"{name}_xt"]
        out[base] = base + s * (tx + xt)
        out[base.T] = (base + r * (tx + xt)).T
    return out


def expand_hadamard(expr: MatrixExpr) -> MatrixExpr:
    """Distribute Hadamard products (and squares) over sums, scalars pulled out."""
    def split(e: MatrixExpr) -> list[tuple[sp.Expr, MatrixExpr]]:
        e = sp.expand(e).doit()
        return [t.as_coeff_mmul() for t in (e.args if isinstance(e, sp.MatAdd) else (e,))]

    def distribute(*args: MatrixExpr) -> MatrixExpr:
        terms = [split(expand_hadamard(a)) for a in args]
        out = []
        for combo in product(*terms):
            coef = sp.Mul(*[c for c, _ in combo])
            mats = [sp.MatMul(mm).doit() if isinstance(mm, sp.MatMul) else mm for _, mm in combo]
            out.append(coef * sp.HadamardProduct(*mats))
        return sp.MatAdd(*out)

    def rule(e: MatrixExpr) -> MatrixExpr:
        if isinstance(e, sp.HadamardPower) and e.exp == 2:
            return distribute(e.base, e.base)
        return distribute(*e.args)

    return expr.replace(lambda e: isinstance(e, (sp.HadamardProduct, sp.HadamardPower)), rule)


def _kernel_perturbation(expr: MatrixExpr
                         ) -> tuple[dict[MatrixExpr, MatrixExpr], dict[MatrixExpr, MatrixExpr]]:
    """Each activation kernel of the update -> kappa(s, r) to first order in s and r, written
    with placeholder symbols (which the input's perturbation leaves alone), and the
    placeholders -> the kernel and its derivatives."""
    out, back = {}, {}
    for i, node in enumerate(sorted(expr.atoms(Entrywise), key=sp.default_sort_key)):
        d = {(0, 0): node} | kernel_derivatives(node)
        hold = {k: sp.MatrixSymbol(f"_kernel{i}_{k[0]}{k[1]}", M_TOKENS, M_TOKENS) for k in d}
        out[node] = (hold[0, 0] + S_LEFT * hold[1, 0] + R_RIGHT * hold[0, 1]
                     + S_LEFT * R_RIGHT * hold[1, 1])
        back.update({hold[k]: d[k] for k in d})
    return out, back


def _by_order(expr: MatrixExpr) -> dict[tuple[int, int, int], list[tuple[sp.Expr, list]]]:
    """Expanded terms grouped by (power of s, power of r, power of eps)."""
    out: dict[tuple[int, int, int], list] = {}
    expr = _symmetrise(sp.expand(expand_hadamard(sp.expand(expr).doit())).doit())
    expr = expr.xreplace({U.T: U})
    for term in expr.args if isinstance(expr, sp.MatAdd) else (expr,):
        coef, mat = term.as_coeff_mmul()
        factors = list(mat.args) if isinstance(mat, sp.MatMul) else [mat]
        for c in sp.Add.make_args(sp.expand(coef)):
            ks = tuple(int(sp.degree(c, x)) for x in (S_LEFT, R_RIGHT, EPS))
            out.setdefault(ks, []).append((c / (S_LEFT**ks[0] * R_RIGHT**ks[1] * EPS**ks[2]),
                                           factors))
    return out


def derive_tangent(d: Derivation | str, frozen: bool = False) -> TangentCoefficients:
    """b^V, b^C, b^U and the blocks of Sigma for the tangent of derivation `d`.

    frozen: a control that holds the mixing matrix fixed along the tangent (dA = 0, the
    logits do not move with the input): not the block's Jacobian.
    """
    d = d if isinstance(d, Derivation) else find(d)
    name = f"{d.name}_tangent" + ("_frozen" if frozen else "")
    if d.parts:  # sub-layers in sequence: the chain rule composes the tangents, and at
        # leading order independent sub-layers' coefficients add
        parts = [derive_tangent(p, frozen) for p in d.parts]
        drift = {X: _tidy_matrix(sum((p.drift[X] for p in parts[1:]), parts[0].drift[X]))
                 for X in BLOCKS}
        diffusion = {k: tuple(_collect([t for p in parts for t in p.diffusion[k]]))
                     for k in parts[0].diffusion}
        return TangentCoefficients(name, drift, diffusion, any(p.rows for p in parts))
    if d.update is None:
        raise ValueError(f"{d.name!r} has no matrix-form update rule: its tangent is not "
                         "derived in matrix form")
    src, table = tangent_sources()
    base = {name: src[name] for name in SOURCE_VECTORS}
    update = _updated(d, base)
    kernels, back = _kernel_perturbation(update)  # a kernel is no source: held apart
    perturbed = _perturbation(src, frozen)

    def orders_of(expr: MatrixExpr) -> dict:
        return _by_order(_symmetrise(sp.expand(expr.xreplace(kernels)).doit()).xreplace(
            perturbed))

    orders = orders_of(update)
    # Rows read per entry: entry (c, d)'s first-order terms carry P_c, P_d.
    second_orders = orders_of(update.xreplace(_ROW_RENAME)) if d.rows else orders
    which = {"V": (0, 0), "C": (0, 1), "U": (1, 1)}
    zero = sp.ZeroMatrix(M_TOKENS, M_TOKENS)
    drift, first, second = {}, {}, {}
    for X, (i, j) in which.items():
        drift[X] = _tidy_matrix(sum((expectation(c, f, src, table)
                                     for c, f in orders.get((i, j, 2), [])), zero))
        first[X] = [as_linear(c, f, src) for c, f in orders.get((i, j, 1), [])]
        second[X] = [as_linear(c, f, src) for c, f in second_orders.get((i, j, 1), [])]
        if not d.rows:
            check_identity_at_zero(orders.get((i, j, 0), []), {"V": V, "C": C, "U": U}[X],
                                   f"the tangent update in {X}")
    diffusion = {}
    for X, Y in combinations_with_replacement(BLOCKS, 2):
        terms = [Kron(k.coef / d.heads, k.X, k.xl, k.Y, k.yl)
                 for t1 in first[X] for t2 in second[Y] for k in covariance(t1, t2, table)]
        diffusion[X, Y] = tuple(_collect(terms))
    drift = {X: e.xreplace(back) for X, e in drift.items()}
    diffusion = {k: tuple(Kron(t.coef, t.X.xreplace(back), t.xl, t.Y.xreplace(back), t.yl)
                          for t in ks) for k, ks in diffusion.items()}
    return TangentCoefficients(name, drift, diffusion, d.rows)


@cache
def tangent_form(d: Derivation, frozen: bool = False) -> TangentCoefficients:
    """Cached `derive_tangent`."""
    return derive_tangent(d, frozen)
