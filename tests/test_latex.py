"""Paper-style LaTeX (`shapedsde.latex`): the grouping is faithful and the files compile.

The compile test needs a TeX engine (Debian: `apt-get install texlive-latex-base`,
which `.ci/setup` installs where it can); it is skipped where `pdflatex` is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from shapedsde import block, serial
from shapedsde.latex import SymKron, natural_sign, symmetrised
from shapedsde.symbolic.evaluate import explicit_diffusion
from shapedsde.symbolic.layers import GAMMA
from shapedsde.symbolic.matrixform import matrix_form

FORMULAS = Path(__file__).resolve().parent.parent / "docs" / "formulas"
V3 = sp.Matrix([[1, 3, 1], [3, 12, 2], [1, 2, 9]]) / 10  # exact: no rounding residue


@pytest.mark.parametrize("name", ["linear", "attention", "mlp", "transformer", "causal"])
def test_symmetrised_products_expand_to_the_derived_patterns(name: str) -> None:
    """Sigma written as sum c (A (x)_s B) (plus any leftover pattern) equals the derived
    Kronecker sum entry by entry (m = 3, numeric V, symbolic parameters)."""
    terms = matrix_form(name).diffusion
    groups, rest = symmetrised(terms)
    # Every non-causal Sigma is a sum of symmetrised products; causal attention's
    # patterns carry the row projectors of their labels and stay as they are.
    assert groups and (bool(rest) == (name == "causal"))
    regrouped = tuple(k for g in groups for k in g.expand()) + tuple(rest)
    diff = explicit_diffusion(regrouped, 3, V3) - explicit_diffusion(terms, 3, V3)
    assert all(sp.simplify(x) == 0 for x in sp.flatten(diff.tolist()))


def test_symmetrised_product_of_a_matrix_with_itself() -> None:
    """(A (x)_s A)^{ab,cd} = A^{ac} A^{bd} + A^{ad} A^{bc}: the two patterns, coefficient 1."""
    A = sp.MatrixSymbol("V", 3, 3)
    pats = SymKron(sp.Integer(1), A, A).expand()
    assert sorted(k.xl + k.yl for k in pats) == [("a", "c", "b", "d"), ("a", "d", "b", "c")]
    assert all(k.coef == 1 for k in pats)


def test_natural_sign_reads_like_the_paper() -> None:
    sign, factors, den = natural_sign(-GAMMA**2 * (GAMMA**2 - 2))
    assert sign == 1 and den == 1 and sp.expand(sp.Mul(*factors) - GAMMA**2 * (2 - GAMMA**2)) == 0
    assert (2 - GAMMA**2) in factors
    rho = sp.Symbol("rho")
    sign, factors, _ = natural_sign(-rho * (1 - rho**2) / 2)  # nothing to flip: keep the '-'
    assert sign == -1 and (1 - rho**2) in factors


def _compile(tmp_path: Path, inputs: list[Path]) -> str:
    body = "\n".join(f"\\input{{{p}}}" for p in inputs)
    doc = tmp_path / "all.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{amsmath}\n\\allowdisplaybreaks\n"
                   f"\\begin{{document}}\n{body}\n\\end{{document}}\n")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = (tmp_path / "all.log").read_text(errors="replace")
    assert res.returncode == 0, log[-3000:]
    return log


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine (pdflatex)")
def test_exported_latex_compiles_with_no_overfull_lines(tmp_path: Path) -> None:
    """Every checked-in formula file, and a user composition's LaTeX, typeset in a plain
    article page (amsmath) with no line wider than the text."""
    user = tmp_path / "serial.tex"
    user.write_text(serial(block("attention", gamma=0.9, tau0=0.5, heads=2),
                           block("mlp", gamma=0.7)).latex())
    files = sorted(FORMULAS.glob("*.tex")) + [user]
    assert len(files) > 5
    log = _compile(tmp_path, files)
    overfull = [line for line in log.splitlines() if line.startswith("Overfull \\hbox")]
    assert not overfull, overfull


def test_generated_files_use_one_notation_and_labels() -> None:
    text = {p.name: p.read_text() for p in FORMULAS.glob("*.tex")}
    assert r"\label{eq:attention-drift}" in text["attention.tex"]
    assert r"\otimes_{\mathrm{s}}" in text["attention.tex"]
    assert "2 - \\gamma^{2}" in text["linear.tex"]
    for name, body in text.items():
        assert "V_{0" not in body and "V_{1" not in body, name  # entries are V^{ab}
    assert np.all([len(line) < 400 for body in text.values() for line in body.splitlines()])
