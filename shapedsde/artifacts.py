"""The package's generated files, from its blocks' derivations (`shapedsde derive`).

`shapedsde.codegen` and `shapedsde.latex` print one derivation; this module collects
the package's blocks (`shapedsde.registry`), which sit above the printers, and writes or
checks every file printed from them.
"""

from __future__ import annotations

from pathlib import Path

from .codegen import (
    BACKENDS,
    entrywise_latex,
    kernel_source,
    latex_source,
    markdown_preview,
)
from .latex import latex_correlation
from .registry import derivations
from .symbolic.matrixform import MatrixCoefficients, matrix_form
from .symbolic.tangent import TangentCoefficients, tangent_form
from .tangent_codegen import tangent_kernel_source, tangent_latex

#: The source checkout the files are written into.
ROOT = Path(__file__).resolve().parent.parent


def package_coefficients() -> dict[str, MatrixCoefficients]:
    """The matrix forms of the package's blocks (those with one), by derivation name."""
    return {name: matrix_form(d) for name, d in derivations(package_only=True).items()
            if d.has_matrix_form}


def package_tangents() -> dict[str, TangentCoefficients]:
    """The block forms of the tangents of the package's blocks with a matrix form (causal
    attention's read per entry), by kernel name."""
    found = derivations(package_only=True)
    tangents = [tangent_form(d) for d in found.values() if d.has_matrix_form]
    return {c.name: c for c in tangents}


def artifacts() -> dict[Path, str]:
    """Every generated file, path -> content."""
    found = derivations(package_only=True)
    coeffs = package_coefficients()
    printed = {name: c for name, c in coeffs.items() if found[name].has_kernels}
    files = {ROOT / "shapedsde" / "kernels" / f"_generated_{b}.py": kernel_source(printed, b)
             for b in BACKENDS}
    tangents = package_tangents()
    for b in BACKENDS:
        files[ROOT / "shapedsde" / "kernels" / f"_generated_tangent_{b}.py"] = \
            tangent_kernel_source(tangents, b)
    for name, c in tangents.items():
        files[ROOT / "docs" / "formulas" / f"{name}.tex"] = tangent_latex(c)
    for name, c in coeffs.items():
        files[ROOT / "docs" / "formulas" / f"{name}.tex"] = latex_source(c)
    for name, d in found.items():
        if d.entrywise_latex is not None:
            m = d.entrywise_latex
            files[ROOT / "docs" / "formulas" / f"{name}_m{m}.tex"] = entrywise_latex(name, m)
    for name in found:  # Ito's lemma on b and Sigma, m = 2
        files[ROOT / "docs" / "formulas" / f"correlation_{name}.tex"] = latex_correlation(name)
    files[ROOT / "docs" / "formulas" / "README.md"] = markdown_preview(coeffs)
    return files


def regenerate(check: bool = False) -> list[Path]:
    """Write the artifacts (or, with check=True, only list the stale ones)."""
    stale = []
    for path, content in artifacts().items():
        if not path.exists() or path.read_text() != content:
            stale.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
    return stale


__all__ = ["artifacts", "package_coefficients", "regenerate"]
