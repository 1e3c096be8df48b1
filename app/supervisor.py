"""Several server processes behind one port, each new connection handed to the least busy one.

uvicorn's own supervisor lets every worker accept from one shared listening socket. Whichever worker wakes
first takes every connection waiting (asyncio accepts up to a backlog's worth per wake-up), so a few
long-lived keep-alive connections (a backend's connection pool, a load generator) often land on one worker
while the other idles: `reports/bench/PROFILE.md` once saw all 8 of wrk's connections on one of two
workers. Here the parent process alone accepts. It hands each connection's file descriptor (SCM_RIGHTS over
a Unix SEQPACKET socketpair) to the ready worker with the fewest open connections, turn by turn among
equals. Each worker runs an ordinary uvicorn `Server` with no listening socket of its own and reports every
connection it closes. The parent restarts a worker that dies after start-up, stops everything if one fails
its start-up (a bad model folder would fail every restart too), and stops the workers on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import select
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.server import STARTUP_FAILURE  # its exit code when the app's start-up fails

from app.metrics import forget_process

log = logging.getLogger("uvicorn.error")
# worker -> parent: started; stopping; "c" + how many handed connections it has closed so far (a total, so
# a report lost to a full channel is made good by the next one). parent -> worker: one socket.
READY, STOPPING, CLOSED, HANDED = b"r", b"s", b"c", b"h"
STOP_GRACE_S = 30.0  # how long stopping workers may finish their requests before they are killed
HAND_WAIT_S = 10.0  # every worker's channel full (overload): how long accepting waits for room
MAX_RESTARTS = 5  # a worker that keeps dying is restarted this many times in a row, with growing pauses:
RESTART_PAUSE_S, RESTART_PAUSE_MAX_S = 0.5, 30.0  # the first pause, doubled each time up to this


class HandedServer(uvicorn.Server):
    """A uvicorn server that listens nowhere: its connections arrive over `channel` from the parent."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket):
        super().__init__(config)
        self.channel = channel

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the app's lifespan, and no listener
        if self.should_exit:
            return
        loop = asyncio.get_running_loop()
        config, channel = self.config, self.channel
        closed = 0

        def done() -> None:
            nonlocal closed
            closed += 1
            _tell(channel, CLOSED + str(closed).encode())

        protocol = _reporting(config.http_protocol_class, done)

        def factory() -> asyncio.Protocol:
            return protocol(
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
            )

        async def connect(sock: socket.socket) -> None:
            try:
                await loop.connect_accepted_socket(factory, sock, ssl=config.ssl)
            except OSError:  # the client left before it could be served
                sock.close()
                done()

        def take() -> None:
            while True:
                try:
                    message, fds, _, _ = socket.recv_fds(channel, 1, 1)
                except BlockingIOError:
                    return
                except OSError:
                    message, fds = b"", []
                if not message:  # the parent is gone: nobody will hand over connections any more
                    loop.remove_reader(channel)
                    self.should_exit = True
                    return
                if not fds:  # the descriptor was dropped on the way (this process is out of them)
                    done()
                for fd in fds:
                    loop.create_task(connect(socket.socket(fileno=fd)))

        channel.setblocking(False)
        loop.add_reader(channel, take)
        _tell(channel, READY)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        _tell(self.channel, STOPPING)  # hand nothing more to this one
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.channel)
        await super().shutdown(sockets=None)


