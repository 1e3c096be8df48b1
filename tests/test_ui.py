"""The review page in a real browser: headless Chromium (Debian's package) through Playwright, against the
real service over HTTP, with every request outside the service blocked (no CDN, like a closed cluster).

Without a Chromium the tests skip, except where NFTLENS_REQUIRE_BROWSER=1 (CI sets it): there they fail.
"""

from __future__ import annotations

import os

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from app.manifest import load_manifest
from benchmarks.ui import (
    REDOC_FOOTER_LOGO,
    check_image,
    docs_rendered,
    find_chromium,
    offline_page,
    open_scan,
)
from tests.server import running_server

pytest.importorskip("playwright", reason="the [dev] extra installs playwright")
if find_chromium() is None:
    if os.environ.get("NFTLENS_REQUIRE_BROWSER") == "1":
        raise RuntimeError("NFTLENS_REQUIRE_BROWSER=1 but no Chromium: apt-get install chromium")
    pytest.skip("no Chromium on this machine (apt-get install chromium)", allow_module_level=True)

CATALOGUED = 30


@pytest.fixture(scope="module")
def setup(model_dir, punks, nouns, tmp_path_factory, monkeypatch_module):
    """A catalog of punks and Nouns indexed by the CLI, a `copies scan` of a small new folder, a server."""
    from app.cli import serve_app

    tmp = tmp_path_factory.mktemp("ui")
    monkeypatch_module.setenv("NFTLENS_MODEL_DIR", str(model_dir))
    monkeypatch_module.setenv("NFTLENS_CATALOG", str(tmp / "c.db"))
    runner = CliRunner()
    for name, ds, n in (("cryptopunks", punks, CATALOGUED), ("nouns", nouns, 10)):
        folder = tmp / name
        folder.mkdir()
        for i in range(n):
            (folder / f"{i}.png").write_bytes(ds.image_path(ds.rows[i]).read_bytes())
        r = runner.invoke(serve_app, ["catalog", "index", str(folder), "--collection", name])
        assert r.exit_code == 0, r.output
    new = tmp / "new-collection"
    new.mkdir()
    (new / "copy-of-5.png").write_bytes(punks.image_path(punks.rows[5]).read_bytes())
    mirrored = Image.open(punks.image_path(punks.rows[9])).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mirrored.save(new / "mirror-of-9.png")
    (new / "not-catalogued.png").write_bytes(punks.image_path(punks.rows[CATALOGUED + 50]).read_bytes())
    scan = None
    if load_manifest(model_dir).copies is not None:
        r = runner.invoke(serve_app, ["copies", "scan", str(new), "--out", str(tmp / "scan")])
        assert r.exit_code == 0, r.output
        scan = tmp / "scan" / "copies.csv"
    with running_server(model_dir, tmp / "c.db", tmp) as srv:
        yield srv, new, scan


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_check_an_image_shows_label_heatmap_copy_and_neighbours(setup, punks, model_dir):
    srv, new, _ = setup
    with offline_page(srv.url) as (page, blocked):
        shown = check_image(page, new / "copy-of-5.png")
        heat = page.evaluate("() => document.getElementById('class-heat').naturalWidth")
        if load_manifest(model_dir).copies is not None:
            assert "Copy of cryptopunks/5: the same pixels" in shown["verdict"], shown
            headers = page.locator("#matches th").all_text_contents()
            assert "check" in headers, headers  # each match's layout or colours, the direct check's value
            assert page.get_attribute("#copy-original", "src").endswith("/tokens/cryptopunks/5/image")
    assert shown["label"] == "cryptopunks" and not shown["error"], shown
    assert shown["neighbours"] == 12 and heat >= 256  # pixel art is enlarged under its heatmap
    assert "CPUExecutionProvider" in shown["model"]
    assert blocked == []


