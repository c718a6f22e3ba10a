"""Text safety screen: policy rules plus a transformers classifier.

Rules: prompts are normalised (Unicode NFKC, case, accents on Latin letters, leetspeak such
as "nud3", spacing tricks such as "n u d e", hyphens and apostrophes as word breaks, hashtags
split at their capitals) into words; a masked or stretched word ("n*de", "nuuuude") is read
as the policy word it spells; allow-listed phrases ("killer deal", "Killer-Angebot", "bloody
mary") are taken out; each category's terms then match as whole word sequences, so "killer"
never matches "painkiller". A term ending in "*" matches any word that starts so ("zwłok*":
zwłoki, zwłok), for inflected languages; a term in a script written without spaces
(Japanese) matches anywhere in the text; `language_terms` apply only to prompts identified
as that language (words that are harmless in others: Dutch and German "kind").
Classifier: per-category probabilities for the prompt with the allow-listed phrases taken
out (ldm_batch.safety.text_classifier); at or above the category's threshold it fires.
A prompt in another language with a dictionary is also read in English, by the English terms
and the classifier: as its Apertium translation where the policy has a pair for the language
(ldm_batch.safety.translation; the terms also read its word-by-word gloss), else as its
word-by-word gloss (ldm_batch.safety.glossary).
A category fires when any of these fires; the decision is the strictest action that fired.
Fail closed: when the classifier is unavailable or errors, every prompt is blocked with
that reason; when a language's dictionary or translation pair is missing or changed, its
prompts are held.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from text_to_num import text2num

from ldm_batch.policies import Policies, TextSafetyPolicy
from ldm_batch.safety.glossary import Gloss, Glossary, GlossaryUnavailable
from ldm_batch.safety.identity import identity_blind, without_identity
from ldm_batch.safety.language import UNSPACED, LanguageIdentifier, fold_accents, load_lexicon, normalise
from ldm_batch.safety.translation import Translator
from ldm_batch.torch_thread import on_torch_thread

Decision = Literal["allow", "review", "block"]
MASKS = "*#?•·"  # characters written in place of a letter: "p*rn"
# a letter hidden inside a word: "*" or "•" between letters ("g*ys"); not "#" ("#summer#sale" is two
# hashtags), "?" ("what?yes") or "·" (Catalan "col·lecció")
HIDDEN_LETTER = re.compile(r"[^\W\d_]*[^\W\d_][*\u2022]+[^\W\d_][^\W\d_*\u2022]*")
LAST_LETTER_MASKED = r"(?<=[^\W_]{2})\*(?![^\s.,;:!?)])"  # "ohn*" before a space or a stop
# a word: letters and digits, with leetspeak or mask characters inside ("n@ked", "p*rn"),
# leetspeak at either end ("$h0t", "bru1$3$", "m4$$") and an asterisk for its last letter ("ohn*")
WORD = re.compile(rf"[@$]?(?:[^\W_]|(?<=[^\W_])[@${re.escape(MASKS)}]+(?=[^\W_]))+(?:[@$]+|{LAST_LETTER_MASKED})?|[@$]")
MODEL_NUMBER = re.compile(r"([^\W\d_]+)(\d{2,})")  # "AK47", "M16": letters, then a number
AGE_WRITTEN_SHORT = re.compile(r"(\d{1,3})(yo|yrs?)")  # "30yo", "12yrs": a number, then years
NUMBER_LANGUAGES = ("en", "de", "nl")  # numbers in words, for ages (`_number_before`)
STRETCHED = re.compile(r"([^\W\d_])\1{2,}")  # a letter three times or more: "nuuuude"
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})


class PromptVerdict(BaseModel):
    prompt: str
    decision: Decision
    categories: list[str]
    reasons: list[str]
    scores: dict[str, float]
    screen: str
    language: str | None = None  # ISO 639-1, or "und" when too short to tell
    normalised: str | None = None  # the text screened, when normalising changed it
    gloss: str | None = None  # its word-by-word English gloss, screened too (other languages)
    gloss_translated: float | None = None  # the share of the prompt the gloss translated (0 to 1)
    negative: PromptVerdict | None = None  # the negative prompt's own verdict, when the row has one

    def with_negative(self, negative: PromptVerdict | None) -> PromptVerdict:
        """This verdict combined with the negative prompt's: the stricter decision wins."""
        if negative is None:
            return self
        decision = max(self.decision, negative.decision, key=("allow", "review", "block").index)
        return self.model_copy(update={
            "decision": decision, "negative": negative,
            "categories": self.categories + [c for c in negative.categories if c not in self.categories],
            "reasons": self.reasons + [f"negative prompt: {r}" for r in negative.reasons]})


