"""Word-by-word English glosses of prompts in the screen's other languages.

The text screen is strongest in English: its rules were written there first, and its
classifier head learned most of its concepts from English prompts. A gloss gives both a second
reading of a German, Polish or Japanese prompt: each word looked up in a bilingual dictionary
(as written, else as its lemma) and replaced by its first two English senses, function words
left out. "ein Scharfschütze zielt auf einen vollen Marktplatz" reads "marksman sharpshooter aims
at full blast full bast market square market place". It is crude English, but the rules'
English terms and the classifier read it well enough to catch what the other language's own
terms and training prompts miss (README, Text safety).

Dictionaries: FreeDict's LANG-English dictionaries in dictd format, as Debian's
`dict-freedict-LANG-eng` packages install them (/usr/share/dictd; GPL-2+/GPL-3+, Polish
CC-BY-SA-3.0), each pinned by sha256 in policies/text_safety.yaml. Lemmas from simplemma,
function words where stopwordsiso and stop-words agree. Japanese has no spaces: it is read by
the longest dictionary headword at each position. Where the policy has an Apertium pair for
the language (ldm_batch.safety.translation), `Glossary.glosses` reads the prompt as its
translation instead, with the dictionary for the words the translation does not know.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import threading
from functools import lru_cache
from pathlib import Path

from ldm_batch.safety.language import fold_accents
from ldm_batch.safety.translation import UNKNOWN_MARK, TranslationUnavailable, Translator, pins_id

DICTIONARY_CODES = {"de": "deu", "fr": "fra", "es": "spa", "it": "ita", "pt": "por", "nl": "nld", "pl": "pol",
                    "ja": "jpn"}
BASE64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
LONGEST_JAPANESE_WORD = 10
KANA_PARTICLE = re.compile(r"[\u3040-\u309f\u3000-\u303f\uff01-\uff0f]")  # hiragana and punctuation
SENSE_NOISE = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)|[{}]")
# a word's first two translations ("Mädchen": kiddo, gal) give the rules and the classifier more
# to read than one: held-out recall 0.913 -> 0.928 at FPR 0.038 -> 0.043 (README, Text safety)
SENSES_PER_WORD = 2
NOT_A_SENSE = ("Note:", "see:", "Synonym:", "Synonyms:", "Antonym:", "\"", "(")
# languages that write a new noun as one word of two ("Rohrwaffe": Rohr, Waffe): a word the
# dictionary lacks is read as two words it has, each as written or without one of these endings
# (linking elements and plurals)
COMPOUND_ENDINGS = {"de": ("", "s", "es", "n", "en", "e", "er"), "nl": ("", "s", "en", "e")}
SHORTEST_PART = 3


class GlossaryUnavailable(Exception):
    """A language's dictionary is missing or not the pinned one."""


def _number(digits: str) -> int:
    """dictd's index numbers: base64 digits, most significant first."""
    value = 0
    for digit in digits:
        value = value * 64 + BASE64[digit]
    return value


def first_senses(entry: str) -> str | None:
    """The English of a dictd entry: its first translation line (not a note, cross-reference
    or example), without labels, to its SENSES_PER_WORD-th comma."""
    for line in entry.split("\n")[1:]:
        text = line.strip()
        if not text or text.startswith(NOT_A_SENSE):
            continue
        text = SENSE_NOISE.sub("", re.sub(r"^\d+\.\s*", "", text))
        senses: list[str] = []
        for part in re.split(r"[,;]", text)[:SENSES_PER_WORD]:
            sense = re.sub(r"^(to|a|an|the) ", "", " ".join(re.sub(r"[^a-z' -]+", " ", part.lower()).split()))
            if re.search(r"[a-z]", sense) and sense not in senses:
                senses.append(sense)
        if senses:
            return " ".join(senses)
    return None


