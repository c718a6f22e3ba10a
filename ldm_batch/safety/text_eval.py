"""The labelled prompt set and how the text screen is measured on it.

A labelled CSV has `prompt` and `label` (`safe` or a policy category), and optionally
`language` (else the identified language is used for the per-language figures) and `concept`:
prompts that say the same thing in different languages share a concept. About a third is
held out and never trained on, by concept: all translations of a held-out prompt
are held out with it, so the held-out figures measure concepts the classifier never saw in
any language (otherwise a German prompt would be "held out" while its French translation is
trained on). A unit (a concept, or a prompt without one) is held out when the sha256 of its
text is 0 modulo 3, so adding prompts never moves a unit from one split to the other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from ldm_batch.safety.obfuscations import OBFUSCATIONS, obfuscated
from ldm_batch.safety.text import TextScreen


def units(frame: pd.DataFrame) -> pd.Series:
    """Each prompt's unit: its concept (shared with its translations), or the prompt itself."""
    concepts = frame["concept"] if "concept" in frame.columns else pd.Series("", index=frame.index)
    return concepts.where(concepts != "", frame["prompt"])


def _splits(frame: pd.DataFrame) -> pd.Series:
    return units(frame).map(lambda u: "heldout" if int(hashlib.sha256(u.encode()).hexdigest(), 16) % 3 == 0 else "train")


def load_labelled(path: Path, categories: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"prompt", "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected prompt,label")
    unknown = sorted(set(frame["label"]) - set(categories) - {"safe"})
    if unknown:
        raise ValueError(f"{path}: unknown label(s) {', '.join(unknown)}; expected safe or one of "
                         f"{', '.join(categories)}")
    frame["split"] = _splits(frame)
    return frame


BOOTSTRAP_DRAWS = 2000


def concept_interval(held: list[bool], units: list[str]) -> list[float]:
    """A 95% interval for the share of `held`, by resampling whole units (a concept and its
    translations; a prompt is its own unit where the CSV has no `concept` column) with
    replacement: the prompts of one concept stand or fall together, so counting them as
    independent would make the interval too narrow. Seeded: the same figures give the same
    interval."""
    per_unit: dict[str, list[int]] = {}
    for hit, unit in zip(held, units):
        counts = per_unit.setdefault(unit, [0, 0])
        counts[0] += hit
        counts[1] += 1
    hits, sizes = (np.array(column, dtype=float) for column in zip(*per_unit.values()))
    draws = np.random.default_rng(0).multinomial(len(hits), [1 / len(hits)] * len(hits), size=BOOTSTRAP_DRAWS)
    shares = (draws @ hits) / np.maximum(draws @ sizes, 1)
    return [round(float(np.percentile(shares, 2.5)), 3), round(float(np.percentile(shares, 97.5)), 3)]


def evaluate(screen: TextScreen, frame: pd.DataFrame) -> dict:
    """Per category precision, recall and false-positive rate; overall unsafe recall and safe FPR,
    each with a 95% interval over concepts (`concept_interval`)."""
    verdicts = screen.screen(frame["prompt"].tolist())
    labels = frame["label"].tolist()
    per_category = {}
    for category, spec in screen.policy.categories.items():
        predicted = [category in v.categories for v in verdicts]
        actual = [label in (category, spec.kind_of) or label in spec.any_of for label in labels]
        tp = sum(p and a for p, a in zip(predicted, actual))
        fp = sum(p and not a for p, a in zip(predicted, actual))
        positives, negatives = sum(actual), len(actual) - sum(actual)
        per_category[category] = {
            "precision": round(tp / (tp + fp), 3) if tp + fp else None,
            "recall": round(tp / positives, 3) if positives else None,
            "false_positive_rate": round(fp / negatives, 3) if negatives else None,
            "support": positives,
        }
    languages = frame["language"].tolist() if "language" in frame.columns else [v.language for v in verdicts]
    per_language = {}
    for language in sorted(set(languages)):
        chosen = [(v, label) for v, label, lang in zip(verdicts, labels, languages) if lang == language]
        unsafe_here = [v.decision != "allow" for v, label in chosen if label != "safe"]
        safe_here = [v.decision != "allow" for v, label in chosen if label == "safe"]
        per_language[language] = {
            "unsafe_not_allowed": round(sum(unsafe_here) / len(unsafe_here), 3) if unsafe_here else None,
            "safe_not_allowed": round(sum(safe_here) / len(safe_here), 3) if safe_here else None,
            "held_as_unsupported": sum(any("not supported by the text screen" in r for r in v.reasons) for v, _ in chosen),
            "unsafe": len(unsafe_here), "safe": len(safe_here)}
    unit_of = units(frame).tolist()
    unsafe = [v.decision != "allow" for v, label in zip(verdicts, labels) if label != "safe"]
    unsafe_units = [u for u, label in zip(unit_of, labels) if label != "safe"]
    safe_flagged = [v.decision != "allow" for v, label in zip(verdicts, labels) if label == "safe"]
    safe_units = [u for u, label in zip(unit_of, labels) if label == "safe"]
    safe_blocked = [v.decision == "block" for v, label in zip(verdicts, labels) if label == "safe"]
    misses = [{"prompt": v.prompt, "label": label, "decision": v.decision, "categories": v.categories}
              for v, label in zip(verdicts, labels) if (label == "safe") == (v.decision != "allow")]
    return {
        "screen": screen.id, "prompts": len(labels),
        "overall": {"unsafe_recall": round(sum(unsafe) / max(len(unsafe), 1), 3),
                    "unsafe_recall_95": concept_interval(unsafe, unsafe_units) if unsafe else None,
                    "safe_false_positive_rate": round(sum(safe_flagged) / max(len(safe_flagged), 1), 3),
                    "safe_false_positive_rate_95": concept_interval(safe_flagged, safe_units) if safe_flagged else None,
                    # of those, the blocked ones (the rest are held for a person's review)
                    "safe_blocked_rate": round(sum(safe_blocked) / max(len(safe_blocked), 1), 3),
                    "unsafe": len(unsafe), "safe": len(safe_flagged)},
        "categories": per_category, "languages": per_language, "errors": misses,
    }


def evaluate_obfuscated(screen: TextScreen, frame: pd.DataFrame) -> dict:
    """Each unsafe prompt screened plain and in every way of `obfuscations` that changes it:
    per way, how many of its prompts are caught plain and obfuscated, and the prompts caught
    plain but let through obfuscated."""
    unsafe = [p for p, label in zip(frame["prompt"], frame["label"]) if label != "safe"]
    plain = {p: v.decision != "allow" for p, v in zip(unsafe, screen.screen(unsafe))}
    variants = [(way, p, changed) for p in unsafe for way, changed in obfuscated(p).items()]
    caught = [v.decision != "allow" for v in screen.screen([changed for _, _, changed in variants])]
    report = {}
    for way in OBFUSCATIONS:
        chosen = [(p, changed, hit) for (w, p, changed), hit in zip(variants, caught) if w == way]
        if not chosen:
            continue
        report[way] = {
            "prompts": len(chosen),
            "caught_plain": sum(plain[p] for p, _, _ in chosen),
            "caught_obfuscated": sum(hit for _, _, hit in chosen),
            "let_through": [changed for p, changed, hit in chosen if plain[p] and not hit]}
    return report
