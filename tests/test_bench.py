"""The benchmark harness runs end to end at toy sizes. It checks structure, never speed."""

from __future__ import annotations

import pytest

from benchmarks import bench


def test_catalog_bench_measures_recall_on_real_embeddings(model_dir, nouns, tmp_path, monkeypatch):
    monkeypatch.setenv("NFTLENS_CACHE_DIR", str(tmp_path))
    out = bench.bench_catalog(model_dir, [nouns.root], sizes=(300,), queries=5, ef_searches=(16,))
    assert out["real_vectors"] == 60 and out["collections"] == 1
    modes = [(r["index"].split()[0], r["mode"]) for r in out["results"]]
    assert modes == [
        ("flat", "unfiltered"),
        ("hnsw", "unfiltered"),
        ("hnsw", "own collection"),
        ("hnsw", "other collections"),
    ]
    for r in out["results"]:
        assert 0.0 <= r["recall_at_k"] <= 1.0 and r["search_ms"]["p50"] > 0
    assert out["results"][2]["recall_at_k"] >= 0.9  # one small collection: searched exactly
    md = bench.render_markdown({"machine": bench.machine(), "catalog": {**out, "machine": bench.machine()}})
    assert "recall@k" in md and "300" in md


@pytest.mark.slow
def test_model_and_service_bench_report(model_dir, nouns, tmp_path):
    pytest.importorskip("torch", reason="the eager baseline needs the [train] extra")
    model = bench.bench_model(model_dir, batch_sizes=(1, 4), seconds=0.05)
    assert [r["batch"] for r in model["onnxruntime"]] == [1, 4] and model[
        "provider"
    ] == "CPUExecutionProvider"
    assert all(r["speedup_vs_torch"] > 0 for r in model["onnxruntime"])
    service = bench.bench_service(
        model_dir, [nouns.image_path(r) for r in nouns.rows[:8]], clients=4, requests=16, raw_ort=model
    )
    for mode in ("batching", "no_batching"):
        r = service["modes"][mode]
        assert r["errors"] == 0 and sum(r["batch_size_histogram"].values()) > 0
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert (
        set(service["modes"]["no_batching"]["batch_size_histogram"])
        and service["modes"]["no_batching"]["batch_size_histogram"]["<=1.0"] > 0
    )
    copies = bench.bench_copies(model_dir, [nouns.image_path(r) for r in nouns.rows[:6]], 500, 2, 8)
    if "skipped" not in copies:
        for route in bench.COPIES_ROUTES:
            assert copies[route]["errors"] == 0 and copies[route]["latency_ms"]["p50"] > 0
    md = bench.render_markdown(
        {"machine": bench.machine(), "model": model, "service": service, "copies": copies}
    )
    assert "Dynamic batching speed-up" in md and ("skipped" in copies or "POST /copies with 500 tokens" in md)
    assert "skipped" in copies or "| /copies without layout check |" in md
