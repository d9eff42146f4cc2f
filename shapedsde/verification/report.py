"""`run_verification`: all checks, `report.json`, `report.html`, figures and verdict lines.

Checks (see verify/README.md for how to read them):
1. closed form: the conditional W^V moments against raw W^V sampling;
2. one-step consistency: block.finite (no tricks) against the variance-reduced
   estimator at the same width;
3. one-step moments against the kernels at several widths and (gamma, tau0),
   with the 1/n extrapolation;
4. multi-head attention at one step: block.finite and the extrapolated moments against
   the n_H-head kernels, with the single head's as the control (`multihead`);
5. sampler consistency: the exact-in-law V chain against block.finite;
6. law at T against the SDE, with negative controls;
7. every block (MLP, Transformer, multi-head, causal): one step and law at T;
8. at depth (T = 1, strong attention): the stopped process, P(exit), survival curve,
   near-singular fraction and survivors' laws against exact finite networks (`depth`);
9. tangents (`tangent`): the stopped law of the joint Gram of tokens and JVP at T = 0.5
   and its one-step moments, with the dA = 0 control;
10. normalised blocks (`normalised`): post-RMS attention at T = 0.5 and pre-RMS attention
   at T = 1 (gamma 0.7, tau0 0.25, rho0 0.5) against exact chains, with the unnormalised
   and the naive SDE as controls;
11. spectrum (`spectrum`): log_min, log_max, log_cond at m = 16 (full: and m = 64) against
   exact chains, with another gamma as the control.
Seeds: every check draws from its own seed, derived from the root seed and the
check's label (`common.derive_seed`), so results are reproducible and do not
depend on which other checks run.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__, _io
from .._io import write_files
from .._validation import check_seed
from ..blocks import Block
from ..progress import progress_bar
from ..registry import block as make_block
from .all_blocks import every_block as run_every_block
from .common import LINE_ALPHA, derive_seed, z_crit
from .depth import depth_checks
from .figures import render_figures
from .html import render_html
from .law import STATISTICS, LawSetting, gram_vs_full_check, law_check
from .multihead import heads_check
from .normalised import normalised_checks, normalised_sizes
from .one_step import PARTS, closed_form_check, one_step_check, raw_consistency_check
from .spectrum import MANY_TOKEN_SIZES, spectrum_checks, spectrum_sizes
from .tangent import tangent_checks, tangent_sizes

# A generic V0 (m = 3): unequal norms and correlations, so P V P is far from 0
# and the attention terms are not degenerate. The one-step check also visits V1:
# another scale, a strong and a negative correlation, smallest eigenvalue ~0.1.
DEFAULT_V0 = [[1.0, 0.2, 0.4], [0.2, 1.2, 0.1], [0.4, 0.1, 0.8]]
NAMED_V = {"V0": DEFAULT_V0, "V1": [[2.0, 1.2, 0.3], [1.2, 1.6, -0.2], [0.3, -0.2, 0.5]]}


@dataclass
class Config:
    """Sizes of one verification run (`tiny()`, `quick()` or `full()`)."""

    # attention (gamma, tau0) for law and one-step checks; one-step at the V names in "V"
    one_step_params: list[dict] = field(default_factory=list)
    one_step_widths: list[int] = field(default_factory=list)
    one_step_pairs: int = 0
    linear_gammas: list[float] = field(default_factory=list)
    # multi-head attention (gamma, tau0, heads, causal) at one step; at the V names in "V"
    heads_params: list[dict] = field(default_factory=list)
    heads_widths: list[int] = field(default_factory=list)
    heads_pairs: int = 0
    heads_raw_n: int = 32
    heads_raw_samples: int = 0
    closed_form_n: int = 32
    closed_form_samples: int = 0
    raw_n: int = 32
    raw_samples: int = 0
    raw_pairs: int = 0
    law_params: list[dict] = field(default_factory=list)  # gamma, tau0, T
    law_widths: list[int] = field(default_factory=list)
    law_nets: int = 0
    law_sde_paths: int = 0
    law_control_paths: int = 0
    law_sde_dt: float | None = None  # None: the solver's default step
    consistency_n: int = 32
    consistency_T: float = 0.25
    consistency_nets_full: int = 0
    consistency_nets_gram: int = 0
    figure_dpi: int = 110

    @classmethod
    def tiny(cls) -> Config:
        """A smoke run in seconds: the same checks with samples far too small for power
        (the closed form keeps quick's samples: it is cheap, and with a few thousand
        draws its covariance z-scores are far from normal)."""
        return cls(
            one_step_params=[{"gamma": 0.8, "tau0": 0.7}], one_step_widths=[64, 256],
            one_step_pairs=3000, linear_gammas=[0.5],
            heads_params=[{"gamma": 0.9, "tau0": 0.4, "heads": 2}], heads_widths=[64, 256],
            heads_pairs=3000, heads_raw_n=8, heads_raw_samples=2000, closed_form_n=8,
            closed_form_samples=20_000, raw_n=8, raw_samples=2000, raw_pairs=3000,
            law_params=[{"gamma": 0.9, "tau0": 0.5, "T": 0.125}], law_widths=[16, 32],
            law_nets=400, law_sde_paths=400, law_sde_dt=0.01, consistency_n=16,
            consistency_nets_full=200, consistency_nets_gram=400, figure_dpi=30)

    def mode(self) -> str:
        """"tiny", "quick" or "full" when this is that configuration, else "custom"."""
        for name in ("tiny", "quick", "full"):
            if self == getattr(Config, name)():
                return name
        return "custom"

    @classmethod
    def quick(cls) -> Config:
        return cls(
            one_step_params=[{"gamma": 0.8, "tau0": 0.7},
                             {"gamma": 0.9, "tau0": 0.4, "V": ["V0", "V1"]},
                             {"gamma": 0.5, "tau0": 1.0}],
            one_step_widths=[64, 128, 256, 512, 1024, 2048], one_step_pairs=150_000,
            linear_gammas=[0.5, 0.9],
            heads_params=[{"gamma": 0.9, "tau0": 0.4, "heads": 2},
                          {"gamma": 0.9, "tau0": 0.4, "heads": 2, "causal": True}],
            heads_widths=[64, 128, 256, 512, 1024, 2048], heads_pairs=50_000,
            heads_raw_n=32, heads_raw_samples=24_000,
            closed_form_n=32, closed_form_samples=20_000,
            raw_n=32, raw_samples=24_000, raw_pairs=150_000,
            law_params=[{"gamma": 0.9, "tau0": 0.5, "T": 0.0625}],
            law_widths=[32, 64, 128, 256, 512, 1024], law_nets=24_000, law_sde_paths=48_000,
            law_control_paths=24_000, law_sde_dt=0.0025,
            consistency_n=32, consistency_T=0.25, consistency_nets_full=4000,
            consistency_nets_gram=16_000)

    @classmethod
    def full(cls) -> Config:
        return cls(
            one_step_params=[{"gamma": g, "tau0": t, "V": ["V0", "V1"]} for g, t in
                             [(0.8, 0.7), (0.9, 0.4), (0.5, 1.0), (1.0, 0.5), (0.3, 0.3)]],
            one_step_widths=[64, 128, 256, 512, 1024, 2048, 4096], one_step_pairs=400_000,
            linear_gammas=[0.3, 0.5, 0.9, 1.0],
            heads_params=[{"gamma": 0.9, "tau0": 0.4, "heads": 2, "V": ["V0", "V1"]},
                          {"gamma": 0.9, "tau0": 0.4, "heads": 2, "causal": True},
                          {"gamma": 0.9, "tau0": 0.4, "heads": 4}],
            heads_widths=[64, 128, 256, 512, 1024, 2048, 4096], heads_pairs=200_000,
            heads_raw_n=64, heads_raw_samples=100_000,
            closed_form_n=64, closed_form_samples=100_000,
            raw_n=64, raw_samples=100_000, raw_pairs=400_000,
            law_params=[{"gamma": 0.9, "tau0": 0.5, "T": 0.0625},
                        {"gamma": 0.9, "tau0": 0.7, "T": 0.125},
                        {"gamma": 1.0, "tau0": 0.7, "T": 0.0625}],
            law_widths=[32, 64, 128, 256, 512, 1024, 2048], law_nets=40_000,
            law_sde_paths=80_000, law_control_paths=40_000, law_sde_dt=0.00125,
            consistency_n=64, consistency_T=0.125, consistency_nets_full=10_000,
            consistency_nets_gram=40_000)


def run_verification(*, quick: bool = True, out_dir: str | Path = "results/verify",
                     seed: int = 0,
                     device: str = "cpu", blocks: list[str | Block] | None = None,
                     progress: bool = True, config: Config | None = None,
                     every_block: bool = True, workers: int = 1,
                     scheduler: str | None = None, depth: bool | None = None,
                     features: bool | None = None,
                     reference: bool = False, command: str | None = None) -> dict:
    """Run the checks, write `out_dir/report.json`, `report.html` and PNG figures, return
    the report.

    blocks: names ("attention", "linear") or Block instances to verify; None: both,
    at the configuration's parameters. An attention Block instance is checked at
    its own (gamma, tau0); the law check uses the configuration's horizons.
    `config` overrides the quick/full sizes (`Config.tiny()`: a smoke run in seconds).
    every_block: also run `all_blocks.every_block` (MLP, Transformer, multi-head, causal),
    whose law-at-T samples run as seeded tasks on `workers` Dask processes (or on the
    cluster at `scheduler`); the numbers do not depend on the number of workers.
    depth: run the stopped-process checks at depth (`verification.depth`); default: with
    every_block.
    features: run the checks of tangents, normalised blocks and the log-spectrum
    (`verification.tangent`, `.normalised`, `.spectrum`); default: with every_block.
    progress: print each verdict line once (stdout), announce each stage and show
    progress bars (stderr; bars only on a terminal).
    reference: a report for the source tree: no wall times, platform or git commit
    (`MACHINE_KEYS`), and files in `out_dir` from an older report are removed.
    command: the command that reproduces the run, recorded in the report (default: the
    equivalent Python call).
    """
    t_start = time.perf_counter()
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available here; use 'cpu'")
    seed = check_seed(seed)
    cfg = config or (Config.quick() if quick else Config.full())
    depth = every_block if depth is None else depth
    features = every_block if features is None else features
    out = _output_dir(out_dir)
    mode = cfg.mode()
    command = command or (f"shapedsde.verification.run_verification(quick={quick}, "
                          f"seed={seed}, config=Config.{mode}(), every_block={every_block}, "
                          f"depth={depth}, features={features}, device={device!r})")
    V0 = torch.tensor(DEFAULT_V0, dtype=torch.float64)
    seeds: dict[str, int] = {}

    def seed_of(label: str) -> int:
        seeds[label] = derive_seed(seed, label)
        return seeds[label]

    att, lin = _select_blocks(blocks, cfg)
    report: dict[str, Any] = {
        "command": command,
        "settings": {"mode": mode, "quick": quick, "seed": seed, "device": device, "V": NAMED_V,
                     "config": asdict(cfg), "every_block": every_block, "depth": depth,
                     "features": features,
                     "line_alpha": LINE_ALPHA,
                     "seed_scheme": "numpy SeedSequence(seed, spawn_key=(crc32(label),))"
                                    ".generate_state(1, uint64)[0] >> 1, per check label"},
        "versions": _versions(), "seeds": seeds, "checks": {}, "verdicts": [], "seconds": {}}
    checks, verdicts = report["checks"], report["verdicts"]
    if features:  # the sizes and settings of the feature checks (each result repeats its own)
        report["settings"]["feature_checks"] = {
            "tangent": tangent_sizes(quick), "normalised": normalised_sizes(quick),
            "spectrum": spectrum_sizes(quick),
            **({} if quick else {"spectrum_many_tokens": MANY_TOKEN_SIZES})}
    optional = {"every_block": every_block, "depth": depth, "tangent": features,
                "normalised": features, "spectrum": features}
    stages = [s for s in STAGES if optional.get(s, True)]
    prog = Progress(progress, stages, report["seconds"])

    def log(line: str) -> None:
        verdicts.append(line)
        prog.write(line)

    with prog.stage("closed_form"):
        checks["closed_form"] = []
        for b in prog.items(att[:1] + lin[:1], "blocks"):
            r = closed_form_check(b, V0, cfg.closed_form_n, cfg.closed_form_samples,
                                  _gen(seed_of(f"closed-form/{b.name}")))
            r["block"] = b.name
            checks["closed_form"].append(r)
            log(_closed_form_line(b, r))

    with prog.stage("raw_consistency"):
        checks["raw_consistency"] = []
        for b in prog.items(att[:1], "blocks"):
            r = raw_consistency_check(b, V0, cfg.raw_n, cfg.raw_samples, cfg.raw_pairs,
                                      _gen(seed_of(f"raw/{b.name}")))
            checks["raw_consistency"].append(r)
            log(_raw_line(b, r))

    with prog.stage("one_step"):
        checks["one_step"] = []
        for b, vname in prog.items(_one_step_points(att + lin, cfg), "points"):
            Vx = torch.tensor(NAMED_V[vname], dtype=torch.float64)
            r = one_step_check(b, Vx, cfg.one_step_widths, cfg.one_step_pairs,
                               lambda label, v=vname: seed_of(f"{label}/{v}"))
            r["V_name"] = vname
            checks["one_step"].append(r)
            log(_one_step_line(b, r, vname))

    with prog.stage("heads"):
        checks["heads"] = []
        for b, vname in prog.items(_heads_points(blocks, cfg), "points"):
            r = heads_check(b, torch.tensor(NAMED_V[vname], dtype=torch.float64),
                            widths=cfg.heads_widths, pairs=cfg.heads_pairs,
                            raw_n=cfg.heads_raw_n, raw_samples=cfg.heads_raw_samples,
                            seed_of=lambda label, v=vname: seed_of(f"{label}/{v}"), v_name=vname)
            r["V_name"] = vname
            checks["heads"].append(r)
            log(r["line"])

    law_settings = _law_settings(att, cfg, V0)
    with prog.stage("sampler_consistency"):
        checks["sampler_consistency"] = []
        for s in prog.items(law_settings[:1], "settings"):
            r = gram_vs_full_check(s.block, V0, cfg.consistency_T, cfg.consistency_n,
                                   cfg.consistency_nets_full,
                                   cfg.consistency_nets_gram, seed_of, device=device)
            checks["sampler_consistency"].append(r)
            log(r["line"])

    samples = []
    with prog.stage("law"):
        checks["law"] = []
        for s in prog.items(law_settings, "settings"):
            r = law_check(s, seed_of, device=device, progress=False)
            samples.append(r.pop("_samples"))
            checks["law"].append(r)
            for v in r["verdicts"]:
                log(v["line"])

    if every_block:
        with prog.stage("every_block"):
            checks["every_block"] = run_every_block(
                quick=quick, seed=seed_of("every-block"), device=device, workers=workers,
                scheduler=scheduler)
            for r in checks["every_block"]:
                log(r["line"])

    if depth:
        with prog.stage("depth"):
            checks["depth"] = depth_checks(quick=quick, seed=seed_of("depth"), device=device)
            for r in checks["depth"]:
                log(r["line"])

    if features:
        for stage, run in (("tangent", tangent_checks), ("normalised", normalised_checks),
                           ("spectrum", spectrum_checks)):
            with prog.stage(stage):
                checks[stage] = []
                for r in run(quick=quick, seed=seed_of(stage), device=device):
                    checks[stage].append(r)
                    log(r["line"])

    with prog.stage("figures"):
        figures = render_figures(report, samples, dpi=cfg.figure_dpi)
    report["figures"] = list(figures)
    report["summary"] = {k: sum(v.startswith(k) for v in verdicts)
                         for k in ("PASS", "FAIL", "NO POWER")}
    report["seconds"]["total"] = time.perf_counter() - t_start
    if reference:
        report = strip_machine_fields(report)
    _write_report(out, report, figures, clean=reference)
    return report


#: Stages of a run, in order, and how they are announced.
STAGES = {"closed_form": "closed form of the W^V moments",
          "raw_consistency": "one-step consistency (raw block.finite)",
          "one_step": "one-step moments against the kernels",
          "heads": "multi-head attention at one step, with the single head as control",
          "sampler_consistency": "sampler consistency (gram chain vs block.finite)",
          "law": "law at T against the SDE, with negative controls",
          "every_block": "every block: one step and law at T (MLP, Transformer, multi-head, "
                         "causal)",
          "depth": "at depth: the stopped process against exact finite networks",
          "tangent": "tangents: stopped law of tokens and JVP, one-step moments (dA = 0 "
                     "control)",
          "normalised": "normalised blocks: post- and pre-RMS attention against exact chains",
          "spectrum": "log-spectrum at m = 16 (full: and 64) against exact chains",
          "figures": "figures"}

#: Keys of fields that depend on the machine or the moment of the run (wall times, the
#: platform, the git commit): kept in a results/ report, removed from the reference.
MACHINE_KEYS = frozenset({"seconds", "seconds_full", "wall_s", "platform", "git_commit"})
REPORT_FILES = ("report.json", "report.html")


def strip_machine_fields(x: Any) -> Any:
    """A copy of `x` without the keys in MACHINE_KEYS, at any depth."""
    if isinstance(x, dict):
        return {k: strip_machine_fields(v) for k, v in x.items() if k not in MACHINE_KEYS}
    if isinstance(x, list):
        return [strip_machine_fields(v) for v in x]
    return x


class Progress:
    """Stage announcements (stderr), verdict lines (stdout) and tqdm bars for one run."""

    def __init__(self, enabled: bool, stages: list[str], seconds: dict[str, float]) -> None:
        self.enabled, self.stages, self.seconds = enabled, stages, seconds

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.enabled:
            i = self.stages.index(name) + 1
            print(f"[{i}/{len(self.stages)}] {STAGES[name]}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t

    def items(self, seq: list, unit: str) -> Any:
        """`seq` with a bar on stderr (drawn only on a terminal)."""
        return progress_bar(seq, unit=unit[:-1] if unit.endswith("s") else unit, leave=False,
                            enabled=self.enabled, terminal_only=True, dynamic_ncols=True)

    def write(self, line: str) -> None:
        if self.enabled:
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()


def _output_dir(out_dir: str | Path) -> Path:
    """Check before any work that `out_dir` can be created or written (it is created by the
    write, so a run that fails leaves no empty folder), or say why it cannot be used."""
    return _io.writable_folder(out_dir, f"the output folder {out_dir}")


def _write_report(out: Path, report: dict, figures: dict[str, bytes], clean: bool) -> None:
    """report.json, report.html (rendered from that JSON) and the figures, atomically.

    clean: first remove report and figure files (.json, .html, .png) that this report does
    not write, so a reference folder holds no file from an older report."""
    text = _io.dumps(report, indent=1) + "\n"  # strict JSON: non-finite numbers are null
    page = render_html(json.loads(text), figures)
    files = {out / "report.json": text.encode(), out / "report.html": page.encode(),
             **{out / name: data for name, data in figures.items()}}
    stale = [old for old in out.iterdir()
             if old.suffix in (".json", ".html", ".png") and old not in files and old.is_file()
             ] if clean and out.is_dir() else []
    write_files(files, remove=stale)  # removed with the renames, not before the work


# ----------------------------------------------------------------------------
# Verdict lines


# Parts whose n -> inf extrapolation gates the one-step verdict. The value part alone
# is nearly noiseless (SE ~ 1e-6 relative), so its z-scores measure the 1/n^3
# remainder of the extrapolation fit rather than the kernel; it is reported only.
GATED_PARTS = ("drift", "attention", "diffusion")


def _one_step_line(b: Block, r: dict, vname: str = "V0") -> str:
    """PASS when the n -> inf extrapolation of drift, attention part and total
    diffusion agrees with the kernels (every entry within the line's Bonferroni
    bound at LINE_ALPHA) and the errors fall with n (or sit at the noise floor).
    The z-scores at the largest width are reported; above the bound they mean a
    resolved finite-width bias."""
    ns = sorted(r["widths"])
    n0, n = ns[0], ns[-1]
    w, w0 = r["widths"][n], r["widths"][n0]
    label = f"{_label(b)} at {vname}"
    if r["pairs"] == 0:  # deterministic (linear block): exact agreement at every width
        # The drift is n times a difference of O(|V|) numbers: compare it on that scale.
        vmax = float(np.max(np.abs(r["V"])))
        drift_err = max(float(np.max(np.abs(np.subtract(r["estimates"][k]["drift"],
                                                        r["theory"]["drift"])))) / (k * vmax)
                        for k in ns)
        ok = drift_err < 1e-12 and all(r["widths"][k]["diffusion"]["rel_error"] < 1e-12
                                       for k in ns)
        return (f"{'PASS' if ok else 'FAIL'} one-step {label} n={n0}..{n}: exact at every width "
                f"(diffusion rel err {w['diffusion']['rel_error']:.1e}, drift error "
                f"{drift_err:.1e} n|V|)")
    ex = r["extrapolated"]
    crit = z_crit(sum(ex[p]["entries"] for p in GATED_PARTS), LINE_ALPHA)
    r["line_z_crit"] = crit
    falls = all(w[p]["rel_error"] < w0[p]["rel_error"] or w[p]["rel_error"] < 3 * w[p]["rel_se"]
                for p in GATED_PARTS)
    ok = all(ex[p]["max_abs_z"] < crit for p in GATED_PARTS) and falls
    per_n = "; ".join(f"{p} max|z|={w[p]['max_abs_z']:.2f} rel err {w0[p]['rel_error']:.1e}->"
                      f"{w[p]['rel_error']:.1e}" for p in GATED_PARTS)
    extra = ", ".join(f"{p} {ex[p]['max_abs_z']:.2f}" for p in GATED_PARTS)
    return (f"{'PASS' if ok else 'FAIL'} one-step {label} n={n}: {per_n} (n={n0}->{n}); "
            f"n->inf extrapolation max|z| {extra} (crit {crit:.2f})"
            + ("" if falls else "; errors do NOT fall with n"))


def _closed_form_line(b: Block, r: dict) -> str:
    crit = z_crit(r["mean"]["entries"] + r["cov"]["entries"], LINE_ALPHA)
    ok = max(r["mean"]["max_abs_z"], r["cov"]["max_abs_z"]) < crit
    return (f"{'PASS' if ok else 'FAIL'} closed form {b.name} n={r['n']}: conditional E, Cov "
            f"over W^V vs {r['samples']} raw draws, max|z| mean {r['mean']['max_abs_z']:.2f}, "
            f"cov {r['cov']['max_abs_z']:.2f} (crit {crit:.2f})")


def _raw_line(b: Block, r: dict) -> str:
    crit = z_crit(r["drift"]["entries"] + r["diffusion"]["entries"], LINE_ALPHA)
    ok = max(r["drift"]["max_abs_z"], r["diffusion"]["max_abs_z"]) < crit
    return (f"{'PASS' if ok else 'FAIL'} one-step consistency {_label(b)} n={r['n']}: "
            f"block.finite ({r['samples']} raw layers) vs variance-reduced estimator, max|z| "
            f"drift {r['drift']['max_abs_z']:.2f}, diffusion {r['diffusion']['max_abs_z']:.2f} "
            f"(crit {crit:.2f})")


# ----------------------------------------------------------------------------
# Helpers


def _select_blocks(blocks, cfg: Config) -> tuple[list[Block], list[Block]]:
    """Attention and linear blocks to verify (instances or names, see run_verification)."""
    blocks = ["attention", "linear"] if blocks is None else list(blocks)
    att: list[Block] = []
    lin: list[Block] = []
    for b in blocks:
        if isinstance(b, Block):
            (lin if b.name == "linear" else att).append(b)
        elif b == "attention":
            att += [make_block("attention", gamma=p["gamma"], tau0=p["tau0"])
                    for p in cfg.one_step_params]
        elif b == "linear":
            lin += [make_block("linear", gamma=g) for g in cfg.linear_gammas]
        else:
            raise ValueError(f"cannot verify block {b!r}; choose 'attention', 'linear' or "
                             "pass Block instances of those kinds")
    for b in att:
        if b.name != "attention":
            raise ValueError("the verifier supports the attention and linear blocks; "
                             f"got {b.name!r}")
    return att, lin


def _one_step_points(blocks: list[Block], cfg: Config) -> list[tuple[Block, str]]:
    """(block, V name) pairs: the V names listed with the block's parameters, else V0."""
    out = []
    for b in blocks:
        names = ["V0"]
        for p in cfg.one_step_params:
            if b.name == "attention" and (p["gamma"], p["tau0"]) == (b.gamma, b.tau0):
                names = p.get("V", ["V0"])
        out += [(b, v) for v in names]
    return out


