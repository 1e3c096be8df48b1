"""nftlens training: datasets, fine-tuning, evaluation and ONNX export.

Importing this package (and `training.datasets`, `training.cli`) needs no torch; the modules that train,
evaluate or export import torch and timm and need the `[train]` extra.
"""
