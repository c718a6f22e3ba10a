"""Console accounts: names with argon2 password hashes, roles and a session version, in
`<home>/reviewers.json` (0600).

Roles: `author` uploads and runs sheets and sees their own campaigns' delivered images;
`reviewer` does the review work (runs, images, lineage, the queue, export); `admin` manages
accounts. An account may hold several; one made before roles existed is a reviewer.

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
ROLES = ("author", "reviewer", "admin")


class Reviewers:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict]:
        accounts = json.loads(self.path.read_text()) if self.path.exists() else {}
        # files written before session versions held the hash alone
        accounts = {name: {"hash": a, "session": 0} if isinstance(a, str) else a for name, a in accounts.items()}
        return {name: {"roles": ["reviewer"], **a} for name, a in accounts.items()}

    def _save(self, accounts: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(accounts, f, indent=1)
        os.replace(temporary, self.path)

    def add(self, name: str, password: str, roles: list[str] | None = None) -> None:
        """Add an account, or set a new password (which ends their open sessions); `roles`
        replaces the account's roles (None keeps them; a new account is then a reviewer)."""
        if not SAFE_NAME.match(name):
            raise ValueError(f"account name {name!r}: use 1-128 letters, digits, '.', '_' or '-'")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"the password needs at least {MIN_PASSWORD} characters")
        if roles is not None and (not roles or set(roles) - set(ROLES)):
            raise ValueError(f"roles {roles}: choose one or more of {', '.join(ROLES)}")
        with self._lock:
            accounts = self._load()
            old = accounts.get(name, {})
            self._save({**accounts, name: {"hash": HASHER.hash(password), "session": old.get("session", -1) + 1,
                                           "roles": sorted(set(roles or old.get("roles", ["reviewer"])))}})

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

    def roles(self, name: str) -> list[str]:
        return self._load().get(name, {}).get("roles", [])

    def accounts(self) -> dict[str, list[str]]:
        """Every account's roles, by name."""
        return {name: account["roles"] for name, account in sorted(self._load().items())}

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
