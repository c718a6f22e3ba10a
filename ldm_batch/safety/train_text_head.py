"""Train the text screen's classifier heads: `python -m ldm_batch.safety.train_text_head`.

One logistic regression per policy category over a sentence encoder's embeddings, trained
on the train split of policies/text_safety_labelled.csv (safe prompts are negatives for
every category; an any-of category's positives are the prompts of all its categories). Each
head reads what it will read in the screen (`TextScreen.classifier_texts`: the prompt's words
as the rules fold them, allowed phrases left out): the multilingual head the prompt, the
English head (when the policy names one) its English reading: the prompt itself when it is
English, else its translation or word-by-word gloss (weighed, in the screen, by the share of
the prompt it translated). Writes the heads named in policies/text_safety.yaml.

Before writing, it prints out-of-fold figures on the train split (rules + classifier, as the
screen decides) with the policy's thresholds shifted by -0.25 to +0.15, and a threshold per
category chosen out of fold (`per_category_thresholds`): the policy's thresholds are those,
chosen without looking at the held-out split.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from ldm_batch.catalog import weights_sha256
from ldm_batch.config import REPO_POLICIES
from ldm_batch.policies import Policies, TextCategory, load_policies
from ldm_batch.safety.text import TextScreen
from ldm_batch.safety.text_classifier import Encoder, english_can_matter, weighed_mean
from ldm_batch.safety.text_eval import load_labelled

SHIFTS = (-0.25, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15)
GRID = tuple(round(0.35 + 0.05 * i, 2) for i in range(12))  # 0.35 .. 0.9
FALSE_POSITIVE_BUDGET = 0.05  # the target, out of fold, in English and in the other languages
RECALL_TARGET = 0.95  # the unsafe recall target, out of fold, over all prompts ...
LANGUAGE_RECALL_TARGET = 0.9  # ... and in every language: where the budget keeps them from holding, recall wins
REVIEW_BUDGET = 0.10  # ... up to this share of safe prompts held (for review or blocked), in each group
SKIP_BELOW = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)  # english_skip_below's candidates


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


def label_targets(labels, categories: dict[str, TextCategory]) -> torch.Tensor:
    """Per prompt, a 0/1 target per category: 1 for its label's category, and 1 for an
    any-of category (`any_of`) when its label is one of that category's."""
    return torch.tensor([[float(label == name or label in category.any_of) for name, category in categories.items()]
                         for label in labels])


def _probabilities(head, embeddings: torch.Tensor) -> torch.Tensor:
    weight, bias, _ = head
    return torch.sigmoid(embeddings @ weight.T + bias)


def cross_validate(inputs: dict[str, torch.Tensor], targets: torch.Tensor, policies: Policies,
                   rule_flags: torch.Tensor, languages: list[str], glossed: torch.Tensor, trust: torch.Tensor,
                   units: list[str], folds: int = 5) -> None:
    """Out-of-fold scores on the train split, read as the screen reads them: the prompt (and its
    gloss, which fires no category of context or of names), the two heads averaged where there are two, the
    English one weighed by `trust` (the share its gloss translated). Folds go by unit (a
    concept and its translations together, as the held-out split does)."""
    fold_of = torch.tensor([int(hashlib.sha256(u.encode()).hexdigest()[:8], 16) % folds for u in units])
    written, glossed_text = torch.zeros_like(targets), torch.zeros_like(targets)  # the multilingual head's
    reading = torch.zeros_like(targets)  # the English head's
    for k in range(folds):
        test, train = fold_of == k, fold_of != k
        multilingual = train_head(inputs["multilingual"][train], targets[train])
        written[test] = _probabilities(multilingual, inputs["multilingual"][test])
        glossed_text[test] = _probabilities(multilingual, inputs["gloss"][test])
        if "english" in inputs:
            english = train_head(inputs["english"][train], targets[train])
            reading[test] = _probabilities(english, inputs["english"][test])
    categories = policies.text_safety.classified_categories
    thresholds = torch.tensor([c.threshold for c in categories.values()])
    from_gloss = torch.tensor([c.fired_by_gloss_classifier for c in categories.values()])

    def scored(skip_below: float | None) -> torch.Tensor:
        """Per prompt and category, the probability that fires it: the prompt's, or its gloss's;
        the English head read where the screen reads it (`english_can_matter`; None: for every text)."""
        texts = []
        for multilingual in (written, glossed_text):
            if "english" not in inputs:
                texts.append(multilingual)
                continue
            read = torch.ones(len(trust), dtype=torch.bool) if skip_below is None else torch.from_numpy(
                english_can_matter(multilingual.numpy(), trust.numpy(), thresholds.numpy(), skip_below))
            texts.append(torch.where(read.unsqueeze(1), weighed_mean(multilingual, reading, trust.unsqueeze(1)),
                                     multilingual))
        return torch.maximum(texts[0], torch.where(glossed.unsqueeze(1) & from_gloss, texts[1], 0.0))

    score = scored(None)
    safe = targets.sum(dim=1) == 0
    for shift in SHIFTS:
        figures = _figures(_flagged(score, rule_flags, thresholds + shift), safe, languages)
        print(f"thresholds {shift:+.2f}, out of fold, rules + classifier: {figures}")
    chosen = per_category_thresholds(score, rule_flags, safe, languages, [bool(c.any_of) for c in categories.values()])
    print("per-category thresholds, out of fold: " + ", ".join(f"{c} {t}" for c, t in zip(categories, chosen)))
    print(f"  at them: {_figures(_flagged(score, rule_flags, torch.tensor(chosen)), safe, languages)}")
    if "english" in inputs:
        print(f"english.skip_below, out of fold: {english_skip_below(scored, thresholds)}")


