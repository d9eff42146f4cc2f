"""`shapedsde derive`."""

from __future__ import annotations

import argparse
from typing import Any

from .. import _io
from .. import _validation as val
from ..artifacts import regenerate
from .common import EXIT_FAIL, EXIT_OK, block_from_args
from .options import add_block_args

#: Entry-by-entry LaTeX (--m) costs a SymPy derivation that grows steeply with m
#: (measured on 2 cores: linear m = 6 in 16 s and m = 10 in 89 s; attention m = 3 in 23 s,
#: m = 4 still running after 4 minutes). Above these, --insist is needed.
MAX_ENTRY_TOKENS = {"linear": 6, "mlp": 6, "mlp_smooth": 6}
MAX_ENTRY_TOKENS_OTHER = 3  # attention, the Transformer block, serial and user blocks


def add_parser(sub: Any, fmt: Any) -> None:
    """The `derive` command's options."""
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
    add_block_args(p, optional=True)
    p.add_argument("--m", type=int, metavar="M",
                   help="with --block: the explicit entries for M tokens (default: the "
                        "matrix form, valid for every m); above M = 3 (6 for linear and "
                        "MLP blocks) only with --insist: the derivation's time grows steeply")
    p.add_argument("--insist", action="store_true",
                   help="derive the entries for --m above its limit all the same")
    p.add_argument("--out", metavar="DIR",
                   help="with --block: folder for BLOCK.tex (symbols) and BLOCK_values.tex "
                        "(the given parameter values substituted)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`shapedsde derive`: the exit status."""
    if args.block is not None:
        return _derive_block(args)
    for opt in ("out", "m", "gamma"):
        if getattr(args, opt) is not None:
            raise ValueError(f"--{opt} needs --block (without it, derive regenerates the "
                             "package's own artifacts)")
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
    most = MAX_ENTRY_TOKENS.get(blk.kernel_name, MAX_ENTRY_TOKENS_OTHER)
    if m is not None and m > most and not args.insist:
        raise ValueError(f"--m {m}: the entries of {blk.kernel_name} are derived without "
                         f"--insist up to m = {most} (the derivation's time grows steeply "
                         "with m: attention at m = 4 took over 4 minutes); the matrix form "
                         "(no --m) holds for every m")
    # Named by the derivation the block uses (causal attention and the smooth MLP have
    # their own: they do not overwrite plain attention's and the ReLU MLP's files).
    name = blk.kernel_name
    stem = name if m is None else f"{name}_m{m}"
    files = {_io.child(out, f"{stem}{tail}", f"the file name of block {name!r}"): None
             for tail in (".tex", "_values.tex")}
    coef = blk.coefficients(m)
    files = dict(zip(files, (coef.latex(), coef.with_values().latex()), strict=True))
    _io.write_files({path: text.encode() for path, text in files.items()})
    for path in files:
        print(f"wrote {path}")
    return EXIT_OK
