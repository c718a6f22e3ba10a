"""Which language a prompt is in, and what the text screen may do with it.

Two steps. A prompt whose words are, nearly all (`lexicon_share`), words of the lexicon (the
text encoder's English vocabulary) is English, however short: a language identifier cannot
tell from "a blue square" (py3langid says Italian, p=0.47). Otherwise py3langid (its model
ships in the wheel, 4.6 MB), restricted to the policy's `identify` list, names the language.
Measured on short prompts (tests/data/text_safety_multilingual.csv and the English labelled
set): 30 of 31 non-English prompts named with their language (the other, a Spanish
"bloody mary" cocktail, is made of English-vocabulary words and screened as English), and
none of 478 English prompts taken for another language. Below `min_confidence` the language
is "und" (too short to tell) and the prompt is screened as the policy's first language.

A prompt in a language the screen was not measured on is never allowed unscreened: it goes
to review (or is blocked: `unsupported_action`), with the reason.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import emoji
from confusable_homoglyphs import confusables

from ldm_batch.policies import LanguagePolicy

UNDETERMINED = "und"
LETTERS = re.compile(r"[^\W\d_]+")
UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")  # kana and CJK ideographs (no spaces)
SMALL_CAPITAL = re.compile(r"LATIN LETTER SMALL CAPITAL ([A-Z])")
# the general-purpose combining marks (diacritics, overlays, marks for symbols); a script's own
# vowel signs (Devanagari, Thai, ...) lie in its own block and stay
STRAY_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
TEXT_SYMBOLS = "\u00a9\u00ae\u2122"  # (c), (R), TM: emoji too, but in marketing copy they are marks, not words
# CLDR renamed 🔫 "water pistol" when vendors redrew it as a toy; its Unicode name, and the use
# a prompt makes of it ("a 🔫 at his head"), is PISTOL
NAMED_AS_UNICODE = {"\U0001F52B": "pistol"}


def load_lexicon(vocabulary: Path) -> frozenset[str]:
    """Whole words of a WordPiece vocabulary file (no "##" pieces, no punctuation)."""
    return frozenset(line.strip() for line in vocabulary.read_text(encoding="utf-8").splitlines()
                     if line.strip().isalpha())


class LanguageIdentifier:
    def __init__(self, policy: LanguagePolicy, lexicon: frozenset[str] = frozenset()):
        from py3langid.langid import MODEL_FILE, LanguageIdentifier as Model

        self.policy = policy
        self.lexicon = lexicon
        self.model = Model.from_model_file(MODEL_FILE, norm_probs=True)
        self.model.set_languages(sorted(set(policy.identify) | set(policy.supported)))

    def identify(self, text: str) -> tuple[str, float]:
        """(ISO 639-1 code or "und", its probability)."""
        words = LETTERS.findall(text.casefold())
        if not words:
            return UNDETERMINED, 0.0
        share = sum(word in self.lexicon for word in words) / len(words)
        if share >= self.policy.lexicon_share:
            return self.policy.supported[0], round(share, 3)
        language, probability = self.model.classify(text)
        return (language if probability >= self.policy.min_confidence else UNDETERMINED), round(float(probability), 3)

    def unsupported(self, language: str) -> bool:
        return language != UNDETERMINED and language not in self.policy.supported


def fold_accents(text: str) -> str:
    """Latin letters without their accents ("cadáver": "cadaver"); other scripts unchanged."""
    out = []
    for char in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(char) and out and out[-1] < "\u0250":
            continue
        out.append(char)
    return unicodedata.normalize("NFC", "".join(out))


def emoji_as_words(text: str) -> tuple[str, dict[str, str]]:
    """The text with each emoji written as its English name (Unicode CLDR, from the `emoji`
    package), set apart by spaces: "a 🔫 at a child's head" reads "a pistol at a child's
    head", so the rules and the classifier read what the picture would show (the diffusion
    model's tokenizer reads emoji too). Keycaps read as their digit ("1️⃣2️⃣": "12"); ©, ® and
    ™ are left as they are. Also what was read, emoji to words."""
    read: dict[str, str] = {}
    if text.isascii():  # every emoji lies outside ASCII (a keycap's mark too)
        return text, read
    out, end = [], 0
    for found in emoji.emoji_list(text):
        chars, start = found["emoji"], found["match_start"]
        if start > end:
            out.append(text[end:start])
        end = found["match_end"]
        if chars in TEXT_SYMBOLS:
            out.append(chars)
            continue
        name = NAMED_AS_UNICODE.get(chars) or emoji.EMOJI_DATA[chars]["en"].strip(":").replace("_", " ")
        if name.startswith("keycap "):
            read[chars] = name.removeprefix("keycap ")
            out.append(read[chars])
            continue
        read[chars] = name
        out.append(("" if not out or out[-1][-1].isspace() else " ") + name
                   + ("" if end == len(text) or text[end].isspace() else " "))
    out.append(text[end:])
    return "".join(out), read


def normalise(text: str) -> tuple[str, list[str]]:
    """The text with emoji written as their English names (`emoji_as_words`); invisible format
    characters (zero-width spaces and joiners, bidi controls, soft hyphens) removed; and, in
    mostly-Latin text, letters of other scripts that look like Latin ones (Unicode TR39
    confusables: Cyrillic "о", Greek "ο") read as Latin; Latin small capitals ("ɴᴜᴅᴇ", which
    NFKC leaves) read as letters; combining marks that compose with no letter (struck-through
    "n̶u̶d̶e̶", Zalgo) removed; and what was changed, for the verdict's reasons."""
    changes = []
    text, read = emoji_as_words(text)  # first: a joiner inside an emoji sequence is part of it ("🏳️‍🌈")
    if read:
        changes.append("read emoji as words: " + ", ".join(f"{e} as {w!r}" for e, w in read.items()))
    visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
    if len(visible) != len(text):
        changes.append(f"removed {len(text) - len(visible)} invisible character(s)")
    composed = unicodedata.normalize("NFC", visible)
    unmarked = STRAY_MARKS.sub("", composed)
    if len(unmarked) != len(composed):  # what NFC could not join to a letter: "n̶u̶d̶e̶", Zalgo text
        changes.append(f"removed {len(composed) - len(unmarked)} combining mark(s)")
        visible = unmarked
    capitals = {c: m.group(1).lower() for c in set(visible) if (m := SMALL_CAPITAL.fullmatch(unicodedata.name(c, "")))}
    if capitals:
        visible = "".join(capitals.get(c, c) for c in visible)
        changes.append("read small capitals as letters: "
                       + ", ".join(f"{c!r} as {t!r}" for c, t in sorted(capitals.items())))
    letters = [c for c in visible if c.isalpha()]
    latin = sum(1 for c in letters if "LATIN" in unicodedata.name(c, ""))
    if letters and latin < len(letters) and latin * 2 >= len(letters):
        mapping = {}
        for found in confusables.is_confusable(visible, greedy=True, preferred_aliases=["latin", "common"]) or []:
            target = next((h["c"] for h in found["homoglyphs"] if len(h["c"]) == 1 and "LATIN" in h["n"]), None)
            if target and found["alias"] not in ("LATIN", "COMMON"):
                mapping[found["character"]] = target
        if mapping:
            visible = "".join(mapping.get(c, c) for c in visible)
            changes.append("read as Latin: " + ", ".join(f"{unicodedata.name(c, '?').title()} {c!r} as {t!r}"
                                                       for c, t in sorted(mapping.items())))
    return visible, changes
