"""All the figures at once: `make_figures` (CLI: `shapedsde figures`) writes each figure
as PNG and PDF with its data (`.npz`) and caption (`.md`: the command that made it, the
settings, the key numbers), then `summary.json` and a README.md that embeds them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import _io
from ..sde import check_device
from ..seeds import check_root
from ._common import FIGURES, NAMES, TITLES, FigureOutput
from .figure1_normalised import figure1_normalised
from .figure1_paper import figure1
from .figure2_density import figure2
from .figure3_transformer import figure3
from .figure4_rank_collapse import figure4
from .figure5_law_distance import figure5

FUNCS = {"fig1": figure1, "fig1n": figure1_normalised, "fig2": figure2, "fig3": figure3,
         "fig4": figure4, "fig5": figure5}
#: Figures whose finite networks take the --method option (figure 3 draws every weight).
TAKES_METHOD = ("fig1", "fig1n", "fig2", "fig4")

#: Sizes of `make_figures` runs: "full" is the paper's 2^12 samples where it matters.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "fig1": dict(nets=4096),
        "fig1n": dict(nets=4096),
        "fig2": dict(widths=(32, 64, 128, 256), nets=4096, sde_paths=4096),
        "fig3": dict(transformer_widths=(16, 32, 64, 128), transformer_nets=2048,
                     multihead_widths=(16, 32, 64, 128), multihead_nets=2048, sde_paths=4096),
        "fig4": dict(nets=4096),
        "fig5": {},
    },
    "quick": {
        "fig1": dict(nets=1024),
        "fig1n": dict(nets=1024),
        "fig2": dict(widths=(16, 32, 64, 128), nets=1024, sde_paths=2048),
        "fig3": dict(transformer_widths=(16, 32), transformer_nets=384,
                     multihead_widths=(16, 32), multihead_nets=256, sde_paths=2048),
        "fig4": dict(nets=1024),
        "fig5": {},
    },
}


def cli_command(out: Path, *, quick: bool, seed: int, device: str, only: Sequence[str],
                 method: str) -> str:
    parts = ["shapedsde figures"]
    if quick:
        parts.append("--quick")
    parts += [f"--out {out}", f"--seed {seed}", f"--device {device}"]
    if method != "auto":
        parts.append(f"--method {method}")
    if tuple(only) != FIGURES:
        parts.append("--only " + ",".join(k.removeprefix("fig") for k in only))
    return " ".join(parts)


def parse_only(only: str | Sequence[str] | None) -> tuple[str, ...]:
    """'1,3' / ['fig1', 'fig3'] -> ('fig1', 'fig3'); None -> all figures."""
    if only is None:
        return FIGURES
    items = only.split(",") if isinstance(only, str) else list(only)
    keys = []
    for item in items:
        s = str(item).strip().lower()
        k = s if s.startswith("fig") else f"fig{s}"
        if k not in FIGURES:
            raise ValueError(f"unknown figure {item!r}; choose from 1, 1n, 2, 3, 4, 5")
        if k not in keys:
            keys.append(k)
    if not keys:
        raise ValueError("--only names no figure; choose from 1, 1n, 2, 3, 4, 5")
    return tuple(k for k in FIGURES if k in keys)


def make_figures(out: str | Path = "docs/figures", *, quick: bool = False, seed: int = 0,
                 device: str = "cpu", only: str | Sequence[str] | None = None,
                 method: str = "auto", progress: bool = True,
                 sizes: dict[str, dict[str, Any]] | None = None,
                 readme: bool = True) -> list[FigureOutput]:
    """Write the figures (all, or `only`) to `out`, and README.md + summary.json there.

    `quick`: fewer samples and smaller widths (a few minutes on 2 CPU cores). `sizes`
    overrides per-figure keyword arguments (e.g. {"fig2": {"nets": 64}}).
    """
    out = Path(out)
    seed = check_root(seed)
    dev = str(check_device(device))
    if method not in ("auto", "full", "gram"):
        raise ValueError(f"method must be 'auto', 'full' or 'gram'; got {method!r}")
    keys = parse_only(only)
    if "fig5" in keys and "fig2" not in keys and not (out / f"{NAMES['fig2']}.npz").is_file():
        raise ValueError(f"figure 5 plots figure 2's data, and {out} has none; add figure 2 "
                         "(--only 2,5)")
    command = cli_command(out, quick=quick, seed=seed, device=dev, only=keys, method=method)
    plan = {k: dict(SIZES["quick" if quick else "full"][k]) for k in keys}
    for k, over in (sizes or {}).items():
        if k in plan:
            plan[k].update(over)
    results = []
    for k in keys:
        kw = dict(seed=seed, device=dev, progress=progress, command=command, **plan[k])
        if k in TAKES_METHOD:
            kw["method"] = method
        res = FUNCS[k](out, **kw)
        print(f"{k}: wrote {', '.join(str(p) for p in res.files)} ({res.seconds:.0f} s)")
        results.append(res)
    if readme:
        write_readme(out, results, command, quick=quick)
    return results


def write_readme(out: Path, results: list[FigureOutput], command: str, *, quick: bool) -> Path:
    """Update summary.json (numbers, paragraph, command per figure) in `out` and rebuild
    README.md from it, embedding every figure recorded there (earlier runs included)."""
    out = Path(out)
    spath = out / "summary.json"
    entries: dict[str, Any] = {}
    if spath.is_file():
        try:
            entries = json.loads(spath.read_text()).get("figures", {})
        except (ValueError, AttributeError):
            entries = {}
    for r in results:
        entries[r.key] = {"name": r.name, "title": TITLES[r.key], "command": command,
                          "quick": quick, "seconds": r.seconds, "paragraph": r.paragraph,
                          "numbers": r.numbers, "settings": r.settings}
    entries = {k: entries[k] for k in FIGURES if k in entries}
    spath.write_text(_io.dumps({"figures": entries}, indent=2) + "\n")
    commands = sorted({e["command"] for e in entries.values()})
    total = sum(e["seconds"] for e in entries.values())
    made = (f"`{commands[0]}`" if len(commands) == 1
            else "; ".join(f"`{c}`" for c in commands) + " (see each caption)")
    lines = ["# Figures", "",
             f"Made by {made}, {total / 60:.1f} min of computing on the machine that ran it. "
             "Each figure has its data (`.npz`) and a caption with the exact command, settings "
             "and numbers (`.md`) beside it; the PDF versions have the same names. Notation "
             "and conventions: [docs/conventions.md](../conventions.md).", ""]
    for e in entries.values():
        size = " (quick settings)" if e["quick"] else ""
        lines += [f"## {e['title']}{size}", "", f"![{e['name']}]({e['name']}.png)", "",
                  e["paragraph"], "",
                  f"Caption, settings and all numbers: [{e['name']}.md]({e['name']}.md).", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path
