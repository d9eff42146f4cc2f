"""Paper-style LaTeX of derived coefficients.

The derivation's raw output is a sum of many terms; a reader wants the paper's form:

- Sigma in symmetrised Kronecker notation,
  (A (*) B)^{ab,cd} = (A^{ac} B^{bd} + A^{ad} B^{bc} + B^{ac} A^{bd} + B^{ad} A^{bc}) / 2,
  so A (*) A has entries A^{ac} A^{bd} + A^{ad} A^{bc} (`symmetrised`; the grouping is
  proved to expand back to the derived terms in tests/test_latex.py);
- b with its common prefactor collected and X + X^T written sym(X);
- signs that read naturally: gamma^2 (2 - gamma^2), not -gamma^2 (gamma^2 - 2);
- long sums broken over lines, numbered equations with labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy as sp
from sympy.matrices.expressions import MatrixExpr
from sympy.printing.latex import LatexPrinter

from .symbolic.correlation import display_form, latex_symbols, reduced_correlation_sde
from .symbolic.evaluate import row_labels
from .symbolic.kron import Kron
from .symbolic.matrixform import _tidy_matrix

#: Rough width budget of one displayed line, in LaTeX source characters.
LINE_BUDGET = 150

#: The header note of a form with causal attention's row projectors.
ROW_NOTATION = ("P_x = the centring projector on the prefix 0..x of token x (zero elsewhere),\n"
                "% l_x = x + 1; b^{ab} is entry (a, b) of its bracket, read with P_a, P_b, and "
                "each\n% factor of Sigma^{ab,cd} with the P_x, l_x of its labels;\n% ")


@dataclass(frozen=True)
class SymKron:
    """coef * (A (*) B), the symmetrised Kronecker product (A, B symmetric)."""

    coef: sp.Expr
    A: MatrixExpr
    B: MatrixExpr

    def expand(self) -> list[Kron]:
        """The Kronecker patterns this stands for (the inverse of `symmetrised`)."""
        A, B, c = self.A, self.B, self.coef
        if A == B:
            return [Kron(c, A, ("a", "c"), A, ("b", "d")), Kron(c, A, ("a", "d"), A, ("b", "c"))]
        half = c / 2
        return [Kron(half, A, ("a", "c"), B, ("b", "d")), Kron(half, A, ("a", "d"), B, ("b", "c")),
                Kron(half, B, ("a", "c"), A, ("b", "d")), Kron(half, B, ("a", "d"), A, ("b", "c"))]


def symmetrised(terms: tuple[Kron, ...]) -> tuple[list[SymKron], list[Kron]]:
    """Group Kronecker patterns into symmetrised products; the rest is returned as is."""
    coef: dict[tuple, sp.Expr] = {}
    for k in terms:
        key = (k.X, k.xl, k.Y, k.yl)
        coef[key] = coef.get(key, sp.Integer(0)) + k.coef
    groups: list[SymKron] = []
    used: set[tuple] = set()
    for X, xl, Y, _ in list(coef):
        if xl != ("a", "c"):
            continue
        A, B = sorted((X, Y), key=sp.default_sort_key)
        keys = [(k.X, k.xl, k.Y, k.yl) for k in SymKron(sp.Integer(1), A, B).expand()]
        if any(key not in coef or key in used for key in keys):
            continue
        k0 = coef[keys[0]]
        if all(sp.simplify(coef[key] - k0) == 0 for key in keys):
            # A (*) B spreads coef / 2 over four patterns; A (*) A puts coef on two.
            groups.append(SymKron(sp.factor(k0 * (1 if A == B else 2)), A, B))
            used.update(keys)
    rest = [Kron(c, X, xl, Y, yl) for (X, xl, Y, yl), c in coef.items()
            if (X, xl, Y, yl) not in used and c != 0]
    return groups, rest


def natural_sign(e: sp.Expr) -> tuple[int, list[sp.Expr], sp.Expr]:
    """e = sign * prod(factors) / den, flipping one factor like (gamma^2 - 2) to
    (2 - gamma^2) where that removes a minus sign; polynomials are not split further."""
    num, den = _parts(e)
    sign, factors = 1, []
    for f in sp.Mul.make_args(num):
        if f.is_Number and f < 0:
            sign = -sign
            if f != -1:
                factors.append(-f)
        else:
            factors.append(f)
    if sign < 0:
        for i, f in enumerate(factors):
            if isinstance(f, sp.Add) and _reads_negative(f):
                factors[i], sign = sp.expand(-f), 1
                break
    numbers = [f for f in factors if f.is_Number]
    return sign, numbers + [f for f in factors if not f.is_Number], den


def _parts(e: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    return sp.fraction(sp.factor_terms(sp.together(e)))


def _reads_negative(f: sp.Add) -> bool:
    """Whether -f reads better: more negative terms, or as many and a negative constant."""
    neg = sum(1 for t in f.args if t.could_extract_minus_sign())
    const = f.as_coeff_Add()[0]
    return 2 * neg > len(f.args) or (2 * neg == len(f.args) and const < 0)


def break_lines(terms: list[str | list], budget: int = LINE_BUDGET) -> list[str]:
    """Pack signed terms into lines of at most `budget` source characters.

    A term may be a list of chunks (its factors, or the terms of one long factor, as
    (text, prefix) pairs): a line that breaks inside a term starts with the chunk's
    prefix (`\\times` between factors).
    """
    lines, current = [], ""
    for term in terms:
        chunks = [(term, "")] if isinstance(term, str) else [
            c if isinstance(c, tuple) else (c, r"\times ") for c in term]
        for j, (chunk, prefix) in enumerate(chunks):
            if current and len(current) + len(chunk) + 1 > budget:
                lines.append(current)
                current = chunk if j == 0 else f"{prefix}{chunk}"
            else:
                current = f"{current} {chunk}".strip()
    return lines + ([current] if current else [])


def common_factor(coefs: list[sp.Expr]) -> sp.Expr:
    """The largest monomial factor shared by every coefficient (1 if none)."""
    nums, dens = zip(*(sp.fraction(sp.factor(c)) for c in coefs), strict=True)
    num = _monomial_gcd(nums)
    den = _monomial_gcd(dens)
    return num / den


def _monomial_gcd(exprs) -> sp.Expr:
    out = None
    for e in exprs:
        mono = sp.Mul(*[f for f in sp.Mul.make_args(e) if not isinstance(f, sp.Add)
                        and not (f.is_Number and f < 0)])
        out = mono if out is None else sp.gcd(out, mono)
    return out if out is not None else sp.Integer(1)


def _coef_tex(c: sp.Expr) -> tuple[int, str]:
    """(sign, LaTeX) of a coefficient, '' for 1; a quotient printed as one \\frac."""
    sign, factors, den = natural_sign(c)
    if factors in ([], [1]) and den == 1:
        return sign, ""
    return sign, _quotient_tex(factors, den) + r"\, "


def _quotient_tex(factors: list[sp.Expr], den: sp.Expr) -> str:
    """LaTeX of prod(factors) / den, Add factors in parentheses."""
    num = " ".join(rf"\left({formula_latex(a)}\right)" if isinstance(a, sp.Add)
                   else formula_latex(a) for a in factors if a != 1) or "1"
    return num if den == 1 else rf"\frac{{{num}}}{{{formula_latex(den)}}}"


def _signed(pieces: list[tuple[sp.Expr, str]]) -> list[str]:
    """Signed terms '+ c body' for (coefficient, LaTeX body) pairs; no leading '+'."""
    out = []
    for c, body in pieces:
        sign, tex = _coef_tex(c)
        out.append(f"{'-' if sign < 0 else '+'} {tex}{body}")
    if out and out[0].startswith("+ "):
        out[0] = out[0][2:]
    return out


def drift_terms(drift: MatrixExpr) -> list[tuple[sp.Expr, str]]:
    """(coefficient, LaTeX) per term of b, with X + X^T pairs written sym(X)."""
    terms = list(drift.args) if isinstance(drift, sp.MatAdd) else [drift]
    split = []
    for t in terms:
        c, mat = t.as_coeff_mmul()
        split.append([sp.sympify(c), sp.MatMul(*mat.args) if isinstance(mat, sp.MatMul)
                      else mat])
    out, done = [], set()
    for i, (c, X) in enumerate(split):
        if i in done:
            continue
        XT = _tidy_matrix(X.T)
        j = next((j for j in range(i + 1, len(split)) if j not in done and split[j][1] == XT
                  and sp.simplify(split[j][0] - c) == 0 and XT != X), None)
        if j is None:
            out.append((c, formula_latex(X)))
        else:
            done.add(j)
            out.append((c, rf"\operatorname{{sym}}\!\bigl({formula_latex(X)}\bigr)"))
    return out


def sigma_terms(diffusion: tuple[Kron, ...], entries: bool = False
                ) -> list[tuple[sp.Expr, str]]:
    """(coefficient, LaTeX) per symmetrised product (and any leftover pattern) of Sigma;
    `entries`: the products as entries (A (x)_s B)^{ab,cd}, for a Sigma^{ab,cd} left side."""
    groups, rest = symmetrised(diffusion)
    out = []
    for g in groups:
        body = rf"{_factor(g.A)} \otimes_{{\mathrm{{s}}}} {_factor(g.B)}"
        out.append((g.coef, rf"\left({body}\right)^{{ab,cd}}" if entries else body))
    for k in rest:
        xl, yl = "".join(k.xl), "".join(k.yl)
        out.append((k.coef, f"{_factor(k.X)}^{{{xl}}} {_factor(k.Y)}^{{{yl}}}"))
    return out


def per_row(drift: MatrixExpr, diffusion: tuple[Kron, ...]) -> bool:
    """Whether b and Sigma carry causal attention's row projectors (read per entry)."""
    return bool(row_labels(drift)) or any(row_labels(k.X) or row_labels(k.Y)
                                          or row_labels(k.coef) for k in diffusion)


