"""`nftlens serve` with several workers: one acceptor hands connections out evenly, restarts a dead worker,
and stops when a worker cannot start (app/supervisor.py). Real processes, real sockets, the shipped model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from benchmarks.serverproc import group_pids
from tests.server import free_port, running_server


def _pids_until(url: str, want: int, timeout: float = 90) -> set[int]:
    """Ask /ready on fresh connections until `want` distinct worker pids answered."""
    pids: set[int] = set()
    deadline = time.time() + timeout
    while len(pids) < want:
        assert time.time() < deadline, f"only {len(pids)} of {want} workers answered"
        try:
            with httpx.Client(base_url=url, timeout=10) as c:
                pids.add(c.get("/ready").json()["pid"])
        except httpx.TransportError:  # a connection handed to a worker that just died
            pass
        time.sleep(0.05)
    return pids


def test_keep_alive_connections_split_evenly_and_a_dead_worker_is_replaced(model_dir, tmp_path):
    with running_server(model_dir, tmp_path / "c.db", tmp_path, NFTLENS_WORKERS="2") as srv:
        first = _pids_until(srv.url, 2)
        time.sleep(0.5)  # the polls' connections are closed and reported
        clients = [httpx.Client(base_url=srv.url, timeout=10) for _ in range(8)]
        try:  # eight connections held open at once, as a backend's pool or wrk holds them
            seen = Counter(c.get("/ready").json()["pid"] for c in clients)
            assert sorted(seen.values()) == [4, 4], seen
            again = Counter(c.get("/ready").json()["pid"] for c in clients)
            assert again == seen  # keep-alive: each connection stays with its worker
        finally:
            for c in clients:
                c.close()

        # least open connections, not turns: two held on one worker, two on the other; the first worker's
        # two close, so both of the next two connections go to it
        held = [httpx.Client(base_url=srv.url, timeout=10) for _ in range(4)]
        try:
            owners = [c.get("/ready").json()["pid"] for c in held]
            assert sorted(Counter(owners).values()) == [2, 2], owners
            lighter = owners[0]
            for c, pid in zip(held, owners, strict=True):
                if pid == lighter:
                    c.close()
            time.sleep(0.5)  # the closes are reported
            fresh = [httpx.Client(base_url=srv.url, timeout=10) for _ in range(2)]
            try:
                assert [c.get("/ready").json()["pid"] for c in fresh] == [lighter, lighter]
            finally:
                for c in fresh:
                    c.close()
        finally:
            for c in held:
                c.close()

        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        now = _pids_until(srv.url, 2)  # the other worker answers meanwhile; a new one joins
        assert victim not in now and len(now - first) == 1
        assert srv.proc.poll() is None


def test_a_worker_that_cannot_start_stops_the_server(tmp_path):
    env = {
        **os.environ,
        "NFTLENS_MODEL_DIR": str(tmp_path / "no-model"),
        "NFTLENS_CATALOG": str(tmp_path / "c.db"),
        "NFTLENS_PORT": str(free_port()),
        "NFTLENS_WORKERS": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "failed to start" in proc.stderr


@pytest.mark.parametrize("workers", [0, -1])
def test_a_supervisor_needs_a_worker(workers):
    from app.supervisor import Supervisor

    with pytest.raises(ValueError, match="at least 1"):
        Supervisor({"app": "app.main:create_app"}, workers)


def test_sigterm_to_the_supervisor_alone_stops_every_worker(model_dir, tmp_path):
    """`docker stop` signals PID 1 only: the workers must go with it, and the port must be freed."""
    with running_server(model_dir, tmp_path / "c.db", tmp_path, NFTLENS_WORKERS="2") as srv:
        workers = _pids_until(srv.url, 2)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0
        deadline = time.time() + 10
        while left := workers & set(group_pids(srv.proc.pid)):
            assert time.time() < deadline, f"workers {left} outlived their supervisor"
            time.sleep(0.1)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{srv.url}/ready", timeout=2)
