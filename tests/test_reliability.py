"""One truth under stress: other processes' writes, crashes mid-write, churn, overload, a dying batcher.

Real uvicorn servers over HTTP, real `nftlens catalog` processes, the real model, real SQLite + FAISS.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.batching import MicroBatcher
from app.errors import OverloadedError
from tests.server import running_server


def _cli(model_dir: Path, db: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "NFTLENS_MODEL_DIR": str(model_dir), "NFTLENS_CATALOG": str(db)}
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "catalog", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_cli(model_dir: Path, db: Path, *args: str) -> str:
    proc = _cli(model_dir, db, *args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out.strip().splitlines()[-1]


def _folder(punks, tmp: Path, n: int, start: int = 0) -> Path:
    """A plain folder of n real punk images named by token id."""
    folder = tmp / f"punks-{start}-{n}"
    folder.mkdir()
    for row in punks.rows[start : start + n]:
        shutil.copy(punks.image_path(row), folder / f"{row['token_id']}.png")
    return folder


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]
    except sqlite3.OperationalError:  # the writer has not created the table yet
        return 0


def test_another_process_writes_are_searched_at_once(model_dir, punks, tmp_path):
    """`catalog index` and `catalog reindex --all` in other processes, a server running: /similar sees
    the new tokens, and keeps every answer through the reindex, without a restart."""
    db = tmp_path / "c.db"
    first = _folder(punks, tmp_path, 1)
    _run_cli(model_dir, db, "index", str(first), "--collection", "cryptopunks")
    with running_server(model_dir, db, tmp_path) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        query = {"collection": "cryptopunks", "token_id": punks.rows[0]["token_id"], "k": 10}
        assert c.get("/similar", params=query).json()["results"] == []
        assert "150 indexed" in _run_cli(
            model_dir, db, "index", str(_folder(punks, tmp_path, 150, 1)), "--collection", "bayc"
        )
        assert c.get("/tokens/bayc/" + punks.rows[5]["token_id"]).status_code == 200
        before = c.get("/similar", params=query).json()["results"]
        assert len(before) == 10 and {r["collection"] for r in before} == {"bayc"}
        assert "151 re-embedded in place" in _run_cli(model_dir, db, "reindex", "--all")
        after = c.get("/similar", params=query).json()["results"]
        assert [r["token_id"] for r in after] == [r["token_id"] for r in before]
        by_bayc = c.get(
            "/similar", params={**query, "collection": "bayc", "token_id": punks.rows[5]["token_id"]}
        )
        assert by_bayc.status_code == 200 and len(by_bayc.json()["results"]) == 10
        assert c.delete("/tokens/bayc/" + before[0]["token_id"]).status_code == 200
        assert before[0]["token_id"] not in {
            r["token_id"] for r in c.get("/similar", params=query).json()["results"]
        }


def test_killed_bulk_index_resumes_without_loss_or_duplicates(model_dir, punks, tmp_path):
    db = tmp_path / "c.db"
    folder = _folder(punks, tmp_path, 1500)
    proc = _cli(model_dir, db, "index", str(folder), "--collection", "cryptopunks", "--batch", "32")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if db.exists() and _rows(db) >= 64:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the index finished before it could be killed: give it more images"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    done = _rows(db)
    assert 64 <= done < 1500
    line = _run_cli(model_dir, db, "index", str(folder), "--collection", "cryptopunks")
    assert line.startswith(f"{1500 - done} indexed, {done} already stored, 0 undecodable; catalog holds 1500")
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(DISTINCT token_id) FROM tokens").fetchone()[0] == 1500


def test_acknowledged_concurrent_puts_survive_sigkill(model_dir, punks, tmp_path):
    db = tmp_path / "c.db"
    data = [punks.image_path(r).read_bytes() for r in punks.rows[:40]]
    acked: list[str] = []
    with running_server(model_dir, db, tmp_path) as srv:
        stop = threading.Event()

        def writer(w: int) -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    tid = f"{w}-{i}"
                    try:
                        r = c.put(
                            f"/tokens/churn/{tid}", files={"file": ("a.png", data[i % 40], "image/png")}
                        )
                    except httpx.TransportError:
                        return
                    if r.status_code == 200:
                        acked.append(tid)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        while len(acked) < 60:
            time.sleep(0.05)
        srv.kill()
        stop.set()
        for t in threads:
            t.join(30)
    with running_server(model_dir, db, tmp_path) as srv, httpx.Client(base_url=srv.url) as c:
        missing = [t for t in acked if c.get(f"/tokens/churn/{t}").status_code != 200]
        assert missing == [] and len(acked) >= 60
        sim = c.get("/similar", params={"collection": "churn", "token_id": acked[0], "k": 5}).json()
        assert len(sim["results"]) == 5


def test_put_delete_similar_churn_gives_no_5xx_and_no_ghosts(model_dir, punks, tmp_path):
    db = tmp_path / "c.db"
    data = [punks.image_path(r).read_bytes() for r in punks.rows[:8]]
    with running_server(model_dir, db, tmp_path) as srv:
        with httpx.Client(base_url=srv.url) as c:
            for i in range(8):  # stable tokens the searches start from
                assert (
                    c.put(f"/tokens/stable/{i}", files={"file": ("a.png", data[i], "image/png")}).status_code
                    == 200
                )
        statuses: list[tuple[str, int]] = []
        end = time.time() + 12

        def loop(kind: str) -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                i = 0
                while time.time() < end:
                    tid = str(i % 3)
                    if kind == "put":
                        r = c.put(f"/tokens/hot/{tid}", files={"file": ("a.png", data[i % 8], "image/png")})
                        assert r.status_code != 200 or r.json()["token_id"] == tid
                    elif kind == "delete":
                        r = c.delete(f"/tokens/hot/{tid}")
                    else:
                        r = c.get(
                            "/similar", params={"collection": "stable", "token_id": str(i % 8), "k": 10}
                        )
                        if r.status_code == 200:
                            keys = [(h["collection"], h["token_id"]) for h in r.json()["results"]]
                            assert len(keys) == len(set(keys))
                    statuses.append((kind, r.status_code))
                    i += 1

        threads = [threading.Thread(target=loop, args=(k,)) for k in ("put", "put", "delete", "similar")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        bad = [s for s in statuses if s[1] >= 500 or (s[0] != "delete" and s[1] != 200)]
        assert not bad and len(statuses) > 40, bad[:5]
        with httpx.Client(base_url=srv.url) as c:  # after the churn: every result is a live token
            hits = c.get("/similar", params={"collection": "stable", "token_id": "0", "k": 20}).json()[
                "results"
            ]
            assert all(c.get(f"/tokens/{h['collection']}/{h['token_id']}").status_code == 200 for h in hits)


def test_overload_is_shed_with_503_and_retry_after(model_dir, punks, tmp_path):
    data = punks.image_path(punks.rows[0]).read_bytes()
    env = {"NFTLENS_MAX_BATCH": "1", "NFTLENS_MAX_QUEUE": "1", "NFTLENS_MAX_WAIT_MS": "0"}
    with running_server(model_dir, tmp_path / "c.db", tmp_path, **env) as srv:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
                send = [c.post("/classify", files={"file": ("a.png", data, "image/png")}) for _ in range(48)]
                return await asyncio.gather(*send)

        responses = asyncio.run(burst())
        codes = sorted({r.status_code for r in responses})
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
        for r in responses:
            if r.status_code == 503:
                assert r.json()["error"] == "overloaded" and int(r.headers["Retry-After"]) >= 1
        assert httpx.get(f"{srv.url}/ready").status_code == 200


def test_a_dead_batching_loop_is_restarted_and_unready_meanwhile():
    async def scenario() -> None:
        batcher = MicroBatcher(lambda x: {"y": x * 2}, max_batch=4, max_wait_ms=1)
        batcher.start()
        assert batcher.healthy
        real_collect = batcher._collect

        def broken():
            batcher._collect = real_collect  # fail once, like a bug that kills the loop
            raise RuntimeError("boom")

        batcher._collect = broken
        # the thread is parked inside the real _collect: one request lets it come round to the broken one
        assert (await batcher.submit(np.ones(3, np.float32)))["y"].tolist() == [2, 2, 2]
        await asyncio.sleep(0.03)
        assert not batcher.healthy  # /ready reads this: 503 until the restart
        with pytest.raises(OverloadedError):
            await batcher.submit(np.ones(3, np.float32))
        await asyncio.sleep(0.3)
        assert batcher.healthy and batcher.restarts == 1
        out = await batcher.submit(np.ones(3, np.float32))
        assert out["y"].tolist() == [2, 2, 2]
        await batcher.stop()

    asyncio.run(scenario())


def test_a_put_through_one_worker_is_found_through_every_other_at_once(model_dir, punks, tmp_path):
    """Two uvicorn worker processes, each with its own indexes: every write is searched by both."""
    data = [punks.image_path(r).read_bytes() for r in punks.rows[:12]]
    with running_server(model_dir, tmp_path / "c.db", tmp_path, NFTLENS_WORKERS="2") as srv:
        pids: set[int] = set()
        for i in range(12):
            with httpx.Client(base_url=srv.url) as c:  # a fresh connection: either worker may take it
                assert (
                    c.put(f"/tokens/w/{i}", files={"file": ("a.png", data[i], "image/png")}).status_code
                    == 200
                )
            for _ in range(4):
                with httpx.Client(base_url=srv.url) as c:
                    ready = c.get("/ready").json()
                    pids.add(ready["pid"])
                    assert ready["catalog"]["tokens"] == i + 1
                    hits = c.get("/similar", params={"collection": "w", "token_id": "0", "k": 20}).json()
                    assert len(hits["results"]) == i  # every token but the query itself, in either worker
        assert len(pids) == 2, "both workers should have answered some of the 48 connections"