def test_scan_view_pages_through_a_scan(setup):
    srv, new, scan = setup
    if scan is None:
        pytest.skip("the model under test has no copy head")
    with offline_page(srv.url) as (page, blocked):
        shown = open_scan(page, scan, sorted(new.iterdir()))
        assert shown["rows"] >= 1 and "3 images scanned" in shown["summary"], shown
        flagged = int(shown["summary"].split(", ")[1].split()[0])
        assert shown["rows"] == flagged  # the default filter: only flagged copies
        page.uncheck("#only-copies")
        assert page.locator("#scan-table .scan-row").count() == 3
        # the scanned images were picked too, so each query shows beside its match
        assert page.locator("#scan-table .scan-row img").count() >= 4
    assert blocked == []


def test_docs_and_redoc_render_without_network(setup):
    srv, *_ = setup
    with offline_page(srv.url) as (page, blocked):
        shown = docs_rendered(page)
    assert shown["swagger_operations"] >= 15 and shown["redoc_operations"] >= 15, shown
    # the assets come from the package, not a CDN (but for ReDoc's decorative footer logo)
    assert [u for u in blocked if u != REDOC_FOOTER_LOGO] == []


def test_explain_highlights_the_subject_and_answers_json(setup, punks, model_dir):
    srv, new, _ = setup
    data = (new / "copy-of-5.png").read_bytes()
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/explain", params={"format": "json"}, files={"file": data})
        assert r.status_code == 200, r.text
        body = r.json()
        grid = np.asarray(body["grid"])
        assert body["kind"] == "class" and body["target"] == "cryptopunks" and grid.shape == (7, 7)
        # a punk sits in the middle of a flat background: the border patches matter least
        assert grid[2:5, 2:5].mean() > grid[[0, -1]].mean()
        png = c.post("/explain", params={"target": "nouns"}, files={"file": data})
        assert png.headers["content-type"] == "image/png" and png.headers["x-explain-target"] == "nouns"
        bad = c.post("/explain", params={"target": "no-such-label"}, files={"file": data})
        assert bad.status_code == 422 and "cryptopunks" in bad.json()["detail"]
        malformed = c.post("/explain", params={"copy_of": "cryptopunks"}, files={"file": data})
        assert malformed.status_code == 422
        target = c.get("/openapi.json").json()["paths"]["/explain"]["post"]["parameters"][0]["schema"]
        assert target["anyOf"][0]["enum"] == c.get("/model").json()["labels"]
        if load_manifest(model_dir).copies is not None:
            params = {"copy_of": "cryptopunks/5", "format": "json"}
            copy = c.post("/explain", params=params, files={"file": data}).json()
            assert copy["kind"] == "copy" and copy["score"] > 0.999  # the same image
        missing = c.post("/explain", params={"copy_of": "cryptopunks/99999"}, files={"file": data})
        assert missing.status_code in (404, 409)
        image = c.get("/tokens/cryptopunks/5/image")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content == punks.image_path(punks.rows[5]).read_bytes()
        assert c.get("/tokens/cryptopunks/99999/image").status_code == 404


def test_a_burst_of_explanations_gets_503_beyond_the_slots_never_500(setup):
    from concurrent.futures import ThreadPoolExecutor

    from app.service import EXPLAIN_SLOTS

    srv, new, _ = setup
    data = (new / "copy-of-5.png").read_bytes()

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{srv.url}/explain", files={"file": data}, timeout=120)

    with ThreadPoolExecutor(4 * EXPLAIN_SLOTS) as pool:
        answers = list(pool.map(post, range(4 * EXPLAIN_SLOTS)))
    codes = [r.status_code for r in answers]
    # each heatmap takes 100+ ms, the 16 requests arrive within a few: some find every slot taken
    assert set(codes) == {200, 503} and codes.count(200) >= EXPLAIN_SLOTS, codes
    for r in answers:
        if r.status_code == 503:
            assert r.json()["error"] == "overloaded" and int(r.headers["Retry-After"]) >= 1
    assert httpx.post(f"{srv.url}/explain", files={"file": data}, timeout=60).status_code == 200  # freed
