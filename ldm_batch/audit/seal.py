"""Checkpoints that anchor the audit chain outside the database.

A checkpoint is the chain's head (sequence number and record hash) signed with an Ed25519
key kept in the home (`audit-seal.key`, 0600; `LDM_BATCH_AUDIT_SEAL_KEY` names another).
One is written after every run and every review decision, to `<home>/audit-checkpoints/`
and to the bucket under `audit/checkpoints/` (with S3 Object Lock retention where the
bucket has it). `audit verify` checks the chain against every checkpoint: a record a
checkpoint sealed that is gone or different (truncation, a consistent rewrite, a deleted
first record) is reported with its sequence number.

What it cannot do: records appended after the latest checkpoint are protected by the hash
chain only, so someone with write access to the database can drop or rewrite those until
the next checkpoint is written. Checkpoints are kept per database (its URL without
password), so the tests' many databases do not mix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "audit/checkpoints/"
RETENTION = timedelta(days=7 * 365)  # S3 Object Lock retention of each checkpoint, where the bucket has it


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head: str
    sealed_at: str
    source: str  # where it was read from

    def payload(self, chain: str) -> bytes:
        return json.dumps({"chain": chain, "seq": self.seq, "head": self.head, "sealed_at": self.sealed_at},
                          sort_keys=True, separators=(",", ":")).encode()


def chain_id(url: str) -> str:
    """The checkpoints' folder for one database: its URL without password, hashed."""
    from sqlalchemy.engine import make_url

    return hashlib.sha256(make_url(url).render_as_string(hide_password=True).encode()).hexdigest()[:16]


class Sealer:
    def __init__(self, home: Path, audit_url: str, store=None, key_path: Path | None = None,
                 trusted_keys: list[str] = ()):
        self.chain = chain_id(audit_url)
        self.folder = Path(home) / "audit-checkpoints" / self.chain
        self.key_path = Path(key_path) if key_path else Path(home) / "audit-seal.key"
        self.store = store
        self.trusted_keys = set(trusted_keys)  # other homes' public keys (base64), e.g. other hosts

    @classmethod
    def for_settings(cls, settings, store=None) -> Sealer:
        return cls(settings.home, settings.audit_url, store, settings.audit_seal_key, settings.audit_trusted_keys)

    def _key(self) -> Ed25519PrivateKey:
        if not self.key_path.exists():
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            try:
                fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
            except FileExistsError:
                pass  # another process made it meanwhile
        return serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)

    def public_key(self) -> Ed25519PublicKey:
        return self._key().public_key()

    def public_key_text(self) -> str:
        """This home's public key, base64: what other homes list in LDM_BATCH_AUDIT_TRUSTED_KEYS."""
        return base64.b64encode(self.public_key().public_bytes(serialization.Encoding.Raw,
                                                               serialization.PublicFormat.Raw)).decode()

    def seal(self, seq: int, head: str) -> dict:
        """Sign and store a checkpoint of the chain's head; returns what the run report keeps."""
        checkpoint = Checkpoint(seq, head, datetime.now(UTC).isoformat(), "")
        signature = self._key().sign(checkpoint.payload(self.chain))
        body = {"chain": self.chain, "seq": seq, "head": head, "sealed_at": checkpoint.sealed_at,
                "public_key": self.public_key_text(), "signature": base64.b64encode(signature).decode()}
        data = json.dumps(body, indent=1).encode()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{seq:012d}.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if self.store is not None:
            key = f"{PREFIX}{self.chain}/{seq:012d}-{head[:16]}.json"
            self.store.put_locked(key, data, datetime.now(UTC) + RETENTION)
            body["s3_key"] = key
        return body

    def checkpoints(self) -> tuple[list[Checkpoint], list[str], list[str]]:
        """Stored checkpoints signed by a trusted key (this home's or a listed one); problems with
        checkpoints whose signature does not hold (forged or damaged); notes on checkpoints
        signed by keys this home does not trust (another host's: list its key to check them)."""
        found, problems, notes = [], [], []
        sources = [(str(p), p.read_bytes()) for p in sorted(self.folder.glob("*.json"))] if self.folder.exists() else []
        if self.store is not None:
            try:
                sources += [(f"s3://{self.store.bucket}/{k}", self.store.get(k))
                            for k in self.store.keys(f"{PREFIX}{self.chain}/")]
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "NoSuchBucket":  # no bucket yet: nothing sealed there
                    raise
        trusted = self.trusted_keys | {self.public_key_text()}
        for source, data in sources:
            try:
                body = json.loads(data)
                checkpoint = Checkpoint(int(body["seq"]), str(body["head"]), str(body["sealed_at"]), source)
                signer = str(body.get("public_key") or self.public_key_text())
                Ed25519PublicKey.from_public_bytes(base64.b64decode(signer)).verify(
                    base64.b64decode(body["signature"]), checkpoint.payload(self.chain))
            except (InvalidSignature, ValueError, KeyError, TypeError):
                problems.append(f"checkpoint {source}: its signature does not hold (forged or damaged)")
                continue
            if signer not in trusted:
                notes.append(f"checkpoint {source}: signed by a key this home does not trust ({signer[:12]}...); "
                             "list it in LDM_BATCH_AUDIT_TRUSTED_KEYS to check the chain against it")
                continue
            found.append(checkpoint)
        return found, problems, notes
