"""The servers nftlens is measured against, on the same model file and the same preprocessing code.

    python -m benchmarks.peers naive --model-dir models/default --port 8101
    python -m benchmarks.peers litserve --model-dir models/default --port 8102

- `naive`: what a team writes in an afternoon. FastAPI, one `UploadFile`, decode → pad-resize →
  normalise (or, for a model with uint8 input, the pixels as they are, as nftlens sends them), one
  `session.run` per request on the event loop's thread pool, no batching.
- `litserve`: LitServe's documented dynamic batching (max_batch_size 16, batch_timeout 5 ms), with the
  decode → batch → predict → unbatch → encode hooks filled by the same functions.

Both answer `POST /classify` with the top-5 labels and the embedding, as nftlens does; the naive server
takes multipart `file` as nftlens does, LitServe a JSON `{"image": base64}` (see peers_litserve.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from fastapi import FastAPI, UploadFile  # module level: the route's annotations resolve here

from app.inference import OnnxModel
from app.preprocessing import decode_and_preprocess


def answer(model: OnnxModel, probs: np.ndarray, embedding: np.ndarray) -> dict:
    top = np.argsort(-probs)[:5]
    return {
        "predictions": [{"label": model.labels[i], "probability": float(probs[i])} for i in top],
        "embedding": embedding.tolist(),
    }


def naive_app(model_dir: Path, threads: int = 0):
    """FastAPI + ONNX Runtime, one session.run per request."""
    model = OnnxModel(model_dir, ["CPUExecutionProvider"], intra_op_threads=threads)
    cfg = model.manifest.preprocessing
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/classify")
    def classify(file: UploadFile) -> dict:  # a sync route: FastAPI runs it on its thread pool
        _, x = decode_and_preprocess(file.file.read(), cfg, fmt=model.manifest.input_format)
        out = model.run(x[None])
        return answer(model, out["probabilities"][0], out["embedding"][0])

    return app


def litserve_server(
    model_dir: Path, threads: int = 0, max_batch_size: int = 16, batch_timeout: float = 0.005
):
    """LitServe with dynamic batching, the same model and preprocessing."""
    import litserve as ls

    from benchmarks.peers_litserve import ClassifyAPI

    api = ClassifyAPI(
        model_dir, threads, max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/classify"
    )
    return ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["naive", "litserve"])
    ap.add_argument("--model-dir", type=Path, default=Path("models/default"))
    ap.add_argument("--port", type=int, default=8101)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    args = ap.parse_args()
    if args.kind == "naive":
        import uvicorn

        uvicorn.run(
            naive_app(args.model_dir, args.threads), host="127.0.0.1", port=args.port, log_level="warning"
        )
    else:
        server = litserve_server(args.model_dir, args.threads)
        server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
