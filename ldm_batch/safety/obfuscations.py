"""Ways people spell a prompt to get it past a filter, for measuring the text screen.

Each obfuscation rewrites every word of four or more letters (the screen cannot know which
word carries the meaning, and neither does this), or, for emoji, every word that names one,
deterministically, so a run is repeatable.
`ldm-batch eval text-safety --obfuscated` screens each unsafe prompt plain and in every way
below, and reports how often each way is caught against its plain form.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

import emoji

from ldm_batch.safety.language import NAMED_AS_UNICODE

LONG_WORD = re.compile(r"[^\W\d_]{4,}")
VOWELS = "aeiouAEIOU"
LOOK_ALIKE = str.maketrans({"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441"})  # Cyrillic
LEET = str.maketrans({"a": "4", "e": "3", "o": "0", "i": "1", "s": "$"})
# the emoji whose name is one English word ("bomb": 💣, "syringe": 💉, "girl": 👧), and 🔫 for "gun"
EMOJI_FOR = {name: chars for chars, data in emoji.EMOJI_DATA.items()
             if data["status"] == emoji.STATUS["fully_qualified"]
             and (name := data["en"].strip(":")).isalpha() and name.islower()}
EMOJI_FOR.update({name: chars for chars, name in NAMED_AS_UNICODE.items()}, gun="\U0001F52B")


def _each_long_word(text: str, rewrite: Callable[[str], str]) -> str:
    return LONG_WORD.sub(lambda m: rewrite(m.group()), text)


def _first_vowel(word: str) -> int:
    """Index of the first vowel after the first letter (a masked or stretched letter inside)."""
    return next((i for i, c in enumerate(word) if c in VOWELS and i > 0), len(word) // 2)


def _masked(word: str) -> str:
    i = _first_vowel(word)
    return word[:i] + "*" + word[i + 1:]


def _stretched(word: str) -> str:
    i = _first_vowel(word)
    return word[:i] + word[i] * 3 + word[i:]


def _small_capital(char: str) -> str:
    try:
        return unicodedata.lookup(f"LATIN LETTER SMALL CAPITAL {char.upper()}")
    except KeyError:
        return char


OBFUSCATIONS: dict[str, Callable[[str], str]] = {
    # letters of another script that look like Latin ones: Cyrillic а, е, о, р, с
    "look-alike": lambda t: t.translate(LOOK_ALIKE),
    # a zero-width space after the second letter of every longer word
    "invisible": lambda t: _each_long_word(t, lambda w: w[:2] + "\u200b" + w[2:]),
    "leetspeak": lambda t: _each_long_word(t, lambda w: w.translate(LEET)),
    # one letter hidden: "n*de"
    "masked": lambda t: _each_long_word(t, _masked),
    # one letter stretched: "nuuuude"
    "stretched": lambda t: _each_long_word(t, _stretched),
    # letters spaced out, words apart: "n u d e   w o m a n"
    "spaced": lambda t: _each_long_word(t, lambda w: "  " + " ".join(w) + "  "),
    # letters struck through with combining marks: "n̶u̶d̶e̶"
    "struck": lambda t: _each_long_word(t, lambda w: "".join(c + "\u0336" for c in w)),
    "small-capitals": lambda t: _each_long_word(t, lambda w: "".join(_small_capital(c) for c in w)),
    # words written as the emoji of that name: "a 🔫 at a 🧒's head"
    "emoji": lambda t: re.sub(r"[^\W\d_]+", lambda m: EMOJI_FOR.get(m.group().lower(), m.group()), t),
    # the whole prompt as one CamelCase hashtag: "#NudeWomanOnABed"
    "hashtag": lambda t: "#" + "".join(w[:1].upper() + w[1:] for w in re.findall(r"[^\W_]+", t)),
}


def obfuscated(text: str) -> dict[str, str]:
    """The text in every way above that changes it."""
    return {name: changed for name, rewrite in OBFUSCATIONS.items() if (changed := rewrite(text)) != text}
