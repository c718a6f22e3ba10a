"""The text classifier's heads compared: out of fold on the train split, and on the held-out split.

    .venv/bin/python bench/text_heads.py [--english-encoder DIR]

Each variant is trained as `ldm_batch.safety.train_text_head` trains the shipped heads (on
what the screen's classifier reads, with the policy's categories, the any-of one included), its
thresholds chosen out of fold on the train split as the trainer chooses them
(`per_category_thresholds`: within the 5% false-positive budget, then the any-of category
lower for the recall target, within the review budget), then read on the held-out split
with those thresholds. The variants:

  two logistic heads   the shipped design: one head on USE multilingual over the prompt, one on
                       the English encoder over its English reading, averaged (trust-weighed)
  one logistic head    one head over both embeddings side by side
  two MLP heads        a hidden layer of 256 (GELU, dropout) in place of each logistic head
  readings as rows     the multilingual head also trained on the English readings of the
                       other languages' prompts

`--english-encoder DIR`: a local sentence-transformers folder (mean pooling) in place of
all-MiniLM-L6-v2 for the English head, e.g. all-mpnet-base-v2. It prints the English
encoder's speed first (prompts/s embedded, as the screen runs it). Figures are the screen's
decision as the trainer reads it (rules, or a category's score at its threshold); they differ
from `ldm-batch eval text-safety` by a prompt or two (minors' context from a classifier hit).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from ldm_batch.config import REPO_POLICIES
from ldm_batch.policies import load_policies
from ldm_batch.safety.text import TextScreen
from ldm_batch.safety.text_classifier import CHUNK, Encoder, mean_pooled, onnx_session, weighed_mean
from ldm_batch.safety.text_eval import load_labelled
from ldm_batch.safety.train_text_head import (_flagged, _probabilities, label_targets, lowest_language_recall,
                                               per_category_thresholds, train_head)


def readings(policies, frame, encoder: Encoder, english) -> dict:
    """The trainer's inputs for these prompts: rules' verdicts, embeddings as written and read in English."""
    screen = TextScreen(policies.model_copy(update={"text_safety": policies.text_safety.model_copy(
        update={"classifier": None})}), REPO_POLICIES)
    prompts = frame["prompt"].tolist()
    rules = screen.screen(prompts)
    as_read = screen.classifier_texts(prompts)
    in_english = [v.gloss or t for v, t in zip(rules, as_read)]
    return {"written": torch.from_numpy(encoder.embed(as_read)), "read": torch.from_numpy(encoder.embed(in_english)),
            "english": english(in_english), "rules": torch.tensor([v.categories != [] for v in rules]),
            "glossed": torch.tensor([v.gloss is not None for v in rules]),
            "trust": torch.tensor([1.0 if v.gloss_translated is None else v.gloss_translated for v in rules]),
            "targets": label_targets(frame["label"], policies.text_safety.classified_categories),
            "languages": frame["language"].tolist(), "units": [c or p for c, p in zip(frame["concept"], prompts)]}


def local_encoder(folder: Path):
    """A local sentence-transformers folder read as the screen reads its English encoder: ONNX
    Runtime, mean pooling (`onnx_session`, `mean_pooled`), in chunks of CHUNK."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    session = onnx_session(AutoModel.from_pretrained(folder).eval(), tokenizer)
    return lambda texts: torch.from_numpy(np.vstack([mean_pooled(session, tokenizer, texts[i:i + CHUNK])
                                                     for i in range(0, len(texts), CHUNK)]))


def prompts_per_second(embed, texts: list[str]) -> float:
    """The English encoder's speed here: the best of two passes over the texts."""
    embed(texts[:CHUNK])
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        embed(texts)
        best = min(best, time.perf_counter() - started)
    return round(len(texts) / best, 1)


class MLP:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int = 400):
        torch.manual_seed(0)
        positives = y.sum(0)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=((len(y) - positives) / positives.clamp(min=1)).clamp(max=3.0))
        self.net = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(),
                                       torch.nn.Dropout(0.3), torch.nn.Linear(256, y.shape[1]))
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=3e-3, weight_decay=1e-4)
        for _ in range(steps):
            loss = loss_fn(self.net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.net.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.net(x))


