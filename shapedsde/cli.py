"""Command-line interface: `shapedsde {coeffs,sde,finite,derive,verify,figures,stability}`.

`main(argv)` returns the exit status instead of exiting, so it can be called
in-process. Invalid input (a ValueError from validation, an unreadable file,
a bad option) becomes one line `error: ...` on stderr and exit status 2, never
a traceback. The heavier modules (finite networks, code generation, the
verifier) are imported only by the command that needs them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__, _io
from . import _validation as val
from .blocks import Block, block
from .parameters import PARAMETERS, Parameter, declared
from .registry import block_classes

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
#: A run estimated to hold more memory than this is refused unless --insist is given.
MEMORY_LIMIT_BYTES = 8 * 2**30
#: At most this many SDE steps / finite sub-layers unless --insist is given.
MAX_STEPS = 10**7
NPY_MAGIC = b"\x93NUMPY"


class _UsageError(Exception):
    """Raised by the parser instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


# ---------------------------------------------------------------------------
# Shared helpers


def load_matrix(path: str, name: str) -> np.ndarray:
    """Read a float64 (..., m, m) array from a .npy file and validate it as a covariance."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{name} file not found: {path}")
    try:
        with p.open("rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as err:
        raise ValueError(f"cannot read {name} file {path}: {err.strerror or err}") from None
    if not head:
        raise ValueError(f"cannot read {name} file {path}: it is empty (0 bytes); write it with "
                         "numpy.save")
    if head[:2] == b"PK":
        raise ValueError(f"cannot read {name} file {path}: it is a .npz archive; save the one "
                         "matrix with numpy.save")
    if head != NPY_MAGIC:
        raise ValueError(f"cannot read {name} file {path}: not a .npy file (no NumPy header; "
                         "write it with numpy.save)")
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as err:
        if "pickled" in str(err) or "Object arrays" in str(err):
            raise ValueError(f"cannot read {name} file {path}: it holds Python objects (object "
                             "dtype), not numbers; save a float array") from None
        raise ValueError(f"cannot read {name} file {path} as a .npy array: {err}") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {name} file {path} as a .npy array (truncated or "
                         f"corrupt?): {err}") from None
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} file {path} must hold real numbers; got dtype {arr.dtype}")
    return val.check_covariance(arr, name=name)


def block_from_args(args: argparse.Namespace) -> Block:
    """Build the block from --block and the block options the user gave.

    A block receives only parameters it declares (linear takes only gamma); an
    option given for a block that does not take it is an error, not ignored.
    """
    given = {p.name: getattr(args, p.name) for p in _options()
             if getattr(args, p.name, None) is not None}
    if ".py:" in args.block:
        if given:
            raise ValueError(f"a block from a file takes its parameters from the file; drop "
                             f"{', '.join('--' + k.replace('_', '-') for k in given)}")
        return load_block_file(args.block)
    cls = _option_blocks().get(args.block)
    if cls is None:
        raise ValueError(f"unknown block {args.block!r}; choose one of "
                         f"{sorted(_option_blocks())} or give FILE.py:NAME")
    if args.gamma is None:
        raise ValueError(f"block {args.block!r} needs --gamma (the branch weight in (0, 1])")
    accepted = declared(cls)
    extra = [p.option for p in _options() if p.name in given and p not in accepted]
    if extra:
        takes = ", ".join(p.option for p in accepted if p.cli is not None)
        raise ValueError(f"block {args.block!r} takes no {', '.join(extra)} (it takes {takes})")
    return block(args.block, **given)


def load_block_file(spec: str) -> Block:
    """FILE.py:NAME -> the Block that NAME in the user's file is, or returns when called
    with no arguments (e.g. docs/examples/my_block.py:my_block). The file is the user's own
    code and runs as such; nothing is generated into the package."""
    import importlib.util

    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--block {spec}: no file {path}")
    if not name.isidentifier():
        raise ValueError(f"--block {spec}: {name!r} is not a Python name (FILE.py:NAME)")
    module_spec = importlib.util.spec_from_file_location(f"shapedsde_user_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses and pickling look modules up here
    try:
        module_spec.loader.exec_module(module)
        obj = getattr(module, name)
        obj = obj if isinstance(obj, Block) or not callable(obj) else obj()
    except Exception as err:  # the user's code: report it in one line, whatever it raised
        raise ValueError(f"--block {spec}: {type(err).__name__}: {err}") from None
    if not isinstance(obj, Block):
        raise ValueError(f"--block {spec}: {name} is a {type(obj).__name__}, not a shapedsde "
                         "Block (or a function returning one)")
    return obj


def block_meta(blk: Block) -> dict[str, Any]:
    """{"block", "params"} for the outputs, with the activation of a smooth MLP."""
    meta: dict[str, Any] = {"block": blk.name, "params": blk.kernel_params()}
    if getattr(blk, "smooth", None) is not None:
        meta["activation"] = blk.activation_name
    return meta


def _device(name: str) -> Any:
    from .sde import check_device

    return check_device(name)


def memory_limit() -> int:
    """MEMORY_LIMIT_BYTES, or half the machine's memory where that is smaller."""
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MEMORY_LIMIT_BYTES
    return min(MEMORY_LIMIT_BYTES, phys // 2) if phys > 0 else MEMORY_LIMIT_BYTES


def _check_work(args: argparse.Namespace, nbytes: float, what: str,
                steps: int | None = None, step_name: str = "steps") -> None:
    """Refuse (unless --insist) a run over the memory limit or over MAX_STEPS steps."""
    if getattr(args, "insist", False):
        return
    val.check_budget(nbytes, what, limit=memory_limit())
    if steps is not None and steps > MAX_STEPS:
        raise ValueError(f"{what} would take {steps:.3g} {step_name}, over the limit of "
                         f"{MAX_STEPS:.0e}; lower --T (or --steps / --width) or pass --insist "
                         "to run it anyway")


def _itemsize(dtype_name: str) -> int:
    return 4 if dtype_name == "float32" else 8


def sde_bytes(m: int, paths: int, itemsize: int, noise_groups: int | None) -> int:
    """Bytes the SDE solver holds: (paths, m, m) states and temporaries, and the
    (paths, m^2, m^2) Sigma with its eigenvectors where there is no structured noise."""
    per_path = itemsize * (24 + (noise_groups or 0)) * m * m
    if noise_groups is None:
        per_path += itemsize * 8 * m**4
    return paths * per_path + 2 * 8 * paths * m * m  # + the float64 copy that is saved


def finite_bytes(blk: Block, m: int, width: int, nets: int, method: str, itemsize: int,
                 dtype: Any, device: Any) -> int:
    """Bytes a finite run holds: the initial state, one batch of networks with its weights
    (the batch `shapedsde.finite` picks), and the (nets, m, m) results."""
    n, nk, heads = width, getattr(blk, "nk", None) or width, getattr(blk, "heads", 1)
    batch = min(nets, _lazy("finite", "_default_batch")(method, m, n, getattr(blk, "nk", None),
                                                         heads, device, dtype))
    if method == "gram":
        per_net = 8 * m * m * 32 + itemsize * m * (2 * min(nk, 64) + min(n, 64))
    elif method == "reduced":
        per_net = itemsize * (8 + 4 * heads) * m * max(n, nk)
    else:
        per_net = itemsize * (n * n + 2 * heads * n * nk + 8 * m * n)
    return 4 * 8 * n * m + batch * per_net + 3 * 8 * nets * m * m


def _add_exit_trace(p: argparse.ArgumentParser, unit: str) -> None:
    p.add_argument("--exit-trace", type=float, metavar="R", dest="exit_trace",
                   help=f"stop each {unit} at the first time tr V >= R tr V0 (R > 1) and write "
                        "the exit times (inf: none) to OUT.exit.npy; the metadata records R, "
                        "the number of exits and P(exit) with its standard error")


def _lazy(module: str, attr: str) -> Any:
    """Import `attr` from `shapedsde.<module>` only when the command runs."""
    import importlib

    try:
        return getattr(importlib.import_module(f"shapedsde.{module}"), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"shapedsde.{module}.{attr} is not available: {err}") from None


# ---------------------------------------------------------------------------
# Commands


def coefficients(blk: Block, V: np.ndarray, dtype_name: str = "float64"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """b(V) and Sigma(V) in float64; ValueError when they do not fit in `dtype_name`
    (a run from such a V would fail at its first step)."""
    with np.errstate(all="ignore"):  # overflow is reported below, in one line
        drift = np.asarray(blk.drift(V, check=False), dtype=np.float64)
        diffusion = np.asarray(blk.diffusion(V, check=False), dtype=np.float64)
    top = float(np.finfo(np.dtype(dtype_name)).max)
    for label, arr in (("drift b(V)", drift), ("diffusion Sigma(V)", diffusion)):
        if not (np.all(np.isfinite(arr)) and np.max(np.abs(arr)) <= top):
            raise ValueError(f"the {label} of block {blk.name!r} is not finite in {dtype_name} "
                             f"for this V (largest |V^ab| = {float(np.max(np.abs(V))):.3g}); "
                             "rescale V towards O(1) (for the linear and mlp blocks "
                             "b(cV) = c b(V) and Sigma(cV) = c^2 Sigma(V))")
    return drift, diffusion


def cmd_coeffs(args: argparse.Namespace) -> int:
    blk = block_from_args(args)
    output = None if args.out is None else _io.prepare_output(args.out, extras=("diffusion",))
    V = load_matrix(args.V, "V")
    m = V.shape[-1]
    # Sigma (and, printed, about 25 bytes of JSON per entry).
    _check_work(args, (8 * 4 + (0 if output else 25)) * V.size * m * m, "coeffs")
    drift, diffusion = coefficients(blk, V)
    meta = block_meta(blk)
    if output is None:
        print(json.dumps({**meta, "drift": drift.tolist(), "diffusion": diffusion.tolist()}))
        return EXIT_OK
    _io.write_outputs(output, drift, {**meta, "V": np.asarray(V).tolist(), "V_file": args.V,
                                      "drift": str(output.data),
                                      "diffusion": str(output.extras["diffusion"])},
                      extras={"diffusion": diffusion})
    print(f"coeffs {blk.name}: drift -> {output.data}, diffusion -> "
          f"{output.extras['diffusion']}")
    return EXIT_OK


def cmd_sde(args: argparse.Namespace) -> int:
    from .sde import default_steps, solve

    blk = block_from_args(args)
    seed = val.check_seed(args.seed, "--seed")
    saves = _save_request(args)
    output = _io.prepare_output(
        args.out, extras=("exploded",) + (() if args.exit_trace is None else ("exit",))
        + (("trajectory", "times") if saves else ()))
    V0 = load_matrix(args.V0, "V0")
    T = val.check_time(args.T)
    paths = val.check_positive_int("paths", args.paths)
    steps = default_steps(T) if args.steps is None else val.check_positive_int("steps",
                                                                              args.steps)
    m = V0.shape[-1]
    _check_work(args, sde_bytes(m, paths, _itemsize(args.dtype), blk.noise_groups)
                + 8.0 * _saved_states(saves, steps) * paths * m * m,
                f"sde with {paths} paths of {m} x {m}", steps=steps,
                step_name="steps" if args.steps else "steps (at least T / dt_max)")
    coefficients(blk, V0, args.dtype)  # a V0 they overflow at would fail at the first step
    dtype = _dtype(args.dtype)
    with warnings.catch_warnings():
        # The non-finite warning is repeated below as one line.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = solve(blk, V0, T, paths=paths, seed=seed, steps=args.steps, rtol=args.rtol,
                    exit_trace=args.exit_trace, device=_device(args.device), dtype=dtype,
                    progress=not args.quiet, **saves)
    out = output.data
    extras = {"exploded": res.exploded.numpy()}
    if saves:  # (k, paths, m, m), time first, as finite runs record it
        extras["trajectory"] = res.trajectory.cpu().numpy()
        extras["times"] = np.asarray(res.times, dtype=np.float64)
    if args.exit_trace is not None:
        extras["exit"] = res.exit_time.numpy()
    _io.write_outputs(output, res.V.cpu().numpy(),
                      {**res.meta, **block_meta(blk),
                       "V0": np.asarray(V0).tolist(), "V0_file": args.V0, "out": str(out),
                       **{f"{k}_file": str(output.extras[k]) for k in extras}},
                      extras=extras)
    print(res.summary())
    if res.meta["n_nonfinite"]:
        print(f"warning: {res.meta['n_nonfinite']} paths became non-finite; their rows in "
              f"{out} are NaN", file=sys.stderr)
    return EXIT_OK


def _save_request(args: argparse.Namespace) -> dict[str, int]:
    """The solver's saving option ({} for none) from --save-every K (fixed steps) or
    --save-times K."""
    if args.save_every is not None and args.save_times is not None:
        raise ValueError("give --save-every or --save-times, not both")
    if args.save_every is not None:
        if args.steps is None:
            raise ValueError("--save-every K counts fixed steps: give --steps too, or use "
                             "--save-times K (K + 1 equally spaced times) with adaptive steps")
        return {"save_every": val.check_positive_int("--save-every", args.save_every)}
    if args.save_times is not None:
        return {"save_times": val.check_positive_int("--save-times", args.save_times)}
    return {}


def _saved_states(saves: dict[str, int], steps: int) -> int:
    """How many states per path a saving option keeps (at most; with t = 0 and T)."""
    if "save_times" in saves:
        return saves["save_times"] + 2
    return steps // saves["save_every"] + 2 if saves else 0


def _dtype(name: str):
    import torch

    return {"float64": torch.float64, "float32": torch.float32}[name]


def cmd_finite(args: argparse.Namespace) -> int:
    blk = block_from_args(args)
    V0 = load_matrix(args.V0, "V0")
    if V0.ndim != 2:
        raise ValueError(f"V0 must be one (m, m) matrix; got shape {V0.shape}")
    # Validate here too, so bad numbers fail before the (heavier) sampler is imported.
    width = blk.check_width(val.check_positive_int("width", args.width))
    nets = val.check_positive_int("nets", args.nets)
    T = val.check_time(args.T)
    seed = val.check_seed(args.seed, "--seed")
    if width < V0.shape[-1]:
        raise ValueError(f"--width {width} must be >= m = {V0.shape[-1]} (the tokens of V0)")
    output = _io.prepare_output(args.out, extras=() if args.exit_trace is None else ("exit",))
    out = output.data
    device = _device(args.device)
    dtype = _dtype(args.dtype)
    method = args.method or "full"
    if method == "auto":
        method = "gram" if _lazy("finite", "supports_gram")(blk) else "full"
    depth = int(round(T * width))
    _check_work(args, finite_bytes(blk, V0.shape[-1], width, nets, method,
                                   _itemsize(args.dtype), dtype, device),
                f"finite with {nets} nets of width {width}", steps=depth,
                step_name="sub-layers (depth = T * width)")
    simulate = _lazy("finite", "simulate")
    extra = {} if args.method is None else {"method": args.method}
    if args.exit_trace is not None:
        extra["exit_trace"] = args.exit_trace
    run = simulate(blk, V0, width=width, T=T, nets=nets, seed=seed,
                   device=device, dtype=dtype, progress=not args.quiet, **extra)
    V = (run if args.exit_trace is None else run.V).detach().cpu().numpy()
    exits: dict[str, Any] = {}
    extras = {}
    if args.exit_trace is not None:
        extras["exit"] = run.exit_time.numpy()
        exits = {**_lazy("sde", "exit_summary")(extras["exit"], args.exit_trace),
                 "exit_file": str(output.extras["exit"])}
    meta = {**block_meta(blk), "nk": getattr(blk, "nk", None),
            "width": width, "depth": depth, "T": T, "nets": nets, "seed": seed,
            "device": str(device), "method": method, "dtype": args.dtype,
            "V0": V0.tolist(), "V0_file": args.V0, "out": str(out),
            "n_nonfinite": int((~np.isfinite(V).all(axis=(-2, -1))).sum()),
            "exit_trace": args.exit_trace, **exits}
    _io.write_outputs(output, V, meta, extras=extras)
    params = ", ".join(f"{k}={v:g}" for k, v in blk.kernel_params().items())
    line = (f"finite {blk.name}({params}): {args.nets} nets, width {args.width}, "
            f"depth {depth} (T={args.T:g}), seed {args.seed}, {device} -> {out}")
    if exits:
        line += (f" | exit at tr V >= {args.exit_trace:g} tr V0: {exits['n_exits']} nets, "
                 f"P(exit) = {exits['p_exit']:.4f} +- {exits['p_exit_se']:.4f}")
    print(line)
    if meta["n_nonfinite"]:  # e.g. a V0 near the float64 limit overflows
        print(f"warning: {meta['n_nonfinite']} of {nets} networks became non-finite; their rows "
              f"in {out} are not finite (n_nonfinite in {output.meta})", file=sys.stderr)
    return EXIT_OK


def cmd_derive(args: argparse.Namespace) -> int:
    if args.block is not None:
        return _derive_block(args)
    for opt in ("out", "m", "gamma"):
        if getattr(args, opt) is not None:
            raise ValueError(f"--{opt} needs --block (without it, derive regenerates the "
                             "package's own artifacts)")
    regenerate = _lazy("codegen", "regenerate")
    stale = list(regenerate(check=args.check))
    if args.check:
        for path in stale:
            print(f"stale: {path}")
        print("derived artifacts are up to date" if not stale
              else f"{len(stale)} derived artifacts are stale; run `shapedsde derive`")
        return EXIT_FAIL if stale else EXIT_OK
    for path in stale:
        print(f"wrote {path}")
    print(f"regenerated {len(stale)} files" if stale else "nothing to regenerate")
    return EXIT_OK


def _derive_block(args: argparse.Namespace) -> int:
    """LaTeX of one block's b and Sigma into --out: symbolic, and at the given values."""
    if args.check:
        raise ValueError("--check applies to the package's artifacts, not to --block")
    if args.out is None:
        raise ValueError("derive --block needs --out DIR (a folder for the LaTeX files)")
    blk = block_from_args(args)
    out = _io.writable_folder(args.out, f"the --out folder {args.out}")
    m = None if args.m is None else val.check_positive_int("--m", args.m)
    if m is not None and m < 2:
        raise ValueError(f"--m (number of tokens) must be >= 2; got {m}")
    coef = blk.coefficients(m)
    stem = f"{blk.name}" if m is None else f"{blk.name}_m{m}"
    files = {out / f"{stem}.tex": coef.latex(),
             out / f"{stem}_values.tex": coef.with_values().latex()}
    _io.write_files({path: text.encode() for path, text in files.items()})
    for path in files:
        print(f"wrote {path}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    run_verification = _lazy("verification", "run_verification")
    mode = "full" if args.full else "tiny" if args.tiny else "quick"
    kwargs: dict[str, Any] = {"quick": mode != "full", "device": str(_device(args.device)),
                              "seed": val.check_seed(0 if args.seed is None else args.seed,
                                                     "--seed"),
                              "workers": val.check_positive_int("--workers", args.workers),
                              "scheduler": args.scheduler, "reference": args.reference}
    if args.reference and args.out is not None:
        raise ValueError("--reference writes the checked-in report verify/out/; it takes no "
                         "--out")
    out = reference_dir() if args.reference else Path(args.out or "results/verify")
    if mode == "tiny":
        kwargs.update(config=_lazy("verification", "Config").tiny(), every_block=False)
    kwargs["command"] = verify_command(mode, kwargs["seed"], kwargs["device"],
                                       None if args.reference else args.out, args.reference)
    result = run_verification(out_dir=out, **kwargs)  # prints each verdict line once
    s = result["summary"]
    print(f"verdicts: {s['PASS']} PASS, {s['FAIL']} FAIL, {s['NO POWER']} NO POWER; "
          f"report {_shown(out / 'report.html')} (numbers in report.json, figures beside)")
    return EXIT_OK if s["FAIL"] == 0 else EXIT_FAIL


def reference_dir() -> Path:
    """verify/out/ of the source checkout this package runs from."""
    root = Path(__file__).resolve().parent.parent
    if not ((root / "pyproject.toml").is_file() and (root / "verify").is_dir()):
        raise ValueError(f"--reference rewrites verify/out/ of a source checkout, but "
                         f"shapedsde runs from {root}, which is not one")
    return root / "verify" / "out"


def verify_command(mode: str, seed: int, device: str, out: str | None,
                   reference: bool) -> str:
    """The shapedsde command line that reproduces a verification run."""
    parts = ["shapedsde", "verify", f"--{mode}", "--seed", str(seed)]
    if device != "cpu":
        parts += ["--device", device]
    if reference:
        parts.append("--reference")
    elif out is not None:
        parts += ["--out", out]
    return " ".join(shlex.quote(p) for p in parts)


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cmd_figures(args: argparse.Namespace) -> int:
    make_figures = _lazy("experiments", "make_figures")
    parse_only = _lazy("experiments", "parse_only")
    only = parse_only(args.only)  # validate before any work
    seed = val.check_seed(args.seed, "--seed")
    make_figures(args.out, quick=args.quick, seed=seed, device=str(_device(args.device)),
                 only=only, method=args.method, progress=not args.quiet)
    print(f"figures written to {args.out} (README.md, summary.json)")
    return EXIT_OK


def cmd_stability(args: argparse.Namespace) -> int:
    run_stability = _lazy("experiments", "run_stability")
    params = {k: getattr(args, k) for k in ("heads", "c_plus", "c_minus")
              if getattr(args, k) is not None}
    lines, written = run_stability(
        args.out, block=args.block, quick=args.quick, T=args.T, m=args.m, rho0=args.rho0,
        seed=val.check_seed(args.seed, "--seed"), device=str(_device(args.device)),
        steps=args.steps, reference=not args.no_reference, eig_threshold=args.eig_threshold,
        rho_threshold=args.rho_threshold, name=args.name, spot_paths=args.spot_paths,
        progress=args.progress, block_params=params, gammas=args.gammas, tau0s=args.tau0s,
        paths=args.paths, spot=args.spot, widths=args.widths, nets=args.nets)
    print("\n".join(lines))
    print("wrote " + ", ".join(str(p) for p in written))
    return EXIT_OK


def _list_of(cast: type) -> Any:
    """An argparse type: comma-separated values of `cast` (int or float)."""
    def parse(text: str) -> list:
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {cast.__name__}s; got "
                                             f"{text!r}") from None
    return parse


_floats, _ints = _list_of(float), _list_of(int)


def _point(text: str) -> tuple[float, float]:
    v = _floats(text)
    if len(v) != 2:
        raise argparse.ArgumentTypeError(f"expected GAMMA,TAU0; got {text!r}")
    return v[0], v[1]


def _add_stability(sub: Any, fmt: Any) -> None:
    """The `stability` command: the map over (gamma, tau0) and finite spot checks."""
    p = sub.add_parser("stability", formatter_class=fmt,
                       help="map the SDE's behaviour over (gamma, tau0), with finite spot checks",
                       description="Stability map over (gamma, tau0): spread of rho_T, "
                                   "probability of a near-degenerate V_T, P(exit) and the "
                                   "non-finite fraction, from the covariance SDE; plus "
                                   "finite-network spot checks against it. Writes "
                                   "<out>/<name>.{json,npz,png,pdf}, <name>_spot.json and "
                                   "<name>_summary.txt.",
                       epilog="example:\n  shapedsde stability --quick --out results/stability")
    p.add_argument("--block", default="attention", choices=("attention", "transformer"))
    p.add_argument("--gammas", type=_floats, default=None,
                   help="comma-separated gammas in (0, 1] (default 0.2,0.35,0.5,0.7,1)")
    p.add_argument("--tau0s", type=_floats, default=None,
                   help="comma-separated tau0 > 0 (default 0.25,0.35,0.5,0.7,1,1.4,2)")
    p.add_argument("--T", type=float, default=1.0, help="depth-to-width ratio (default 1)")
    p.add_argument("--m", type=int, default=3, help="tokens (default 3)")
    p.add_argument("--rho0", type=float, default=0.2,
                   help="V0 = (1 - rho0) I + rho0 11^T (default 0.2)")
    p.add_argument("--paths", type=int, default=None, help="SDE paths per cell (default 4000)")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default dt <= 0.005)")
    p.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    _add_device(p)
    p.add_argument("--heads", type=int, default=None, help="attention heads n_H (attention)")
    p.add_argument("--c-plus", type=float, default=None, help="MLP c_+ (transformer)")
    p.add_argument("--c-minus", type=float, default=None, help="MLP c_- (transformer)")
    p.add_argument("--eig-threshold", type=float, default=0.05,
                   help="near-degenerate: lambda_min(corr) below this (default 0.05)")
    p.add_argument("--rho-threshold", type=float, default=0.99,
                   help="collapse: some rho above this (default 0.99)")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the attention-free (tau0 = inf) column")
    p.add_argument("--spot", type=_point, action="append", default=None, metavar="GAMMA,TAU0",
                   help="finite-network spot check at this point (repeatable)")
    p.add_argument("--widths", type=_ints, default=None, help="spot-check widths (default 64,128)")
    p.add_argument("--nets", type=int, default=None,
                   help="finite nets per spot check (default 2000)")
    p.add_argument("--spot-paths", type=int, default=None,
                   help="SDE paths per spot check (default: --paths)")
    p.add_argument("--out", default="docs/figures/stability", help="output folder")
    p.add_argument("--name", default=None, help="file stem (default stability_<block>_m<m>)")
    p.add_argument("--quick", action="store_true",
                   help="small run: defaults become a 3 x 3 grid, 300 paths, one spot check "
                        "at (0.7, 0.7), width 32, 300 nets (explicit options still win)")
    p.add_argument("--progress", action="store_true", help="tqdm progress bars")
    p.set_defaults(func=cmd_stability)


