"""Measure the image screen on labelled images: DIR/<label>/*.png, where a label is a
concept category of policies/image_safety.yaml or "safe".

Per concept: recall and false-positive rate at its policy threshold, and a suggested
threshold: the lowest that keeps the false-positive rate at or under the target. Files named
GROUP-N.png (e.g. `corner-512-3.png`, as `python -m ldm_batch.demo_kit.world` writes them)
are also reported per group: recall and false-positive rate per variation and size.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ldm_batch.safety.image import ImageScreen

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def load_labelled_images(directory: Path) -> list[tuple[str, Path]]:
    items = [(folder.name, path) for folder in sorted(directory.iterdir()) if folder.is_dir()
             for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise ValueError(f"{directory}: no images found; expected {directory}/<label>/*.png")
    return items


def evaluate(screen: ImageScreen, items: list[tuple[str, Path]], target_fpr: float = 0.05,
             batch: int = 64) -> dict:
    labels = [label for label, _ in items]
    groups = [path.stem.rsplit("-", 1)[0] if "-" in path.stem else "all" for _, path in items]
    scores: list[dict[str, float]] = []
    for start in range(0, len(items), batch):
        scores += screen.scores([Image.open(path).convert("RGB") for _, path in items[start : start + batch]])
    report = {}
    for concept in screen.policy.concepts:
        positive = [s[concept.text] for s, label in zip(scores, labels) if label == concept.category]
        negative = sorted((s[concept.text] for s, label in zip(scores, labels) if label != concept.category),
                          reverse=True)
        allowed_false = int(target_fpr * len(negative))
        # just above the (allowed_false+1)-th highest negative score keeps FPR within target
        suggested = min(1.0, negative[allowed_false] + 1e-6) if len(negative) > allowed_false else 0.0
        report[concept.text] = {
            "category": concept.category, "threshold": concept.threshold,
            **_rates(concept, list(zip(scores, labels))),
            "suggested_threshold": round(suggested, 4),
            "recall_at_suggested": round(sum(p >= suggested for p in positive) / len(positive), 3) if positive else None,
            "groups": {group: _rates(concept, [(s, label) for s, label, g in zip(scores, labels, groups) if g == group])
                       for group in sorted(set(groups), key=_group_order)},
        }
    return {"screen": screen.screen, "images": len(items), "target_fpr": target_fpr, "concepts": report}


def _group_order(group: str) -> tuple:
    name, _, size = group.rpartition("-")
    return (name, int(size)) if size.isdigit() else (group, 0)


def _rates(concept, scored: list[tuple[dict[str, float], str]]) -> dict:
    positive = [s[concept.text] >= concept.threshold for s, label in scored if label == concept.category]
    negative = [s[concept.text] >= concept.threshold for s, label in scored if label != concept.category]
    return {"recall": round(sum(positive) / len(positive), 3) if positive else None,
            "false_positive_rate": round(sum(negative) / len(negative), 3) if negative else None,
            "positives": len(positive), "negatives": len(negative)}
