"""Soak test (not in CI): a real server under steady mixed load; prints and saves its RSS series.

    python -m benchmarks.soak --minutes 20 --clients 8 --out reports/soak

Eight clients loop over POST /classify (60 %), GET /similar (20 %), PUT /tokens (15 %, over a fixed set
of 500 ids, so the catalog churns without growing) and DELETE /tokens (5 %), on the demo catalog's punks.
Every 10 s it records the server's resident memory, the requests done, errors and latency percentiles
of the window. Writes soak.json, SOAK.md and rss.png. Memory that is flat after warm-up is the pass mark.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.bench import machine
from benchmarks.serverproc import running_server
from training.datasets import load_dataset


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def client_loop(
    url: str, images: list[bytes], ids: list[str], stop: threading.Event, log: list, seed: int
) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            roll, t0 = rng.random(), time.perf_counter()
            data = rng.choice(images)
            try:
                if roll < 0.60:
                    r = c.post("/classify", files={"file": ("a.png", data, "image/png")})
                elif roll < 0.80:
                    r = c.get(
                        "/similar", params={"collection": "cryptopunks", "token_id": rng.choice(ids), "k": 10}
                    )
                elif roll < 0.95:
                    r = c.put(
                        f"/tokens/soak/{rng.randrange(500)}", files={"file": ("a.png", data, "image/png")}
                    )
                else:
                    r = c.delete(f"/tokens/soak/{rng.randrange(500)}")
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            log.append((time.time(), status, time.perf_counter() - t0, roll >= 0.95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--model-dir", type=Path, default=Path("models/default"))
    ap.add_argument("--catalog", type=Path, default=Path("catalog/catalog.db"), help="copied, never modified")
    ap.add_argument("--images", type=Path, default=Path("data/cryptopunks"))
    ap.add_argument("--out", type=Path, default=Path("reports/soak"))
    args = ap.parse_args()

    ds = load_dataset(args.images)
    rows = ds.rows[:: max(1, len(ds.rows) // 300)]
    images = [ds.image_path(r).read_bytes() for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "catalog.db"
        shutil.copy(args.catalog, db)  # the soak writes; the demo catalog stays as it was
        with running_server(args.model_dir, db, Path(tmp), timeout=300) as srv:
            ids = [r["token_id"] for r in rows]
            stop, log = threading.Event(), []
            threads = [
                threading.Thread(target=client_loop, args=(srv.url, images, ids, stop, log, i))
                for i in range(args.clients)
            ]
            for t in threads:
                t.start()
            series, t_start, seen = [], time.time(), 0
            try:
                while time.time() - t_start < args.minutes * 60:
                    time.sleep(10)
                    window, seen = log[seen:], len(log)
                    lat = np.array([w[2] for w in window]) * 1000 if window else np.zeros(1)
                    point = {
                        "t_s": round(time.time() - t_start, 1),
                        "rss_mb": round(rss_mb(srv.proc.pid), 1),
                        "requests": len(window),
                        "errors_5xx_or_transport": sum(1 for w in window if w[1] >= 500 or w[1] == 0),
                        "p50_ms": round(float(np.percentile(lat, 50)), 1),
                        "p99_ms": round(float(np.percentile(lat, 99)), 1),
                    }
                    series.append(point)
                    print(json.dumps(point), flush=True)
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
    report(series, args)


def report(series: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    settled = [p["rss_mb"] for p in series if p["t_s"] >= 120] or [p["rss_mb"] for p in series]
    summary = {
        "minutes": args.minutes,
        "clients": args.clients,
        "requests": sum(p["requests"] for p in series),
        "errors_5xx_or_transport": sum(p["errors_5xx_or_transport"] for p in series),
        "rss_mb_after_2_min": {
            "first": settled[0],
            "last": settled[-1],
            "max": max(settled),
            "min": min(settled),
        },
        "machine": machine(),
    }
    (args.out / "soak.json").write_text(json.dumps({"summary": summary, "series": series}, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([p["t_s"] / 60 for p in series], [p["rss_mb"] for p in series], marker=".")
    ax.set_xlabel("minutes")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title(f"{args.clients} clients, mixed classify / similar / PUT / DELETE")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(args.out / "rss.png", dpi=110)
    m = summary["machine"]
    lines = [
        f"# Soak: {args.minutes:g} minutes, {args.clients} clients",
        "",
        "Command: `python -m benchmarks.soak --minutes "
        f"{args.minutes:g} --clients {args.clients} --out {args.out}`",
        f"Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}.",
        "",
        f"- requests: {summary['requests']:,}; 5xx or transport errors: {summary['errors_5xx_or_transport']}",
        f"- RSS after the first 2 minutes: first {settled[0]:.0f} MB, last {settled[-1]:.0f} MB, "
        f"min {min(settled):.0f} MB, max {max(settled):.0f} MB",
        "",
        "![RSS over time](rss.png)",
        "",
        "| t (s) | RSS (MB) | requests | 5xx | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['t_s']} | {p['rss_mb']} | {p['requests']} | {p['errors_5xx_or_transport']} | {p['p50_ms']} | {p['p99_ms']} |"
        for p in series
    ]
    (args.out / "SOAK.md").write_text("\n".join(lines) + "\n")
    print((args.out / "SOAK.md").read_text())


if __name__ == "__main__":
    main()
