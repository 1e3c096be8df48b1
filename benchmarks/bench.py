"""Benchmarks that print figures (never timed tests): model, service and catalog.

Every ratio compares figures measured in the same run on the same machine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import mimetypes
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from app.catalog import SearchFilter, Token, open_catalog
from app.config import Settings
from app.inference import OnnxModel


def machine() -> dict:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
    }


def _rate(fn, batch: int, seconds: float, min_iters: int = 5) -> dict:
    for _ in range(2):
        fn()
    times = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_iters or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": batch, "iterations": len(times), "ms_per_batch": med * 1000, "images_per_s": batch / med}


def bench_model(
    model_dir: Path, batch_sizes=(1, 8, 32), seconds: float = 4.0, providers: list[str] | None = None
) -> dict:
    """ONNX Runtime vs PyTorch eager (same timm architecture, same input size), images/s per batch size."""
    model = OnnxModel(model_dir, providers=providers)
    m = model.manifest
    rng = np.random.default_rng(0)
    out: dict = {
        "model": f"{m.name}@{m.version}",
        "architecture": m.architecture,
        "input_size": m.input_size,
        "provider": model.provider,
        "onnxruntime": [],
        "torch_eager": [],
    }
    for bs in batch_sizes:
        # in the graph's own input format (uint8 pixels for a uint8_nhwc model): ORT alone, no conversion
        x = model.native(rng.normal(size=(bs, 3, m.input_size, m.input_size)).astype(np.float32))
        out["onnxruntime"].append(_rate(lambda x=x: model.run(x), bs, seconds))
    try:
        import torch

        from training.models import ExportHead, create_net
    except ImportError:
        out["torch_eager"] = "skipped: the [train] extra is not installed"
        return out
    net = ExportHead(create_net(m.architecture, len(m.labels), instance_dim=m.instance_dim)).eval()
    out["torch_threads"] = torch.get_num_threads()
    for bs in batch_sizes:
        x = torch.from_numpy(rng.normal(size=(bs, 3, m.input_size, m.input_size)).astype(np.float32))

        def run(x=x):
            with torch.inference_mode():
                net(x)

        out["torch_eager"].append(_rate(run, bs, seconds))
    for o, t in zip(out["onnxruntime"], out["torch_eager"], strict=True):
        o["speedup_vs_torch"] = o["images_per_s"] / t["images_per_s"]
    return out


def _sum_count(text: str, name: str) -> tuple[float, float]:
    """A Prometheus histogram's _sum and _count from /metrics text."""
    sc = [float(re.search(rf"^{name}_{k} ([0-9.e+-]+)$", text, re.M).group(1)) for k in ("sum", "count")]
    return sc[0], sc[1]


def _metric_counts(text: str, name: str) -> dict[str, float]:
    return {
        le: float(v) for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} ([0-9.e+-]+)$', text, re.M)
    }


async def _load(
    url: str,
    images: list[bytes],
    clients: int,
    requests: int,
    path: str = "/classify",
    params: dict | None = None,
) -> tuple[list[float], float, int]:
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            t0 = time.perf_counter()
            r = await client.post(
                path,
                params=params if params is not None else {"embedding": "false"},
                files={"file": ("i.png", images[i % len(images)], "image/png")},
            )
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return latencies, wall, errors


