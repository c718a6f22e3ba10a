"""Why a little work beside generation costs more than its share on a machine with few cores.

    .venv/bin/python bench/interference.py

The same pipeline calls (the demo model, 8 prompts, 20 steps, torch's default threads: one
per core) timed alone and while another process keeps one core busy for a share of every
10 ms (5%, 10%, 20%), in interleaved rounds (medians), as the flow's own threads (PNG
encoding, S3 and audit clients, Prefect's task states), the Prefect server and SeaweedFS do
during a flow run. Prints each
slowdown against the share of one core taken (`cpu_share_of_2_cores`): torch's parallel
regions wait at every barrier for their slowest thread, so a thread that loses its core for
a moment holds up all of them.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

from throughput import call, load_pipeline, sheet_rows, timed

REPEATS = 4
ROUNDS = 5
SHARES = (0, 0.05, 0.10, 0.20)
BURNER = """
import sys, time
busy = float(sys.argv[1]) * 0.010
while True:
    until = time.perf_counter() + busy
    while time.perf_counter() < until:
        pass
    time.sleep(0.010 - busy)
"""


def main() -> None:
    one = ThreadPoolExecutor(1)  # the pipeline on one thread, as the product's torch thread
    pipe, _ = one.submit(load_pipeline).result()
    prompts = [prompt for _, prompt, _ in sheet_rows(8)]

    def calls(share: float) -> float:
        burner = subprocess.Popen([sys.executable, "-c", BURNER, str(share)]) if share else None
        try:
            return one.submit(lambda: timed(lambda: [call(pipe, prompts, list(range(8)))
                                                     for _ in range(REPEATS)])).result()
        finally:
            if burner:
                burner.kill()
                burner.wait()

    calls(0)  # warm-up
    # interleaved rounds, medians: this machine's own noise is as large as the effect
    seconds = {share: [] for share in SHARES}
    for _ in range(ROUNDS):
        for share in SHARES:
            seconds[share].append(calls(share))
    alone = statistics.median(seconds[0])
    print(json.dumps({"threads": torch.get_num_threads(), "pipeline_calls": REPEATS, "rounds": ROUNDS,
                      "seconds_alone": round(alone, 2), **{
                          f"one_core_{int(share * 100)}pct_busy": {
                              "seconds": round(statistics.median(seconds[share]), 2),
                              "slowdown": round(statistics.median(seconds[share]) / alone, 3),
                              "cpu_share_of_2_cores": share / 2}
                          for share in SHARES if share}}))


if __name__ == "__main__":
    main()