def words(text: str) -> list[str]:
    """The prompt's words, then the other readings of its words (`readings`)."""
    own, other = readings(text)
    return own + other


def readings(text: str) -> tuple[list[str], list[str]]:
    """Normalised words: NFKC, case-folded, accents folded, leetspeak undone ("n@k3d", "$h0t"),
    spaced-out letters joined ("n u d e", "n.u.d.e"; two spaces or more end a spaced word), a
    hashtag's CamelCase words split ("#NakedWoman"), a model number split from its letters
    ("AK47": ak 47). Second, what other readings give, for the rules: a short hashtag whole,
    two short parts of a hashtag joined ("#NuDe"), the parts of a CamelCase name
    ("McDonald's": mcdonald s ... mc donald), a spaced word without a first "a" or "i" (the
    article of "a n u d e"), letters and a number as leetspeak ("junk13": junkie). A letter
    hidden behind a mask character stays in its word ("p*rn") for `screening_words`."""
    text = fold_accents(unicodedata.normalize("NFKC", text))
    tokens: list[tuple[str, bool]] = []  # (word, may continue a run of spaced-out letters)
    also: list[str] = []
    end = None
    for match in WORD.finditer(text):
        raw, gap = match.group(), text[end:match.start()] if end is not None else ""
        end = match.end()
        parts = _camel_parts(raw)
        if parts and text[match.start() - 1:match.start()] == "#":
            tokens += [(w, False) for part in parts for w in _folded(part)]
            also += _folded(raw) if len(parts) <= 3 else []  # a name ("#McDonalds"), not a sentence
            also += [w for a, b in zip(parts, parts[1:]) if 2 <= min(len(a), len(b)) and max(len(a), len(b)) <= 3
                     for w in _folded(a + b)]  # a word in mixed case: "NuDe", "PoRn"
            continue
        tokens += [(w, len(gap) <= 3 and "  " not in gap) for w in _folded(raw)]
        also += [w for part in parts for w in _folded(part)]
        if MODEL_NUMBER.fullmatch(raw) and (leet := raw.casefold().translate(LEET)).isalpha():
            also.append(leet)
    joined: list[str] = []
    run: list[str] = []
    for token, continues in tokens + [("", False)]:
        if len(token) == 1 and token.isalpha() and (continues or not run):
            run.append(token)
            continue
        joined.extend(["".join(run)] if len(run) >= 3 else run)
        if len(run) > 3 and run[0] in ("a", "i"):
            also.append("".join(run[1:]))
        run = [token] if len(token) == 1 and token.isalpha() else []
        if token and not run:
            joined.append(token)
    return joined, list(dict.fromkeys(also))


def _folded(raw: str) -> list[str]:
    """A word case-folded, with leetspeak undone; a model number as letters and number, an
    age written short ("30yo") as number and years."""
    word = raw.casefold() if raw.isascii() else fold_accents(raw.casefold())
    if number := MODEL_NUMBER.fullmatch(word) or AGE_WRITTEN_SHORT.fullmatch(word):
        return list(number.groups())
    leet = (any(c.isalpha() for c in word) and not UNSPACED.search(word)) or word in "@$"  # "12歳" stays
    return [word.translate(LEET) if leet else word]


def _camel_parts(word: str) -> list[str]:
    """"NakedWoman": Naked, Woman; "AnAK47Rifle": An, AK47, Rifle; a word without inner capitals: nothing."""
    starts = [0] + [i for i in range(1, len(word)) if word[i].isupper() and (
        word[i - 1].islower() or word[i - 1].isdigit()
        or (i + 1 < len(word) and word[i + 1].islower() and word[i - 1].isupper()))]
    return [word[a:b] for a, b in zip(starts, starts[1:] + [len(word)])] if len(starts) > 1 else []


def _readings(word: str) -> list[str]:
    """A stretched word ("nuuuude", "killllller") read with each stretched letter once or
    twice; first, every one once."""
    runs = list(STRETCHED.finditer(word))[:4]
    readings = []
    for counts in itertools.product((1, 2), repeat=len(runs)):
        out, last = [], 0
        for run, n in zip(runs, counts):
            out.append(word[last:run.start()] + run.group(1) * n)
            last = run.end()
        readings.append("".join(out) + word[last:])
    return readings


