"""Identity words set aside for the classifier's categories other than hate.

The heads learnt hate from prompts that name a group, and the any-of category from all of
them, so a word that only says who someone is ("a gay couple cooking dinner", "a trans man at
the gym", "a girl in a hijab scoring a goal") lifts the scores of categories it has nothing to
do with: such scenes were held for review (README, "fresh13"). The screen therefore also scores
each text with the policy's identity terms cut out, and every category but those that read
them (`IdentityPolicy.read_by`: hate) takes the lesser of the two scores. Hate keeps the score
of the text as written, and the rules always read it as written. Cutting a word can only lower
a score that way, and only by what that word added: the harm words stay in the text, so "a
naked trans woman" still reads as sexual.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ldm_batch.safety.language import UNSPACED


@lru_cache(maxsize=64)
def _pattern(terms: tuple[str, ...]) -> re.Pattern | None:
    """One expression for the terms: whole words, a trailing "*" a prefix, the words of a term
    of several apart by spaces; Japanese terms anywhere. Terms are written as the classifier
    reads the prompt (folded: lower case, no accents), matched without regard to case."""
    spaced = [r"\s+".join(re.escape(w.removesuffix("*")) + (r"\w*" if w.endswith("*") else "") for w in term.split())
              for term in terms if not UNSPACED.search(term)]
    unspaced = [re.escape(term) for term in terms if UNSPACED.search(term)]
    parts = ([rf"(?<!\w)(?:{'|'.join(sorted(spaced, key=len, reverse=True))})(?!\w)"] if spaced else []) + (
        ["|".join(sorted(unspaced, key=len, reverse=True))] if unspaced else [])
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def without_identity(text: str, terms: tuple[str, ...]) -> tuple[str, list[str]]:
    """The text with the terms cut out, and what was cut, as written; the text itself and
    nothing where none is found."""
    pattern = _pattern(terms)
    found = pattern.findall(text) if pattern is not None else []
    if not found:
        return text, []
    return re.sub(r"\s{2,}", " ", pattern.sub(" ", text)).strip(), found


def identity_blind(scores: dict[str, float], without: dict[str, float], read_by: list[str]) -> dict[str, float]:
    """Each category's score: the lesser of the text's and the text's without identity words,
    but for the categories that read those words (`read_by`), the text's own."""
    return {name: p if name in read_by else min(p, without.get(name, p)) for name, p in scores.items()}