def bench_service(
    model_dir: Path,
    images: list[Path],
    clients: int = 16,
    requests: int = 400,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    raw_ort: dict | None = None,
) -> dict:
    """A bounded load against a real local server (loopback only), with and without dynamic batching."""
    import httpx

    from benchmarks.serverproc import running_server

    data = [p.read_bytes() for p in images]
    results: dict = {
        "clients": clients,
        "requests": requests,
        "images": len(data),
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "modes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mode, batching in (("batching", "true"), ("no_batching", "false")):
            env = {
                "NFTLENS_BATCHING": batching,
                "NFTLENS_MAX_BATCH": str(max_batch),
                "NFTLENS_MAX_WAIT_MS": str(max_wait_ms),
                "NFTLENS_PROVIDERS": '["CPUExecutionProvider"]',
            }
            with running_server(model_dir, Path(tmp) / f"{mode}.db", Path(tmp), **env) as srv:
                asyncio.run(_load(srv.url, data, clients, min(requests, 2 * clients)))  # warm-up
                before = httpx.get(f"{srv.url}/metrics").text
                lat, wall, errors = asyncio.run(_load(srv.url, data, clients, requests))
                after = httpx.get(f"{srv.url}/metrics").text
            b0, b1 = _metric_counts(before, "nftlens_batch_size"), _metric_counts(after, "nftlens_batch_size")
            cumulative = {le: b1[le] - b0.get(le, 0) for le in b1}
            hist, prev = {}, 0.0
            for le, c in cumulative.items():
                hist[f"<={le}"] = int(c - prev)
                prev = c
            ms = np.array(lat) * 1000
            results["modes"][mode] = {
                "throughput_rps": requests / wall,
                "errors": errors,
                "latency_ms": {
                    "p50": float(np.percentile(ms, 50)),
                    "p95": float(np.percentile(ms, 95)),
                    "p99": float(np.percentile(ms, 99)),
                },
                "batch_size_histogram": hist,
            }
    if raw_ort:
        best = max(r["images_per_s"] for r in raw_ort["onnxruntime"])
        results["raw_ort_best_images_per_s"] = best
        for r in results["modes"].values():
            r["ratio_to_raw_ort"] = r["throughput_rps"] / best
    b, n = results["modes"]["batching"], results["modes"]["no_batching"]
    results["batching_speedup"] = b["throughput_rps"] / n["throughput_rps"]
    return results


WRK_SCRIPT = """
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CTYPE")
"""


def multipart_body(data: bytes, filename: str = "i.png", ctype: str | None = None) -> tuple[bytes, str]:
    """One multipart/form-data body with a `file` part (its type guessed from `filename` unless given), and
    its Content-Type header."""
    ctype = ctype or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    boundary = "nftlens-bench-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk_post(url: str, body: Path, ctype: str, seconds: int, connections: int, threads: int = 2) -> dict:
    """`wrk --latency` posting one body over keep-alive connections: req/s, p50, p99, non-2xx."""
    import shutil
    import subprocess

    if shutil.which("wrk") is None:
        raise RuntimeError("the peers bench needs wrk (Debian: apt-get install -y wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", fh.name, url]
    env = {**os.environ, "WRK_BODY": str(body), "WRK_CTYPE": ctype}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    os.unlink(fh.name)
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),
        "p50_ms": _ms(pct["50"]),
        "p99_ms": _ms(pct["99"]),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


@contextlib.contextmanager
def _peer(kind: str, model_dir: Path, log_dir: Path):
    """Start a peer server (benchmarks.peers); yield its URL and process-group id once it answers."""
    import sys

    from benchmarks.serverproc import free_port, serving

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "benchmarks.peers", kind, "--model-dir", str(model_dir), "--port", str(port)]
    with serving(cmd, url, "/health", log_dir / f"{kind}.log", 120) as proc:
        yield url, proc.pid


