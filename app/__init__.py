"""nftlens serving: decode → preprocess → batch → ONNX Runtime → probabilities, embedding, neighbours.

This package never imports torch or the `training` package.
"""

__version__ = "0.1.0"
