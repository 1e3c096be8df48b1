"""Name the service's threads for the operating system, so `top -H`, py-spy and
`python -m benchmarks.profile threads` show which is which (Python only names them for itself)."""

from __future__ import annotations

import ctypes
import functools
import sys

_PR_SET_NAME = 15  # prctl(2)


@functools.cache
def _prctl():
    """libc's prctl, looked up once (None where there is none)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # the libc this process already has loaded
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def name_this_thread(name: str) -> None:
    """Give the calling thread an OS-visible name (Linux: at most 15 bytes, longer is cut); elsewhere a
    no-op. Never raises: it runs as a thread pool's initializer, where an error would break the pool."""
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = _prctl()
        if prctl is not None:
            prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except Exception:  # the name is only a convenience
        pass
