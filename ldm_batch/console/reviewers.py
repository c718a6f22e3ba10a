"""Reviewer accounts: names with argon2 password hashes and a session version, in
`<home>/reviewers.json` (0600).

A console session names its reviewer and the session version it was made under. Signing
out, a new password and removing the account each end that reviewer's sessions at once:
the next request's check finds no account, or a newer version.

Password checks cost 64 MiB each (argon2's default); at most `CONCURRENT_CHECKS` run at
once, so a burst of sign-in attempts waits instead of exhausting memory.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from ldm_batch.sheets import SAFE_NAME

HASHER = PasswordHasher()
MIN_PASSWORD = 12
CONCURRENT_CHECKS = threading.BoundedSemaphore(2)


class Reviewers:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict]:
        accounts = json.loads(self.path.read_text()) if self.path.exists() else {}
        # files written before session versions held the hash alone
        return {name: {"hash": a, "session": 0} if isinstance(a, str) else a for name, a in accounts.items()}

    def _save(self, accounts: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(accounts, f, indent=1)
        os.replace(temporary, self.path)

    def add(self, name: str, password: str) -> None:
        """Add a reviewer, or set a new password (which ends their open sessions)."""
        if not SAFE_NAME.match(name):
            raise ValueError(f"reviewer name {name!r}: use 1-128 letters, digits, '.', '_' or '-'")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"the password needs at least {MIN_PASSWORD} characters")
        with self._lock:
            accounts = self._load()
            session = accounts.get(name, {}).get("session", -1) + 1
            self._save({**accounts, name: {"hash": HASHER.hash(password), "session": session}})

    def remove(self, name: str) -> None:
        with self._lock:
            accounts = self._load()
            if name not in accounts:
                raise ValueError(f"no reviewer {name!r}")
            del accounts[name]
            self._save(accounts)

    def end_sessions(self, name: str) -> None:
        """Every session of this reviewer stops working (signing out does this)."""
        with self._lock:
            accounts = self._load()
            if name in accounts:
                accounts[name]["session"] += 1
                self._save(accounts)

    def session(self, name: str) -> int | None:
        """The reviewer's current session version; None when there is no such account."""
        account = self._load().get(name)
        return None if account is None else account["session"]

    def check(self, name: str, password: str) -> bool:
        stored = self._load().get(name)
        with CONCURRENT_CHECKS:
            if stored is None:
                HASHER.hash(password)  # the same work either way: no timing hint that a name exists
                return False
            try:
                return HASHER.verify(stored["hash"], password)
            except VerificationError:
                return False

    def names(self) -> list[str]:
        return sorted(self._load())