class Dictionary:
    """One dictd dictionary (NAME.index, NAME.dict.dz), read into memory once."""

    def __init__(self, base: Path, sha256: str):
        index, data = base.with_name(base.name + ".index"), base.with_name(base.name + ".dict.dz")
        if not index.is_file() or not data.is_file():
            raise GlossaryUnavailable(f"{base}.index/.dict.dz missing (Debian: apt-get install "
                                      f"dict-{base.name})")
        digest = hashlib.sha256(index.read_bytes() + data.read_bytes()).hexdigest()
        if digest != sha256:
            raise GlossaryUnavailable(f"{base}: sha256 {digest} is not the pinned {sha256}")
        self.data = gzip.decompress(data.read_bytes())  # dictzip is gzip with a seek table
        self.entries: dict[str, tuple[int, int]] = {}  # headword -> its longest entry
        for line in index.read_text(encoding="utf-8").splitlines():
            head, offset, length = line.split("\t")[:3]
            found = (_number(offset), _number(length))
            # a word with several entries: the longest is its main sense, with examples
            # (German "Hund": dog, not the mine car); a word is also found without its accents,
            # as the rules read a leetspeak "h3r0ïn3"
            for key in {head.lower(), fold_accents(head.lower())}:
                if found[1] > self.entries.get(key, (0, 0))[1]:
                    self.entries[key] = found

    @lru_cache(maxsize=65536)
    def sense(self, word: str) -> str | None:
        found = self.entries.get(word)
        if found is None:
            return None
        offset, length = found
        return first_senses(self.data[offset:offset + length].decode("utf-8", "replace"))


class Gloss(str):
    """A prompt's English reading (a word-by-word gloss, or a machine translation), with the
    share of the prompt it translated (`translated`, 0 to 1): of its content words, or for
    Japanese of its characters. What is left untranslated stays as written (or, in Japanese,
    out), so a low share means the English reading misses much. A translation also carries the
    prompt's word-by-word gloss (`word_by_word`), which the rules read too: a translation can
    choose the wrong sense ("granada": pomegranate) where the gloss lists the first two."""

    translated: float
    word_by_word: str | None

    def __new__(cls, text: str, translated: float, word_by_word: str | None = None) -> Gloss:
        gloss = super().__new__(cls, text)
        gloss.translated, gloss.word_by_word = translated, word_by_word
        return gloss


@lru_cache(maxsize=None)
def _dictionary(base: Path, sha256: str) -> Dictionary:
    """One copy per process of each pinned dictionary, however many screens read it (a worker
    that reloads its policies, the tests' many screens)."""
    return Dictionary(base, sha256)


class Glossary:
    """English glosses for the languages the policy pins a dictionary for; each dictionary is
    read on the first prompt in its language (an English-only sheet reads none)."""

    def __init__(self, folder: Path, pins: dict[str, str], translator: Translator | None = None):
        self.folder, self.pins, self.translator = folder, pins, translator
        self.id = pins_id(pins)
        if translator is not None:
            self.id += f"+mt@{translator.id}"
        self._dictionaries: dict[str, Dictionary | GlossaryUnavailable] = {}
        self._lock = threading.Lock()

    def covers(self, language: str) -> bool:
        return language in self.pins

    def dictionary(self, language: str) -> Dictionary:
        """The language's dictionary; GlossaryUnavailable if it is missing or not the pinned one."""
        with self._lock:
            if language not in self._dictionaries:
                base = self.folder / f"freedict-{DICTIONARY_CODES[language]}-eng"
                try:
                    self._dictionaries[language] = _dictionary(base, self.pins[language])
                except GlossaryUnavailable as exc:
                    self._dictionaries[language] = exc
        found = self._dictionaries[language]
        if isinstance(found, GlossaryUnavailable):
            raise found
        return found

    def glosses(self, prompts: list[tuple[list[str], str]]) -> list[Gloss | GlossaryUnavailable | None]:
        """Each (words, language)'s English reading: machine-translated where the translator
        covers the language, else glossed word by word; None for a language with no dictionary;
        the reason where the language's dictionary or translation cannot be used."""
        readings: list[Gloss | GlossaryUnavailable | None] = [None] * len(prompts)
        by_language: dict[str, list[int]] = {}
        for i, (_, language) in enumerate(prompts):
            if self.covers(language):
                by_language.setdefault(language, []).append(i)
        for language, chosen in by_language.items():
            try:
                if self.translator is not None and self.translator.covers(language):
                    english = self.translator.translate([" ".join(prompts[i][0]) for i in chosen], language)
                    found = [self._translated(prompts[i][0], text, language) for i, text in zip(chosen, english)]
                else:
                    found = [self.gloss(prompts[i][0], language) for i in chosen]
            except (GlossaryUnavailable, TranslationUnavailable) as exc:
                found = [GlossaryUnavailable(str(exc))] * len(chosen)
            for i, reading in zip(chosen, found):
                readings[i] = reading
        return readings

    def _translated(self, words: list[str], english: str, language: str) -> Gloss:
        """A translation as a gloss: a word the translation left unknown (marked) is read with
        the dictionary, else kept as written; `translated` is the share of the prompt's content
        words known to one or the other."""
        dictionary = self.dictionary(language)
        import simplemma

        out, unknown = [], 0
        for token in english.split():
            word = UNKNOWN_MARK.sub("", token)
            if word != token:
                bare = re.sub(r"^\W+|\W+$", "", word.lower())
                sense = dictionary.sense(bare) or dictionary.sense(simplemma.lemmatize(bare, lang=language))
                unknown += sense is None
                word = sense or bare
            out.append(word)
        function_words = _function_words(language)
        content = sum(w not in function_words and not w.isdigit() for w in words)
        return Gloss(" ".join(out), max(0.0, 1 - unknown / content) if content else 1.0,
                     word_by_word=self.gloss(words, language))

    def gloss(self, words: list[str], language: str) -> Gloss:
        """The words (lower case, as written) in English, one sense each; a word the dictionary
        lacks, as itself, as its lemma or as a compound of two words it has, stays as written.
        Japanese: runs of text, read by their longest headwords."""
        dictionary = self.dictionary(language)
        if language == "ja":
            read = [_japanese_senses(run, dictionary) for run in words]
            characters = sum(len(run) for run in words)
            return Gloss(" ".join(sense for senses, _ in read for sense in senses),
                         sum(covered for _, covered in read) / characters if characters else 1.0)
        function_words = _function_words(language)
        senses, translated = [], 0
        for word in words:
            if word in function_words or word.isdigit():
                continue
            sense = _sense(dictionary, word, language) or _compound_sense(dictionary, word, language)
            senses.append(sense or word)
            translated += sense is not None
        return Gloss(" ".join(senses), translated / len(senses) if senses else 1.0)


