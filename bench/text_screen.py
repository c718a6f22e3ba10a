"""Text screen throughput: prompts per second, rules alone and rules + classifier.

    .venv/bin/python bench/text_screen.py [--repeats 3] [--prompts CSV]

Runs the labelled prompt set (or another CSV with a `prompt` column) through
`TextScreen.screen` in batches of 1 and 64 and prints one JSON object; where the CSV has a
`label` column, also its safe prompts alone in batches of 64 (a campaign sheet is mostly safe
prompts, which the English head mostly does not need to read). Figures are from one run on one
machine; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from ldm_batch.config import REPO_POLICIES
from ldm_batch.policies import load_policies
from ldm_batch.safety.text import TextScreen


def throughput(screen: TextScreen, prompts: list[str], batch: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(prompts), batch):
            screen.screen(prompts[i : i + batch])
        best = min(best, time.perf_counter() - started)
    return round(len(prompts) / best, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=Path, default=REPO_POLICIES / "text_safety_labelled.csv")
    args = parser.parse_args()
    policies = load_policies(REPO_POLICIES)
    sheet = pd.read_csv(args.prompts, dtype=str, keep_default_na=False)
    prompts = sheet["prompt"].tolist()
    with_classifier = TextScreen(policies, REPO_POLICIES)
    rules_only = TextScreen(policies.model_copy(update={"text_safety": policies.text_safety.model_copy(
        update={"classifier": None})}), REPO_POLICIES)
    result = {"prompts": len(prompts), "torch_threads": torch.get_num_threads()}
    for name, screen in (("rules", rules_only), ("rules+classifier", with_classifier)):
        for batch in (1, 64):
            result[f"{name} batch {batch} prompts/s"] = throughput(screen, prompts, batch, args.repeats)
    if "label" in sheet.columns:
        safe = sheet.loc[sheet["label"] == "safe", "prompt"].tolist()
        result["safe prompts"] = len(safe)
        result["rules+classifier batch 64 safe prompts/s"] = throughput(with_classifier, safe, 64, args.repeats)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