def logistic(x, y):
    head = train_head(x, y)
    return lambda z: _probabilities(head, z)


def two_heads(make, readings_as_rows=False):
    def fit(d, rows):
        x, y = d["written"][rows], d["targets"][rows]
        if readings_as_rows:
            glossed = d["glossed"][rows]
            x, y = torch.cat([x, d["read"][rows][glossed]]), torch.cat([y, y[glossed]])
        multilingual, english = make(x, y), make(d["english"][rows], d["targets"][rows])
        return lambda e, rows: (multilingual(e["written"][rows]), multilingual(e["read"][rows]),
                                english(e["english"][rows]), True)
    return fit


def one_head(d, rows):
    head = logistic(torch.cat([d["written"][rows], d["english"][rows]], 1), d["targets"][rows])
    return lambda e, rows: (head(torch.cat([e["written"][rows], e["english"][rows]], 1)),
                            head(torch.cat([e["read"][rows], e["english"][rows]], 1)), None, False)


def scores(model, d, rows, from_gloss):
    """Per prompt and category, the probability that fires it: the prompt's, or its gloss's."""
    written, read, english, averaged = model(d, rows)
    if averaged:
        trust = d["trust"][rows].unsqueeze(1)
        written, read = weighed_mean(written, english, trust), weighed_mean(read, english, trust)
    return torch.maximum(written, torch.where(d["glossed"][rows].unsqueeze(1) & from_gloss, read, 0.0))


def figures(d, score, thresholds) -> str:
    flagged, safe = _flagged(score, d["rules"], thresholds), d["targets"].sum(1) == 0
    lowest, recall = lowest_language_recall(flagged, safe, d["languages"])
    return (f"recall {flagged[~safe].float().mean():.3f}, FPR {flagged[safe].float().mean():.3f}, "
            f"lowest language {lowest} {recall:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--english-encoder", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    policies = load_policies(REPO_POLICIES)
    spec = policies.text_safety.classifier
    classified = policies.text_safety.classified_categories.values()
    from_gloss = torch.tensor([c.fired_by_gloss_classifier for c in classified])
    if args.english_encoder:
        english = local_encoder(args.english_encoder)
    else:
        minilm = Encoder(policies, spec.english.encoder)
        english = lambda texts: torch.from_numpy(minilm.embed(texts))  # noqa: E731
    frame = load_labelled(REPO_POLICIES / "text_safety_labelled.csv", list(policies.text_safety.categories))
    encoder = Encoder(policies, spec.encoder)
    train, heldout = (readings(policies, frame[frame["split"] == s], encoder, english) for s in ("train", "heldout"))
    folds = torch.tensor([int(hashlib.sha256(u.encode()).hexdigest()[:8], 16) % 5 for u in train["units"]])
    widened = [bool(c.any_of) for c in classified]
    safe = train["targets"].sum(1) == 0
    speed = prompts_per_second(english, frame["prompt"].tolist()[:640])
    print(f"English encoder: {args.english_encoder or spec.english.encoder}, {speed} prompts/s (ONNX Runtime, "
          f"{torch.get_num_threads()} threads, chunks of {CHUNK})")
    for name, fit in (("two logistic heads", two_heads(logistic)), ("one logistic head", one_head),
                      ("two MLP heads", two_heads(MLP)), ("readings as rows", two_heads(logistic, True))):
        out_of_fold = torch.zeros_like(train["targets"])
        for k in range(5):
            out_of_fold[folds == k] = scores(fit(train, folds != k), train, folds == k, from_gloss)
        thresholds = torch.tensor(per_category_thresholds(out_of_fold, train["rules"], safe, train["languages"],
                                                          widened))
        everything = slice(None)
        held = scores(fit(train, everything), heldout, everything, from_gloss)
        print(f"{name:20} out of fold: {figures(train, out_of_fold, thresholds)}\n"
              f"{'':20} held out:    {figures(heldout, held, thresholds)}", flush=True)


if __name__ == "__main__":
    main()
