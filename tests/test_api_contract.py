"""The HTTP contract over real HTTP (a uvicorn process, the real model, SQLite + FAISS): input limits, the
catalog API (pages, collections, bulk PUT, collection delete), 405s, the OpenAPI document, and Schemathesis
with every check against the live server."""

from __future__ import annotations

import contextlib
import io
import json
import re
import select
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests.server import running_server

API_KEY = "contract-key"
UPLOAD_LIMIT = 2 * 1024 * 1024
MAX_BATCH_FILES = 8
NAMES = ["..", ".", ".hidden"]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    with running_server(
        model_dir,
        tmp / "catalog.db",
        tmp,
        NFTLENS_API_KEY=API_KEY,
        NFTLENS_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT),
        NFTLENS_MAX_BATCH_FILES=str(MAX_BATCH_FILES),
        NFTLENS_MAX_WAIT_MS="10",
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": API_KEY}) as c:
        yield c


@pytest.fixture(scope="module")
def pngs(punks) -> list[bytes]:
    return [punks.image_path(punks.rows[i]).read_bytes() for i in range(40)]


def _error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == code and body["detail"], body
    return body


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bulk(client: httpx.Client, files: list[tuple[str, bytes, str]], tokens: object) -> httpx.Response:
    parts = [("files", f) for f in files]
    return client.put("/tokens", files=parts, data={"tokens": json.dumps(tokens)})


