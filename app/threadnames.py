"""Name the service's threads for the operating system, so `top -H`, py-spy and
`python -m benchmarks.profile threads` show which is which (Python only names them for itself)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_PR_SET_NAME = 15  # prctl(2)


def name_this_thread(name: str) -> None:
    """Give the calling thread an OS-visible name (Linux: at most 15 bytes, longer is cut); elsewhere a
    no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):  # no libc or no prctl: the name is only a convenience
        pass