def _sense(dictionary: Dictionary, word: str, language: str) -> str | None:
    """The word's first senses, as written or as its lemma (simplemma)."""
    import simplemma

    return dictionary.sense(word) or dictionary.sense(simplemma.lemmatize(word, lang=language))


def _compound_sense(dictionary: Dictionary, word: str, language: str) -> str | None:
    """A compound's senses, part by part ("rohrwaffe": tube weapon), where the language writes
    compounds as one word (COMPOUND_ENDINGS): of the splits into two parts of SHORTEST_PART
    letters or more that the dictionary both knows, each as written or without one of the
    endings (the first part's linking element, "blinden|hund", "arbeit|s|platz"; the second's
    plural, "waffe|n"), the most even one. None where there is none. Dictionary look-ups only:
    a lemmatiser call per candidate part costs about 1 ms, thirty of them per word. Written
    here rather than taken from a splitter package: the parts must be words this dictionary
    knows anyway, and compound-split's n-gram tables are 185 MB."""
    endings = COMPOUND_ENDINGS.get(language)
    if not endings:
        return None

    def sense(part: str) -> str | None:
        return next((found for ending in endings if len(part) - len(ending) >= SHORTEST_PART
                     and part.endswith(ending) and (found := dictionary.sense(part[:len(part) - len(ending)]))),
                    None)

    found = []
    for cut in range(SHORTEST_PART, len(word) - SHORTEST_PART + 1):
        if (head := sense(word[cut:])) and (first := sense(word[:cut])):
            found.append((min(cut, len(word) - cut), f"{first} {head}"))
    return max(found)[1] if found else None


@lru_cache(maxsize=None)
def _function_words(language: str) -> frozenset[str]:
    """Words that stopwordsiso and stop-words both list for the language. stopwordsiso alone,
    a union of many lists, has content words a gloss must keep (German "mann", "tritt":
    man, kick; "mensch", "macht"); stop-words alone has others (English "man")."""
    import stop_words
    import stopwordsiso

    both = set(stopwordsiso.stopwords(language))
    try:
        both &= set(stop_words.get_stop_words(language))
    except stop_words.StopWordError:
        pass  # a language stop-words lacks: stopwordsiso's list alone
    return frozenset(both)


def _japanese_senses(text: str, dictionary: Dictionary) -> tuple[list[str], int]:
    """The longest headword at each position, and how many characters they cover. A single
    hiragana (a particle), punctuation and characters no headword starts with are skipped."""
    senses, at, covered = [], 0, 0
    while at < len(text):
        shortest = 2 if KANA_PARTICLE.match(text[at]) else 1
        for size in range(min(LONGEST_JAPANESE_WORD, len(text) - at), shortest - 1, -1):
            if (sense := dictionary.sense(text[at:at + size])) is not None:
                senses.append(sense)
                at += size
                covered += size
                break
        else:
            covered += bool(KANA_PARTICLE.match(text[at]))  # a particle or a stop: nothing to translate
            at += 1
    return senses, covered
