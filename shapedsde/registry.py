"""Blocks found where they are defined: no table of names is kept.

A subclass of `shapedsde.blocks.Block` that sets `name` in its own body is a block:
`shapedsde.block(name)` builds it, the CLI offers it, and its `derivations` are what
the derivation engine, the code generator and the symbolic API look up by name.
Defining the class is registering it (a user's block included). The package's own
blocks are defined by `shapedsde/__init__.py` importing their modules (blocks, serial,
baselines), which every import of a `shapedsde` module runs first. A subclass that only
inherits `name` (e.g. a test's variant) is not a second block of that name.

The symbolic engine sits below the blocks, so it looks derivations up by name through
the hook this module installs (`shapedsde.symbolic.derivation.set_lookup`).
"""

from __future__ import annotations

from typing import Any

from .blocks import Block
from .symbolic.derivation import Derivation, set_lookup

PACKAGE = __name__.rpartition(".")[0]


def block_classes() -> dict[str, type[Block]]:
    """Every defined block class by name, the package's first, in definition order.

    A block defined outside the package may not reuse a package block's name; of two
    outside definitions with one name (a user file loaded twice) the later one counts.
    """
    found = [c for c in _subclasses(Block) if c.__dict__.get("name")]
    out: dict[str, type[Block]] = {}
    for cls in sorted(found, key=lambda c: not _in_package(c)):  # stable: package first
        prior = out.get(cls.name)
        if prior is not None and _in_package(prior):
            if _in_package(cls):
                raise RuntimeError(f"two package blocks are named {cls.name!r}: "
                                   f"{prior.__qualname__} and {cls.__qualname__}")
            raise ValueError(f"block class {cls.__module__}.{cls.__qualname__} reuses the "
                             f"name {cls.name!r} of a shapedsde block; give it its own name")
        out[cls.name] = cls
    return out


def block_class(name: str) -> type[Block]:
    """The block class called `name`, or a ValueError listing the names there are."""
    classes = block_classes()
    if not isinstance(name, str) or name not in classes:
        what = "block name must be a string" if not isinstance(name, str) else "unknown block"
        raise ValueError(f"{what} {name!r}; choose one of {sorted(classes)}")
    return classes[name]


def block(name: str, **params: Any) -> Block:
    """Build a block by name: `block("attention", gamma=0.8, tau0=1.0)`;
    `block("serial", parts=[("attention", {...}), ("mlp", {...})])` for a composition.
    The names are those of the block classes defined."""
    cls = block_class(name)
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for block {name!r}: {err}") from None


def derivations(package_only: bool = False) -> dict[str, Derivation]:
    """Every block's derivations by name (each declared once, in its block's class)."""
    out: dict[str, Derivation] = {}
    for cls in block_classes().values():
        if package_only and not _in_package(cls):
            continue
        for d in cls.derivations:
            if out.setdefault(d.name, d) is not d:
                raise ValueError(f"two derivations are named {d.name!r} (one in "
                                 f"{cls.__qualname__}); give each its own name")
    return out


def derivation(name: str) -> Derivation:
    """The derivation called `name` (a block's), or a ValueError listing them."""
    found = derivations()
    if name not in found:
        raise ValueError(f"no derivation {name!r}; choose one of {sorted(found)}")
    return found[name]


def owner(name: str) -> type[Block]:
    """The block class whose definition declares the derivation `name`."""
    for cls in block_classes().values():
        if any(d.name == name for d in cls.derivations):
            return next(c for c in cls.__mro__ if "derivations" in c.__dict__)
    raise ValueError(f"no derivation {name!r}; choose one of {sorted(derivations())}")


def _subclasses(cls: type) -> list[type]:
    """All subclasses of `cls`, depth first in definition order."""
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _in_package(cls: type) -> bool:
    return cls.__module__ == PACKAGE or cls.__module__.startswith(PACKAGE + ".")


set_lookup(derivation)
