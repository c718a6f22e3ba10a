"""Train the text screen's classifier head: `python -m ldm_batch.safety.train_text_head`.

One logistic regression per policy category over the sentence encoder's embeddings,
trained on the train split of policies/text_safety_labelled.csv (safe prompts are
negatives for every category). Writes the head named in policies/text_safety.yaml.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from ldm_batch.config import REPO_POLICIES
from ldm_batch.catalog import weights_sha256
from ldm_batch.policies import load_policies
from ldm_batch.safety.text import rule_hits, without_allowed_phrases
from ldm_batch.safety.text_classifier import Encoder
from ldm_batch.safety.text_eval import load_labelled


def train_head(embeddings: torch.Tensor, targets: torch.Tensor, steps: int = 600, weight_decay: float = 1e-5):
    torch.manual_seed(0)
    positives = targets.sum(dim=0)
    pos_weight = ((len(targets) - positives) / positives.clamp(min=1)).clamp(max=3.0)
    linear = torch.nn.Linear(embeddings.shape[1], targets.shape[1])
    optimizer = torch.optim.Adam(linear.parameters(), lr=0.05, weight_decay=weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    for _ in range(steps):
        loss = loss_fn(linear(embeddings), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return linear.weight.detach().contiguous(), linear.bias.detach().contiguous(), loss.item()


def cross_validate(embeddings: torch.Tensor, targets: torch.Tensor, rule_flags: torch.Tensor,
                   english: torch.Tensor, units: list[str], folds: int = 5) -> None:
    """Out-of-fold scores on the train split, with the rules, to choose the classifier's
    threshold, in English and in the other languages, without looking at the held-out part.
    Folds go by unit (a concept and its translations together, as the held-out split does)."""
    fold_of = torch.tensor([int(hashlib.sha256(u.encode()).hexdigest()[:8], 16) % folds for u in units])
    scores = torch.zeros_like(targets)
    for k in range(folds):
        test = torch.nonzero(fold_of == k).flatten()
        train = torch.nonzero(fold_of != k).flatten()
        weight, bias, _ = train_head(embeddings[train], targets[train])
        scores[test] = torch.sigmoid(embeddings[test] @ weight.T + bias)
    safe = targets.sum(dim=1) == 0
    for threshold in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        flagged = (scores >= threshold).any(dim=1) | rule_flags
        figures = [f"{name} unsafe recall {flagged[~safe & group].float().mean():.3f}, "
                   f"safe false-positive rate {flagged[safe & group].float().mean():.3f}"
                   for name, group in (("English", english), ("other languages", ~english))]
        print(f"threshold {threshold}, out of fold, rules + classifier: {'; '.join(figures)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=Path, default=REPO_POLICIES)
    parser.add_argument("--labelled", type=Path, default=None, help="default: <policies>/text_safety_labelled.csv")
    args = parser.parse_args(argv)
    policies = load_policies(args.policies)
    spec = policies.text_safety.classifier
    if spec is None or spec.kind != "embedding-head":
        raise SystemExit("policies/text_safety.yaml names no embedding-head classifier to train")
    categories = list(policies.text_safety.categories)
    frame = load_labelled(args.labelled or args.policies / "text_safety_labelled.csv", categories)
    train = frame[frame["split"] == "train"]
    encoder = Encoder(policies, spec.encoder)
    embeddings = torch.from_numpy(encoder.embed(train["prompt"].tolist()))
    targets = torch.tensor([[float(label == c) for c in categories] for label in train["label"]])
    rule_flags = torch.tensor([bool(rule_hits(without_allowed_phrases(p, policies.text_safety), policies.text_safety))
                               for p in train["prompt"]])
    languages = train["language"] if "language" in train.columns else ["en"] * len(train)
    concepts = train["concept"] if "concept" in train.columns else [""] * len(train)
    cross_validate(embeddings, targets, rule_flags, torch.tensor([language == "en" for language in languages]),
                   [concept or prompt for concept, prompt in zip(concepts, train["prompt"])])
    weight, bias, loss = train_head(embeddings, targets)
    digest = hashlib.sha256(weight.numpy().tobytes() + bias.numpy().tobytes()).hexdigest()
    out = args.policies / spec.head
    save_file({"weight": weight, "bias": bias}, str(out), metadata={
        "categories": ",".join(categories), "encoder_sha256": encoder.sha256, "head_sha256": digest,
        "train_prompts": str(len(train))})
    print(f"trained on {len(train)} prompts ({int(targets.sum())} unsafe), final loss {loss:.4f}; wrote {out}")
    print(f"pin it in text_safety.yaml: classifier.head_sha256: {weights_sha256(out)}")


if __name__ == "__main__":
    main()