def _factor(F: MatrixExpr) -> str:
    body = formula_latex(F)
    return body if isinstance(F, sp.MatrixSymbol) else rf"\left({body}\right)"


def collected(pieces: list[tuple[sp.Expr, str]]) -> tuple[sp.Expr, list[tuple[sp.Expr, str]]]:
    """(prefactor, pieces / prefactor): the common monomial factor taken out."""
    if len(pieces) < 2:
        return sp.Integer(1), pieces
    pre = common_factor([c for c, _ in pieces])
    return pre, [(sp.factor_terms(sp.cancel(c / pre)), body) for c, body in pieces]


def equation(lhs: str, pieces: list[tuple[sp.Expr, str]], label: str, end: str,
             entry: str = "") -> list[str]:
    """Numbered align lines `lhs &= ...` with a label, broken to the line budget.

    `entry` (e.g. "ab"): the right side is that entry of a bracketed matrix sum."""
    pre, inner = collected(pieces)  # pre is 1 unless there are several pieces
    terms = _signed(inner)
    if pre != 1 or entry:
        sign, tex = _coef_tex(pre)
        terms[0] = f"{'-' if sign < 0 else ''}{tex}\\Bigl[{terms[0]}"
        terms[-1] = terms[-1] + r"\Bigr]" + (f"^{{{entry}}}" if entry else "")
    out = _rows(lhs, break_lines(terms), f"{end} \\label{{{label}}}")
    return [line + (r" \nonumber" if i < len(out) - 1 else "") for i, line in enumerate(out)]