def _reporting(protocol_class: type, done: Callable[[], None]) -> type:
    """`protocol_class` that calls `done` once its connection is closed."""

    class Reporting(protocol_class):  # type: ignore[misc, valid-type]
        def connection_lost(self, exc: Exception | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                done()

    return Reporting


def _tell(channel: socket.socket, message: bytes) -> None:
    with contextlib.suppress(OSError):  # the parent is gone or busy: it will count again on restart
        channel.send(message)


def _worker(channel: socket.socket, config: dict[str, Any]) -> None:
    """Entry point of a worker process (spawned: a fresh interpreter, no state forked from the parent)."""
    HandedServer(uvicorn.Config(**config), channel).run()


@dataclass
class Worker:
    process: multiprocessing.process.BaseProcess
    channel: socket.socket
    ready: bool = False
    handed: int = 0  # connections handed to it
    closed: int = 0  # of those, closed (its latest report)

    @property
    def open(self) -> int:
        return self.handed - self.closed


class Supervisor:
    """Bind the port once, start `workers` processes, hand out connections until told to stop."""

    def __init__(self, config: dict[str, Any], workers: int):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        # no WebSocket upgrades: the API has no WebSocket route, and an upgraded connection would swap
        # out the protocol that reports its close
        self.config, self.count = {**config, "ws": "none"}, workers
        self.context = multiprocessing.get_context("spawn")
        self.selector = selectors.DefaultSelector()
        self.workers: list[Worker] = []
        self.turn = 0  # which of equally busy workers is next
        self.stopping = False
        self.exit_code = 0
        self.served = False  # some worker has started: a later failed start is a crash, not bad settings
        self.failures = 0  # workers lost in a row without one becoming ready since
        self.starts: list[float] = []  # when to start the replacements waiting out their pause

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM (or a worker's failed start-up); returns the exit code."""
        config = uvicorn.Config(**self.config)
        listener = config.bind_socket()  # logs "Uvicorn running on ..."
        listener.listen(config.backlog)
        listener.setblocking(False)
        self.config["port"] = listener.getsockname()[1]  # port 0 resolved: workers log the real one
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for _ in range(self.count):
                self._start()
            accepting = False
            while not self.stopping:
                want = any(w.ready for w in self.workers)
                if want != accepting:  # accept only while a worker can take what is accepted
                    if want:
                        self.selector.register(listener, selectors.EVENT_READ)
                    else:
                        self.selector.unregister(listener)
                    accepting = want
                for key, _ in self.selector.select(timeout=0.5):
                    if key.fileobj is listener:
                        self._accept(listener)
                    else:
                        self._hear(key.data)
                now = time.monotonic()
                for due in [t for t in self.starts if t <= now and not self.stopping]:
                    self.starts.remove(due)
                    self._start()
        finally:
            listener.close()
            self._stop_workers()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.exit_code

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self.context.Process(target=_worker, args=(child, self.config), name="nftlens-worker")
        process.start()
        child.close()  # only the worker holds it now: its death reads as end-of-file here
        parent.setblocking(False)
        worker = Worker(process, parent)
        self.workers.append(worker)
        self.selector.register(parent, selectors.EVENT_READ, worker)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: leave it in the backlog a moment
                log.warning("accept failed: %s", exc)
                time.sleep(0.1)
                return
            with conn:  # the worker holds its own duplicate once handed
                if not self._hand(conn):
                    return  # overloaded: what waits stays in the kernel's backlog for now

    def _hand(self, conn: socket.socket) -> bool:
        """Hand `conn` to the least busy ready worker; with every channel full, wait a while for room."""
        deadline = time.monotonic() + HAND_WAIT_S
        while True:
            ready = [w for w in self.workers if w.ready]
            order = sorted(range(len(ready)), key=lambda i: (ready[i].open, (i - self.turn) % len(ready)))
            for i in order:  # fewest open connections first, then the next in turn
                worker = ready[i]
                try:
                    socket.send_fds(worker.channel, [HANDED], [conn.fileno()])
                except OSError:  # its channel is full or it just died: the next one
                    continue
                worker.handed += 1
                self.turn = (i + 1) % len(ready)
                return True
            left = deadline - time.monotonic()
            if not ready or left <= 0:
                log.warning("no worker could take a connection in %.0f s; closed it", HAND_WAIT_S)
                return False
            for worker in ready:  # the workers' reports keep the counts right while we wait
                self._hear(worker)
            select.select([], [w.channel for w in ready], [], min(left, 0.5))

    def _hear(self, worker: Worker) -> None:
        while worker in self.workers:
            try:
                message = worker.channel.recv(32)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if message == READY:
                worker.ready, self.served, self.failures = True, True, 0
            elif message == STOPPING:
                worker.ready = False
            elif message.startswith(CLOSED):
                worker.closed = max(worker.closed, int(message[1:]))
            elif not message:  # the worker's end closed: it exited
                self._lost(worker)

    def _lost(self, worker: Worker) -> None:
        self.selector.unregister(worker.channel)
        worker.channel.close()
        self.workers.remove(worker)
        worker.process.join(5)
        forget_process(worker.process.pid)
        if self.stopping:
            return
        code = worker.process.exitcode
        if not self.served:  # the first start-up failed: bad settings fail every restart the same way
            log.error("a worker failed to start (exit code %s); stopping", code)
            self.exit_code, self.stopping = STARTUP_FAILURE, True
            return
        self.failures += 1
        if self.failures > MAX_RESTARTS:
            log.error("workers keep exiting (%d in a row); stopping", self.failures)
            self.exit_code, self.stopping = 1, True
            return
        pause = min(RESTART_PAUSE_MAX_S, RESTART_PAUSE_S * 2 ** (self.failures - 1))
        log.warning("worker %s exited with %s; starting another in %.1f s", worker.process.pid, code, pause)
        self.starts.append(time.monotonic() + pause)

    def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.channel.close()
            forget_process(worker.process.pid)
        self.workers.clear()
        self.selector.close()


def serve(config: dict[str, Any], workers: int) -> None:
    """Run `workers` uvicorn processes of `config` (uvicorn.Config's arguments) behind one port."""
    code = Supervisor(config, workers).run()
    if code:
        sys.exit(code)