def _spelled(reading: str, term_word: str) -> str | None:
    """The term's word if the reading spells it, each mask character standing for one letter
    (for a term word ending in "*", a prefix: the reading's rest is kept); else None."""
    target = term_word.removesuffix("*")
    if len(reading) < len(target) or (target == term_word and len(reading) != len(target)):
        return None
    if not all(a == b or a in MASKS for a, b in zip(reading, target)):
        return None
    return target + reading[len(target):]


def _term_vocabulary(policy: TextSafetyPolicy) -> list[str]:
    terms = [t for c in {**policy.categories, **policy.negative_prompt_categories}.values()
             for t in c.terms + c.context_terms + [t for ts in c.language_terms.values() for t in ts]]
    return sorted({w for term in terms + policy.allow_phrases for w in term_words(term)})


class Spellings:
    """Words a masked or stretched word may be read as, the commonest first."""

    def __init__(self, words: Iterable[str] = ()):
        self.known = dict.fromkeys(w for w in words if "\n" not in w)  # ordered, and quick to ask
        by_length: dict[int, list[str]] = {}
        for word in self.known:
            by_length.setdefault(len(word), []).append(word)
        self.lines = {length: "\n".join(found) for length, found in by_length.items()}

    def first_spelled(self, reading: str) -> str | None:
        """The commonest word the reading spells, a mask standing for any one letter."""
        pattern = "".join("[^\n]" if c in MASKS else re.escape(c) for c in reading)
        found = re.search(f"^{pattern}$", self.lines.get(len(reading), ""), re.MULTILINE)
        return found.group() if found else None


NO_SPELLINGS = Spellings()


def screening_words(prompt: str, policy: TextSafetyPolicy, spellings: Spellings = NO_SPELLINGS) -> list[str]:
    """The prompt's words (`words`), as `spelled_out` reads them."""
    return spelled_out(words(prompt), policy, spellings)


def spelled_out(prompt_words: list[str], policy: TextSafetyPolicy, spellings: Spellings = NO_SPELLINGS) -> list[str]:
    """The words, a stretched or masked word read as the policy word it spells ("nuuuude",
    "n*de": nude), else as the commonest word of `spellings` it spells ("sh*wing": showing),
    else with its stretched letters once and split at its masks. A word with more masks than
    letters is never read as a word."""
    found = []
    vocabulary = None
    for word in prompt_words:
        if not any(c in MASKS for c in word) and not STRETCHED.search(word):
            found.append(word)
            continue
        vocabulary = vocabulary if vocabulary is not None else _term_vocabulary(policy)
        found += [_read_unspaced(word, vocabulary)] if UNSPACED.search(word) else _read(word, vocabulary, spellings)
    return found


def _read_unspaced(word: str, vocabulary: list[str]) -> str:
    """Japanese (no spaces): a character written three times or more read once ("ウォォォォッカ":
    ウォッカ); each masked character that completes a policy word read as it ("拳*を向ける":
    拳銃を向ける); the word needs at least as many characters shown as masked."""
    word = STRETCHED.sub(r"\1", word)
    for term_word in vocabulary:
        if UNSPACED.search(term_word) and len(term_word) >= 2:
            pattern = "".join(f"[{re.escape(c + MASKS)}]" for c in term_word)
            word = re.sub(pattern, lambda m: term_word if sum(c in MASKS for c in m.group()) * 2 <= len(term_word)
                          else m.group(), word)
    return word


def _read(word: str, vocabulary: list[str], spellings: Spellings) -> list[str]:
    masks = sum(c in MASKS for c in word)
    readings = ([word] if not masks and word in vocabulary else []) + _readings(word)  # "xxx", "kkk" as written
    if len(word) - masks >= masks:
        spelled = next((s for reading in readings for w in vocabulary if (s := _spelled(reading, w))), None)
        if spelled is None and masks:
            spelled = next((s for reading in readings if (s := spellings.first_spelled(reading))), None)
        elif spelled is None:
            spelled = next((r for r in readings if r in spellings.known), None)
        if spelled is not None:
            return [spelled]
    return [part for part in re.split(f"[{re.escape(MASKS)}]+", readings[0]) if part]


def _find(haystack: list[str | None], phrase: list[str]) -> list[int]:
    n = len(phrase)
    return [i for i in range(len(haystack) - n + 1) if haystack[i : i + n] == phrase]


