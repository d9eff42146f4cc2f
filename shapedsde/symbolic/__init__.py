"""The symbolic derivation engine: Softmax expansion, Wick moments, layer models,
per-entry and matrix-form coefficients."""
