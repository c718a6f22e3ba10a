"""Text safety screen, first version: policy word and phrase rules.

Prompts are normalised (Unicode NFKC, case, punctuation) into words, allow-listed phrases
are taken out, and each category's terms are matched as whole word sequences, so
"killer deal" does not trip "killer" and "painkiller" never matches "killer".
The verdict carries per-category scores so a classifier can add its own later.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from pydantic import BaseModel

from ldm_batch.policies import TextSafetyPolicy

Decision = Literal["allow", "review", "block"]
WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


class PromptVerdict(BaseModel):
    prompt: str
    decision: Decision
    categories: list[str]
    reasons: list[str]
    scores: dict[str, float]
    screen: str


def words(text: str) -> list[str]:
    return WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _find(haystack: list[str], phrase: list[str]) -> list[int]:
    n = len(phrase)
    return [i for i in range(len(haystack) - n + 1) if haystack[i : i + n] == phrase]


def screen_prompt(prompt: str, policy: TextSafetyPolicy) -> PromptVerdict:
    tokens: list[str | None] = list(words(prompt))
    for phrase in policy.allow_phrases:
        target = words(phrase)
        for start in _find(tokens, target):
            tokens[start : start + len(target)] = [None] * len(target)  # masked, cannot match
    scores: dict[str, float] = {}
    reasons: list[str] = []
    fired: list[str] = []
    for name, category in policy.categories.items():
        hits = [term for term in category.terms if _find(tokens, words(term))]
        scores[name] = 1.0 if hits else 0.0
        if hits:
            fired.append(name)
            reasons.append(f"{name} ({category.action}): matched {', '.join(repr(h) for h in hits)}")
    actions = {policy.categories[name].action for name in fired}
    decision: Decision = "block" if "block" in actions else "review" if actions else "allow"
    return PromptVerdict(prompt=prompt, decision=decision, categories=fired, reasons=reasons,
                         scores=scores, screen=policy.screen_id)


def screen_prompts(prompts: list[str], policy: TextSafetyPolicy) -> list[PromptVerdict]:
    return [screen_prompt(p, policy) for p in prompts]