@functools.lru_cache(maxsize=8192)
def term_words(term: str) -> tuple[str, ...]:
    """A policy term as the words it matches; a word written with a trailing "*" is a prefix."""
    found = []
    for chunk in term.split():
        chunk_words = words(chunk.removesuffix("*"))
        if chunk.endswith("*") and chunk_words:
            chunk_words[-1] += "*"
        found += chunk_words
    return tuple(found)


class Terms:
    """A category's terms, indexed for matching a prompt's words one by one: a term by its
    first word, a term whose first word is a prefix ("zwłok*") by the prefix's first two
    letters (its one letter, if it has only one); a term in a script written without spaces
    (Japanese) matches anywhere in the words joined without them."""

    def __init__(self, terms: tuple[str, ...]):
        self.terms = terms
        self.by_first: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        self.by_prefix: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        self.unspaced: list[tuple[int, str]] = []
        for index, term in enumerate(terms):
            term_as_words = term_words(term)
            if not term_as_words:
                continue
            if UNSPACED.search(term):
                self.unspaced.append((index, "".join(term_as_words)))
            elif term_as_words[0].endswith("*"):
                self.by_prefix.setdefault(term_as_words[0][:-1][:2], []).append((index, term_as_words))
            else:
                self.by_first.setdefault(term_as_words[0], []).append((index, term_as_words))

    def found(self, tokens: list[str | None], unspaced: str) -> list[str]:
        """The terms the words match, in policy order; None (an allowed phrase) matches nothing."""
        hit = {index for index, text in self.unspaced if text in unspaced}
        for start, token in enumerate(tokens):
            if not token:
                continue
            candidates = itertools.chain(self.by_first.get(token, ()), self.by_prefix.get(token[:2], ()),
                                         self.by_prefix.get(token[:1], ()))
            for index, term_as_words in candidates:
                if index not in hit and _starts_at(tokens, start, term_as_words):
                    hit.add(index)
        return [self.terms[index] for index in sorted(hit)]


def _starts_at(tokens: list[str | None], start: int, term_as_words: tuple[str, ...]) -> bool:
    if start + len(term_as_words) > len(tokens):
        return False
    for token, word in zip(tokens[start:], term_as_words):
        if not token or not (token.startswith(word[:-1]) if word.endswith("*") else token == word):
            return False
    return True


@functools.lru_cache(maxsize=256)
def _terms(terms: tuple[str, ...]) -> Terms:
    return Terms(terms)


def without_allowed_phrases(prompt: str, policy: TextSafetyPolicy,
                            spellings: Spellings = NO_SPELLINGS) -> list[str | None]:
    """The prompt's words (`screening_words`) with allow-listed phrases masked (None), so
    nothing matches them."""
    return allowed_phrases_masked(screening_words(prompt, policy, spellings), policy)


SPACED_OUT = re.compile(r"(?<!\w)\w(?: {1,2}\w(?!\w)){2,}")  # "p i j ą c e": letters one space or two apart


def written_words(text: str) -> dict[str, str]:
    """The text's words as the rules fold them, each to the word as written (accents kept), so
    the dictionary and the lemmatiser see "déchiqueté": also a stretched word with its letters
    once ("déchiiiiqueté"), leetspeak undone ("ż0łn13rz"), spaced-out letters joined ("p i j ą c e")
    and a hashtag's parts."""
    found = re.findall(r"\w+", text)
    found += [w.translate(LEET) for m in WORD.finditer(text) if re.search(r"[\d@$]", w := m.group())]
    found += [m.group().replace(" ", "") for m in SPACED_OUT.finditer(text)]
    found += [part for word in found for part in _camel_parts(word)]
    found += [STRETCHED.sub(r"\1", word) for word in found if STRETCHED.search(word)]
    return {fold_accents(w.lower()): w.lower() for w in found}


def as_identified(text: str, read: list[str]) -> str:
    """The text whose language is identified: as written, unless the rules read words it does
    not have (leetspeak, masks, spaced or stretched letters undone): then as they read it, so
    "ein Tr4n$p4r3nt mit der Auf$chr1ft" is German, not English fragments."""
    written = {fold_accents(w) for w in re.findall(r"\w+", text.lower())}
    return text if all(w in written for w in read) else " ".join(read)


