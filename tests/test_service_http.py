"""The service over real HTTP: a uvicorn process, the real ONNX model, a real SQLite + FAISS catalog."""

from __future__ import annotations

import asyncio
import io
import json
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from app.inference import OnnxModel
from app.keypoints import MIN_INLIERS
from app.manifest import load_manifest
from app.openset import OpenSetScorer, softmax
from app.preprocessing import load_tensor
from app.sprites import GATE
from app.views import rotate_hue
from tests.server import running_server
from tests.test_imaging import _png_header_only

PUNK_IDS = ["7804", "3100", "5217", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("srv")
    with running_server(
        model_dir,
        tmp / "catalog.db",
        tmp,
        NFTLENS_MAX_WAIT_MS="25",
        NFTLENS_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024),
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def images(punks, nouns) -> dict[str, bytes]:
    out = {f"punk{i}": punks.image_path(punks.rows[int(i)]).read_bytes() for i in PUNK_IDS}
    out.update({f"noun{i}": nouns.image_path(nouns.rows[i]).read_bytes() for i in range(8)})
    return out


def _is_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    if code:
        assert body["error"] == code
    return body


def test_health_ready_model(client, model_dir):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] and ready["provider"] == "CPUExecutionProvider"
    manifest = client.get("/model").json()
    assert (
        manifest["sha256"] == load_manifest(model_dir).sha256
        and manifest["provider"] == "CPUExecutionProvider"
    )
    assert "/classify" in client.get("/openapi.json").json()["paths"]


