"""Where the time goes: inside the graph, and per thread of a serving worker (reports/bench/PROFILE.md).

    python -m benchmarks.profile ops --model-dir models/default-int8 --batch 4
    python -m benchmarks.profile threads --model-dir models/default-int8 --seconds 8
    python -m benchmarks.profile copies --model-dir models/default --edit crop_zoom --queries 40

- `ops`: ONNX Runtime's own profiler over repeated runs at one batch size on one intra-op thread (as one
  serving worker runs it): the share of kernel time per operator type and per node, img/s, and the time
  of the model's open-set score per batch (it runs on the same inference thread).
- `threads`: starts `nftlens serve` with its defaults, drives it with wrk (8 connections posting a real
  thumbnail, as `nftlens bench peers` does) and prints each thread's share of a core, from the kernel's
  per-thread CPU counters, with req/s. The service names its threads for the kernel (`nftlens-infer`,
  `nftlens-decode`, `nftlens-catalog`, `app/threadnames.py`); a worker's main thread runs its event loop.
- `copies`: the copy search of POST /copies (`Service.copies`: search, checks, completions) in process,
  one query at a time, over the catalog `nftlens bench copies` builds (the images' vectors replicated to
  `--tokens` rows) with the features cache off, as its main routes run: each query is an edited copy
  (`--edit`, training/edits.py) of one of the images. It prints the time per query and, from cProfile,
  where it goes: the candidates' SIFT, keypoint matching, colour comparison, catalog search, and the
  completion (`find_by_completion`: its look-ups and the checks of the candidates they find), with how
  many queries looked anything up.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.bench import multipart_body
from benchmarks.serverproc import group_pids


def profile_ops(model_dir: Path, batch: int, runs: int) -> None:
    """Per-operator kernel time of `runs` runs at `batch`, one intra-op thread; then the open-set score."""
    import onnxruntime as ort
    from threadpoolctl import threadpool_limits

    from app.inference import OnnxModel
    from app.openset import OpenSetScorer

    model = OnnxModel(model_dir, ["CPUExecutionProvider"], intra_op_threads=1, spinning=False)
    m = model.manifest
    x = model.native(
        np.random.default_rng(0).normal(size=(batch, 3, m.input_size, m.input_size)).astype("f4")
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = 1, True
    with tempfile.TemporaryDirectory() as tmp:  # the profile is tens of MB of JSON
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(
            str(model_dir / m.onnx_file), options, providers=["CPUExecutionProvider"]
        )
        for _ in range(runs):
            session.run(None, {m.input_name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op, by_node = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
            by_node[event["name"].removesuffix("_kernel_time")] += event["dur"]
    total = sum(by_op.values())
    print(
        f"{m.name}@{m.version}, batch {batch}, {runs} runs: {total / runs / 1000:.2f} ms of kernels per run"
    )
    for title, counts in (("operator", by_op), ("node", by_node)):
        print(f"\n| {title} | share of kernel time |\n|---|---:|")
        for name, us in counts.most_common(12):
            print(f"| {name} | {us / total:.1%} |")
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3 or n < 20:
        out = model.run(x)
        n += 1
    run_ms = (time.perf_counter() - t0) / n * 1000
    print(f"\nOnnxModel.run: {run_ms:.2f} ms per batch, {batch / run_ms * 1000:.0f} img/s (one thread)")
    if m.unknown is not None:
        scorer = OpenSetScorer(m.unknown, model_dir)
        with threadpool_limits(1, user_api="blas"):  # as the service runs it
            t0 = time.perf_counter()
            for _ in range(200):
                scorer.score(out)
        score_ms = (time.perf_counter() - t0) / 200 * 1000
        print(
            f"open-set score ({m.unknown.method}): {score_ms:.2f} ms per batch, {score_ms / run_ms:.1%} of run"
        )


def _cpu_ticks(pgid: int) -> dict[tuple[int, int, str], int]:
    """(pid, tid, thread name) -> user + system clock ticks so far, for every thread of every process in
    process group `pgid` (the server and its workers, however deep)."""
    ticks = {}
    for pid in group_pids(pgid):
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                name = (task / "comm").read_text().strip()
                ticks[(pid, int(task.name), name)] = int(fields[11]) + int(fields[12])
        except OSError:  # the process or thread ended meanwhile
            continue
    return ticks


def profile_threads(model_dir: Path, image: Path, seconds: float) -> None:
    """Per-thread CPU share of every serving process while wrk posts `image`."""
    from benchmarks.bench import wrk_post
    from benchmarks.serverproc import running_server

    body, ctype = multipart_body(image.read_bytes(), image.name)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "body").write_bytes(body)
        env = {"NFTLENS_PROVIDERS": '["CPUExecutionProvider"]'}
        with running_server(model_dir, tmp / "c.db", tmp, **env) as srv:
            url = f"{srv.url}/classify"
            wrk_post(url, tmp / "body", ctype, 2, 8)  # warm-up
            supervisor = srv.proc.pid  # with several workers it only watches them
            result: dict = {}
            load = threading.Thread(
                target=lambda: result.update(wrk_post(url, tmp / "body", ctype, int(seconds) + 2, 8))
            )
            load.start()
            time.sleep(1)
            before, t0 = _cpu_ticks(supervisor), time.perf_counter()  # it leads its process group
            time.sleep(seconds)
            after, elapsed = _cpu_ticks(supervisor), time.perf_counter() - t0
            load.join()
    hz = os.sysconf("SC_CLK_TCK")
    shares = sorted(((after[k] - before.get(k, 0)) / hz / elapsed, k) for k in after)
    print(f"wrk: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
    print("\n| process | thread | share of a core |\n|---|---|---:|")
    several = any(p != supervisor for p, _, _ in after)  # workers beside the supervisor
    for share, (pid, tid, name) in reversed(shares):
        if share >= 0.005:
            main = "supervisor" if pid == supervisor and several else "event loop"
            role = f" (main: {main})" if tid == pid else ""
            print(f"| {pid} | {tid} {name}{role} | {share:.1%} |")
    print(f"| all | | {sum(s for s, _ in shares):.1%} |")


# (label, module path suffix, function name) of the copy search's stages; they nest (the completion's
# checks run SIFT and comparisons too), so their shares need not add up
COPY_STAGES = (
    ("copy search (`Service.copies`)", "app/service.py", "copies"),
    ("checks of the first candidates and of the completion's finds", "app/verify.py", "check_candidates"),
    ("candidates' SIFT (`keypoints.features`)", "app/keypoints.py", "features"),
    ("keypoint matching (`keypoints.match`)", "app/keypoints.py", "match"),
    ("colour comparison (`agreement.comparison`)", "app/agreement.py", "comparison"),
    ("stored images read and decoded (`verify.stored_rgb`)", "app/verify.py", "stored_rgb"),
    ("completion (`find_by_completion`: look-ups and their checks)", "app/verify.py", "find_by_completion"),
    ("completion look-ups (`catalog_lookup`: embed, search)", "app/verify.py", "more"),
)


def profile_copies(model_dir: Path, images: Path, edit: str, queries: int, tokens: int) -> None:
    """Time per query of the copy search and its stages' shares (see the module), in process."""
    import asyncio
    import cProfile
    import pstats

    from app.catalog import SearchFilter
    from app.config import Settings
    from app.inference import OnnxModel
    from app.service import Service
    from benchmarks.bench import _edited, replicated_catalog
    from training.datasets import load_dataset

    ds = load_dataset(images)
    paths = [ds.image_path(r) for r in ds.rows[:: max(1, len(ds.rows) // 200)]]  # as `nftlens bench`
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    bg = model.manifest.preprocessing.background_rgb
    data = [p.read_bytes() for p in paths]
    asked = _edited(data[:queries], bg, edit)
    with tempfile.TemporaryDirectory() as tmp:
        replicated_catalog(model, paths, Path(tmp) / "c.db", tokens)
        settings = Settings(
            model_dir=str(model_dir),
            catalog=str(Path(tmp) / "c.db"),
            providers=["CPUExecutionProvider"],
            copy_features_cache=0,
            batching=False,
        )
        service, profiler, seconds = Service(settings), cProfile.Profile(), []

        async def run() -> None:
            await service.start()
            try:
                for query in asked:
                    instances, fingerprint, rgb = await service.copy_query(query)
                    t0 = time.perf_counter()
                    profiler.enable()
                    service.copies(instances, 5, SearchFilter(), fingerprint, rgb)
                    profiler.disable()
                    seconds.append(time.perf_counter() - t0)
            finally:
                await service.stop()

        asyncio.run(run())
    # (file, line, name) -> (calls, primitive calls, own time, cumulative time, callers)
    stats = pstats.Stats(profiler).stats
    total = sum(seconds)

    def stage(suffix: str, name: str) -> tuple[int, float]:
        found = [v for (f, _, n), v in stats.items() if f.endswith(suffix) and n == name]
        return sum(v[1] for v in found), sum(v[3] for v in found)

    m = model.manifest
    print(
        f"{m.name}@{m.version}, {tokens:,} tokens, {len(asked)} `{edit}` queries, features cache off: "
        f"copy search median {np.median(seconds) * 1000:.0f} ms, mean {total / len(asked) * 1000:.0f} ms per "
        "query (one at a time, one process)"
    )
    print("\n| stage | calls | ms per query | share of the copy search |\n|---|---:|---:|---:|")
    for label, suffix, name in COPY_STAGES:
        calls, cum = stage(suffix, name)
        print(f"| {label} | {calls} | {cum / len(asked) * 1000:.0f} | {cum / total:.1%} |")
    looked_up = stage("app/verify.py", "lookup")[0]  # rank_by_checks' lookup: once per completion round
    print(f"\nqueries: {len(asked)}; completion rounds that looked candidates up: {looked_up}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["ops", "threads", "copies"])
    ap.add_argument("--model-dir", type=Path, default=Path("models/default-int8"))
    ap.add_argument("--batch", type=int, default=4, help="ops: batch size")
    ap.add_argument("--runs", type=int, default=300, help="ops: profiled runs")
    ap.add_argument("--image", type=Path, default=Path("data/nft-thumbs/images/azuki/1009.webp"))
    ap.add_argument("--seconds", type=float, default=8.0, help="threads: measured seconds under load")
    ap.add_argument("--images", type=Path, default=Path("data/nft-thumbs"), help="copies: the images")
    ap.add_argument("--edit", default="crop_zoom", help="copies: the queries' edit (training/edits.py)")
    ap.add_argument("--queries", type=int, default=40, help="copies: profiled queries")
    ap.add_argument("--tokens", type=int, default=100_000, help="copies: catalog rows")
    args = ap.parse_args()
    if args.what == "ops":
        profile_ops(args.model_dir, args.batch, args.runs)
    elif args.what == "copies":
        profile_copies(args.model_dir, args.images, args.edit, args.queries, args.tokens)
    else:
        profile_threads(args.model_dir, args.image, args.seconds)


if __name__ == "__main__":
    main()
