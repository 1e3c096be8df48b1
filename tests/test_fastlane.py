"""The /classify fast lane: it answers plain requests itself, leaves the rest to FastAPI, and both give
the same answers and the same errors."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.api.fastlane import ClassifyFastLane, plain_params
from app.config import Settings
from app.service import Service
from tests.server import running_server


def test_plain_params_take_only_what_the_lane_answers():
    assert plain_params(b"") == (5, True)
    assert plain_params(b"top_k=3&embedding=false&copies=false") == (3, False)
    leave_to_route = (b"top_k=0", b"top_k=abc", b"copies=true", b"k=3", b"embedding=maybe", b"top_k=1001")
    unicode_digits = ("top_k=\u0663".encode(), "top_k=\u00b2".encode(), b"top_k=" + b"9" * 5000)
    for leave in leave_to_route + unicode_digits:
        assert plain_params(leave) is None, leave


def test_the_lane_answers_plain_requests_and_passes_the_rest(model_dir, punks, tmp_path):
    image = punks.image_path(punks.rows[0]).read_bytes()
    passed: list[str] = []

    async def fastapi_stand_in(scope, receive, send):  # records what the lane hands on
        passed.append(scope["query_string"].decode())
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        service = Service(
            Settings(
                model_dir=str(model_dir), catalog=str(tmp_path / "c.db"), providers=["CPUExecutionProvider"]
            )
        )
        await service.start()
        lane = ClassifyFastLane(fastapi_stand_in, service)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=lane), base_url="http://t") as c:
            r = await c.post("/classify?top_k=2", files={"file": ("a.png", image, "image/png")})
            assert r.status_code == 200 and len(r.json()["predictions"]) == 2, r.text
            r = await c.post("/classify", content=b"not an image", headers={"content-type": "image/png"})
            assert r.status_code == 400 and r.json()["error"] == "invalid_image"
            assert (await c.post("/classify?copies=true", content=image)).status_code == 299
            assert (await c.post("/classify?top_k=0", content=image)).status_code == 299
            assert (await c.get("/classify")).status_code == 299
        await service.stop()

    asyncio.run(scenario())
    assert passed == ["copies=true", "top_k=0", ""]


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lanes")
    limit = {"NFTLENS_MAX_UPLOAD_BYTES": str(64 * 1024), "NFTLENS_WORKERS": "1"}
    with (
        running_server(model_dir, tmp / "a.db", tmp, **limit) as on,
        running_server(model_dir, tmp / "b.db", tmp, NFTLENS_FAST_LANE="false", **limit) as off,
    ):
        yield on.url, off.url


def _comparable(r: httpx.Response) -> tuple[int, dict]:
    body = r.json()
    body.pop("timings_ms", None)
    return r.status_code, body


def test_fast_lane_and_fastapi_route_answer_alike(servers, punks):
    image = punks.image_path(punks.rows[1]).read_bytes()
    cases = [
        {"files": {"file": ("a.png", image, "image/png")}},
        {"files": {"file": ("a.png", image, "image/png")}, "params": {"top_k": 2, "embedding": "false"}},
        {"content": image, "headers": {"content-type": "image/png"}},
        {"content": b"garbage", "headers": {"content-type": "image/png"}},  # 400 invalid_image
        {"content": image, "headers": {"content-type": "text/plain"}},  # 415
        {"files": {"other": ("a.png", image, "image/png")}},  # 422: no `file` field
        {"content": b"x" * (65 * 1024), "headers": {"content-type": "image/png"}},  # 413
        {"files": {"file": ("a.png", image, "text/html")}},  # 415 for the part
        {"files": {"file": ("a.png", image, "image/png")}, "params": {"top_k": 0}},  # 422 from FastAPI
    ]
    answers = {}
    for name, url in zip(("on", "off"), servers, strict=True):
        with httpx.Client(base_url=url, timeout=30) as c:
            answers[name] = [_comparable(c.post("/classify", **case)) for case in cases]
    assert [s for s, _ in answers["on"]] == [200, 200, 200, 400, 415, 422, 413, 415, 422]
    assert answers["on"] == answers["off"]