# ---------------------------------------------------------------------------
# Parser

EXAMPLE_V = ("V files are .npy arrays of an (m, m) symmetric PSD matrix, e.g.\n"
             "  python -c \"import numpy as np; np.save('V0.npy', [[1, .2], [.2, 1]])\"")


def _add_block_args(p: argparse.ArgumentParser, *, finite: bool = False,
                    optional: bool = False) -> None:
    g = p.add_argument_group("block", "the residual sub-layer X' = lam X + gamma Branch(X), "
                             "lam^2 + gamma^2 = 1")
    blocks = _option_blocks()
    g.add_argument("--block", required=not optional, metavar="NAME",
                   help=f"block name: one of {', '.join(sorted(blocks))}; or "
                        "FILE.py:NAME, a Block (or a function returning one) in your own "
                        "file, which carries its own parameters")
    for prm in _options():
        shown = finite or not prm.finite_only
        g.add_argument(prm.option, dest=prm.name, **prm.cli,
                       help=_option_help(prm, blocks) if shown else argparse.SUPPRESS)


def _option_blocks() -> dict[str, type[Block]]:
    """The blocks the CLI builds from options: those that declare parameters."""
    return {name: cls for name, cls in block_classes().items() if declared(cls)}


def _options() -> list[Parameter]:
    """The block options: every declared parameter that has one."""
    return [p for p in PARAMETERS if p.cli is not None]


