"""The S3 inbox: sheets people drop or submit, each run exactly once.

Under the inbox prefix (default `inbox/`):

    inbox/NAME                       a waiting sheet (only direct children count)
    inbox/claims/SHA256.json         written with If-None-Match by the sweep that takes a sheet
    inbox/processed/SHA256/NAME      after its run finished, beside NAME.report.json (the summary)
    inbox/rejected/SHA256/NAME       after it was refused (invalid rows, licenses, weights) or was
                                     a copy of a sheet already taken, beside NAME.report.json

A sheet is known by the sha256 of its bytes, and the claim on that digest is written once,
so two sweeps never run the same sheet, and the same sheet dropped again is rejected as a
copy with a pointer to the first one's report. A run that fails for another reason (S3 or
the database down) gives its claim back and leaves the sheet in the inbox for the next
sweep; the images it already audited are not generated again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Literal, get_args

from ldm_batch.licenses import Use
from ldm_batch.problems import Problem
from ldm_batch.sheets import SAFE_NAME, sheet_stem
from ldm_batch.storage import ObjectStore

Outcome = Literal["processed", "rejected"]


@dataclass(frozen=True)
class InboxSheet:
    key: str
    sha256: str
    campaign: str  # from the submitter (object metadata), else the sheet's name
    use: str
    uri: str
    submitted_by: str | None = None  # the console author who started it

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name


class Inbox:
    def __init__(self, store: ObjectStore, prefix: str = "inbox/"):
        self.store = store
        self.prefix = prefix

    def submit(self, name: str, data: bytes, campaign: str | None = None, use: str = "commercial",
               submitted_by: str | None = None) -> InboxSheet:
        """Put a sheet into the inbox, named by its digest so two people's `spring.csv` differ.
        An identical submission that still waits is left as it is: one object is enough."""
        sha = hashlib.sha256(data).hexdigest()
        key = f"{self.prefix}{sha[:12]}-{name}"
        metadata = {"campaign": campaign or sheet_stem(name), "use": use, "sha256": sha} | (
            {"submitted-by": submitted_by} if submitted_by else {})
        self.store.put_new(key, data, metadata)
        return InboxSheet(key, sha, metadata["campaign"], use, self._uri(key), submitted_by)

    def waiting(self, keys: list[str] | None = None) -> list[InboxSheet]:
        """Sheets in the inbox, oldest first (all of them, or those of `keys`)."""
        objects = sorted(self.store.children(self.prefix), key=lambda obj: (obj["LastModified"], obj["Key"]))
        return [self._sheet(obj["Key"]) for obj in objects
                if obj["Key"] != self.prefix and (keys is None or obj["Key"] in keys)]

    def _sheet(self, key: str) -> InboxSheet:
        metadata = (self.store.head(key) or {}).get("Metadata", {})
        sha = self.store.sha256(key)  # metadata can lie; the bytes cannot
        name = PurePosixPath(key).name
        return InboxSheet(key, sha, metadata.get("campaign") or sheet_stem(name),
                          metadata.get("use", "commercial"), self._uri(key), metadata.get("submitted-by"))

    def claim(self, sheet: InboxSheet, by: str) -> bool:
        """Take a sheet for one run; False when some sweep took these bytes before."""
        body = json.dumps({"sheet": sheet.key, "by": by, "claimed_at": datetime.now(UTC).isoformat()})
        return self.store.put_new(self._claim_key(sheet), body.encode(), content_type="application/json")

    def claimed_by(self, sheet: InboxSheet) -> dict | None:
        body = self.store.get_or_none(self._claim_key(sheet))
        return None if body is None else json.loads(body)

    def release(self, sheet: InboxSheet) -> None:
        """Give a claim back after a failed run, so the next sweep tries the sheet again."""
        self.store.delete(self._claim_key(sheet))

    def report(self, sha256: str) -> tuple[Outcome, str] | None:
        """Where the report of these bytes' first run lies, if it finished."""
        for outcome in ("processed", "rejected"):
            prefix = f"{self.prefix}{outcome}/{sha256}/"
            keys = [k for k in self.store.keys(prefix) if k.endswith(".report.json")]
            if keys:
                return outcome, keys[0]
        return None

    def file(self, sheet: InboxSheet, outcome: Outcome, report: dict | None) -> str:
        """Move a sheet out of the inbox beside its report (None: the report is written
        already); returns the report's key. The report is written first and the inbox copy
        deleted last, so a crash in between leaves the sheet where the next sweep finishes
        the move."""
        folder = f"{self.prefix}{outcome}/{sheet.sha256}/"
        report_key = f"{folder}{sheet.name}.report.json"
        if report is not None:
            body = {"sheet": sheet.key, "sha256": sheet.sha256, "outcome": outcome,
                    "filed_at": datetime.now(UTC).isoformat(), **report}
            self.store.put_report(report_key, json.dumps(body, indent=2, default=str).encode(), "application/json")
        if not self.store.copy(sheet.key, f"{folder}{sheet.name}"):
            if report is not None:
                raise FileNotFoundError(f"s3://{self.store.bucket}/{sheet.key} vanished before it was filed")
            return report_key  # the sweep that ran it finished the move meanwhile
        self.store.delete(sheet.key)
        return report_key

    def problems(self, sheet: InboxSheet) -> list[Problem]:
        """What is wrong with the submitter's campaign name or use, as sheet problems."""
        problems = []
        if not SAFE_NAME.match(sheet.campaign):
            problems.append(Problem(file="object metadata", message=f"campaign {sheet.campaign!r}: "
                                    "use 1-128 letters, digits, '.', '_' or '-'"))
        if sheet.use not in get_args(Use):
            problems.append(Problem(file="object metadata", message=f"use {sheet.use!r}: "
                                    f"use one of {', '.join(get_args(Use))}"))
        return problems

    def _claim_key(self, sheet: InboxSheet) -> str:
        return f"{self.prefix}claims/{sheet.sha256}.json"

    def _uri(self, key: str) -> str:
        return f"s3://{self.store.bucket}/{key}"