@contextlib.contextmanager
def _only(running: int, groups: list[int]):
    """Pause (SIGSTOP) every server's process group but `running`'s for the block: an idle server's
    polling threads (LitServe's workers poll their queues) must not take the cores of the one measured."""
    import signal

    def send(group: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # a server that died is reported by its round
            os.killpg(group, sig)

    try:
        for g in groups:
            if g != running:
                send(g, signal.SIGSTOP)
        yield
    finally:
        for g in groups:
            send(g, signal.SIGCONT)


def bench_peers(
    model_dir: Path,
    image: Path,
    seconds: int = 10,
    rounds: int = 5,
    connections: int = 8,
    nftlens_env: dict[str, str] | None = None,
) -> dict:
    """nftlens against a naive FastAPI + ORT server and LitServe (benchmarks.peers), same model file and
    preprocessing, one real image posted as multipart by wrk, rounds alternating between the servers."""
    import httpx

    from benchmarks.serverproc import running_server

    body, ctype = multipart_body(image.read_bytes(), image.name)
    as_json = json.dumps({"image": base64.b64encode(image.read_bytes()).decode()}).encode()
    out: dict = {"image": str(image), "seconds": seconds, "rounds": rounds, "connections": connections}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        (tmp / "body").write_bytes(body)
        (tmp / "json").write_bytes(as_json)
        bodies = {
            "nftlens": (tmp / "body", ctype),
            "naive FastAPI + ORT": (tmp / "body", ctype),
            "LitServe (batch 16, 5 ms)": (tmp / "json", "application/json"),
        }
        env = {
            "NFTLENS_PROVIDERS": '["CPUExecutionProvider"]',
            "NFTLENS_LOG_LEVEL": "warning",
            **(nftlens_env or {}),
        }
        srv = stack.enter_context(running_server(model_dir, tmp / "c.db", tmp, **env))
        naive = stack.enter_context(_peer("naive", model_dir, tmp))
        litserve = stack.enter_context(_peer("litserve", model_dir, tmp))
        servers = {  # name -> (URL, process group)
            "nftlens": (f"{srv.url}/classify", srv.proc.pid),
            "naive FastAPI + ORT": (naive[0] + "/classify", naive[1]),
            "LitServe (batch 16, 5 ms)": (litserve[0] + "/classify", litserve[1]),
        }
        _warm_up(servers, bodies, connections)
        before = httpx.get(f"{srv.url}/metrics").text
        runs = _alternate(servers, bodies, rounds, seconds, connections)
        after = httpx.get(f"{srv.url}/metrics").text
    (sum0, n0), (sum1, n1) = _sum_count(before, "nftlens_batch_size"), _sum_count(after, "nftlens_batch_size")
    mean_batch = (sum1 - sum0) / max(1.0, n1 - n0)
    out["nftlens_mean_batch"] = mean_batch
    model = OnnxModel(model_dir, ["CPUExecutionProvider"], spinning=False)
    size = max(1, round(mean_batch))
    s = model.manifest.input_size
    x = model.native(np.random.default_rng(0).normal(size=(size, 3, s, s)).astype(np.float32))
    out["raw_ort_at_mean_batch"] = _rate(lambda: model.run(x), size, 4.0)
    out["servers"] = {name: _medians(rs) for name, rs in runs.items()}
    ours = out["servers"]["nftlens"]["rps"]
    out["ratios"] = {
        f"nftlens / {name}": ours / s["rps"] for name, s in out["servers"].items() if name != "nftlens"
    }
    return out


TUNING = {
    "default (workers auto: 2 here, fast lane, BLAS 1 thread)": {},
    "1 worker": {"NFTLENS_WORKERS": "1"},
    "no fast lane (every request through FastAPI)": {"NFTLENS_FAST_LANE": "false"},
    "BLAS threads 2 (OpenBLAS's default here)": {"NFTLENS_BLAS_THREADS": "2"},
    "ORT threads spinning": {"NFTLENS_INTRA_OP_SPINNING": "true"},
    "no dynamic batching": {"NFTLENS_BATCHING": "false"},
    "max wait 0 ms (never wait for announced images)": {"NFTLENS_MAX_WAIT_MS": "0"},
}


def _warm_up(servers: dict[str, tuple[str, int]], bodies: dict[str, tuple[Path, str]], connections: int):
    """Two seconds of wrk on each server (name -> (URL, process group)), the others paused."""
    groups = [g for _, g in servers.values()]
    for name, (url, group) in servers.items():
        with _only(group, groups):
            wrk_post(url, *bodies[name], 2, connections)


def _alternate(
    servers: dict[str, tuple[str, int]],
    bodies: dict[str, tuple[Path, str]],
    rounds: int,
    seconds: int,
    connections: int,
) -> dict[str, list[dict]]:
    """`rounds` rounds of wrk, each server in turn with the others paused: each server's rounds (so a slow
    stretch of the host, or a lopsided split of the connections between workers, falls on one round)."""
    groups = [g for _, g in servers.values()]
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, (url, group) in servers.items():
            with _only(group, groups):
                runs[name].append(wrk_post(url, *bodies[name], seconds, connections))
    return runs


def _medians(rounds: list[dict]) -> dict:
    """One server's rounds -> median req/s, p50 and p99, summed non-2xx, and the rounds themselves."""
    return {
        "rps": float(np.median([r["rps"] for r in rounds])),
        "p50_ms": float(np.median([r["p50_ms"] for r in rounds])),
        "p99_ms": float(np.median([r["p99_ms"] for r in rounds])),
        "non_2xx": sum(r["non_2xx"] for r in rounds),
        "rounds": rounds,
    }


def bench_tuning(
    model_dir: Path, image: Path, seconds: int = 8, connections: int = 8, rounds: int = 3
) -> dict:
    """nftlens under wrk once per setting variant (TUNING), every variant's server started at once and
    measured in alternating rounds with the others paused (medians): which settings pay."""
    from benchmarks.serverproc import running_server

    body, ctype = multipart_body(image.read_bytes(), image.name)
    out: dict = {
        "image": str(image),
        "seconds": seconds,
        "rounds": rounds,
        "connections": connections,
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        (tmp / "body").write_bytes(body)
        servers, envs = {}, {}
        for i, (name, env) in enumerate(TUNING.items()):
            envs[name] = {"NFTLENS_PROVIDERS": '["CPUExecutionProvider"]', **env}
            (tmp / str(i)).mkdir()
            srv = stack.enter_context(running_server(model_dir, tmp / f"{i}.db", tmp / str(i), **envs[name]))
            servers[name] = (f"{srv.url}/classify", srv.proc.pid)
        bodies = {name: (tmp / "body", ctype) for name in servers}
        _warm_up(servers, bodies, connections)
        runs = _alternate(servers, bodies, rounds, seconds, connections)
    out["variants"] = {name: {"env": envs[name], **_medians(rs)} for name, rs in runs.items()}
    return out


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def bench_copies(
    model_dir: Path, images: list[Path], tokens: int = 100_000, clients: int = 4, requests: int = 200
) -> dict:
    """POST /copies latency against a catalog of `tokens` rows (and POST /classify on the same server).

    The catalog holds the real collection and instance vectors of the given images, replicated with small
    noise (renormalised) up to `tokens` rows: real-looking geometry, built in seconds instead of embedding
    100k images.
    """
    from benchmarks.serverproc import running_server

    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    m = model.manifest
    if not m.instance_dim or m.copies is None:
        return {"skipped": f"{m.name}@{m.version} has no copy head"}
    data = [p.read_bytes() for p in images]
    crops = _edited(data, m.preprocessing.background_rgb, "crop_zoom")
    lossy = _edited(data, m.preprocessing.background_rgb, "reencode_resize")
    verify_k = Settings.model_fields["copy_verify_k"].default
    result: dict = {
        "tokens": tokens,
        "clients": clients,
        "requests": requests,
        "dihedral": m.copies.dihedral,
        "views": m.copies.views.count,
        "model": f"{m.name}@{m.version}",
        "copy_verify_k": verify_k,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["build_s"] = replicated_catalog(model, images, Path(tmp) / "c.db", tokens)
        # /copies with the checks off on one server; then, on a server as served but with every
        # candidate's keypoints computed per query (no features cache, so each query pays its own checks),
        # /copies and /classify; then, as served, /copies over a few queries whose candidates all fit in
        # the features cache, each sent several times first (the cache's best case: every candidate met
        # before, by whichever worker answers)
        served = {"NFTLENS_COPY_VERIFY_K": str(verify_k)}
        warm = WARM_ROUTE
        for env, routes in (
            ({"NFTLENS_COPY_VERIFY_K": "0"}, (("/copies without layout check", "/copies", {}, data),)),
            (
                {**served, "NFTLENS_COPY_FEATURES_CACHE": "0"},
                (
                    ("/copies", "/copies", {}, data),
                    ("/copies, cropped copies", "/copies", {}, crops),
                    ("/copies, re-encoded copies", "/copies", {}, lossy),
                    ("/classify", "/classify", None, data),
                ),
            ),
            (served, ((warm, "/copies", {}, data[:WARM_QUERIES]),)),
        ):
            env = {"NFTLENS_PROVIDERS": '["CPUExecutionProvider"]', **env}
            with running_server(model_dir, Path(tmp) / "c.db", Path(tmp), timeout=300, **env) as srv:
                for route, path, params, queries in routes:
                    warm_up = 4 * len(queries) if route == warm else 2 * clients
                    asyncio.run(_load(srv.url, queries, clients, warm_up, path, params))
                    lat, wall, errors = asyncio.run(_load(srv.url, queries, clients, requests, path, params))
                    result[route] = {
                        "throughput_rps": requests / wall,
                        "errors": errors,
                        "latency_ms": _percentiles(lat),
                    }
    return result


def replicated_catalog(model: OnnxModel, images: list[Path], path: Path, tokens: int) -> float:
    """Write a catalog of `tokens` rows to `path` (collection "bench") and return the seconds it took: the
    real collection and instance vectors of `images`, replicated with small noise (renormalised), each row
    keeping its source image, which the checks read. Real-looking geometry, built in seconds instead of
    embedding `tokens` images."""
    from training.runner import infer

    m = model.manifest
    out = infer(model, images, desc="bench vectors")
    data = [p.read_bytes() for p in images]
    rng = np.random.default_rng(0)

    def noisy(v: np.ndarray, source: np.ndarray) -> np.ndarray:
        base = v[source] + 0.05 * _unit(rng, len(source), v.shape[1])
        return base / np.linalg.norm(base, axis=1, keepdims=True)

    cat = open_catalog(str(path), m.embedding_dim, m.catalog_key, "auto", m.instance_dim)
    t0 = time.perf_counter()
    for s in range(0, tokens, 5000):
        source = rng.integers(0, len(data), min(5000, tokens - s))
        emb, inst = noisy(out["embedding"], source), noisy(out["instance"], source)
        cat.upsert_many(
            [(Token("bench", str(s + i), {}), emb[i], data[j], inst[i]) for i, j in enumerate(source)]
        )
    cat.close()
    return time.perf_counter() - t0


def _edited(data: list[bytes], background: tuple[int, int, int], edit: str) -> list[bytes]:
    """Each image's edited copy (training/edits.py, seeded by its index) as PNG. `crop_zoom`: for pixel
    art the crop pass of the copy search (app/verify.py: find_by_completion) runs on it;
    `reencode_resize`: a lossy query, whose cells get the codec's bleed (app/sprites.py: codec_bleed)."""
    from app.imaging import decode_image
    from app.preprocessing import encode
    from training.edits import apply_edit

    return [
        encode(apply_edit(edit, decode_image(d, background), np.random.default_rng(i)), "png")
        for i, d in enumerate(data)
    ]


WARM_QUERIES = 16  # x copy_verify_k (50) candidates: within the features cache's default 1,024 entries
WARM_ROUTE = f"/copies, features cache warm ({WARM_QUERIES} queries, repeated)"
COPIES_ROUTES = (
    "/copies without layout check",
    "/copies",
    WARM_ROUTE,
    "/copies, cropped copies",
    "/copies, re-encoded copies",
    "/classify",
)
EXPLAIN_MODES = {
    "class, PNG overlay": {},
    "class, JSON grid": {"format": "json"},
    "copy, PNG overlay": {"copy_of": "bench/0"},
}


def bench_explain(model_dir: Path, images: list[Path], requests: int = 60) -> dict:
    """POST /explain latency, one request at a time (the ceiling a reviewer waits for): a label's heatmap
    as PNG and as JSON, and a copy heatmap against a stored token."""
    import httpx

    from app.explain import occluders
    from app.manifest import load_manifest
    from benchmarks.serverproc import running_server

    m = load_manifest(model_dir)
    data = [p.read_bytes() for p in images]
    result: dict = {
        "requests": requests,
        "images": len(data),
        "network_inputs": 1 + len(occluders(m.input_size)),
        "modes": {},
    }
    modes = {k: v for k, v in EXPLAIN_MODES.items() if "copy_of" not in v or m.copies is not None}
    with tempfile.TemporaryDirectory() as tmp:
        env = {"NFTLENS_PROVIDERS": '["CPUExecutionProvider"]'}
        with running_server(model_dir, Path(tmp) / "c.db", Path(tmp), **env) as srv:
            httpx.put(f"{srv.url}/tokens/bench/0", files={"file": data[0]}, timeout=60).raise_for_status()
            for name, params in modes.items():
                asyncio.run(_load(srv.url, data, 1, 3, "/explain", params))  # warm-up
                lat, wall, errors = asyncio.run(_load(srv.url, data, 1, requests, "/explain", params))
                result["modes"][name] = {"errors": errors, "latency_ms": _percentiles(lat)}
    return result


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def real_vectors(
    model_dir: Path, sources: list[Path], cache: Path | None = None
) -> tuple[np.ndarray, list[str]]:
    """Collection embeddings of every image of the dataset folders (the demo catalog, the thumbnails),
    with their collections; cached per model file so reruns skip the embedding."""
    from app.manifest import load_manifest
    from training.datasets import load_dataset
    from training.runner import infer

    m = load_manifest(model_dir)
    paths, colls = [], []
    for src in sources:
        ds = load_dataset(src)
        paths += [ds.image_path(r) for r in ds.rows]
        colls += [r["collection"] for r in ds.rows]
    cache = cache or Path(os.environ.get("NFTLENS_CACHE_DIR", Path.home() / ".cache" / "nftlens"))
    names = "-".join(sorted(p.name for p in sources))
    key = f"bench-vectors-{m.sha256[:12]}-{names}-{len(paths)}.npz"
    if (cache / key).is_file():
        z = np.load(cache / key)
        return z["vectors"], z["collections"].tolist()
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    vectors = infer(model, paths, desc="bench vectors")["embedding"].astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache / key, vectors=vectors, collections=np.array(colls))
    return vectors, colls


def replicate(
    vectors: np.ndarray, colls: list[str], n: int, rng: np.random.Generator, noise: float = 0.05
) -> tuple[np.ndarray, list[str]]:
    """n vectors on the real embeddings' manifold: the real ones first, then points between two real
    tokens of one collection (a random mix up to half-way) plus small isotropic noise, renormalised."""
    real = min(n, len(vectors))
    by_coll: dict[str, np.ndarray] = {}
    for i, c in enumerate(colls):
        by_coll.setdefault(c, []).append(i)
    by_coll = {c: np.asarray(v) for c, v in by_coll.items()}
    out, out_colls = [vectors[:real]], list(colls[:real])
    if n > real:
        a = rng.integers(0, len(vectors), n - real)
        names = [colls[i] for i in a]
        b = np.array([by_coll[c][rng.integers(0, len(by_coll[c]))] for c in names])
        mix = rng.uniform(0, 0.5, (n - real, 1)).astype(np.float32)
        x = vectors[a] * (1 - mix) + vectors[b] * mix + noise * _unit(rng, n - real, vectors.shape[1])
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
        out_colls += names
    return np.concatenate(out).astype(np.float32), out_colls


def _exact(xs: np.ndarray, mask: np.ndarray | None, q: np.ndarray, k: int, self_row: int) -> list[int]:
    scores = xs @ q
    scores[self_row] = -np.inf
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    top = np.argpartition(-scores, k)[:k]
    return [int(i) for i in top if np.isfinite(scores[i])]


def _rss_mb() -> float:
    """This process's resident memory (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _mode(mode: str, names: np.ndarray, r: int) -> tuple[np.ndarray | None, SearchFilter]:
    """For query row r: the exact-search mask and the catalog filter of one search mode."""
    own, me = str(names[r]), (str(names[r]), str(r))
    if mode == "own collection":
        return names == own, SearchFilter(collections={own}, exclude=me)
    if mode == "other collections":
        return names != own, SearchFilter(exclude_collections={own}, exclude=me)
    return None, SearchFilter(exclude=me)


def bench_catalog(
    model_dir: Path,
    sources: list[Path],
    sizes=(100_000, 1_000_000),
    queries: int = 300,
    k: int = 10,
    ef_searches=(16, 32, 64, 128),
) -> dict:
    """Search latency and recall@k of the embedded catalog (SQLite + FAISS, HNSW) on real embeddings.

    The catalog holds the real collection embeddings of `sources` replicated on their manifold up to each
    size (`replicate`). Queries are stored tokens (what GET /similar does), the token itself excluded:
    unfiltered, restricted to the token's own collection (`same_collection=true`), and excluding it
    (`same_collection=false`). Recall@k is against exact search over the same vectors and filter; exact
    (flat) search is timed too, as the baseline HNSW must beat.
    """
    import faiss

    from app.catalog.sqlite_faiss import SqliteFaissCatalog

    real, real_colls = real_vectors(model_dir, sources)
    rng = np.random.default_rng(0)
    out: dict = {
        "dim": real.shape[1],
        "k": k,
        "queries": queries,
        "real_vectors": len(real),
        "collections": len(set(real_colls)),
        "sources": [str(s) for s in sources],
        "results": [],
    }
    for n in sizes:
        xs, colls = replicate(real, real_colls, n, rng)
        names = np.array(colls)
        qrows = rng.choice(n, queries, replace=False)
        faiss.omp_set_num_threads(1)  # one query at a time, as the service runs them
        flat = faiss.IndexFlatIP(xs.shape[1])
        flat.add(xs)
        t_flat = []
        for r in qrows:
            t0 = time.perf_counter()
            flat.search(xs[r : r + 1], k + 1)
            t_flat.append(time.perf_counter() - t0)
        del flat
        modes = ("unfiltered", "own collection", "other collections")
        truth = {mode: [_exact(xs, _mode(mode, names, r)[0], xs[r], k, r) for r in qrows] for mode in modes}
        with tempfile.TemporaryDirectory() as tmp:
            faiss.omp_set_num_threads(os.cpu_count() or 1)  # graph builds use every core
            t0 = time.perf_counter()
            cat = SqliteFaissCatalog(f"{tmp}/c.db", xs.shape[1], "bench", "hnsw", background_compaction=False)
            for s in range(0, n, 10_000):
                cat.upsert_many(
                    [(Token(colls[i], str(i), {}), xs[i], None) for i in range(s, min(n, s + 10_000))]
                )
            build_s = time.perf_counter() - t0
            rss = _rss_mb()
            faiss.omp_set_num_threads(1)
            space = cat._spaces["collection"]
            out["results"].append(
                {
                    "vectors": n,
                    "index": "flat (exact)",
                    "mode": "unfiltered",
                    "recall_at_k": 1.0,
                    "search_ms": _percentiles(t_flat),
                }
            )
            for ef in ef_searches:
                space.ef_search = ef
                for mode in modes:
                    lat, recall = [], []
                    for r, want in zip(qrows, truth[mode], strict=True):
                        flt = _mode(mode, names, r)[1]
                        t0 = time.perf_counter()
                        hits = cat.search(xs[r], k, flt)
                        lat.append(time.perf_counter() - t0)
                        got = {int(h.token_id) for h in hits}
                        recall.append(len(got & set(want)) / max(1, len(want)))
                    out["results"].append(
                        {
                            "vectors": n,
                            "index": f"hnsw M={space.m} efSearch={ef}",
                            "mode": mode,
                            "recall_at_k": float(np.mean(recall)),
                            "search_ms": _percentiles(lat),
                            "build_s": build_s,
                            "process_rss_mb": rss,
                        }
                    )
                    print(out["results"][-1], flush=True)
            cat.close()
        del xs
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return out


def _wrk_table(first: str, runs: dict[str, dict]) -> str:
    """A Markdown table of `wrk_post` figures, one row per named run."""
    from training.reports import markdown_table

    rows = [
        {
            first: name,
            "req/s": r["rps"],
            "p50 ms": r["p50_ms"],
            "p99 ms": r["p99_ms"],
            "non-2xx": r["non_2xx"],
        }
        for name, r in runs.items()
    ]
    return markdown_table(rows, list(rows[0]))


def render_markdown(report: dict) -> str:
    from training.reports import markdown_table

    def where(m: dict) -> str:
        return f"Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']} ({', '.join(m['ort_providers'])})."

    lines = [
        "# nftlens benchmarks",
        "",
        where(report["machine"]) + " (the latest run; each section names its own)",
        "",
    ]
    if "model" in report:
        r = report["model"]
        lines += [
            f"## Model: {r['model']} ({r['architecture']}, {r['input_size']} px) on {r['provider']}",
            "",
            *([where(r["machine"]), ""] if r.get("machine") else []),
        ]
        rows = [
            {
                "batch": o["batch"],
                "ORT img/s": o["images_per_s"],
                "ORT ms/batch": o["ms_per_batch"],
                **(
                    {"torch img/s": t["images_per_s"], "ORT / torch": o["speedup_vs_torch"]}
                    if isinstance(t, dict)
                    else {}
                ),
            }
            for o, t in zip(
                r["onnxruntime"],
                r["torch_eager"] if isinstance(r["torch_eager"], list) else [None] * 9,
                strict=False,
            )
        ]
        lines += [markdown_table(rows, list(rows[0])), ""]
    if "service" in report:
        s = report["service"]
        lines += [
            f"## Service: {s['clients']} concurrent clients, {s['requests']} requests, max_batch {s['max_batch']}, max_wait {s['max_wait_ms']} ms",
            "",
            *([where(s["machine"]), ""] if s.get("machine") else []),
        ]
        rows = [
            {
                "mode": k,
                "req/s": v["throughput_rps"],
                "p50 ms": v["latency_ms"]["p50"],
                "p95 ms": v["latency_ms"]["p95"],
                "p99 ms": v["latency_ms"]["p99"],
                "÷ raw ORT": v.get("ratio_to_raw_ort", ""),
                "errors": v["errors"],
                "batches": ", ".join(f"{b}: {c}" for b, c in v["batch_size_histogram"].items() if c),
            }
            for k, v in s["modes"].items()
        ]
        lines += [
            markdown_table(rows, list(rows[0])),
            "",
            f"Dynamic batching speed-up: {s['batching_speedup']:.2f}x",
            "",
        ]
    if "copies" in report and "skipped" not in report["copies"]:
        c = report["copies"]
        lines += [
            f"## Copies: POST /copies with {c['tokens']:,} tokens in the catalog ({c['clients']} clients, "
            f"{c['requests']} requests, "
            + (
                f"{c['views']} query views, {c['model']})"
                if "views" in c
                else f"dihedral views {'on' if c['dihedral'] else 'off'})"
            ),
            "",
            *([where(c["machine"]), ""] if c.get("machine") else []),
        ]
        rows = [
            {
                "route": route,
                "req/s": c[route]["throughput_rps"],
                "p50 ms": c[route]["latency_ms"]["p50"],
                "p95 ms": c[route]["latency_ms"]["p95"],
                "p99 ms": c[route]["latency_ms"]["p99"],
                "errors": c[route]["errors"],
            }
            for route in COPIES_ROUTES
            if route in c
        ]
        lines += [markdown_table(rows, list(rows[0])), ""]
    if "explain" in report:
        e = report["explain"]
        lines += [
            f"## POST /explain: one request at a time, {e['requests']} requests over {e['images']} real "
            f"images, {e['network_inputs']} network inputs (the occlusions) per request",
            "",
            *([where(e["machine"]), ""] if e.get("machine") else []),
        ]
        rows = [
            {
                "mode": name,
                **{f"{q} ms": v["latency_ms"][q] for q in ("p50", "p95", "p99")},
                "errors": v["errors"],
            }
            for name, v in e["modes"].items()
        ]
        lines += [markdown_table(rows, list(rows[0])), ""]
    if "peers" in report:
        p = report["peers"]
        lines += [
            f"## nftlens against the servers a team would write: wrk, {p['connections']} connections, "
            f"{p['rounds']} alternating rounds of {p['seconds']} s, one real image as multipart",
            "",
        ]
        lines += [where(p["machine"]), ""] if p.get("machine") else []
        lines += [_wrk_table("server", p["servers"]), ""]
        lines += [f"- {k}: **{v:.2f}×**" for k, v in p["ratios"].items()]
        lines += [
            f"- nftlens's mean batch over the rounds: {p['nftlens_mean_batch']:.1f}; raw ONNX Runtime at that "
            f"batch, same run: {p['raw_ort_at_mean_batch']['images_per_s']:.0f} img/s",
            f"- nftlens / raw ONNX Runtime at that batch: **"
            f"{p['servers']['nftlens']['rps'] / p['raw_ort_at_mean_batch']['images_per_s']:.2f}×**",
            "",
        ]
    if "tuning" in report:
        t = report["tuning"]
        lines += [
            f"## Settings that pay: nftlens alone under wrk ({t['connections']} connections, "
            + (
                f"{t['rounds']} alternating rounds of {t['seconds']} s, medians), one server at a time"
                if t.get("rounds")
                else f"{t['seconds']} s), one server at a time"
            ),
            "",
        ]
        lines += [where(t["machine"]), ""] if t.get("machine") else []
        lines += [_wrk_table("variant", t["variants"]), ""]
    if "catalog" in report and "real_vectors" in report["catalog"]:
        c = report["catalog"]
        lines += [
            f"## Catalog: GET /similar-style searches, {c['dim']}-d real embeddings, top-{c['k']}, "
            f"{c['queries']} queries per row",
            "",
            f"{c['real_vectors']:,} real embeddings of {c['collections']} collections, replicated on their manifold "
            "to each size; recall@k against exact search with the same filter.",
            "",
        ]
        lines += [where(c["machine"]), ""] if c.get("machine") else []
        rows = [
            {
                "vectors": r["vectors"],
                "index": r["index"],
                "search": r["mode"],
                "recall@k": r["recall_at_k"],
                "p50 ms": r["search_ms"]["p50"],
                "p99 ms": r["search_ms"]["p99"],
            }
            for r in c["results"]
        ]
        lines += [markdown_table(rows, list(rows[0])), ""]
    return "\n".join(lines) + "\n"