def _option_help(prm: Parameter, blocks: dict[str, type[Block]]) -> str:
    """The parameter's help, with the blocks that take it (from their definitions)."""
    takers = [name for name, cls in blocks.items() if prm in declared(cls)]
    required = " (required with a block name)" if prm.name == "gamma" else ""
    who = "every block" if len(takers) == len(blocks) else ", ".join(takers)
    return f"{prm.help}{required}; taken by {who}"


def _add_insist(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insist", action="store_true",
                   help=f"run even when the estimated memory is over the limit (8 GiB or half "
                        f"the machine's memory) or there are over {MAX_STEPS:.0e} steps")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", metavar="DEV",
                   help="torch device: cpu (default) or cuda")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="shapedsde", formatter_class=fmt,
                     description="Derive, solve and verify the covariance SDE "
                                 "dV = b(V) dt + Sigma(V)^{1/2} dB of shaped Transformers "
                                 "(Noci et al. 2023).")
    parser.add_argument("--version", action="version", version=f"shapedsde {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("coeffs", formatter_class=fmt, help="print b(V) and Sigma(V) as JSON",
                       description="Evaluate the drift b(V) (m x m) and diffusion Sigma(V) "
                                   "(m x m x m x m, Sigma^{ab,cd} = lim n Cov[dV^ab, dV^cd]) "
                                   "of a block and print them as JSON "
                                   '{"block", "params", "drift", "diffusion"}.',
                       epilog=EXAMPLE_V + "\nexample:\n  shapedsde coeffs --block attention "
                                          "--gamma 0.8 --tau0 1 --V V0.npy")
    _add_block_args(p)
    p.add_argument("--V", required=True, metavar="FILE.npy", help="the covariance V (m, m)")
    p.add_argument("--out", metavar="OUT.npy",
                   help="write b(V) to OUT.npy, Sigma(V) to OUT.diffusion.npy and the block "
                        "to OUT.json instead of printing JSON")
    _add_insist(p)
    p.set_defaults(func=cmd_coeffs)

    p = sub.add_parser("sde", formatter_class=fmt, help="solve the covariance SDE (Monte Carlo)",
                       description="Simulate PATHS independent paths of the covariance SDE from "
                                   "V0 to time T (depth-to-width ratio) with the positive-"
                                   "definite adaptive scheme of shapedsde.sde (docs/solver.md). "
                                   "Writes V at min(T, exit time) as an (N, m, m) array to "
                                   "OUT.npy (NaN rows: paths that blew up), the per-path "
                                   "explosion flags to OUT.exploded.npy, with --exit-trace the "
                                   "exit times (inf: none) to OUT.exit.npy, the run's metadata "
                                   "and counters to OUT.json, and prints a one-line summary.",
                       epilog=EXAMPLE_V + "\nexample:\n  shapedsde sde --block attention "
                                          "--gamma 0.8 --tau0 1 --V0 V0.npy --T 0.5 "
                                          "--paths 4000 --seed 0 --out vt.npy")
    _add_block_args(p)
    p.add_argument("--V0", required=True, metavar="FILE.npy", help="initial covariance (m, m)")
    p.add_argument("--T", type=float, required=True, help="horizon T >= 0")
    p.add_argument("--paths", type=int, required=True, metavar="N", help="number of paths")
    p.add_argument("--seed", type=int, required=True, metavar="S",
                   help="random seed, an integer in [0, 2^63)")
    p.add_argument("--steps", type=int, metavar="K",
                   help="K equal steps instead of the adaptive default (at most "
                        f"{MAX_STEPS:.0e} without --insist)")
    p.add_argument("--rtol", type=float, default=0.1,
                   help="adaptive step tolerance (docs/solver.md; smaller is finer)")
    p.add_argument("--save-every", type=int, metavar="K",
                   help="with --steps: also write the states every K steps (and at t = 0, "
                        "T) to OUT.trajectory.npy (k, paths, m, m), their times to "
                        "OUT.times.npy")
    p.add_argument("--save-times", type=int, metavar="K",
                   help="also write the states at K + 1 equally spaced times in [0, T] "
                        "(the steps land on them) to OUT.trajectory.npy and OUT.times.npy")
    _add_exit_trace(p, "path")
    _add_insist(p)
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    _add_device(p)
    p.add_argument("--out", required=True, metavar="OUT.npy", help="output file (.npy)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sde)

    p = sub.add_parser("finite", formatter_class=fmt, help="sample finite-width networks",
                       description="Run NETS independent finite networks of width n and depth "
                                   "d = round(T n) sub-layers of the block from a hidden state "
                                   "with covariance V0, and save V = X X^T / n at depth d as "
                                   "an (NETS, m, m) array to OUT.npy (metadata in OUT.json).",
                       epilog=EXAMPLE_V + "\nexample:\n  shapedsde finite --block attention "
                                          "--gamma 0.8 --tau0 1 --V0 V0.npy --width 64 "
                                          "--T 0.5 --nets 1000 --seed 0 --out net.npy")
    _add_block_args(p, finite=True)
    p.add_argument("--V0", required=True, metavar="FILE.npy", help="initial covariance (m, m)")
    p.add_argument("--width", type=int, required=True, metavar="n", help="width n >= m")
    p.add_argument("--T", type=float, required=True, help="depth-to-width ratio T = d / n >= 0")
    p.add_argument("--nets", type=int, required=True, metavar="N",
                   help="number of independent networks")
    p.add_argument("--seed", type=int, required=True, metavar="S",
                   help="random seed, an integer in [0, 2^63)")
    _add_insist(p)
    p.add_argument("--method", choices=("full", "reduced", "gram", "auto"),
                   help="sampler (see shapedsde.finite; default: its default)")
    _add_exit_trace(p, "net")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of hidden states and weights (V is accumulated in "
                        "float64 either way)")
    _add_device(p)
    p.add_argument("--out", required=True, metavar="OUT.npy", help="output file (.npy)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finite)

    p = sub.add_parser("derive", formatter_class=fmt,
                       help="regenerate LaTeX and numeric kernels from the derivation",
                       description="Without --block: re-derive b and Sigma of the built-in "
                                   "blocks symbolically (SymPy) and rewrite the package's "
                                   "generated LaTeX (docs/) and kernels "
                                   "(shapedsde/kernels/_generated_*.py). With --block NAME "
                                   "(and its options): write that block's b and Sigma as "
                                   "LaTeX into --out DIR, as the matrix form or, with --m, "
                                   "entry by entry.")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if any generated file is stale")
    _add_block_args(p, optional=True)
    p.add_argument("--m", type=int, metavar="M",
                   help="with --block: the explicit entries for M tokens (default: the "
                        "matrix form, valid for every m)")
    p.add_argument("--out", metavar="DIR",
                   help="with --block: folder for BLOCK.tex (symbols) and BLOCK_values.tex "
                        "(the given parameter values substituted)")
    p.set_defaults(func=cmd_derive)

    p = sub.add_parser("verify", formatter_class=fmt,
                       help="check the SDE against finite networks",
                       description="Run the verification suite (one-step moments, laws at T "
                                   "with negative controls, every block, the stopped process "
                                   "at depth), print each verdict line once and a tally, and "
                                   "write report.html (verdicts, figures, settings, the "
                                   "command that reproduces it), report.json and PNG figures. "
                                   "Exit status 1 if a check fails.",
                       epilog="examples:\n  shapedsde verify --quick              # results/"
                              "verify/report.html\n  shapedsde verify --quick --reference  "
                              "# regenerate the checked-in verify/out/")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small, fast settings (default)")
    mode.add_argument("--full", action="store_true", help="the full-size checks")
    mode.add_argument("--tiny", action="store_true",
                      help="a smoke run in seconds: tiny samples (no power), no every-block "
                           "and depth checks")
    p.add_argument("--out", metavar="DIR",
                   help="where to write the report and figures (default results/verify)")
    p.add_argument("--reference", action="store_true",
                   help="write the checked-in reference report verify/out/ instead, without "
                        "wall times or machine-dependent fields")
    p.add_argument("--seed", type=int, metavar="S", help="root seed (default 0)")
    p.add_argument("--workers", type=int, default=1, metavar="W",
                   help="Dask worker processes for the sampling tasks (default 1: in "
                        "process); results are identical for any W")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of an existing Dask scheduler (e.g. tcp://host:8786) "
                        "instead of an embedded local cluster")
    _add_device(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("figures", formatter_class=fmt,
                       help="make the figures (paper Figure 1, densities, rank collapse, "
                            "law distance vs width)",
                       description="Write the figures to OUT (PNG + PDF, data .npz, caption .md "
                                   "with the command and settings) and OUT/README.md: (1) the "
                                   "paper's Figure 1 setting (n = 200, d = 150, gamma = "
                                   "1/sqrt(8), tau0 = 1); (2) final-layer correlation density "
                                   "vs width against the SDE, with KS distances; (3) the same "
                                   "for the Transformer block and 4-head attention; (4) rank "
                                   "collapse of unshaped baselines and ablations; (5) figure 2's "
                                   "KS distances against width, log-log, with an n^(-1/2) "
                                   "guide. All seeds derive from --seed.",
                       epilog="example:\n  shapedsde figures --quick --out docs/figures --seed 0")
    p.add_argument("--quick", action="store_true",
                   help="fewer samples and smaller widths (a few minutes on 2 CPU cores)")
    p.add_argument("--out", default="docs/figures", metavar="DIR",
                   help="output folder (default docs/figures)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="root seed (default 0)")
    p.add_argument("--only", metavar="LIST", help="comma-separated figure numbers, e.g. 1,4 "
                                                  "(default: all; 5 needs 2's data)")
    p.add_argument("--method", choices=("auto", "full", "gram"), default="auto",
                   help="finite sampler for the single-head blocks (default auto: the "
                        "exact-in-law V chain where available; full: every weight drawn)")
    _add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_figures)

    _add_stability(sub, fmt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default sys.argv[1:]); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise _UsageError("missing command (see `shapedsde --help`)")
        return args.func(args)
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except (_UsageError, ValueError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
