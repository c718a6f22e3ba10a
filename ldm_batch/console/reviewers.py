"""Reviewer accounts: names with argon2 password hashes, in `<home>/reviewers.json` (0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from ldm_batch.sheets import SAFE_NAME

HASHER = PasswordHasher()
MIN_PASSWORD = 12


class Reviewers:
    def __init__(self, path: Path):
        self.path = Path(path)

    def _load(self) -> dict[str, str]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def add(self, name: str, password: str) -> None:
        if not SAFE_NAME.match(name):
            raise ValueError(f"reviewer name {name!r}: use 1-128 letters, digits, '.', '_' or '-'")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"the password needs at least {MIN_PASSWORD} characters")
        accounts = {**self._load(), name: HASHER.hash(password)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(accounts, f, indent=1)
        os.replace(temporary, self.path)

    def check(self, name: str, password: str) -> bool:
        stored = self._load().get(name)
        if stored is None:
            HASHER.hash(password)  # the same work either way: no timing hint that a name exists
            return False
        try:
            return HASHER.verify(stored, password)
        except VerificationError:
            return False

    def names(self) -> list[str]:
        return sorted(self._load())
