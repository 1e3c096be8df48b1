"""The real service in a subprocess, for HTTP tests (the same helper the benchmarks use)."""

from benchmarks.serverproc import Server, free_port, running_server

__all__ = ["Server", "free_port", "running_server"]
