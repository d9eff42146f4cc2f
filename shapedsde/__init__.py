"""shapedsde: the covariance SDE of shaped Transformers, derived, solved and verified."""

from .blocks import (
    BLOCKS,
    AttentionBlock,
    Block,
    LinearBlock,
    MlpBlock,
    TransformerBlock,
    block,
)

__all__ = ["BLOCKS", "AttentionBlock", "Block", "LinearBlock", "MlpBlock", "TransformerBlock",
           "block"]
__version__ = "0.1.0"
