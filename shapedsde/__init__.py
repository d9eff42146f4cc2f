"""shapedsde: the covariance SDE of shaped Transformers, derived, solved and verified."""

# Importing the modules that define blocks registers them (`shapedsde.registry`).
from .blocks import (
    AttentionBlock,
    Block,
    LinearBlock,
    MlpBlock,
    TransformerBlock,
)
from .normalised import Normalised, block, normalised  # block: with norm= / norm_at=
from .registry import block_classes
from .serial import Serial, serial

__all__ = ["AttentionBlock", "block_classes", "Block", "LinearBlock", "MlpBlock", "Normalised",
           "Serial", "TransformerBlock", "block", "normalised", "serial"]
__version__ = "0.1.0"

# Unshaped baselines and ablations (finite face only).
from .baselines import (  # noqa: E402
    CenteringOnlyBlock,
    PreNormAttentionBlock,
    StandardAttentionBlock,
    StandardNoResidualBlock,
    TemperatureOnlyBlock,
    rank_collapse_summary,
)

__all__ += ["CenteringOnlyBlock", "PreNormAttentionBlock", "StandardAttentionBlock",
            "StandardNoResidualBlock", "TemperatureOnlyBlock", "rank_collapse_summary"]
