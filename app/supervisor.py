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

import contextlib
import logging
import multiprocessing
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

log = logging.getLogger("uvicorn.error")
READY, CLOSED, HANDED = b"r", b"c", b"h"  # worker -> parent: started, closed one; parent -> worker: a socket
STARTUP_FAILURE = 3  # uvicorn's exit code when the app's start-up fails
STOP_GRACE_S = 30.0  # how long stopping workers may finish their requests before they are killed


class HandedServer(uvicorn.Server):
    """A uvicorn server that listens nowhere: its connections arrive over `channel` from the parent."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket):
        super().__init__(config)
        self.channel = channel

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        import asyncio

        await super().startup(sockets=[])  # the app's lifespan, and no listener
        if self.should_exit:
            return
        loop = asyncio.get_running_loop()
        config, channel = self.config, self.channel
        protocol = _reporting(config.http_protocol_class, channel)

        def factory() -> asyncio.Protocol:
            return protocol(
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
            )

        async def connect(sock: socket.socket) -> None:
            try:
                await loop.connect_accepted_socket(factory, sock)
            except OSError:  # the client left before it could be served
                sock.close()
                _tell(channel, CLOSED)

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
                for fd in fds:
                    loop.create_task(connect(socket.socket(fileno=fd)))

        channel.setblocking(False)
        loop.add_reader(channel, take)
        _tell(channel, READY)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        import asyncio

        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.channel)
        await super().shutdown(sockets=None)


def _reporting(protocol_class: type, channel: socket.socket) -> type:
    """`protocol_class` that tells the parent when its connection is closed."""

    class Reporting(protocol_class):  # type: ignore[misc, valid-type]
        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            _tell(channel, CLOSED)

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
    open: int = 0


class Supervisor:
    """Bind the port once, start `workers` processes, hand out connections until told to stop."""

    def __init__(self, config: dict[str, Any], workers: int):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.config, self.count = dict(config), workers
        self.context = multiprocessing.get_context("spawn")
        self.selector = selectors.DefaultSelector()
        self.workers: list[Worker] = []
        self.turn = 0  # which of equally busy workers is next
        self.stopping = False
        self.exit_code = 0

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
                self._hand(conn)

    def _hand(self, conn: socket.socket) -> None:
        ready = [w for w in self.workers if w.ready]
        order = sorted(
            range(len(ready)), key=lambda i: (ready[i].open, (i - self.turn) % len(ready))
        )  # fewest open connections first, then the next in turn
        for i in order:
            worker = ready[i]
            try:
                socket.send_fds(worker.channel, [HANDED], [conn.fileno()])
            except OSError:  # its buffer is full or it just died: the next one
                continue
            worker.open += 1
            self.turn = (i + 1) % len(ready)
            return
        log.warning("no worker could take a connection; closed it")

    def _hear(self, worker: Worker) -> None:
        while True:
            try:
                message = worker.channel.recv(1)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if message == READY:
                worker.ready = True
            elif message == CLOSED:
                worker.open = max(0, worker.open - 1)
            elif not message:  # the worker's end closed: it exited
                self._lost(worker)
                return

    def _lost(self, worker: Worker) -> None:
        self.selector.unregister(worker.channel)
        worker.channel.close()
        self.workers.remove(worker)
        worker.process.join(5)
        if self.stopping:
            return
        if not worker.ready:  # its start-up failed, and a restart would fail the same way
            log.error("a worker failed to start (exit code %s); stopping", worker.process.exitcode)
            self.exit_code, self.stopping = STARTUP_FAILURE, True
            return
        log.warning("worker %s exited with %s; starting another", worker.process.pid, worker.process.exitcode)
        self._start()

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
        self.workers.clear()
        self.selector.close()


def serve(config: dict[str, Any], workers: int) -> None:
    """Run `workers` uvicorn processes of `config` (uvicorn.Config's arguments) behind one port."""
    code = Supervisor(config, workers).run()
    if code:
        sys.exit(code)