def test_classify_real_punk_and_noun(client, images, model_dir):
    manifest = load_manifest(model_dir)
    for name, expected in (("punk7804", "cryptopunks"), ("noun0", "nouns")):
        r = client.post(
            "/classify", files={"file": (f"{name}.png", images[name], "image/png")}, params={"top_k": 3}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        probs = [p["probability"] for p in body["predictions"]]
        assert len(probs) == min(3, len(manifest.labels)) and probs == sorted(probs, reverse=True)
        if manifest.metrics["val"]["macro_f1"] > 0.9:  # a model that learned (the shipped one) must get these
            assert body["predictions"][0]["label"] == expected
        assert body["provider"] == "CPUExecutionProvider"
        assert set(body["timings_ms"]) == {"decode", "preprocess", "inference", "total"}
        emb = np.array(body["embedding"])
        assert emb.shape == (manifest.embedding_dim,) and abs(np.linalg.norm(emb) - 1) < 1e-4
    raw = client.post(
        "/classify",
        content=images["noun1"],
        headers={"content-type": "image/png"},
        params={"embedding": "false"},
    )
    assert raw.status_code == 200 and "embedding" not in raw.json()


def test_classify_embedding_equals_exported_model(client, images, model_dir):
    """Parity extends to the service: same file, same preprocessing, same ONNX model."""
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    for name in ("punk3100", "noun2"):
        body = client.post(
            "/classify", files={"file": ("x.png", images[name], "image/png")}, params={"top_k": 100}
        ).json()
        out = model.run(load_tensor(images[name], model.manifest.preprocessing)[None])
        served = np.array(body["embedding"], dtype=np.float32)
        assert float(served @ out["embedding"][0]) >= 0.99999
        expected = out["probabilities"][0]
        if model.manifest.calibration is not None:  # served probabilities are temperature-scaled
            expected = softmax(out["logits"], model.manifest.calibration.temperature)[0]
        by_label = {p["label"]: p["probability"] for p in body["predictions"]}
        np.testing.assert_allclose([by_label[lab] for lab in model.labels], expected, atol=1e-5)
        if model.manifest.unknown is not None:
            scorer = OpenSetScorer(model.manifest.unknown, model_dir)
            score = float(scorer.score(out)[0])
            assert body["unknown"]["score"] == pytest.approx(score, abs=1e-4)
            assert body["unknown"]["is_unknown"] == (body["unknown"]["score"] > body["unknown"]["threshold"])


def test_batch_endpoint_isolates_bad_items(client, images):
    files = [
        ("files", ("a.png", images["punk1"], "image/png")),
        ("files", ("bad.png", b"garbage!", "image/png")),
        ("files", ("b.png", images["noun3"], "image/png")),
        ("files", ("c.txt", b"hello", "text/plain")),
    ]
    results = client.post("/classify/batch", files=files).json()["results"]
    assert [r["status"] for r in results] == [200, 400, 200, 415]
    assert results[1]["error"] == "invalid_image" and results[0]["predictions"]


def test_tokens_crud_and_similar(client, images, model_dir):
    labels = load_manifest(model_dir).labels
    for name, data in images.items():
        coll, tid = ("cryptopunks", name[4:]) if name.startswith("punk") else ("nouns", name[4:])
        meta = json.dumps({"name": f"{coll} #{tid}", "attributes": {"source": "test"}})
        r = client.put(
            f"/tokens/{coll}/{tid}", files={"file": ("i.png", data, "image/png")}, data={"metadata": meta}
        )
        assert r.status_code == 200, r.text
    got = client.get("/tokens/cryptopunks/7804").json()
    assert got["metadata"]["name"] == "cryptopunks #7804" and "vector" not in got
    assert len(client.get("/tokens/cryptopunks/7804", params={"vector": "true"}).json()["vector"]) > 0

    sim = client.get("/similar", params={"collection": "cryptopunks", "token_id": "7804", "k": 5}).json()[
        "results"
    ]
    assert len(sim) == 5 and ("cryptopunks", "7804") not in {(s["collection"], s["token_id"]) for s in sim}
    assert [s["score"] for s in sim] == sorted((s["score"] for s in sim), reverse=True)
    if "cryptopunks" in labels:  # a model trained on the collections groups them
        assert {s["collection"] for s in sim} == {"cryptopunks"}
    others = client.get(
        "/similar", params={"collection": "cryptopunks", "token_id": "1", "same_collection": "false"}
    ).json()["results"]
    assert others and {s["collection"] for s in others} == {"nouns"}
    only = client.get(
        "/similar", params={"collection": "nouns", "token_id": "0", "collections": "nouns", "k": 100}
    ).json()["results"]
    assert len(only) == 7 and {s["collection"] for s in only} == {"nouns"}
    high = client.get(
        "/similar", params={"collection": "nouns", "token_id": "0", "min_score": 0.9, "k": 100}
    ).json()["results"]
    assert all(s["score"] >= 0.9 for s in high)
    by_image = client.post(
        "/similar", files={"file": ("q.png", images["punk5"], "image/png")}, params={"k": 1}
    ).json()
    assert by_image["results"][0]["token_id"] == "5" and by_image["results"][0]["score"] > 0.9999

    assert client.delete("/tokens/cryptopunks/12").json()["deleted"] is True
    _is_error(client.get("/tokens/cryptopunks/12"), 404, "not_found")
    _is_error(client.delete("/tokens/cryptopunks/12"), 404, "not_found")
    ids = {
        s["token_id"]
        for s in client.get(
            "/similar", params={"collection": "cryptopunks", "token_id": "1", "k": 100}
        ).json()["results"]
    }
    assert "12" not in ids
    _is_error(
        client.get("/similar", params={"collection": "cryptopunks", "token_id": "99999"}), 404, "not_found"
    )


def test_bad_input_gets_clear_4xx_and_loses_nothing(client, images):
    before = client.get("/ready").json()["catalog"]["tokens"]
    full = images["punk1"]
    big = np.random.default_rng(0).integers(0, 255, (1100, 1100, 3), dtype=np.uint8)
    cases = [
        (dict(files={"file": ("g.png", b"\x00garbage bytes" * 20, "image/png")}), 400, "invalid_image"),
        (dict(files={"file": ("t.png", full[: len(full) // 2], "image/png")}), 400, "invalid_image"),
        (dict(files={"file": ("e.png", b"", "image/png")}), 400, "invalid_image"),
        (dict(content=b"", headers={"content-type": "image/png"}), 400, "invalid_image"),
        (dict(files={"file": ("h.png", _png_header_only(70000, 70000), "image/png")}), 413, "too_large"),
        (dict(content=_png(Image.fromarray(big)), headers={"content-type": "image/png"}), 413, "too_large"),
        (dict(content=b"just text", headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
        (dict(files={"file": ("x.txt", b"text", "text/plain")}), 415, "unsupported_media_type"),
        (dict(files={"file": ("x.tif", b"II*\x00" + b"\x00" * 100, "image/tiff")}), 400, None),
        (
            dict(data={"nofile": "1"}, files={"other": ("a.png", full, "image/png")}),
            422,
            "invalid_parameters",
        ),
    ]
    for kwargs, status, code in cases:
        _is_error(client.post("/classify", **kwargs), status, code)
        _is_error(client.put("/tokens/cryptopunks/1", **kwargs), status, code)
    tiff = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiff, format="TIFF")
    _is_error(
        client.post("/classify", files={"file": ("x.tif", tiff.getvalue(), "image/tiff")}),
        415,
        "unsupported_media_type",
    )
    _is_error(
        client.post("/classify", params={"top_k": "abc"}, files={"file": ("a.png", full, "image/png")}),
        422,
        "invalid_parameters",
    )
    _is_error(client.get("/similar", params={"collection": "cryptopunks", "token_id": "1", "k": 0}), 422)
    _is_error(client.get("/similar", params={"collection": "bad name!", "token_id": "1"}), 422)
    _is_error(
        client.put(
            "/tokens/cryptopunks/1",
            files={"file": ("a.png", full, "image/png")},
            data={"metadata": "{not json"},
        ),
        422,
    )
    _is_error(client.get("/nope"), 404)
    assert client.get("/ready").json()["catalog"]["tokens"] == before
    assert client.get("/tokens/cryptopunks/1").status_code == 200


def _metric(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def test_concurrent_requests_are_batched(server, images):
    before = httpx.get(f"{server.url}/metrics").text

    async def fire() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            rs = await asyncio.gather(
                *(
                    c.post(
                        "/classify", files={"file": ("p.png", images[f"punk{PUNK_IDS[i % 15]}"], "image/png")}
                    )
                    for i in range(48)
                )
            )
            return [r.status_code for r in rs]

    assert asyncio.run(fire()) == [200] * 48
    after = httpx.get(f"{server.url}/metrics").text
    batches = _metric(after, "nftlens_batch_size_count") - _metric(before, "nftlens_batch_size_count")
    images_run = _metric(after, "nftlens_batch_size_sum") - _metric(before, "nftlens_batch_size_sum")
    assert images_run == 48 and batches < 48, f"{images_run} images in {batches} batches"
    assert 'nftlens_requests_total{method="POST",route="/classify",status="200"}' in after
    assert "nftlens_catalog_tokens" in after and "nftlens_queue_depth" in after


def test_api_key_guards_writes(model_dir, tmp_path, images):
    with (
        running_server(model_dir, tmp_path / "c.db", tmp_path, NFTLENS_API_KEY="s3cret") as srv,
        httpx.Client(base_url=srv.url) as c,
    ):
        f = {"file": ("a.png", images["punk1"], "image/png")}
        _is_error(c.put("/tokens/cryptopunks/1", files=f), 401, "unauthorized")
        _is_error(c.put("/tokens/cryptopunks/1", files=f, headers={"X-API-Key": "wrong"}), 401)
        assert c.put("/tokens/cryptopunks/1", files=f, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/tokens/cryptopunks/1").status_code == 200  # reads stay open
        _is_error(c.delete("/tokens/cryptopunks/1"), 401)
        assert c.delete("/tokens/cryptopunks/1", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_acknowledged_writes_survive_a_crash_and_restart(model_dir, tmp_path, images):
    db = tmp_path / "c.db"
    with running_server(model_dir, db, tmp_path) as srv:
        for i in ("1", "2", "3"):
            r = httpx.put(
                f"{srv.url}/tokens/cryptopunks/{i}",
                files={"file": ("a.png", images[f"punk{i}"], "image/png")},
            )
            assert r.status_code == 200
        srv.kill()  # SIGKILL right after the acknowledgements
    with running_server(model_dir, db, tmp_path) as srv:
        assert httpx.get(f"{srv.url}/ready").json()["catalog"]["tokens"] == 3
        sim = httpx.get(f"{srv.url}/similar", params={"collection": "cryptopunks", "token_id": "1"}).json()[
            "results"
        ]
        assert {s["token_id"] for s in sim} == {"2", "3"}


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((192, 192), Image.NEAREST))


def _mirror(data: bytes) -> bytes:
    return _png(Image.open(io.BytesIO(data)).convert("RGB").resize((192, 192), Image.NEAREST).transpose(0))


def _called(m, match: dict) -> bool:
    """The documented verdict on one match: exact, a score over its threshold, or a check over its minimum;
    a lossless sprite's layout alone where its collection has a minimum."""
    if match["exact"]:
        return True
    if match["lossless"] and match["layout"] is not None and match["collection"] in m.copies.layout_min:
        return match["layout"] >= m.copies.layout_min[match["collection"]]
    return match["score"] >= match["threshold"] or m.copies.confirmed(
        match["collection"], match["layout"], match["colours"], match["overlay"]
    )


def test_copies_by_upload_by_token_and_in_classify(client, images, model_dir):
    m = load_manifest(model_dir)
    if not m.instance_dim or m.copies is None:
        _is_error(client.post("/copies", files={"file": ("a.png", images["punk1"], "image/png")}), 409)
        pytest.skip("the model under test has no copy head")
    for name in ("punk7804", "punk3100", "punk5", "noun3"):  # (test_tokens_crud may have stored more)
        coll, tid = ("cryptopunks", name[4:]) if name.startswith("punk") else ("nouns", name[4:])
        r = client.put(f"/tokens/{coll}/{tid}", files={"file": ("i.png", images[name], "image/png")})
        assert r.status_code == 200
    # an exact copy: the original is the top match with score 1 and the verdict is "copy"
    exact = client.post("/copies", files={"file": ("q.png", images["punk3100"], "image/png")}).json()
    assert exact["matches"][0]["token_id"] == "3100" and exact["matches"][0]["score"] > 0.9999
    assert exact["is_copy"] is True
    assert exact["threshold"] == pytest.approx(m.copies.threshold_for("cryptopunks"), abs=1e-5)
    assert len(exact["matches"]) <= 5
    fuzzy = exact["matches"][1:]  # after the exact match: layout-checked candidates first, then by score
    passed = [x for x in fuzzy if x["layout"] is not None and x["layout"] >= GATE]
    assert fuzzy[: len(passed)] == sorted(passed, key=lambda x: (-x["layout"], -x["score"]))
    rest = fuzzy[len(passed) :]
    assert [x["score"] for x in rest] == sorted((x["score"] for x in rest), reverse=True)
    assert exact["matches"][0]["exact"] and exact["matches"][0]["layout"] is None
    assert all(0 <= x["layout"] <= 1 for x in fuzzy if x["collection"] == "cryptopunks")
    for match in exact["matches"]:
        assert match["threshold"] == pytest.approx(m.copies.threshold_for(match["collection"]), abs=1e-5)
        assert match["is_copy"] == _called(m, match) and "metadata" in match
    # raw body, k and the collection filter
    raw = client.post(
        "/copies", content=images["noun3"], headers={"content-type": "image/png"}, params={"k": 2}
    ).json()
    assert len(raw["matches"]) == 2 and raw["matches"][0]["token_id"] == "3"
    only = client.post(
        "/copies",
        files={"file": ("q.png", images["noun3"], "image/png")},
        params={"collections": "cryptopunks"},
    ).json()
    assert {x["collection"] for x in only["matches"]} == {"cryptopunks"}
    # an edited copy (mirrored and upscaled): its verdict is consistent with the threshold
    edited = client.post(
        "/copies", files={"file": ("q.png", _mirror(images["punk7804"]), "image/png")}
    ).json()
    assert edited["is_copy"] == any(_called(m, x) for x in edited["matches"])
    if m.copies.dihedral:  # the mirrored view of a mirror is the original: found, and called a copy
        assert edited["matches"][0]["token_id"] == "7804" and edited["is_copy"]
    # a recoloured copy: whatever the embedding ranks first, the layout check puts the original on top
    recoloured = client.post(
        "/copies",
        files={
            "file": ("q.png", _png(Image.fromarray(rotate_hue(_decoded(images["punk5"]), 120))), "image/png")
        },
    ).json()
    assert recoloured["matches"][0]["token_id"] == "5" and recoloured["matches"][0]["layout"] == 1.0
    assert all(x["is_copy"] == _called(m, x) for x in recoloured["matches"])
    # a stored token against every other token: never itself
    by_token = client.get("/copies/cryptopunks/3100", params={"k": 50}).json()
    assert ("cryptopunks", "3100") not in {(x["collection"], x["token_id"]) for x in by_token["matches"]}
    assert by_token["query"] == {"collection": "cryptopunks", "token_id": "3100"}
    same = client.get("/copies/cryptopunks/3100", params={"same_collection": "true", "k": 50}).json()
    assert {x["collection"] for x in same["matches"]} <= {"cryptopunks"}
    _is_error(client.get("/copies/cryptopunks/99999"), 404, "not_found")
    _is_error(client.get("/copies/cryptopunks/1", params={"k": 0}), 422)
    _is_error(client.post("/copies", files={"file": ("g.png", b"garbage" * 10, "image/png")}), 400)
    # one call answers collection, unknown and copy
    both = client.post(
        "/classify", files={"file": ("q.png", images["punk3100"], "image/png")}, params={"copies": "true"}
    ).json()
    assert both["predictions"] and "unknown" in both and both["copies"]["matches"][0]["token_id"] == "3100"
    assert (
        "copies"
        not in client.post("/classify", files={"file": ("q.png", images["punk5"], "image/png")}).json()
    )


def _features_looked_up(client) -> dict[str, float]:
    """/metrics' nftlens_copy_features_total by result."""
    text = client.get("/metrics").text
    return {
        k: float(v) for k, v in re.findall(r'^nftlens_copy_features_total{result="(\w+)"} (\S+)$', text, re.M)
    }


def test_a_cropped_painting_is_found_by_its_keypoints_and_called_as_calibrated(
    client, model_dir, shared_data
):
    from training.edits import apply_edit

    m = load_manifest(model_dir)
    if not m.instance_dim or m.copies is None:
        pytest.skip("the model under test has no copy head")
    files = sorted((shared_data / "nft-thumbs" / "bayc").glob("*.webp"))[:6]
    for f in files:
        r = client.put(f"/tokens/bayc/{f.stem}", files={"file": (f.name, f.read_bytes(), "image/webp")})
        assert r.status_code == 200
    original = np.asarray(Image.open(files[2]).convert("RGB"))
    crop = apply_edit("crop_zoom", original, np.random.default_rng(4))
    r = client.post("/copies", files={"file": ("q.png", _png(Image.fromarray(crop)), "image/png")})
    body = r.json()
    top = body["matches"][0]
    assert (top["collection"], top["token_id"]) == ("bayc", files[2].stem) and not top["exact"]
    assert top["keypoints"] >= MIN_INLIERS and top["layout"] is None
    # aligned by those keypoints, the crop shows its original's colours more than any sibling's
    assert top["colours"] > max(x["colours"] for x in body["matches"][1:]), body["matches"]
    assert all(x["is_copy"] == _called(m, x) for x in body["matches"])
    # the same query again: the candidates' keypoints come from the features cache, the answer is the same
    hits = _features_looked_up(client)
    again = client.post("/copies", files={"file": ("q.png", _png(Image.fromarray(crop)), "image/png")})
    assert again.json() == body
    assert _features_looked_up(client)["hit"] >= hits.get("hit", 0) + len(files)
