"""Machine translation to English with Apertium, for the languages Debian packages a pair for.

A word-by-word gloss (ldm_batch.safety.glossary) reads each word alone, and FreeDict's Spanish,
French and Italian dictionaries are small (3,400 to 8,500 entries), so those glosses kept many
words as written. Apertium is a rule-based translation engine with real morphology, tagging and
transfer: "una bambina che posa in modo seducente in bikini" reads "a girl that poses in way
seducente in bikini" through Spanish. Debian packages an English pair for Spanish only
(`apertium-eng-spa`); French, Italian and Portuguese go through Spanish (`apertium-fr-es`,
`apertium-spa-ita`, `apertium-es-pt`). German, Dutch, Polish and Japanese have no pair and keep
their dictionary glosses.

A word Apertium does not know comes out marked (`*word`, `#word`, `@word`); the glossary reads
it with its dictionary instead (`Glossary.glosses`). Each pair's data is pinned by sha256
(policies/text_safety.yaml, `glossary.translation`).
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import signal
import subprocess
import threading
from functools import lru_cache
from pathlib import Path

UNKNOWN_MARK = re.compile(r"^[*#@]+")
STREAM_SPECIAL = re.compile(r"[\\\[\]^$/@<>{}*#\x00]")  # Apertium's stream format reserves them


class TranslationUnavailable(Exception):
    """Apertium, or a pair's data, is missing or not the pinned one."""


def pins_id(pins: dict[str, str]) -> str:
    """A short id of a set of sha256 pins (name -> digest), for the screen id: it changes when any pin does."""
    return hashlib.sha256("".join(f"{k}{v}" for k, v in sorted(pins.items())).encode()).hexdigest()[:12]


@lru_cache(maxsize=None)
def pair_digest(folder: Path) -> str:
    """sha256 of a pair's installed data: every file under its folder, by name and content."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class Translator:
    """Translates batches of texts of one language to English through the language's chain of
    Apertium modes, run as one pipeline per process (`Pipeline`)."""

    def __init__(self, folder: Path, chains: dict[str, list[str]], pins: dict[str, str]):
        self.folder, self.chains, self.pins = folder, chains, pins
        self.id = pins_id(pins)
        self._commands: dict[str, str] = {}

    def covers(self, language: str) -> bool:
        return language in self.chains

    def command(self, language: str) -> str:
        """The language's checked pipeline, worked out once per translator and language;
        TranslationUnavailable if a program or a pinned pair of its chain is missing or changed."""
        if language not in self._commands:
            self._commands[language] = " | ".join(null_flushed(self._checked_mode(step)) for step in self.chains[language])
        return self._commands[language]

    def _checked_mode(self, step: str) -> str:
        mode = self.folder / "modes" / f"{step}.mode"
        text = mode.read_text() if mode.is_file() else ""
        found = re.search(r"/(apertium-[a-z]+-[a-z]+)/", text)
        if found is None:
            raise TranslationUnavailable(f"{mode} missing (Debian: apt-get install the apertium pair of {step})")
        for program in {part.split()[0] for part in text.split("|") if part.strip()}:
            if shutil.which(program) is None:
                raise TranslationUnavailable(f"{program} is not installed, {step} needs it (Debian: apt-get "
                                             "install apertium cg3 apertium-lex-tools)")
        package = found.group(1)
        if package not in self.pins:
            raise TranslationUnavailable(f"{package} (for {step}) has no sha256 pin in the policy")
        if (digest := pair_digest(self.folder / package)) != self.pins[package]:
            raise TranslationUnavailable(f"{self.folder / package}: sha256 {digest} is not the pinned "
                                         f"{self.pins[package]} (Debian: apt-get install {package})")
        return text

    def translate(self, texts: list[str], language: str) -> list[str]:
        """The texts in English, unknown words marked; TranslationUnavailable if it cannot run."""
        return _pipeline(self.command(language)).translate(texts)


def null_flushed(mode: str) -> str:
    """A mode's shell pipeline with every program in null-flush mode (-z): each text ends with a
    NUL and every program answers it before reading on, so one pipeline serves a process."""
    steps = [step.strip() for step in mode.replace("$1", "-g").replace("$2", "").split("|")]
    return " | ".join(re.sub(r"^(\S+)", r"\1 -z", step) for step in steps)


@lru_cache(maxsize=None)
def _pipeline(command: str) -> Pipeline:
    """One pipeline per process and command, however many screens use it."""
    return Pipeline(command)


class Pipeline:
    """One running Apertium pipeline: texts in, each ended by a NUL; translations out, the same.
    Some programs answer a NUL only once they have read past it, so each batch is followed by
    blank texts (`PADDING`) that push its last answers out; blank answers are skipped. A
    pipeline that stops, or does not answer within `TIMEOUT` seconds, is stopped and its
    prompts are not screened as measured (TranslationUnavailable: they are held)."""

    CHUNK = 32  # texts written before their answers are read (the pipes' buffers are finite)
    PADDING = b"\n\0" * 8
    TIMEOUT = 60.0

    def __init__(self, command: str):
        self.command, self.lock = command, threading.Lock()
        self._start()

    def _start(self) -> None:
        self.pid, self.pending = os.getpid(), bytearray()
        self.process = subprocess.Popen(["bash", "-c", self.command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, bufsize=0, start_new_session=True)

    def stop(self) -> None:
        """Stops the pipeline, every program of it."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def translate(self, texts: list[str]) -> list[str]:
        with self.lock:
            if self.pid != os.getpid() or self.process.poll() is not None:
                self._start()  # a forked process does not share its parent's pipes; a stopped one restarts
            try:
                out: list[str] = []
                for at in range(0, len(texts), self.CHUNK):
                    chunk = [" ".join(STREAM_SPECIAL.sub(" ", t).split()) for t in texts[at:at + self.CHUNK]]
                    # each text ends with a full stop: before a bare NUL the analyser drops a
                    # word it is still matching ("la salle de bain" read as "the room")
                    data = memoryview(b"".join(t.encode() + b" .\0" for t in chunk) + self.PADDING)
                    while data:  # an unbuffered pipe may take part of it
                        data = data[os.write(self.process.stdin.fileno(), data):]
                    out += [self._answer() for _ in chunk]
                return out
            except (OSError, EOFError, TimeoutError) as exc:
                self.stop()
                raise TranslationUnavailable(f"apertium stopped ({self.command[:80]}...): {exc!r}") from exc

    def _answer(self) -> str:
        """The next text's answer, past the padding's blank ones."""
        while True:
            while b"\0" not in self.pending:
                if not select.select([self.process.stdout], [], [], self.TIMEOUT)[0]:
                    raise TimeoutError(f"no answer in {self.TIMEOUT:.0f} s")
                data = os.read(self.process.stdout.fileno(), 65536)
                if not data:
                    raise EOFError("no answer")
                self.pending += data
            end = self.pending.index(b"\0")
            answer = bytes(self.pending[:end]).decode("utf-8", "replace").strip()
            del self.pending[:end + 1]
            if answer:
                return answer.removesuffix(".").strip() or "."
