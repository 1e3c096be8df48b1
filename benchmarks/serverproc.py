"""Run `nftlens serve` in a subprocess and wait until it is ready (benchmarks and tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run (a crash)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@contextmanager
def serving(
    cmd: list[str], url: str, ready_path: str, log: Path, timeout: float = 90, env: dict | None = None
):
    """Run a server command, wait until `url + ready_path` answers 200, yield the process; stop it after."""
    with open(log, "wb") as fh:
        # its own process group: stopping it also stops any workers it spawned (LitServe's, uvicorn's)
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server not ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        _reap_group(proc.pid)


def group_pids(pgid: int) -> list[int]:
    """The running processes of process group `pgid`, from /proc (zombies, which hold no CPU, left out)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies do not count)."""
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    return bool(group_pids(pgid))


def _reap_group(pgid: int, timeout: float = 15) -> None:
    """Wait until every process of the group (workers included) is gone, then SIGKILL what is left: a
    measurement that follows must not share the cores with a server still shutting down."""
    deadline = time.time() + timeout
    while _group_alive(pgid):
        if time.time() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(0.1)


@contextmanager
def running_server(model_dir: Path, catalog: Path | str, log_dir: Path, timeout: float = 90, **env: str):
    """Start the service on a free loopback port; yield a `Server` once /ready answers 200."""
    port = free_port()
    log = Path(log_dir) / f"server-{port}.log"
    full_env = {
        **os.environ,
        "NFTLENS_MODEL_DIR": str(model_dir),
        "NFTLENS_CATALOG": str(catalog),
        "NFTLENS_HOST": "127.0.0.1",
        "NFTLENS_PORT": str(port),
        "NFTLENS_LOG_LEVEL": "warning",
        **env,
    }
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "app.cli", "serve"]
    with serving(cmd, url, "/ready", log, timeout, full_env) as proc:
        yield Server(proc, url, log)
