"""The parameters a block can take, each declared once.

A `Parameter` is the one place that says what a parameter is: its name (the block
field, the kernel argument and the CLI option `--name`), its check, its help line,
and its symbol in the derived formulas. A block declares it as a field,

    tau0: float = parameter(TAU0, 1.0)

and everything else reads it from there: `Block.__post_init__` runs the checks,
`Block.kernel_params` passes the fields that have a symbol to the generated kernels,
the CLI builds its block options (and says which blocks take each), the symbolic API
maps symbols to values, and the kernel printer maps symbols to argument names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from . import _validation as val
from .smooth_activation import ACTIVATIONS, check_scale
from .symbolic.layers import C_MINUS as C_MINUS_SYMBOL
from .symbolic.layers import C_PLUS as C_PLUS_SYMBOL
from .symbolic.layers import GAMMA as GAMMA_SYMBOL
from .symbolic.layers import HEADS as HEADS_SYMBOL
from .symbolic.layers import TAU0 as TAU0_SYMBOL
from .symbolic.smooth import SCALE as SCALE_SYMBOL
from .symbolic.smooth import derivative_symbol

METADATA_KEY = "shapedsde.parameter"


@dataclass(frozen=True)
class Parameter:
    """One parameter: `check` validates and normalises a given value (None: no check),
    `symbol` stands for it in b and Sigma (None: the finite face only), `cli` holds the
    argparse keywords of its option (None: no option, e.g. a derived kernel parameter)."""

    name: str
    help: str
    check: Callable[[Any], Any] | None = None
    symbol: sp.Symbol | None = None
    cli: dict[str, Any] | None = field(default_factory=lambda: {"type": float})
    finite_only: bool = False  # used by finite networks only: its option shows in `finite`

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def parameter(spec: Parameter, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field declaring `spec` (with `default`, or required)."""
    return field(default=default, metadata={METADATA_KEY: spec})


def declared(cls_or_block: Any) -> tuple[Parameter, ...]:
    """The parameters a block class (or block) declares, in field order."""
    return _declared(cls_or_block if isinstance(cls_or_block, type) else type(cls_or_block))


def _declared(cls: type) -> tuple[Parameter, ...]:
    # Once per class (kernel_params reads it on every kernel call), kept on the class
    # itself so that no table holds a user's class alive.
    found = vars(cls).get("_declared_parameters")
    if found is None:
        found = tuple(f.metadata[METADATA_KEY] for f in dataclasses.fields(cls)
                      if METADATA_KEY in f.metadata and f.init)
        cls._declared_parameters = found
    return found


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else check(v)


def _flag(name: str) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if not isinstance(v, bool):
            raise ValueError(f"{name} must be True or False; got {v!r}")
        return v
    return check


GAMMA = Parameter("gamma", "branch weight gamma in (0, 1], lam = sqrt(1 - gamma^2)",
                  val.check_gamma, GAMMA_SYMBOL, {"type": float, "metavar": "G"})
TAU0 = Parameter("tau0", "attention temperature factor tau0 > 0, tau = tau0 sqrt(n nk) "
                 "(default 1)", val.check_tau0, TAU0_SYMBOL, {"type": float, "metavar": "T0"})
NK = Parameter("nk", "query/key width of finite networks (default: the width n)",
               _optional(lambda v: val.check_positive_int("nk", v)), None,
               {"type": int, "metavar": "K"}, finite_only=True)
HEADS = Parameter("heads", "number of attention heads n_H >= 1 (default 1)",
                  lambda v: val.check_positive_int("heads", v), HEADS_SYMBOL,
                  {"type": int, "metavar": "H"})
CAUSAL = Parameter("causal", "causal (decoder) attention: token a attends to keys 0..a",
                   _flag("causal"), None,
                   {"action": "store_const", "const": True, "default": None})
C_PLUS = Parameter("c_plus", "MLP slope shaping s_+ = 1 + c_+ / sqrt(n) (default 0)",
                   lambda v: val.check_slope_shift("c_plus", v), C_PLUS_SYMBOL,
                   {"type": float, "metavar": "C"})
C_MINUS = Parameter("c_minus", "MLP slope shaping s_- = 1 + c_- / sqrt(n) (default -1)",
                    lambda v: val.check_slope_shift("c_minus", v), C_MINUS_SYMBOL,
                    {"type": float, "metavar": "C"})
ACTIVATION = Parameter(
    "activation", "smooth shaped activation phi(x) = s F(x / s), s = scale sqrt(n), instead "
    f"of the ReLU: one of {', '.join(sorted(ACTIVATIONS))} (tanh; cubic: x + x^2/2 - x^3/3; "
    "swish: 2 x sigmoid(x)); in Python also a function of one SymPy expression", None, None,
    {"choices": sorted(ACTIVATIONS), "metavar": "NAME"})
SCALE = Parameter("scale", "smooth activation scale A > 0, s = A sqrt(n) (with --activation; "
                  "default 1)", _optional(check_scale), SCALE_SYMBOL,
                  {"type": float, "metavar": "A"})
# Kernel parameters a block computes from its fields (no option: F is given by name).
F2 = Parameter("f2", "F''(0) of the smooth activation", None, derivative_symbol(2), None)
F3 = Parameter("f3", "F'''(0) of the smooth activation", None, derivative_symbol(3), None)

#: Every parameter, in the order of kernel arguments and CLI options.
PARAMETERS: tuple[Parameter, ...] = (GAMMA, TAU0, NK, HEADS, CAUSAL, C_PLUS, C_MINUS, F2, F3,
                                     ACTIVATION, SCALE)


def symbols() -> dict[str, sp.Symbol]:
    """Kernel-parameter name -> its symbol in the derived formulas."""
    return {p.name: p.symbol for p in PARAMETERS if p.symbol is not None}
