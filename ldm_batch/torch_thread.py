"""One thread per process runs all of its torch work: model loading, generation, both screens.

Why: torch's CPU kernels use OpenMP (libgomp in the Linux wheels), which keeps a team of
worker threads for each thread that calls into it. While libgomp manages no more threads
than there are CPUs, idle workers spin between parallel regions; beyond that they sleep, and
each of a pipeline's many small ops pays a wake-up. A second Python thread running torch
adds a second team, and from then on every pipeline call is slower, in every thread:
`bench/torch_threads.py` measures it (1.6x on the demo model, 2 cores). The flow runs
batches in two threads, so one can generate while the other's images are stored; both
send their torch work here. It also makes the calls one at a time, as one device needs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_here = threading.local()


def _start() -> None:
    global _executor
    _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ldm-batch-torch",
                                   initializer=lambda: setattr(_here, "torch_thread", True))


_start()
os.register_at_fork(after_in_child=_start)  # a forked child has no threads: give it its own


def on_torch_thread(fn: Callable[..., T], /, *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` run on the process's torch thread; its result or its exception."""
    if getattr(_here, "torch_thread", False):
        return fn(*args, **kwargs)
    return _executor.submit(fn, *args, **kwargs).result()