def _heads_points(blocks, cfg: Config) -> list[tuple[Block, str]]:
    """(multi-head block, V name) pairs of the configuration, when attention is verified
    by name (the default)."""
    if blocks is not None and "attention" not in [b for b in blocks if isinstance(b, str)]:
        return []
    out = []
    for p in cfg.heads_params:
        b = make_block("attention", **{k: v for k, v in p.items() if k != "V"})
        out += [(b, v) for v in p.get("V", ["V0"])]
    return out


def _law_settings(att: list[Block], cfg: Config, V0: torch.Tensor) -> list[LawSetting]:
    """Law checks: the configuration's (gamma, tau0, T) when attention was asked for by
    name; an attention Block instance is checked at its own parameters and the first T."""
    if not att:
        return []
    defaults = {(p["gamma"], p["tau0"]) for p in cfg.one_step_params}
    custom = [b for b in att if (b.gamma, b.tau0) not in defaults]
    if custom:
        pairs = [(b, cfg.law_params[0]["T"]) for b in custom]
    else:
        pairs = [(make_block("attention", gamma=p["gamma"], tau0=p["tau0"]), p["T"])
                 for p in cfg.law_params]
    out = []
    for b, T in pairs:
        steps = None if cfg.law_sde_dt is None else max(20, math.ceil(T / cfg.law_sde_dt))
        out.append(LawSetting(block=b, V0=V0, T=T, widths=cfg.law_widths, nets=cfg.law_nets,
                              sde_paths=cfg.law_sde_paths,
                              control_paths=cfg.law_control_paths or cfg.law_sde_paths,
                              sde_steps=steps))
    return out


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _label(b: Block) -> str:
    return b.name + "".join(f" {k}={v:g}" for k, v in b.kernel_params().items())


def _versions() -> dict[str, str]:
    import matplotlib
    import scipy

    v = {"shapedsde": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "numpy": np.__version__, "scipy": scipy.__version__, "matplotlib": matplotlib.__version__,
         "platform": platform.platform()}
    try:
        v["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                         text=True, timeout=5,
                                         cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return v


__all__ = ["Config", "PARTS", "STATISTICS", "run_verification"]