def english_skip_below(scored, thresholds: torch.Tensor) -> float:
    """The highest of SKIP_BELOW up to which the English head, read only where it could matter
    (`english_can_matter`), fires the same categories on every prompt out of fold, at the
    policy's thresholds, as when it reads every text."""
    everywhere = scored(None) >= thresholds
    chosen = 0.0
    for floor in SKIP_BELOW:
        changed = int(((scored(floor) >= thresholds) != everywhere).any(dim=1).sum())
        print(f"  skip_below {floor}: {changed} prompts fire other categories than with the English head read for all")
        if changed:
            break
        chosen = floor
    return chosen


def _flagged(score: torch.Tensor, rule_flags: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Which prompts the screen holds: a rule fired, or a category's score reached its threshold."""
    return rule_flags | (score >= thresholds).any(dim=1)


def language_groups(languages: list[str]) -> dict[str, torch.Tensor]:
    """Each language's prompts, as a mask over all of them."""
    return {code: torch.tensor([language == code for language in languages]) for code in sorted(set(languages))}


def lowest_language_recall(flagged: torch.Tensor, safe: torch.Tensor, languages: list[str]) -> tuple[str, float]:
    """The language whose unsafe prompts are held least often, and that share."""
    recall = {code: flagged[~safe & group].float().mean().item()
              for code, group in language_groups(languages).items() if (~safe & group).any()}
    lowest = min(recall, key=recall.get)
    return lowest, recall[lowest]


def _figures(flagged: torch.Tensor, safe: torch.Tensor, languages: list[str]) -> str:
    """Unsafe recall and safe false-positive rate in English and in the other languages, then
    the unsafe recall over all prompts and in the language where it is lowest."""
    english = torch.tensor([language == "en" for language in languages])
    lowest, recall = lowest_language_recall(flagged, safe, languages)
    return "; ".join(f"{name} unsafe recall {flagged[~safe & group].float().mean():.3f}, "
                     f"safe false-positive rate {flagged[safe & group].float().mean():.3f}"
                     for name, group in (("English", english), ("other languages", ~english))) + (
        f"; all unsafe recall {flagged[~safe].float().mean():.3f}, lowest {lowest} {recall:.3f}")


def per_category_thresholds(score: torch.Tensor, rule_flags: torch.Tensor, safe: torch.Tensor,
                            languages: list[str], widened: list[bool]) -> list[float]:
    """A threshold per category from GRID, greedily: start every category at the top and, while
    some move keeps the out-of-fold safe false-positive rate within FALSE_POSITIVE_BUDGET in
    English and in the other languages, lower the one category (to any lower step, so a step that
    gains nothing on its own does not block the next) that catches the most more unsafe prompts
    per safe prompt it newly holds, and only if that move catches more unsafe prompts than the
    safe ones it newly holds (a step that blocks one safe prompt for each unsafe one it catches
    is a coin toss, and measured out of fold on few prompts). If the unsafe recall is then still
    short of RECALL_TARGET (all prompts) or of LANGUAGE_RECALL_TARGET (in any one language),
    recall wins: the same moves, of the `widened` categories only (the any-of one, which holds
    for review, never blocks), go on past the budget until both are met, each to its nearest
    lower step that gains, while the safe prompts held stay within REVIEW_BUDGET (a person's
    review queue of tricky safe prompts, and everyday copy such as "precios de locura" read as
    unsafe below it). `score`: per prompt and category, the probability that would fire it (the
    prompt's, or its gloss's where the gloss may fire that category); `languages`: each
    prompt's language."""
    english = torch.tensor([language == "en" for language in languages])
    unsafe_in = [~safe & group for group in language_groups(languages).values()]

    def flagged(at: list[int]) -> torch.Tensor:
        return _flagged(score, rule_flags, torch.tensor([GRID[i] for i in at]))

    def within(budget: float):
        return lambda fired: all(fired[safe & group].float().mean() <= budget for group in (english, ~english))

    def recall_met(fired: torch.Tensor) -> bool:
        return bool(fired[~safe].float().mean() >= RECALL_TARGET) and all(
            fired[group].float().mean() >= LANGUAGE_RECALL_TARGET for group in unsafe_in if group.any())

    def lower(steps: list[int], allowed, done, movable: list[bool], nearest: bool, majority: bool) -> list[int]:
        """Greedy moves of the `movable` categories until `done` or none is `allowed`; `nearest`:
        a category only to its nearest lower step that gains (the target passed by as little as
        can be); `majority`: only moves that catch more unsafe prompts than safe ones they hold."""
        while not done(now := flagged(steps)):
            best, best_value = None, 0.0
            for category, step in enumerate(steps):
                if not movable[category]:
                    continue
                for lower_step in range(step - 1, -1, -1):
                    trial = steps[:category] + [lower_step] + steps[category + 1:]
                    fired = flagged(trial)
                    gained = int((fired & ~now & ~safe).sum())
                    newly_safe = int((fired & ~now & safe).sum())
                    if gained and allowed(fired) and (gained > newly_safe or not majority):
                        value = gained / (1 + newly_safe)
                        if value > best_value:
                            best, best_value = trial, value
                    if gained and nearest:
                        break
            if best is None:
                return steps
            steps = best
        return steps

    steps = lower([len(GRID) - 1] * score.shape[1], within(FALSE_POSITIVE_BUDGET), lambda fired: False,
                  [True] * len(widened), nearest=False, majority=True)
    steps = lower(steps, within(REVIEW_BUDGET), recall_met, widened, nearest=True, majority=False)
    return [GRID[i] for i in steps]


def _save(out: Path, head, categories: list[str], encoder: Encoder, prompts: int) -> None:
    weight, bias, loss = head
    digest = hashlib.sha256(weight.numpy().tobytes() + bias.numpy().tobytes()).hexdigest()
    save_file({"weight": weight, "bias": bias}, str(out), metadata={
        "categories": ",".join(categories), "encoder_sha256": encoder.sha256, "head_sha256": digest,
        "train_prompts": str(prompts)})
    print(f"trained on {prompts} prompts, final loss {loss:.4f}; wrote {out}; its sha256: {weights_sha256(out)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=Path, default=REPO_POLICIES)
    parser.add_argument("--labelled", type=Path, default=None, help="default: <policies>/text_safety_labelled.csv")
    args = parser.parse_args(argv)
    policies = load_policies(args.policies)
    spec = policies.text_safety.classifier
    if spec is None or spec.kind != "embedding-head":
        raise SystemExit("policies/text_safety.yaml names no embedding-head classifier to train")
    categories = list(policies.text_safety.classified_categories)
    frame = load_labelled(args.labelled or args.policies / "text_safety_labelled.csv",
                          list(policies.text_safety.categories))
    train = frame[frame["split"] == "train"]
    prompts = train["prompt"].tolist()
    # the rules' verdicts and the glosses, from the screen without its classifier
    screen = TextScreen(policies.model_copy(update={"text_safety": policies.text_safety.model_copy(
        update={"classifier": None})}), args.policies)
    rules = screen.screen(prompts)
    as_read = screen.classifier_texts(prompts)  # what the screen's classifier reads of them
    glosses = [v.gloss for v in rules]
    in_english = [g or t for g, t in zip(glosses, as_read)]  # the gloss, or the English prompt itself
    encoder = Encoder(policies, spec.encoder)
    inputs = {"multilingual": torch.from_numpy(encoder.embed(as_read)),
              "gloss": torch.from_numpy(encoder.embed(in_english))}
    english_encoder = Encoder(policies, spec.english.encoder) if spec.english else None
    if english_encoder is not None:
        inputs["english"] = torch.from_numpy(english_encoder.embed(in_english))
    targets = label_targets(train["label"], policies.text_safety.classified_categories)
    languages = train["language"] if "language" in train.columns else ["en"] * len(train)
    concepts = train["concept"] if "concept" in train.columns else [""] * len(train)
    cross_validate(inputs, targets, policies, torch.tensor([v.categories != [] for v in rules]), list(languages),
                   torch.tensor([g is not None for g in glosses]),
                   torch.tensor([1.0 if v.gloss_translated is None else v.gloss_translated for v in rules]),
                   [concept or prompt for concept, prompt in zip(concepts, prompts)])
    _save(args.policies / spec.head, train_head(inputs["multilingual"], targets), categories, encoder, len(train))
    if english_encoder is not None:
        _save(args.policies / spec.english.head, train_head(inputs["english"], targets), categories,
              english_encoder, len(train))
    print("pin each sha256 in text_safety.yaml (classifier.head_sha256, classifier.english.head_sha256)")


if __name__ == "__main__":
    main()
