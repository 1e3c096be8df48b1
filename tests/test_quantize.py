"""Static int8 quantisation: a real ORT session on the quantised file agrees with the fp32 model."""

from __future__ import annotations

import numpy as np
import pytest

from app.inference import OnnxModel
from app.manifest import load_manifest
from app.openset import NETWORK_EMBEDDING, network_embedding
from app.preprocessing import load_tensor


def test_int8_model_is_its_own_folder_and_agrees_with_fp32(model_dir, punks, nouns, tmp_path):
    pytest.importorskip("onnx", reason="quantisation needs the [train] extra")
    from training.quantize import quantize_model

    calib = [punks.image_path(r) for r in punks.rows[:24]] + [nouns.image_path(r) for r in nouns.rows[:8]]
    out = quantize_model(model_dir, tmp_path / "int8", calib)
    m, q = load_manifest(model_dir), load_manifest(out)  # verifies the new file's sha256
    assert q.sha256 != m.sha256 and q.name.endswith("-int8") and q.labels == m.labels
    assert q.training["quantized_from"]["sha256"] == m.sha256 and q.unknown is None and q.copies is None
    # the network is quantised without the stage statistics; `stage-stats` adds them to the int8 graph
    assert not any(o.startswith("stage") for o in q.outputs)
    if any(o.startswith("stage") for o in m.outputs):
        from training.stagestats import add_stage_statistics

        add_stage_statistics(out)
    if NETWORK_EMBEDDING in m.outputs:  # quantised without the whitening; `whiten` fits the int8 model's own
        from training.whiten import whiten_model

        assert NETWORK_EMBEDDING not in q.outputs and "embedding_whitening" not in q.training
        whiten_model(out, images=64, data=[str(punks.root), str(nouns.root)])
    fp32, int8 = OnnxModel(model_dir, ["CPUExecutionProvider"]), OnnxModel(out, ["CPUExecutionProvider"])
    test = [punks.image_path(r) for r in punks.rows[5000:5040]] + [
        nouns.image_path(r) for r in nouns.rows[30:50]
    ]
    x = np.stack([load_tensor(p.read_bytes(), m.preprocessing) for p in test])
    a, b = fp32.run(x), int8.run(x)
    assert set(a) == set(b) and all(a[k].shape == b[k].shape for k in a)
    assert (a["probabilities"].argmax(1) == b["probabilities"].argmax(1)).mean() >= 0.95
    ea, eb = network_embedding(a), network_embedding(b)  # the network's own: whitening is fitted per model
    cos = (ea * eb).sum(1) / np.linalg.norm(eb, axis=1)
    assert np.median(cos) > 0.95
    for name in (o for o in a if o.startswith("stage")):  # the same statistics, read off int8 activations
        assert np.corrcoef(a[name].ravel(), b[name].ravel())[0, 1] > 0.99, name
