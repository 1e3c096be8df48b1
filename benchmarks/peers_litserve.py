"""The LitServe peer's API (a module-level class: LitServe pickles it into its worker process).

Requests are JSON `{"image": base64}`, LitServe's documented image pattern: LitServe 0.2.19 fails to hand a
multipart upload to its inference worker here ("Pickling an AuthenticationString object is disallowed").
"""

from __future__ import annotations

import base64
from pathlib import Path

import litserve as ls
import numpy as np

from app.inference import OnnxModel
from app.preprocessing import decode_and_preprocess
from benchmarks.peers import answer  # peers imports this module only inside a function: no cycle


class ClassifyAPI(ls.LitAPI):
    """decode → batch → predict → unbatch → encode, filled by nftlens's own preprocessing and session."""

    def __init__(self, model_dir: Path, threads: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.model_dir, self.threads = Path(model_dir), threads

    def setup(self, device) -> None:
        self.model = OnnxModel(self.model_dir, ["CPUExecutionProvider"], intra_op_threads=self.threads)
        self.cfg = self.model.manifest.preprocessing

    def decode_request(self, request: dict):
        data = base64.b64decode(request["image"])
        return decode_and_preprocess(data, self.cfg, fmt=self.model.manifest.input_format)[1]

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.model.run(x)

    def unbatch(self, output):
        return list(zip(output["probabilities"], output["embedding"], strict=True))

    def encode_response(self, output):
        return answer(self.model, *output)
