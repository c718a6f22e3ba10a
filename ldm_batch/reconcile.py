"""Reconciliation of the three places an image lives: its audit record, its S3 object and
the local spool.

Order of writes for an image: the encoded PNG goes to the local spool, its audit record is
committed, then the object is put and the spooled copy removed. A failure in between (S3
down, worker killed) leaves a record whose object is missing and the exact bytes in the
spool; `upload_spooled` (run at the start of every flow run and by `ldm-batch resume`)
puts them without generating again. An audited image whose object is lost and not
spooled is regenerated in its recorded batch (`ldm_batch.reproduce.restore_object`) and
stored only if it has the audited sha256. Nothing here can leave a delivered image without an audit record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ldm_batch.audit import AuditLog, AuditRecord
from ldm_batch.records import placement_of
from ldm_batch.spool import Spool
from ldm_batch.storage import ObjectStore


@dataclass(frozen=True)
class ImageState:
    record: AuditRecord | None
    stored: bool  # its object exists, or its record says it is not to be stored

    @property
    def complete(self) -> bool:
        """Audited and stored (or audited as not to be stored): nothing left to do."""
        return self.record is not None and self.stored

    @property
    def lost(self) -> bool:
        """Audited, but its object is gone."""
        return self.record is not None and not self.stored


def image_states(keys: list[str], audit: AuditLog, store: ObjectStore) -> dict[str, ImageState]:
    """The state of every image key: one query for the records and one listing per campaign
    folder of each placement, not a query and a HEAD per image."""
    records = audit.image_records(keys)
    listed: set[str] = set()
    for folder in sorted({_campaign_folder(r) for r in records.values() if r.s3_key}):
        listed.update(store.keys(folder))
    return {key: ImageState(record, record is not None and (record.s3_key is None or record.s3_key in listed))
            for key in keys for record in [records.get(key)]}


def _campaign_folder(record: AuditRecord) -> str:
    """The listing prefix that holds a record's object: placement prefix + campaign + '/'."""
    placement_prefix = record.s3_key[: len(record.s3_key) - len(record.image_key)]
    return placement_prefix + record.image_key.split("/", 1)[0] + "/"


def store_image(store: ObjectStore, spool: Spool, record: AuditRecord, png: bytes) -> None:
    """Put an audited image's bytes under its recorded placement, then drop the spooled copy.
    Callers pass bytes they hold to the record's sha256 (just encoded, or checked on reading)."""
    store.put_image(placement_of(record), record.image_key, png, {"run-id": record.run_id})
    spool.release(record.image_key)


def put_back(record: AuditRecord, store: ObjectStore, spool: Spool, regenerated: bytes) -> None:
    """Store a lost object again from the spool, or from bytes made again just now when
    they are the audited ones (without C2PA the same job encodes to the same bytes)."""
    png = spool.read(record.image_key, record.image_sha256) or regenerated
    if hashlib.sha256(png).hexdigest() != record.image_sha256:
        raise RuntimeError(f"{record.image_key}: its object is lost and the image cannot be put back: the "
                           f"spool has no copy and a regeneration differs from the audited sha256 "
                           f"(C2PA signatures differ each time); not stored")
    store_image(store, spool, record, png)


def upload_spooled(audit: AuditLog, store: ObjectStore, spool: Spool, run_id: str | None = None) -> dict[str, int]:
    """Put spooled images whose audit records are committed (of one run, or all) and drop
    spooled images that never got a record (their run died before auditing them; they
    were never delivered and will be generated again)."""
    counts = {"uploaded": 0, "dropped": 0}
    keys = spool.keys()
    records = audit.image_records(keys)
    for key in keys:
        record = records.get(key)
        if record is None:
            spool.release(key)
            counts["dropped"] += 1
            continue
        if run_id is not None and record.run_id != run_id:
            continue
        png = spool.read(key, record.image_sha256)
        if png is None:  # not the audited bytes: useless
            spool.release(key)
            counts["dropped"] += 1
        elif record.s3_key and store.head(record.s3_key) is None:
            store_image(store, spool, record, png)
            counts["uploaded"] += 1
        else:
            spool.release(key)
    return counts


def missing_objects(run_id: str, audit: AuditLog, store: ObjectStore) -> tuple[int, list[str]]:
    """A run's image count and the keys of its audited images whose objects are missing."""
    keys = [r["image_key"] for r in audit.query(run_id=run_id, kind="image")]
    states = image_states(keys, audit, store)
    return len(keys), [key for key, state in states.items() if state.lost]


def verify_objects(audit: AuditLog, store: ObjectStore) -> list[str]:
    """Problems where a stored object no longer has the sha256 its audit record names, and
    objects under the delivery or quarantine prefix that no record accounts for (planted)."""
    problems, accounted = [], set()
    for record in audit.query():
        if record["kind"] == "row" or not record.get("s3_key"):
            continue
        key = record["s3_key"]
        accounted.add(key)
        if store.head(key) is None:
            problems.append(f"record {record['seq']}: s3://{store.bucket}/{key} is missing")
        elif hashlib.sha256(store.get(key)).hexdigest() != record["image_sha256"]:
            problems.append(f"record {record['seq']}: s3://{store.bucket}/{key} does not match its sha256")
    problems += [f"s3://{store.bucket}/{key}: no audit record accounts for this object (planted?)"
                 for key in store.image_keys() if key not in accounted]
    return problems
