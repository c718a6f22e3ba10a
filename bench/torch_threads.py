"""Why the product runs all torch work on one thread (`ldm_batch.torch_thread`).

    .venv/bin/python bench/torch_threads.py

The same pipeline calls (the demo model, 8 prompts, 20 steps), timed on one thread; then a
second, long-lived thread runs a single torch op (as a flow's second batch thread would);
then the same calls again on the first thread. Prints seconds of each and their ratio
(`slowdown_after_second_thread`): above 1, torch's OpenMP workers stopped spinning between
ops because libgomp now manages more threads than there are CPUs.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from throughput import call, load_pipeline, sheet_rows, timed

REPEATS = 5


def main() -> None:
    first = ThreadPoolExecutor(1)
    pipe, _ = first.submit(load_pipeline).result()
    prompts = [prompt for _, prompt, _ in sheet_rows(8)]

    def calls() -> float:
        return timed(lambda: [call(pipe, prompts, list(range(8))) for _ in range(REPEATS)])

    first.submit(calls).result()  # warm-up
    alone = first.submit(calls).result()

    done = threading.Event()

    def second_thread() -> None:
        torch.randn(512, 512) @ torch.randn(512, 512)  # one op that uses the intra-op threads
        done.wait()  # stays alive, as a flow's thread pool does

    threading.Thread(target=second_thread, daemon=True).start()
    shared = first.submit(calls).result()
    done.set()
    print(json.dumps({"threads": torch.get_num_threads(), "pipeline_calls": REPEATS, "seconds_one_thread": round(alone, 2),
                      "seconds_after_second_thread": round(shared, 2),
                      "slowdown_after_second_thread": round(shared / alone, 2)}))


if __name__ == "__main__":
    main()
