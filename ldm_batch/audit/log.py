"""AuditLog: write, query and verify the hash-chained audit records.

Every record is appended under a lock on the single `chain_head` row (SQLite: BEGIN
IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE), so concurrent writers extend one chain.
A record's hash covers its sequence number, the previous record's hash and the
canonical JSON of its payload; `verify` recomputes all of it. The query columns, the
`lora_uses` and the `reviews` tables are normalised copies of the hashed payload, written
in the same transaction; `verify` checks that they still agree with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import create_engine, event, insert, or_, select
from sqlalchemy import text as sql
from sqlalchemy.orm import Session

from ldm_batch.audit.tables import ChainHead, LoraUse, Record, Review, Run

GENESIS = "0" * 64
MIGRATIONS = Path(__file__).parent / "migrations"
Decision = Literal["delivered", "quarantined", "blocked", "held", "skipped", "approved", "rejected",
                   "failed",  # an image whose batch failed (a row record; the next run makes it)
                   "running", "finished", "partial", "refused"]  # run records (and "failed")


class AuditRecord(BaseModel):
    """What the log keeps for a refused row (kind="row"), an image (kind="image"), a
    person's decision on a quarantined image (kind="review", a copy of the image's record
    with the reviewer, the decision and the reason), or a run's start or end (kind="run",
    its state in `metadata`, so the `runs` table can be checked against the chain)."""

    kind: Literal["row", "image", "review", "run"]
    run_id: str
    campaign: str
    use: str | None = None  # the campaign's declared use: commercial or non-commercial
    sheet: str
    sheet_row: int
    asset_id: str
    decision: Decision
    reasons: list[str] = []
    reviewer: str | None = None
    prompt: str
    negative_prompt: str = ""
    text_verdict: dict
    brand: str | None = None
    model_id: str | None = None
    model_revision: str | None = None
    model_sha256: str | None = None
    model_license: dict | None = None
    loras: list[dict] = []
    scheduler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    variant: int | None = None
    batch_id: str | None = None  # images reproduce byte for byte only with their whole batch
    batch_size: int | None = None
    batch_index: int | None = None
    device: str | None = None
    runtime: dict = {}  # dtype, attention processors, torch.compile, CPU threads
    software: dict = {}
    generation_seconds: float | None = None
    cost: float | None = None
    currency: str | None = None
    image_verdict: dict | None = None
    image_key: str | None = None
    s3_bucket: str | None = None
    s3_key: str | None = None
    s3_version: str | None = None
    image_sha256: str | None = None
    pixels_sha256: str | None = None  # of the decoded pixels: reproducible even when C2PA-signed
    watermark_id: str | None = None  # the id the invisible watermark carries (images >= 256 px)
    perceptual_hash: str | None = None  # pHash of the pixels: finds resized and re-encoded copies
    provenance: dict | None = None  # the marks in the PNG: XMP, watermark, C2PA signer
    metadata: dict = {}
    created_at: str


class VerifyReport(BaseModel):
    ok: bool
    records: int
    problems: list[str]
    notes: list[str] = []  # what was not checked, and why


def canonical(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(seq: int, prev_hash: str, payload_json: str) -> str:
    return hashlib.sha256(f"{seq}|{prev_hash}|{payload_json}".encode()).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


# Columns copied from the payload for queries; verify checks they still agree with it.
INDEXED = ("kind", "run_id", "campaign", "asset_id", "decision", "model_id", "seed", "cost",
           "image_key", "image_sha256", "batch_id", "brand", "use", "prompt",
           "pixels_sha256", "watermark_id", "perceptual_hash")


class AuditLog:
    def __init__(self, url: str, sealer=None):
        self.url = url
        self.sealer = sealer  # ldm_batch.audit.seal.Sealer: checkpoints outside the database
        path = Path(url.removeprefix("sqlite:///").partition("?")[0]) if url.startswith("sqlite:///") else None
        if path is not None and path.name not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():  # new: readable by us only (SQLite gives -wal and -shm the same mode)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            _sqlite_immediate_transactions(self.engine)
        self._migrated = False

    def migrate(self) -> None:
        """Bring the schema to this version's head; once per AuditLog (Alembic's check takes
        most of a second, and a long-lived worker's log is asked once per run)."""
        if self._migrated:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":  # several workers starting at once: one migrates
                connection.execute(sql("SELECT pg_advisory_xact_lock(7254101)"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        self._migrated = True

    # -- runs ---------------------------------------------------------------------------
    def start_run(self, run_id: str, campaign: str, sheet: str, sheet_sha256: str, by: str | None = None) -> None:
        """A new run in the `runs` table, and its start in the chain."""
        run = Run(id=run_id, campaign=campaign, sheet=sheet, sheet_sha256=sheet_sha256, status="running",
                  started_at=now(), finished_at=None, summary=None, started_by=by)
        with Session(self.engine) as session, session.begin():
            session.add(run)
            self._append(session, [_run_record(run)])

    def finish_run(self, run_id: str, status: str, summary: dict) -> None:
        """The run's end state in the `runs` table, and the same state in the chain."""
        with Session(self.engine) as session, session.begin():
            run = session.get(Run, run_id)
            run.status, run.finished_at, run.summary = status, now(), canonical(summary)
            self._append(session, [_run_record(run)])

    def head(self) -> tuple[int, str]:
        """The chain's last sequence number and record hash."""
        with Session(self.engine) as session:
            head = session.get(ChainHead, 1)
            return head.seq, head.hash

    def seal(self) -> dict | None:
        """A signed checkpoint of the chain's head, when this log has a sealer."""
        return self.sealer.seal(*self.head()) if self.sealer is not None else None

    def runs(self) -> list[dict]:
        with Session(self.engine) as session:
            return [{"run_id": r.id, "campaign": r.campaign, "sheet": r.sheet, "status": r.status,
                     "sheet_sha256": r.sheet_sha256, "started_by": r.started_by,
                     "started_at": r.started_at.isoformat(), "summary": json.loads(r.summary or "{}")}
                    for r in session.scalars(select(Run).order_by(Run.started_at))]

    # -- records ------------------------------------------------------------------------
    def append(self, records: list[AuditRecord]) -> list[int]:
        """Append records in one transaction; returns their sequence numbers."""
        with Session(self.engine) as session, session.begin():
            return self._append(session, records)

    def _append(self, session: Session, records: list[AuditRecord]) -> list[int]:
        head = session.execute(select(ChainHead).where(ChainHead.id == 1).with_for_update()).scalar_one()
        seqs, lora_uses, reviews = [], [], []
        for record in records:
            payload = record.model_dump(mode="json")
            payload_json = canonical(payload)
            seq = head.seq + 1
            digest = record_hash(seq, head.hash, payload_json)
            session.add(Record(
                seq=seq, payload=payload_json, prev_hash=head.hash, record_hash=digest,
                created_at=datetime.fromisoformat(record.created_at), model_license=_license_id(payload),
                **{name: payload[name] for name in INDEXED}))
            uses, decisions = normalised_rows(seq, payload)
            lora_uses += uses
            reviews += decisions
            head.seq, head.hash = seq, digest
            seqs.append(seq)
        session.flush()  # the records first: the normalised rows refer to them
        for table, rows in ((LoraUse, lora_uses), (Review, reviews)):
            if rows:
                session.execute(insert(table), rows)
        return seqs

    def image_records(self, image_keys: list[str]) -> dict[str, AuditRecord]:
        """The latest image record of each key that has one, in one query per 500 keys."""
        found: dict[str, Record] = {}
        with Session(self.engine) as session:
            for i in range(0, len(image_keys), 500):
                rows = session.scalars(select(Record).where(Record.kind == "image",
                                                            Record.image_key.in_(image_keys[i : i + 500]))
                                       .order_by(Record.seq))
                found.update({row.image_key: row for row in rows})
        return {key: AuditRecord.model_validate_json(row.payload) for key, row in found.items()}

    def records_of_image(self, image: str, prefixes: tuple[str, ...] = ()) -> list[dict]:
        """All records of one image (its image record, then reviews), found by its image key, its
        S3 key (an image key under one of `prefixes`) or its sha256; [] when none."""
        key = image
        for prefix in prefixes:
            key = key.removeprefix(prefix)
        return self.query(image_key=key) or self.query(image_sha256=image)

    def watermark_ids(self) -> list[str]:
        """Every watermark id an image record carries."""
        with Session(self.engine) as session:
            return list(session.scalars(select(Record.watermark_id).distinct()
                                        .where(Record.kind == "image", Record.watermark_id.is_not(None))))

    def perceptual_hashes(self) -> dict[str, str]:
        """Image key -> perceptual hash, of every image record that has one."""
        with Session(self.engine) as session:
            return dict(session.execute(select(Record.image_key, Record.perceptual_hash)
                                        .where(Record.kind == "image", Record.perceptual_hash.is_not(None))).all())

    def review_queue(self) -> list[AuditRecord]:
        """Quarantined images that no reviewer has decided on yet, oldest first."""
        with Session(self.engine) as session:
            rows = session.scalars(select(Record).where(Record.kind.in_(("image", "review")),
                                                        Record.image_key.is_not(None)).order_by(Record.seq))
            latest = {row.image_key: row for row in rows}
        return [AuditRecord.model_validate_json(r.payload) for r in latest.values()
                if r.kind == "image" and r.decision == "quarantined"]

    def query(self, *, run_id: str | None = None, campaign: str | None = None, asset_id: str | None = None,
              decision: str | None = None, model_id: str | None = None, kind: str | None = None,
              brand: str | None = None, license: str | None = None, batch_id: str | None = None,
              image_key: str | None = None, image_sha256: str | None = None, pixels_sha256: str | None = None,
              watermark_id: str | None = None, since: datetime | None = None,
              until: datetime | None = None, text: str | None = None, reviewer: str | None = None,
              lora: str | None = None, limit: int | None = None) -> list[dict]:
        """Records matching every filter given, oldest first; `text` searches prompts."""
        filters = {"run_id": run_id, "campaign": campaign, "asset_id": asset_id, "decision": decision,
                   "model_id": model_id, "kind": kind, "brand": brand,
                   "batch_id": batch_id, "image_key": image_key, "image_sha256": image_sha256,
                   "pixels_sha256": pixels_sha256, "watermark_id": watermark_id}
        statement = select(Record).order_by(Record.seq)
        if kind is None:  # run records are read through runs(); the rest of the log by default
            statement = statement.where(Record.kind != "run")
        for name, value in filters.items():
            if value is not None:
                statement = statement.where(getattr(Record, name) == value)
        if since is not None:
            statement = statement.where(Record.created_at >= since)
        if until is not None:
            statement = statement.where(Record.created_at < until)
        if text:
            statement = statement.where(Record.prompt.icontains(text, autoescape=True))
        if license is not None:  # the model's license or any LoRA's
            statement = statement.where(or_(
                Record.model_license == license,
                Record.seq.in_(select(LoraUse.record_seq).where(LoraUse.license_id == license))))
        if lora is not None:
            statement = statement.where(Record.seq.in_(select(LoraUse.record_seq).where(LoraUse.lora_id == lora)))
        if reviewer is not None:
            statement = statement.where(Record.seq.in_(select(Review.record_seq).where(Review.reviewer == reviewer)))
        if limit:
            statement = statement.limit(limit)
        with Session(self.engine) as session:
            return [{"seq": r.seq, **json.loads(r.payload), "record_hash": r.record_hash}
                    for r in session.scalars(statement)]

    def verify(self) -> VerifyReport:
        """Check the chain, every query column and normalised copy against the hashed records,
        the `runs` table against the run records, and the chain against its signed checkpoints."""
        problems: list[str] = []
        expected_prev, expected_seq, count = GENESIS, 1, 0
        hashes: dict[int, str] = {}
        run_states: dict[str, dict] = {}
        with Session(self.engine) as session:
            copies: dict[int, list[tuple]] = {}
            for table, columns in ((LoraUse, LORA_USE_COLUMNS), (Review, REVIEW_COLUMNS)):
                for row in session.execute(select(*(getattr(table, c) for c in columns))):
                    copies.setdefault(row[0], []).append(_comparable(row))
            for r in session.scalars(select(Record).order_by(Record.seq)).yield_per(1000):
                count += 1
                if r.seq != expected_seq:
                    problems.append(f"record {r.seq}: expected sequence {expected_seq} (records missing or reordered)")
                if r.prev_hash != expected_prev:
                    problems.append(f"record {r.seq}: previous-hash does not match record {r.seq - 1}")
                if record_hash(r.seq, r.prev_hash, r.payload) != r.record_hash:
                    problems.append(f"record {r.seq}: content does not match its hash (edited)")
                payload = json.loads(r.payload)
                columns = {name: (getattr(r, name), payload.get(name)) for name in INDEXED}
                columns["model_license"] = (r.model_license, _license_id(payload))
                columns["created_at"] = (_utc(r.created_at), _utc(datetime.fromisoformat(payload["created_at"])))
                problems += [f"record {r.seq}: column {name} differs from the hashed record"
                             for name, (column, hashed) in columns.items() if column != hashed]
                uses, decisions = normalised_rows(r.seq, payload)
                expected = [_comparable(tuple(u[c] for c in LORA_USE_COLUMNS)) for u in uses] + \
                           [_comparable(tuple(d[c] for c in REVIEW_COLUMNS)) for d in decisions]
                if sorted(copies.pop(r.seq, []), key=repr) != sorted(expected, key=repr):
                    problems.append(f"record {r.seq}: its LoRA-use or review rows differ from the hashed record")
                if payload["kind"] == "run":
                    run_states[payload["run_id"]] = payload
                hashes[r.seq] = r.record_hash
                expected_prev, expected_seq = r.record_hash, r.seq + 1
            problems += [f"LoRA-use or review rows name record {seq}, which does not exist" for seq in copies]
            head = session.get(ChainHead, 1)
            if head is None or head.seq != expected_seq - 1 or head.hash != expected_prev:
                problems.append("chain head does not match the last record (records deleted at the end?)")
            problems += [f"run {run.id}: {problem}" for run in session.scalars(select(Run))
                         if (problem := _run_problem(run, run_states.get(run.id)))]
        notes = []
        if self.sealer is not None:
            checkpoints, forged, notes = self.sealer.checkpoints()
            problems += forged + _checkpoint_problems(checkpoints, hashes)
            if not checkpoints:
                notes.append("no checkpoint of this home's key: only the hash chain was checked")
        return VerifyReport(ok=not problems, records=count, problems=problems, notes=notes)


def _checkpoint_problems(checkpoints, hashes: dict[int, str]) -> list[str]:
    """Records a signed checkpoint sealed that are missing or different now: the first bad seq."""
    problems = []
    for checkpoint in sorted(checkpoints, key=lambda c: c.seq):
        if hashes.get(checkpoint.seq) != checkpoint.head:
            state = "is missing" if checkpoint.seq not in hashes else "differs from what was sealed"
            problems.append(f"record {checkpoint.seq} {state} (checkpoint of {checkpoint.sealed_at}, "
                            f"{checkpoint.source}): records were deleted or the chain rewritten")
            break  # later checkpoints only repeat it
    return problems


def _run_record(run: Run) -> AuditRecord:
    """A run's state as a chain record: what `verify` holds the `runs` table to."""
    return AuditRecord(
        kind="run", run_id=run.id, campaign=run.campaign, sheet=run.sheet, sheet_row=0, asset_id="",
        decision=run.status, prompt="", text_verdict={}, created_at=now().isoformat(),
        metadata={"sheet_sha256": run.sheet_sha256, "started_at": _utc(run.started_at),
                  "finished_at": _utc(run.finished_at), "summary": run.summary}
        | ({"started_by": run.started_by} if run.started_by else {}))


def _run_problem(run: Run, recorded: dict | None) -> str | None:
    if recorded is None:
        return "not in the hash chain (added or edited outside the pipeline, or made before run records)"
    state = {"campaign": run.campaign, "sheet": run.sheet, "status": run.status, "sheet_sha256": run.sheet_sha256,
             "started_at": _utc(run.started_at), "finished_at": _utc(run.finished_at), "summary": run.summary,
             "started_by": run.started_by}
    hashed = {"campaign": recorded["campaign"], "sheet": recorded["sheet"], "status": recorded["decision"],
              **{k: recorded["metadata"].get(k) for k in ("sheet_sha256", "started_at", "finished_at", "summary",
                                                          "started_by")}}
    changed = [name for name in state if state[name] != hashed[name]]
    return f"{', '.join(changed)} differ from the hashed run record" if changed else None


def _utc(moment: datetime | None) -> str | None:
    """A timestamp as UTC ISO text (SQLite returns naive datetimes, PostgreSQL aware ones)."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def _comparable(row) -> tuple:
    return tuple(_utc(v) if isinstance(v, datetime) else v for v in row)


def _license_id(payload: dict) -> str | None:
    return (payload.get("model_license") or {}).get("id")


# The normalised copies' columns that verify compares with the hashed payload.
LORA_USE_COLUMNS = ("record_seq", "lora_id", "scale", "sha256", "license_id", "commercial_use")
REVIEW_COLUMNS = ("record_seq", "image_key", "reviewer", "decision", "reason", "created_at")


def normalised_rows(seq: int, payload: dict) -> tuple[list[dict], list[dict]]:
    """The `lora_uses` and `reviews` rows that copy a record's payload."""
    if payload["kind"] == "review":
        return [], [{"record_seq": seq, "image_key": payload["image_key"], "reviewer": payload["reviewer"],
                     "decision": payload["decision"], "reason": "; ".join(payload["reasons"]),
                     "created_at": datetime.fromisoformat(payload["created_at"])}]
    if payload["kind"] == "image":
        return [{"record_seq": seq, "lora_id": lora["id"], "scale": lora["scale"], "sha256": lora.get("sha256"),
                 "license_id": (lora.get("license") or {}).get("id"),
                 "commercial_use": (lora.get("license") or {}).get("commercial_use")}
                for lora in payload.get("loras", [])], []
    return [], []


def _sqlite_immediate_transactions(engine) -> None:
    """WAL, a busy timeout and BEGIN IMMEDIATE: concurrent SQLite writers wait, never fork."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