def _number_before(words: list[str | None]) -> tuple[int, int] | None:
    """The number the last words say, and how many words say it: digits, or up to three number
    words in English, German or Dutch ("thirty", "twenty five", "dreissig"; text2num), the
    languages whose words for years of age the policy lists."""
    if words and words[-1] and words[-1].isdigit():
        return int(words[-1]), 1
    for count in (3, 2, 1):
        said = words[-count:]
        if len(said) < count or not all(said):
            continue
        for language in NUMBER_LANGUAGES:
            try:
                return text2num(" ".join(said), language), count
            except ValueError:
                continue
    return None


def ages_read(tokens: list[str | None], policy: TextSafetyPolicy) -> list[str | None]:
    """The words as the rules read ages (a number, in digits or words, then words for years:
    "25 year old", "thirty year old", "12yo"): an adult's masked (None), a child's as the
    policy's `child_reads` ("12 yrs old": 12 year old). The classifier reads the age as written:
    without it, "a 40 year old woman in lingerie" read as sexual."""
    ages = policy.ages
    if not _terms(tuple(ages.after_number)).found(tokens, ""):  # most prompts say no age
        return list(tokens)
    child = list(term_words(ages.child_reads))
    read: list[str | None] = []
    start = 0
    while start < len(tokens):
        years = next((w for phrase in ages.after_number if _starts_at(tokens, start, w := term_words(phrase))),
                     None) if read and tokens[start] else None
        said = _number_before(read) if years else None
        if said is None:
            read.append(tokens[start])
            start += 1
            continue
        number, count = said
        del read[-count:]
        read += [str(number), *child] if number < ages.adult else [None] * (count + len(years))
        start += len(years)
    return read


def allowed_phrases_masked(words: list[str], policy: TextSafetyPolicy) -> list[str | None]:
    """The words with the policy's allowed phrases masked (None)."""
    tokens: list[str | None] = list(words)
    present = set(words)
    for phrase in policy.allow_phrases:
        target = list(term_words(phrase))
        if target[0] not in present:
            continue
        for start in _find(tokens, target):
            tokens[start : start + len(target)] = [None] * len(target)
    return tokens


def joined(tokens: list[str | None]) -> str:
    """The words left after masking, as one text."""
    return " ".join(t for t in tokens if t)


def rule_hits(tokens: list[str | None], policy: TextSafetyPolicy, language: str | None = None) -> dict[str, list[str]]:
    """Matched terms per category, ages read as `ages_read` reads them. A category with context
    terms (e.g. minors: a word for a child) fires only beside one of them or beside another
    category's hit."""
    tokens = ages_read(tokens, policy)
    unspaced = "".join(t for t in tokens if t is not None)

    def matched(terms: list[str]) -> list[str]:
        return _terms(tuple(terms)).found(tokens, unspaced) if terms else []

    def terms_of(category) -> list[str]:
        return category.terms + category.language_terms.get(language or "", [])

    hits = {name: found for name, c in policy.categories.items()
            if not c.context_terms and (found := matched(terms_of(c)))}
    for name, category in policy.categories.items():
        if category.context_terms and (found := matched(terms_of(category))):
            context = matched(category.context_terms) + [term for other in hits.values() for term in other]
            if context:
                hits[name] = found + [f"in context of {', '.join(context)}"]
    return hits


def _lexicon(policies: Policies) -> frozenset[str]:
    """The words of the language policy's lexicon model (its vocab.txt, pinned with the model)."""
    from ldm_batch.catalog import verified_path

    name = policies.text_safety.languages.lexicon
    if name is None:
        return frozenset()
    entry = policies.models[name]
    path, _ = verified_path(entry.source, entry.revision, entry.sha256)
    return load_lexicon(path / "vocab.txt")


