"""Human review of quarantined images.

A decision never changes a record: it appends a review record (a copy of the image's
record naming the reviewer, the decision and the reason). Approval then copies the object
from the quarantine prefix to the delivery prefix; the record is committed first, as for
every delivery, so no image reaches delivery without its record.
"""

from __future__ import annotations

import getpass
import os

from ldm_batch.audit import AuditLog, AuditRecord
from ldm_batch.audit.log import now
from ldm_batch.storage import ObjectStore


class ReviewError(Exception):
    """The image is not waiting for review, or the decision lacks a reason."""


def reviewer_name(given: str | None) -> str:
    return given or os.environ.get("LDM_BATCH_REVIEWER") or getpass.getuser()


def decide(audit: AuditLog, store: ObjectStore, image_key: str, approve: bool, reason: str,
           reviewer: str, role: str | None = None) -> AuditRecord:
    """`role`: the console role the decision was made under (None from the CLI)."""
    if not reason.strip():
        raise ReviewError("a review decision needs a reason")
    pending = {r.image_key: r for r in audit.review_queue()}
    if image_key not in pending:
        raise ReviewError(f"{image_key} is not waiting for review (only quarantined, undecided images are)")
    image = pending[image_key]
    decision = "approved" if approve else "rejected"
    delivered_key = store.object_key("delivery", image_key)
    review = image.model_copy(update={
        "kind": "review", "decision": decision, "reviewer": reviewer, "created_at": now().isoformat(),
        "reasons": [f"{decision} by {reviewer}: {reason.strip()}"],
        "s3_key": delivered_key if approve else image.s3_key,
        "metadata": image.metadata | ({"reviewer_role": role} if role else {})})
    audit.append([review])
    audit.seal()
    if approve:
        store.copy_image(image_key, "quarantine", "delivery", image.image_sha256)
    return review