def matrix_form_latex(name: str, drift: MatrixExpr, diffusion: tuple[Kron, ...],
                      definitions: list[str], header: str) -> str:
    """The paper-style LaTeX file of one block's matrix-form coefficients."""
    key, rows_read = name.replace("+", "-"), per_row(drift, diffusion)
    lhs = ("b^{ab}(V)", r"\Sigma^{ab,cd}(V)") if rows_read else ("b(V)", r"\Sigma(V)")
    lines = equation(lhs[0], drift_terms(drift), f"eq:{key}-drift", ",",
                     "ab" if rows_read else "")
    for d in definitions:  # "f^{ab}(V) &= ..., \quad rho^{ab} = ...": two lines
        for part in d.split(r", \quad "):
            lines.append(("" if "&=" in part else "&\\quad ") + part + r", \nonumber")
    lines += equation(lhs[1], sigma_terms(diffusion, rows_read), f"eq:{key}-diffusion", ".")
    rows = " \\\\\n".join(lines)
    return (f"{header}"
            f"% Block: {name}. {ROW_NOTATION if rows_read else 'P = I - 11^T/m, '}"
            "Dg(X) = I o X, sym(X) = X + X^T, t = depth / width;\n"
            "% (A (x)_s B)^{ab,cd} = (A^{ac} B^{bd} + A^{ad} B^{bc} + B^{ac} A^{bd} + "
            "B^{ad} A^{bc}) / 2.\n"
            f"\\begin{{align}}\n{rows}\n\\end{{align}}\n")


