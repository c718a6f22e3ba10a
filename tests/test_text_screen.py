"""Text screen v1: words and phrases, not substrings; verdicts say why."""

import pytest

from ldm_batch.safety.text import screen_prompt


@pytest.mark.parametrize("prompt", [
    "a killer deal on running shoes",
    "painkillers on a pharmacy shelf",
    "a bloody mary cocktail on a bar",
    "product shoot on white",
])
def test_false_friends_are_allowed(prompt, policies):
    assert screen_prompt(prompt, policies.text_safety).decision == "allow"


@pytest.mark.parametrize("prompt, category", [
    ("a graphic photo of a bloody corpse on the street", "violence"),
    ("ＣＯＲＰＳＥ in an alley", "violence"),  # full-width letters normalise (NFKC)
    ("a Nude model", "sexual"),
])
def test_unsafe_prompts_are_blocked_with_a_reason(prompt, category, policies):
    verdict = screen_prompt(prompt, policies.text_safety)
    assert verdict.decision == "block"
    assert verdict.categories == [category]
    assert category in verdict.reasons[0] and verdict.scores[category] == 1.0


def test_review_category_holds_without_blocking(policies):
    verdict = screen_prompt("a rifle leaning on a fence", policies.text_safety)
    assert (verdict.decision, verdict.categories) == ("review", ["weapons"])