def _send_until_answered(
    url: str, head: bytes, body_head: bytes, total: int, chunked: bool
) -> tuple[bytes, int]:
    """Send a request of `total` body bytes over a raw socket until the server answers; returns the answer
    and how many body bytes had been handed to the socket by then."""
    block = b"\0" * (256 * 1024)

    def frame(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.sendall(head + frame(body_head))
        sent, answer, pending = len(body_head), b"", b""
        s.setblocking(False)
        try:
            while b"\r\n\r\n" not in answer:
                readable, writable, _ = select.select([s], [s] if sent < total else [], [], 30)
                if readable:
                    data = s.recv(65536)
                    if not data:
                        break
                    answer += data
                elif writable:
                    if not pending:
                        pending, sent = frame(block), sent + len(block)
                    pending = pending[s.send(pending) :]
                else:
                    break
        except OSError:  # the server may close the connection once it has answered
            s.setblocking(True)
            with contextlib.suppress(OSError):
                answer += s.recv(65536)
        return answer, sent


def test_oversized_bodies_get_413_while_streaming_and_nothing_is_kept(server, client):
    """A 210 MB upload is answered 413 long before it is all sent (chunked multipart, chunked raw, and a
    declared Content-Length), and no spooled file stays open in the server."""
    total = 210 * 1024 * 1024
    boundary = "contract-boundary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    multipart = f"multipart/form-data; boundary={boundary}"
    for path, ctype, body_head, chunked in (
        ("/classify", multipart, part, True),
        ("/tokens/limits/1", multipart, part, True),
        ("/similar", "image/png", b"\x89PNG\r\n\x1a\n", True),
        ("/classify", multipart, part, False),
    ):
        length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
        head = (
            f"{'PUT' if path.startswith('/tokens') else 'POST'} {path} HTTP/1.1\r\nHost: test\r\n"
            f"X-API-Key: {API_KEY}\r\nContent-Type: {ctype}\r\n{length}\r\nConnection: close\r\n\r\n"
        ).encode()
        answer, sent = _send_until_answered(server.url, head, body_head, total, chunked)
        assert answer.split(b"\r\n", 1)[0].split()[1] == b"413", answer[:300]
        assert sent < total // 4, f"the server answered only after {sent} of {total} bytes"
    fds = Path(f"/proc/{server.proc.pid}/fd")
    if fds.is_dir():  # spooled uploads are unlinked temp files while open: none may outlive its request
        targets = [str(p.readlink()) for p in fds.iterdir() if p.is_symlink()]
        assert not [t for t in targets if t.startswith(tempfile.gettempdir()) and "(deleted)" in t], targets
    over = {"file": ("big.png", b"\x89PNG" + b"\0" * (UPLOAD_LIMIT + 1), "image/png")}
    _error(client.post("/classify", files=over), 413, "too_large")
    assert client.get("/tokens/limits/1").status_code == 404
    assert client.get("/ready").status_code == 200


def test_mpo_phone_photo_is_read_as_its_first_frame(client, pngs):
    first = Image.open(io.BytesIO(pngs[3])).convert("RGB").resize((240, 240), Image.NEAREST)
    second = Image.open(io.BytesIO(pngs[4])).convert("RGB").resize((240, 240), Image.NEAREST)
    mpo = _encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    r = client.post("/classify", files={"file": ("photo.jpg", mpo, "image/jpeg")})
    assert r.status_code == 200, r.text
    same = client.post("/classify", files={"file": ("f.jpg", _encode(first, "JPEG"), "image/jpeg")}).json()
    dot = sum(a * b for a, b in zip(r.json()["embedding"], same["embedding"], strict=True))
    assert dot > 0.99999 and r.json()["predictions"] == same["predictions"]
    assert (
        client.put("/tokens/phones/1", content=mpo, headers={"content-type": "image/jpeg"}).status_code == 200
    )


def test_hostile_images_never_get_a_500(client, pngs):
    img = Image.open(io.BytesIO(pngs[5])).convert("RGB")
    mpo = _encode(img, "MPO", save_all=True, append_images=[img.rotate(90)])
    bmp = bytearray(_encode(img, "BMP"))
    bmp[28] = 77  # bits per pixel no decoder has
    gif = _encode(img, "GIF")
    hostile = [
        mpo[: len(mpo) // 2],
        mpo[: len(mpo) - 40] + b"\xff\xd9",
        bytes(bmp),
        gif[:30] + b"\x00" * 50,
        _encode(img, "WEBP")[:60],
        pngs[5][:33] + b"\xff" * 200,
        b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\x00\x00\x00\x08" + b"\x00" * 40,
        b"GIF89a" + b"\xff" * 20,
    ]
    for data in hostile:
        r = client.post("/classify", files={"file": ("x.img", data, "image/png")})
        assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text)  # what still decodes is served
        if r.status_code != 200:
            assert r.json()["error"] in ("invalid_image", "too_large", "unsupported_media_type")


def test_dot_names_are_refused_everywhere(client, pngs):
    image = {"file": ("a.png", pngs[0], "image/png")}
    for name in NAMES:
        quoted = name.replace(".", "%2E")  # clients collapse bare dot segments before sending
        _error(client.put(f"/tokens/ok/{quoted}", files=image), 422, "invalid_parameters")
        _error(client.put(f"/tokens/{quoted}/1", files=image), 422, "invalid_parameters")
        _error(client.get(f"/tokens/{quoted}/1"), 422, "invalid_parameters")
        _error(client.delete(f"/tokens/ok/{quoted}"), 422, "invalid_parameters")
        _error(client.delete(f"/collections/{quoted}"), 422, "invalid_parameters")
        _error(client.get(f"/copies/ok/{quoted}"), 422, "invalid_parameters")
        _error(
            client.get("/similar", params={"collection": name, "token_id": "1"}), 422, "invalid_parameters"
        )
        _error(
            client.get("/similar", params={"collection": "ok", "token_id": name}), 422, "invalid_parameters"
        )
        _error(client.get("/tokens", params={"collection": name}), 422, "invalid_parameters")
        bulk = _bulk(client, [("a.png", pngs[0], "image/png")], [{"collection": "ok", "token_id": name}])
        _error(bulk, 422, "invalid_parameters")
    assert client.put("/tokens/ok/a.b-c_1", files=image).json()["token_id"] == "a.b-c_1"
    assert client.get("/tokens", params={"collection": "ok"}).json()["tokens"][0]["token_id"] == "a.b-c_1"


def test_metadata_is_capped_and_must_be_an_object(client, pngs):
    image = {"file": ("a.png", pngs[1], "image/png")}
    huge = json.dumps({"name": "x" * 40_000})
    body = _error(client.put("/tokens/meta/1", files=image, data={"metadata": huge}), 413, "too_large")
    assert "metadata" in body["detail"] and "16384" in body["detail"]
    _error(client.get("/tokens/meta/1"), 404, "not_found")
    for bad in ("null", "[1]", '{"name": 5}', '{"attributes": "x"}', "{not json"):
        _error(client.put("/tokens/meta/1", files=image, data={"metadata": bad}), 422, "invalid_parameters")
    meta = {"name": "Punk", "attributes": {"type": "alien"}, "extra": "dropped"}
    stored = client.put("/tokens/meta/1", files=image, data={"metadata": json.dumps(meta)}).json()
    assert stored["metadata"] == {"name": "Punk", "attributes": {"type": "alien"}}
    bulk = _bulk(
        client,
        [("a.png", pngs[1], "image/png"), ("b.png", pngs[2], "image/png")],
        [
            {"collection": "meta", "token_id": "2", "metadata": {"name": "y" * 40_000}},
            {"collection": "meta", "token_id": "3", "metadata": {"name": "three"}},
        ],
    ).json()
    assert [r["status"] for r in bulk["results"]] == [413, 200] and bulk["written"] == 1


def test_similar_and_copies_answers_are_bounded(client, pngs):
    image = {"file": ("a.png", pngs[0], "image/png")}
    client.put("/tokens/bounded/1", files=image)
    for k, status in ((101, 422), (100, 200)):
        assert (
            client.get("/similar", params={"collection": "bounded", "token_id": "1", "k": k}).status_code
            == status
        )
        assert client.post("/similar", files=image, params={"k": k}).status_code == status
        assert client.post("/copies", files=image, params={"k": k}).status_code == status
        assert client.get("/copies/bounded/1", params={"k": k}).status_code == status
        assert client.post("/classify", files=image, params={"copies": "true", "k": k}).status_code == status


def test_pagination_walks_every_token_exactly_once(client, pngs):
    made = {(c, f"{i:02d}") for c in ("pg-a", "pg-b", "pg-c") for i in range(7)}
    ordered = sorted(made)
    for start in range(0, len(ordered), MAX_BATCH_FILES):
        batch = ordered[start : start + MAX_BATCH_FILES]
        files = [(f"{c}-{t}.png", pngs[start + i], "image/png") for i, (c, t) in enumerate(batch)]
        r = _bulk(client, files, [{"collection": c, "token_id": t} for c, t in batch])
        assert r.json()["written"] == len(batch), r.text
    counts = {c["name"]: c["tokens"] for c in client.get("/collections").json()["collections"]}
    assert all(counts[c] == 7 for c in ("pg-a", "pg-b", "pg-c"))

    seen: list[tuple[str, str]] = []
    cursor, pages = None, 0
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = client.get("/tokens", params=params).json()
        seen += [(t["collection"], t["token_id"]) for t in page["tokens"]]
        pages += 1
        if pages == 2:  # writes while walking: one behind the cursor, one ahead, and one ahead deleted
            client.put("/tokens/pg-a/00a", files={"file": ("a.png", pngs[9], "image/png")})
            client.put("/tokens/pg-c/99", files={"file": ("a.png", pngs[9], "image/png")})
            client.delete("/tokens/pg-b/03")
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert made - {("pg-b", "03")} <= set(seen) and ("pg-c", "99") in seen and ("pg-b", "03") not in seen

    only = client.get("/tokens", params={"collection": "pg-c", "limit": 1000}).json()
    assert [t["token_id"] for t in only["tokens"]] == [f"{i:02d}" for i in range(7)] + ["99"]
    assert only["next_cursor"] is None
    _error(client.get("/tokens", params={"cursor": "not-a-cursor"}), 400, "invalid_cursor")
    for limit in (0, 1001):
        _error(client.get("/tokens", params={"limit": limit}), 422, "invalid_parameters")


def test_bulk_put_isolates_bad_items(server, client, pngs):
    files = [
        ("0.png", pngs[10], "image/png"),
        ("garbage.png", b"not an image at all", "image/png"),
        ("2.png", pngs[12], "image/png"),
        ("notes.txt", b"hello", "text/plain"),
        ("4.png", pngs[14], "image/png"),
    ]
    tokens = [{"collection": "bulk", "token_id": str(i), "metadata": {"name": f"#{i}"}} for i in range(6)]
    r = _bulk(client, files, tokens)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["written"] == 3
    assert [x["status"] for x in body["results"]] == [200, 400, 200, 415, 200, 422]
    assert body["results"][1]["error"] == "invalid_image" and body["results"][1]["filename"] == "garbage.png"
    assert "filename" not in body["results"][5] and body["results"][5]["token_id"] == "5"
    for i in (0, 2, 4):
        assert body["results"][i]["token"]["metadata"] == {"name": f"#{i}"}
        assert client.get(f"/tokens/bulk/{i}").json()["metadata"] == {"name": f"#{i}"}
    for i in (1, 3, 5):
        _error(client.get(f"/tokens/bulk/{i}"), 404, "not_found")
    hits = client.get(
        "/similar", params={"collection": "bulk", "token_id": "0", "collections": "bulk"}
    ).json()
    assert {h["token_id"] for h in hits["results"]} == {"2", "4"}

    one = [("a.png", pngs[0], "image/png")]
    _error(
        _bulk(client, one, [{"collection": "bulk", "token_id": "x", "metadata": "nope"}]),
        422,
        "invalid_parameters",
    )
    _error(client.put("/tokens", files=[("files", one[0])]), 422, "invalid_parameters")
    _error(
        client.put("/tokens", files=[("files", one[0])], data={"tokens": "{oops"}), 422, "invalid_parameters"
    )
    many = [(f"{i}.png", pngs[i], "image/png") for i in range(MAX_BATCH_FILES + 1)]
    _error(
        _bulk(client, many, [{"collection": "bulk", "token_id": str(i)} for i in range(9)]),
        422,
        "invalid_parameters",
    )
    anonymous = httpx.put(f"{server.url}/tokens", files=[("files", one[0])], data={"tokens": "[]"})
    _error(anonymous, 401, "unauthorized")
    assert client.get("/collections").json()["collections"].count({"name": "bulk", "tokens": 3}) == 1


def test_delete_collection_needs_the_key_and_reports_the_count(server, client, pngs):
    files = [(f"{i}.png", pngs[20 + i], "image/png") for i in range(3)]
    assert (
        _bulk(client, files, [{"collection": "doomed", "token_id": str(i)} for i in range(3)]).json()[
            "written"
        ]
        == 3
    )
    _error(httpx.delete(f"{server.url}/collections/doomed"), 401, "unauthorized")
    _error(
        httpx.delete(f"{server.url}/collections/doomed", headers={"X-API-Key": "wrong"}), 401, "unauthorized"
    )
    assert client.delete("/collections/doomed").json() == {"collection": "doomed", "deleted": 3}
    _error(client.delete("/collections/doomed"), 404, "not_found")
    assert "doomed" not in {c["name"] for c in client.get("/collections").json()["collections"]}
    assert client.get("/tokens", params={"collection": "doomed"}).json() == {
        "tokens": [],
        "next_cursor": None,
    }
    _error(client.get("/tokens/doomed/1"), 404, "not_found")


def test_405_lists_the_allowed_methods(client):
    for method, path, allowed in (
        ("PATCH", "/tokens/c/1", "DELETE, GET, PUT"),
        ("POST", "/tokens", "GET, PUT"),
        ("DELETE", "/health", "GET"),
        ("OPTIONS", "/similar", "GET, POST"),
        ("GET", "/collections/c", "DELETE"),
    ):
        r = client.request(method, path)
        _error(r, 405, "method_not_allowed")
        assert r.headers["Allow"] == allowed


def _operations(spec: dict):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_openapi_declares_the_real_contract(client, model_dir, tmp_path):
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, method, op in _operations(spec):
        responses = op["responses"]
        for status, resp in responses.items():
            if int(status) >= 400 and path != "/ready":
                assert resp["content"]["application/json"]["schema"] == error_ref, (path, method, status)
            if status == "503" and path != "/ready":
                assert "Retry-After" in resp["headers"]
        ok = responses["200"]["content"]
        if path == "/metrics":
            assert list(ok) == ["text/plain"]
        elif path.endswith("/image"):
            assert list(ok) == ["image/*"]
        else:
            assert "$ref" in ok["application/json"]["schema"], (path, method)
        writes = method in ("put", "delete")
        assert bool(op.get("security")) == writes and ("401" in responses) == writes, (path, method)
        if op.get("parameters") or "requestBody" in op:
            assert "422" in responses, (path, method)
    put = spec["paths"]["/tokens/{collection}/{token_id}"]["put"]["requestBody"]["content"]
    form = put["multipart/form-data"]
    assert form["encoding"]["metadata"]["contentType"] == "application/json"
    assert form["schema"]["properties"]["metadata"]["properties"]["attributes"]["type"] == ["object", "array"]
    assert "image/*" in put
    bulk = spec["paths"]["/tokens"]["put"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(bulk["required"]) == {"files", "tokens"}
    assert (
        bulk["properties"]["files"]["maxItems"] == bulk["properties"]["tokens"]["maxItems"] == MAX_BATCH_FILES
    )
    explain = spec["paths"]["/explain"]["post"]["responses"]["200"]["content"]
    assert set(explain) == {"image/png", "application/json"}
    assert explain["application/json"]["schema"]["$ref"].endswith("/Explanation")
    for path, method in (("/similar", "get"), ("/similar", "post"), ("/copies", "post")):
        k = next(p for p in spec["paths"][path][method]["parameters"] if p["name"] == "k")
        assert k["schema"]["maximum"] == 100
    # without NFTLENS_API_KEY writes are open, and the document says so
    open_spec = create_app(
        Settings(model_dir=str(model_dir), catalog=str(tmp_path / "c.db"), api_key=None)
    ).openapi()
    assert not any(op.get("security") or "401" in op["responses"] for _, _, op in _operations(open_spec))


SCHEMATHESIS_CONFIG = """
# A schema can say "binary" but not "an image this service decodes", nor which strings are cursors a page
# returned: for those, 400 (invalid_image / invalid_cursor) is the documented answer to schema-valid data.
# Every other check, and this one for every other status, stays as Schemathesis ships it.
[[operations]]
include-path-regex = "^/(classify|similar|copies|tokens/\\\\{collection\\\\}/\\\\{token_id\\\\})$"
include-method-regex = "^(POST|PUT)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

[[operations]]
include-path = "/tokens"
include-method = "GET"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
"""


def test_schemathesis_finds_no_contract_failure(server, client, pngs, tmp_path):
    """Every Schemathesis check against the live server (API key given), from the OpenAPI it serves."""
    pytest.importorskip("schemathesis")
    # the documented example ids (cryptopunks/7804) exist, so successful answers are checked too
    assert (
        client.put("/tokens/cryptopunks/7804", files={"file": ("p.png", pngs[7], "image/png")}).status_code
        == 200
    )
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "-H",
        f"X-API-Key: {API_KEY}",
        "--max-examples",
        "25",
        "--seed",
        "20261125",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    (tmp_path / "schemathesis.log").write_text(run.stdout + run.stderr)
    failures = [
        line[:300]
        for line in run.stdout.splitlines()
        if re.match(r"^(_{3,}|- ST\d|\[\d{3}\]|    curl )", line)
    ]
    assert run.returncode == 0 and "No issues found" in run.stdout, "\n".join(failures) or run.stdout[-3000:]