def entry_symbols(e: sp.Expr) -> sp.Expr:
    """V_ab (the per-entry symbols) written V^{ab}, the notation of the matrix form."""
    return e.xreplace({x: sp.Symbol(f"V^{{{x.name[2:]}}}", **x.assumptions0)
                       for x in e.free_symbols if x.name.startswith("V_")})


def entry_lines(lhs: str, e: sp.Expr, end: str) -> list[str]:
    """Unnumbered align lines `lhs &= e` for a scalar entry, broken to the line budget."""
    e = entry_symbols(sp.factor_terms(sp.expand(e)))
    if len(formula_latex(e)) <= LINE_BUDGET:  # fits on one line: no bracket needed
        sign, factors, den = natural_sign(e)
        return _rows(lhs, [f"{'-' if sign < 0 else ''}{_quotient_tex(factors, den)}"], end)
    pre, inner = sp.Integer(1), e
    if isinstance(e, sp.Mul):  # one sum times a prefactor: the prefactor outside a bracket
        adds = [f for f in e.args if isinstance(f, sp.Add)]
        if len(adds) == 1:
            pre, inner = sp.Mul(*[f for f in e.args if f is not adds[0]]), adds[0]
    terms = _scalar_terms(inner)
    if pre != 1:  # inner is a sum, so there are several terms
        sign, tex = _coef_tex(pre)
        terms[0][0] = f"{'-' if sign < 0 else ''}{tex}\\Bigl[{terms[0][0]}"
        terms[-1][-1] += r"\Bigr]"
    return _rows(lhs, break_lines(terms), end)


def _rows(lhs: str, lines: list[str], end: str) -> list[str]:
    out = [f"{lhs} &= {lines[0]}"] + [f"&\\quad {x}" for x in lines[1:]]
    out[-1] += end
    return out


def _scalar_terms(e: sp.Expr) -> list[list[str]]:
    """Signed terms of a scalar sum, each as chunks: sign and coefficient with the first
    factor, then the other factors (so an over-long product can break between them)."""
    out = []
    for t in sp.Add.make_args(e):
        sign, factors, den = natural_sign(t)
        chunks = [_quotient_tex(factors, den)]
        if len(chunks[0]) > LINE_BUDGET:  # constant quotient first, then the state's factors
            state = set(_state_symbols(t))
            const = [f for f in factors if not f.free_symbols & state]
            rest = [c for f in factors if f.free_symbols & state for c in _factor_chunks(f)]
            head = _quotient_tex(const, den)
            first = rest[0][0] if isinstance(rest[0], tuple) else rest[0]
            first = first if head == "1" else f"{head}\\, {first}"
            chunks = [first, *rest[1:]]
        chunks[0] = f"{'-' if sign < 0 else '+'} {chunks[0]}"
        out.append(chunks)
    if out and out[0][0].startswith("+ "):
        out[0][0] = out[0][0][2:]
    return out