class TextScreen:
    """Rules and, when the policy names one, a classifier; loaded once, used per batch."""

    def __init__(self, policies: Policies, policies_dir: Path):
        from ldm_batch.safety.text_classifier import ClassifierUnavailable, load_classifier

        self.policy = policies.text_safety
        self.languages = LanguageIdentifier(self.policy.languages, _lexicon(policies))
        # a brand's own rules (e.g. its competitors) apply to that brand's prompts only
        self.brand_policies = {
            brand.id: self.policy.model_copy(update={"categories": {**self.policy.categories, **brand.text_rules}})
            for brand in policies.brands.values() if brand.text_rules}
        self.classifier = None
        self.unavailable: str | None = None
        if self.policy.classifier is not None:
            try:
                self.classifier = on_torch_thread(load_classifier, policies, policies_dir)
            except ClassifierUnavailable as exc:
                self.unavailable = str(exc)
        glossary = self.policy.glossary
        translation = glossary.translation if glossary else None
        translator = Translator(translation.folder, translation.chains, translation.sha256) if translation else None
        self.glossary = Glossary(glossary.folder, glossary.sha256, translator) if glossary else None
        # any edit of the policy (a term, a threshold, an allowed phrase, a brand's rules) changes
        # the id, so the audit records of two policies never read alike, whatever screen_id says
        policy = "\n".join([self.policy.model_dump_json()] + [self.brand_policies[b].model_dump_json()
                                                              for b in sorted(self.brand_policies)])
        self.id = (f"{self.policy.screen_id}+policy@{hashlib.sha256(policy.encode()).hexdigest()[:12]}"
                   + (f"+{self.classifier.id}" if self.classifier else "")
                   + (f"+gloss@{self.glossary.id}" if self.glossary else ""))
        # what a masked or stretched word may be read as: the classifier's words (USE's are in
        # order of frequency, in 16 languages), then the English lexicon's
        known = self.classifier.words() if self.classifier else []
        self.spellings = Spellings([_folded(w)[0] for w in known] + sorted(self.languages.lexicon))

    def screen(self, prompts: list[str], brands: list[str | None] | None = None,
               negative: bool = False) -> list[PromptVerdict]:
        """Verdicts in prompt order; `brands[i]` adds that brand's rules to prompt i; `negative`:
        these are negative prompts (their own categories apply too)."""
        rules = [self.brand_policies.get(b, self.policy) for b in (brands or [None] * len(prompts))]
        if negative:  # not an any-of category: it reads scenes, and a list of things to avoid is none
            rules = [r.model_copy(update={"categories": {
                **{name: c for name, c in r.categories.items() if not c.any_of},
                **self.policy.negative_prompt_categories}}) for r in rules]
        normalised = [normalise(p) for p in prompts]
        # the rules read every reading of a word (`readings`' others: "#NuDe" also as nude);
        # the language, the translation and the classifier read the prompt's own words only
        others, read, plain = self._read([text for text, _ in normalised])
        masked = [allowed_phrases_masked(words + spelled_out(other, self.policy, self.spellings), self.policy)
                  for words, other in zip(read, others)]
        written = [written_words(text) for text, _ in normalised]
        identified = [self.languages.identify(as_identified(text, words)) for (text, _), words in zip(normalised, read)]
        glosses = self._glosses(plain, written, [language for language, _ in identified])
        failure = self.unavailable
        set_aside: dict[int, set[str]] = {}  # per prompt, the identity words its classifier scores set aside
        classifier_scores: list[dict[str, float] | None] = [None for _ in prompts]
        gloss_scores: list[dict[str, float] | None] = [None for _ in prompts]
        if self.classifier is not None and prompts:
            glossed = [i for i, g in enumerate(glosses) if isinstance(g, Gloss)]
            try:
                as_read = [joined(m) for m in plain]
                texts = as_read + [glosses[i] for i in glossed]
                # each text's English reading: the prompt itself, or its gloss, trusted as far
                # as the gloss translated the prompt
                english = [g if isinstance(g, Gloss) else t for t, g in zip(as_read, glosses)] + texts[len(prompts):]
                trust = [g.translated if isinstance(g, Gloss) else 1.0 for g in glosses + [glosses[i] for i in glossed]]
                scores = on_torch_thread(self.classifier.scores, texts, english, trust)
                languages = [language for language, _ in identified] + ["en"] * len(glossed)
                scores, found = self._identity_blind(scores, texts, english, trust, languages)
                for j, words in found.items():  # text j: prompt j, or the gloss of prompt glossed[j - len(prompts)]
                    set_aside.setdefault(j if j < len(prompts) else glossed[j - len(prompts)], set()).update(
                        w.lower() for w in words)
                classifier_scores = scores[:len(prompts)]
                for i, score in zip(glossed, scores[len(prompts):]):
                    gloss_scores[i] = score
            except Exception as exc:  # any classifier fault: fail closed, say why
                failure = f"text classifier failed: {type(exc).__name__}: {exc}"
        verdicts = [self._verdict(p, m, s, r, failure, language, g if isinstance(g, Gloss) else None, gs)
                    for p, m, s, r, (language, _), g, gs
                    in zip(prompts, masked, classifier_scores, rules, identified, glosses, gloss_scores)]
        for i, found in set_aside.items() if not failure else ():
            verdicts[i] = verdicts[i].model_copy(update={"reasons": verdicts[i].reasons + [
                f"identity words set aside for every category but {', '.join(self.policy.identity.read_by)}: "
                f"{', '.join(sorted(found))}"]})
        return [self._in_language(v, text, changes, language, probability, g)
                for v, (text, changes), (language, probability), g in zip(verdicts, normalised, identified, glosses)]

    def _identity_blind(self, scores: list[dict[str, float]], texts: list[str], english: list[str], trust: list[float],
                        languages: list[str]) -> tuple[list[dict[str, float]], dict[int, list[str]]]:
        """The scores with identity words set aside (ldm_batch.safety.identity): each text that
        has some, and a score that fires a category other than those that read them, is scored
        again without them (its English reading too), and every category but those takes the
        lesser score. Also, per text, the words set aside. A text no such category fires on is
        not scored again: the lesser score could not change its verdict (on the labelled prompts
        the pass took about 7% of the screen's time before, 4% after)."""
        policy = self.policy.identity
        if not policy.terms:
            return scores, {}
        categories = self.policy.categories
        fires = [any(p >= categories[name].threshold for name, p in s.items()
                     if name in categories and name not in policy.read_by) for s in scores]
        english_terms = tuple(policy.terms.get("en", []))
        terms = {language: english_terms if language == "en" else tuple(policy.terms.get(language, [])) + english_terms
                 for language in set(languages)}
        cut = [without_identity(t, terms[language]) if fired else (t, [])
               for t, language, fired in zip(texts, languages, fires)]
        cut_english = [without_identity(e, english_terms) if fired else (e, []) for e, fired in zip(english, fires)]
        changed = [i for i, ((text, found), (reading, found_en)) in enumerate(zip(cut, cut_english))
                   if (found or found_en) and text and reading]
        if not changed:
            return scores, {}
        without = on_torch_thread(self.classifier.scores, [cut[i][0] for i in changed],
                                  [cut_english[i][0] for i in changed], [trust[i] for i in changed])
        scores = list(scores)
        for i, alternative in zip(changed, without):
            scores[i] = identity_blind(scores[i], alternative, policy.read_by)
        return scores, {i: cut[i][1] + cut_english[i][1] for i in changed}

    def _read(self, texts: list[str]) -> tuple[list[list[str]], list[list[str]], list[list[str | None]]]:
        """Per normalised text: the other readings of its words (for the rules), its own words as
        the rules read them (`spelled_out`), and those with allowed phrases masked: what the
        translator and the classifier read."""
        own_and_other = [readings(text) for text in texts]
        read = [spelled_out(own, self.policy, self.spellings) for own, _ in own_and_other]
        return [other for _, other in own_and_other], read, [allowed_phrases_masked(w, self.policy) for w in read]

    def classifier_texts(self, prompts: list[str]) -> list[str]:
        """What the classifier reads of each prompt as written, as `screen` makes it (`_read`):
        its own words as the rules read them (folded, leetspeak and spacing undone), allowed
        phrases left out. `train_text_head` embeds these, so the heads learn from what they will read."""
        return [joined(m) for m in self._read([normalise(p)[0] for p in prompts])[2]]

    def _glosses(self, masked: list[list[str | None]], written: list[dict[str, str]],
                 languages: list[str]) -> list[Gloss | GlossaryUnavailable | None]:
        """Each prompt's English reading when the policy has a dictionary for its language (a
        translation where it translates that language, else a gloss): of the words the rules
        read (leetspeak, masks and spacing undone, allowed phrases left out), each as written
        where the prompt has it (accents kept, for the translator, dictionary and lemmatiser);
        the reason when that language's dictionary or translation cannot be used."""
        if self.glossary is None:
            return [None] * len(masked)
        return self.glossary.glosses([([w.get(word, word) for word in m if word], language)
                                      for m, w, language in zip(masked, written, languages)])

    def _in_language(self, verdict: PromptVerdict, text: str, changes: list[str], language: str,
                     probability: float, gloss: Gloss | GlossaryUnavailable | None) -> PromptVerdict:
        """The verdict with the prompt's language and normalisation; a language the screen was
        not measured on, or whose glossary cannot be used, is never allowed (held for review, or
        blocked, by policy)."""
        update: dict = {"language": language}
        reasons = list(verdict.reasons)
        if changes:
            update["normalised"] = text
            reasons.append(f"normalised before screening ({'; '.join(changes)}): {text!r}")
        policy = self.policy.languages
        if self.languages.unsupported(language) and verdict.decision == "allow":
            update["decision"] = policy.unsupported_action
            reasons.append(f"language {language} not supported by the text screen (measured on "
                           f"{', '.join(policy.supported)}; identified with p={probability})")
        elif isinstance(gloss, GlossaryUnavailable) and verdict.decision == "allow":
            update["decision"] = policy.unsupported_action
            reasons.append(f"language {language} cannot be screened as measured: its glossary is "
                           f"unavailable ({gloss})")
        elif (hidden := HIDDEN_LETTER.findall(text)) and verdict.decision == "allow" \
                and self.policy.hidden_letters_action != "allow":
            update["decision"] = self.policy.hidden_letters_action
            reasons.append(f"letters hidden behind a mask in {', '.join(repr(w) for w in hidden[:5])}: the "
                           "screen can only guess what they spell")
        return verdict.model_copy(update={**update, "reasons": reasons})

    def _verdict(self, prompt: str, masked: list[str | None], classified: dict[str, float] | None,
                 policy: TextSafetyPolicy, failure: str | None, language: str, gloss: Gloss | None = None,
                 gloss_classified: dict[str, float] | None = None) -> PromptVerdict:
        if classified is not None and not failure:  # a missing or NaN score is no evidence of safety
            answers = [a for a in (classified, gloss_classified) if a is not None]
            unusable = [name for name in self.classifier.categories if name in policy.categories
                        and not all(math.isfinite(a.get(name, math.nan)) for a in answers)]
            if unusable:
                failure = f"text classifier gave no usable score for {', '.join(unusable)}"
        if failure:
            return PromptVerdict(prompt=prompt, decision="block", categories=[], scores={},
                                 reasons=[f"not screened, so not allowed: {failure}"], screen=self.id)
        # the prompt as written, then its English gloss, read with the English terms and by the
        # classifier for the categories it may fire there (TextCategory.fired_by_gloss_classifier)
        readings = [("", rule_hits(masked, policy, language), classified or {})]
        if gloss is not None:
            translated = gloss.word_by_word is not None
            readings.append((" in the English translation" if translated else " in the English gloss",
                             rule_hits(without_allowed_phrases(gloss, policy), policy, "en"),
                             {name: p for name, p in (gloss_classified or {}).items() if name in policy.categories
                              and policy.categories[name].fired_by_gloss_classifier}))
            if translated:
                readings.append((" in the word-by-word gloss",
                                 rule_hits(without_allowed_phrases(gloss.word_by_word, policy), policy, "en"), {}))
        fired, reasons, scores, gloss_fired = [], [], {}, False
        for name, category in policy.categories.items():
            why, score = [], 0.0
            for where, hits, probabilities in readings:
                probability = probabilities.get(name, 0.0)
                score = max(score, 1.0 if name in hits else probability)
                if name in hits:
                    why.append(f"matched {', '.join(repr(h) for h in hits[name])}{where}")
                if probability >= category.threshold:
                    why.append(f"classifier {probability:.2f} >= {category.threshold}{where}")
                gloss_fired |= bool(where) and (name in hits or probability >= category.threshold)
            scores[name] = score
            if why:
                fired.append(name)
                reasons.append(f"{name} ({category.action}): {'; '.join(why)}")
        for i, name in reversed(list(enumerate(fired))):  # an any-of category speaks only where its own are silent
            any_of = policy.categories[name].any_of
            if any_of and set(any_of) & set(fired):
                del fired[i], reasons[i]
            elif any_of:
                likeliest = sorted(((p, c) for c, p in scores.items() if c in any_of), reverse=True)[:2]
                reasons[i] += "; likeliest " + ", ".join(f"{c} {p:.2f}" for p, c in likeliest)
        if gloss_fired and gloss.word_by_word is not None:
            reasons.append(f"English translation (Apertium): {str(gloss)!r}; word by word: {gloss.word_by_word!r}")
        elif gloss_fired:
            reasons.append(f"English gloss, word by word: {gloss!r}")
        actions = {policy.categories[name].action for name in fired}
        decision: Decision = "block" if "block" in actions else "review" if actions else "allow"
        return PromptVerdict(prompt=prompt, decision=decision, categories=fired, reasons=reasons,
                             scores=scores, screen=self.id, gloss=gloss,
                             gloss_translated=round(gloss.translated, 3) if isinstance(gloss, Gloss) else None)
