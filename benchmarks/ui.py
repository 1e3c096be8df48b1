"""Drive the review page in headless Chromium (Playwright pointed at the system's chromium): the browser
test's steps, and the screenshots in reports/ui.

    python -m benchmarks.ui --url http://127.0.0.1:8000 --image some.png --scan-csv scan/copies.csv \
        --scan-images new-collection --out reports/ui

The browser gets no network beyond the service: any request to another host is aborted and recorded, so a
page that needs a CDN fails visibly.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_MS = 30_000
# the one request /redoc makes outside the service: the "powered by" footer logo that redoc.standalone.js
# itself hard-codes (tfranzel/drf-spectacular-sidecar#11). Decorative; the page renders without it.
REDOC_FOOTER_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def find_chromium() -> str | None:
    """$NFTLENS_CHROMIUM, else the first Chromium on PATH (Debian: `apt-get install chromium`)."""
    explicit = os.environ.get("NFTLENS_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@contextmanager
def offline_page(base_url: str, chromium: str | None = None) -> Iterator[tuple[object, list[str]]]:
    """A Playwright page whose requests may only reach `base_url`'s host; yields (page, blocked URLs)."""
    from playwright.sync_api import sync_playwright

    executable = chromium or find_chromium()
    if executable is None:
        raise FileNotFoundError("no Chromium found: apt-get install chromium, or set NFTLENS_CHROMIUM")
    host = urlparse(base_url).netloc
    blocked: list[str] = []

    def guard(route) -> None:
        url = route.request.url
        if urlparse(url).scheme in ("data", "blob") or urlparse(url).netloc == host:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=base_url)
            context.route("**/*", guard)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page, blocked
        finally:
            browser.close()


def image_loaded(page, selector: str) -> None:
    """Wait until the image at `selector` has loaded real pixels."""
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
    )


def check_image(page, image: Path) -> dict:
    """Open the page, upload `image`, wait for the label, the heatmap, the copy verdict and the neighbour
    thumbnails; return what the page shows."""
    page.goto("/")
    page.set_input_files("#file", str(image))
    page.wait_for_function("() => !['', '…'].includes(document.getElementById('label').textContent)")
    image_loaded(page, "#class-heat")
    page.wait_for_function("() => document.getElementById('verdict').textContent !== 'checking…'")
    page.wait_for_function(
        "() => { const t = [...document.querySelectorAll('#neighbours img')];"
        " return t.length > 0 && t.every(i => i.complete && i.naturalWidth > 0); }"
    )
    if page.is_visible("#copy-pair"):
        for selector in ("#copy-original", "#copy-heat-query", "#copy-heat-original"):
            image_loaded(page, selector)
    return {
        "label": page.text_content("#label"),
        "unknown": page.text_content("#unknown"),
        "verdict": page.text_content("#verdict"),
        "neighbours": page.locator("#neighbours img").count(),
        "model": page.text_content("#model-info"),
        "error": page.text_content("#error") if page.is_visible("#error") else "",
    }


def open_scan(page, csv: Path, images: list[Path] = ()) -> dict:
    """Open the scan view with a `copies scan` CSV (and the scanned images); return what the table shows."""
    page.goto("/")
    page.click("#tab-scan")
    if images:
        page.set_input_files("#scan-images", [str(p) for p in images])
    page.set_input_files("#scan-csv", str(csv))
    page.wait_for_selector("#scan-table .scan-row")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#scan-table img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    return {
        "rows": page.locator("#scan-table .scan-row").count(),
        "summary": page.text_content("#scan-summary"),
        "page": page.text_content("#page"),
    }


def docs_rendered(page) -> dict:
    """Open /docs and /redoc; return how many operations each rendered."""
    page.goto("/docs")
    page.wait_for_selector(".swagger-ui .opblock")
    swagger = page.locator(".swagger-ui .opblock").count()
    page.goto("/redoc")
    page.wait_for_selector("[data-section-id^='tag/']")
    redoc = page.locator("[data-section-id*='operation/']").count()
    return {"swagger_operations": swagger, "redoc_operations": redoc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--image", type=Path, required=True, help="the image to check on the first view")
    ap.add_argument("--scan-csv", type=Path, help="a copies.csv for the scan view")
    ap.add_argument("--scan-images", type=Path, help="the folder that was scanned")
    ap.add_argument("--out", type=Path, default=Path("reports/ui"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with offline_page(args.url) as (page, blocked):
        print(check_image(page, args.image))
        page.screenshot(path=args.out / "check.png", full_page=True)
        if args.scan_csv:
            images = sorted(p for p in (args.scan_images or Path("/nonexistent")).rglob("*") if p.is_file())
            print(open_scan(page, args.scan_csv, images))
            page.screenshot(path=args.out / "scan.png", full_page=True)
        print(docs_rendered(page))
        page.goto("/docs")
        page.wait_for_selector(".swagger-ui .opblock")
        page.screenshot(path=args.out / "docs.png")
    blocked = [u for u in blocked if u != REDOC_FOOTER_LOGO]
    if blocked:
        raise SystemExit(f"the page tried to leave the service: {blocked}")
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