def _factor_chunks(f: sp.Expr) -> list:
    """One factor of a long product: its LaTeX, or, for a sum wider than the budget,
    its terms inside \\bigl( ... \\bigr) as chunks that break without `\\times`."""
    tex = _quotient_tex([f], 1)
    if not isinstance(f, sp.Add) or len(tex) <= LINE_BUDGET:
        return [tex]
    inner = [c for t in _scalar_terms(f) for c in t]
    inner = [c[0] if isinstance(c, tuple) else c for c in inner]
    inner[0], inner[-1] = rf"\bigl({inner[0]}", rf"{inner[-1]}\bigr)"
    return [inner[0], *[(c, "") for c in inner[1:]]]


def _state_symbols(e: sp.Expr) -> list[sp.Symbol]:
    """The symbols of the state (V entries, rho), as opposed to parameters."""
    return [x for x in e.free_symbols if x.name.startswith("V") or "rho" in x.name]


def broken_sum(e: sp.Expr) -> str:
    """A scalar sum as one `&=` right-hand side, broken over align continuation lines."""
    return " \\\\\n&\\quad ".join(break_lines(_scalar_terms(e)))


class _FormulaPrinter(LatexPrinter):
    """LaTeX in the paper's style: Dg(X) for I o X, 11^T for the ones matrix."""

    def _print_HadamardProduct(self, expr):
        others = [a for a in expr.args if not isinstance(a, sp.Identity)]
        if len(others) == 1 and len(expr.args) == 2:
            return rf"\operatorname{{Dg}}\!\left({self._print(others[0])}\right)"
        return super()._print_HadamardProduct(expr)

    def parenthesize(self, item, level, is_neg=False, strict=False):
        # Dg(X) is already delimited: no parentheses around it inside a product.
        if (isinstance(item, sp.HadamardProduct) and len(item.args) == 2
                and any(isinstance(a, sp.Identity) for a in item.args)):
            return self._print(item)
        return super().parenthesize(item, level, is_neg=is_neg, strict=strict)

    def _print_Entrywise(self, expr):
        return rf"{self._print(expr.name)}(V)"

    def _print_JointEntrywise(self, expr):
        return rf"{self._print(expr.name)}(V, C, U)"

    def _print_OneMatrix(self, expr):
        return r"\mathbf{1}\mathbf{1}^{\top}"

    def _print_Trace(self, expr):
        return rf"\operatorname{{tr}}\!\left({self._print(expr.arg)}\right)"


def formula_latex(e: Any) -> str:
    """LaTeX of a formula in the paper's symbols (Dg, 11^T, tr)."""
    return _FormulaPrinter({"mat_symbol_style": "plain"}).doprint(e)


def correlation_latex_pieces(name: str) -> tuple[str, str]:
    """(drift, diffusion) of the m = 2 correlation SDE as LaTeX, in V^{aa}, V^{bb}, rho,
    broken over align lines where long."""
    drift, diffusion = reduced_correlation_sde(name, 2)
    sym = latex_symbols()
    return tuple(broken_sum(sp.Add(*(t.xreplace(sym) for t in display_form(e)),
                                   evaluate=False)) for e in (drift, diffusion))


def latex_correlation(name: str) -> str:
    """A LaTeX fragment (align*) with the m = 2 correlation SDE of a block."""
    drift, diffusion = correlation_latex_pieces(name)
    return ("% Generated by `shapedsde derive` from "
            "shapedsde/symbolic/correlation.py. Do not edit.\n"
            f"% Block: {name}, m = 2 tokens a != b. Ito's lemma on the covariance SDE; "
            "t = depth / width;\n"
            "% B^rho is a standard 1-d Brownian motion (correlated with the noise of V^aa, V^bb), "
            "sigma^2 = d<rho>/dt.\n"
            "\\begin{align*}\n"
            r"d\rho_t &= \mu(\rho_t, V^{aa}_t, V^{bb}_t)\, dt "
            r"+ \sigma(\rho_t, V^{aa}_t, V^{bb}_t)\, dB^{\rho}_t, \qquad "
            r"\rho = \frac{V^{ab}}{\sqrt{V^{aa} V^{bb}}}, \\" "\n"
            f"\\mu &= {drift}, \\\\\n"
            f"\\sigma^2 &= {diffusion}.\n"
            "\\end{align*}\n")
