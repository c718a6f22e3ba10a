"""One batch of a campaign run as plain Python: generate, screen, encode, audit, store.

The Prefect flow (flows/campaign_batch.py) maps `process_batch` over the plan's batches
and adds retries, concurrency limits and reporting. The order of writes (spool, audit
record, object) is the one `ldm_batch.reconcile` relies on to finish what a failure left.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from ldm_batch.cost import image_cost
from ldm_batch.parts import Parts
from ldm_batch.plan import Batch
from ldm_batch.reconcile import put_back, store_image
from ldm_batch.records import image_record, software_versions
from ldm_batch.runs import BatchOutcome, RunContext
from ldm_batch.safety.image import ImageVerdict


def process_batch(batch: Batch, run: RunContext, parts: Parts,
                  device_slot: Callable[[], AbstractContextManager] = nullcontext) -> BatchOutcome:
    """Generate, screen, encode, audit and store one batch of images. Generation runs inside
    `device_slot()` (the flow passes a per-GPU concurrency limit); the rest runs outside it.

    The flow plans batches of images that have no record yet; an image that got one
    meanwhile (another worker on the same sheet) is left as it is, or its object put back
    from the spool or from these bytes when they match the record.
    """
    with device_slot():
        generated = parts.generator.generate(batch)
    verdicts = screen_or_quarantine(parts, [g.image for g in generated])
    existing = parts.audit.image_records([job.key for job in batch.jobs])
    software = software_versions()
    outcome = BatchOutcome(generated=len(generated), worker=f"{socket.gethostname()}:{os.getpid()}")
    new_records, uploads, repairs = [], [], []
    for image, verdict in zip(generated, verdicts):
        job = image.job
        placement = "delivery" if verdict.decision == "allow" else "quarantine" if verdict.keep_image else None
        png = parts.marker.encode_generated(image)
        marks = parts.marker.marks(png, job.key)
        if (record := existing.get(job.key)) is not None:
            if record.s3_key is None or parts.store.head(record.s3_key) is not None:
                outcome.reused += 1
            else:  # audited before but its object was lost: put back the audited bytes
                repairs.append((record, png))
                outcome.repaired += 1
            continue
        cost = image_cost(image.seconds, image.device, parts.policies.costs)
        record = image_record(
            run, batch, job, image, verdict, placement, marks, policies=parts.policies, bucket=parts.store.bucket,
            s3_key=parts.store.object_key(placement, job.key) if placement else None, cost=cost, software=software)
        new_records.append(record)
        if placement:
            parts.spool.hold(job.key, png)
            uploads.append((record, png))
        outcome.delivered += placement == "delivery"
        outcome.quarantined += placement == "quarantine"
        outcome.discarded += placement is None
        outcome.cost += cost
    parts.audit.append(new_records)
    for record, png in repairs:
        put_back(record, parts.store, parts.spool, png)
        outcome.s3_keys.append(record.s3_key)
    for record, png in uploads:
        store_image(parts.store, parts.spool, record, png)
        outcome.s3_keys.append(record.s3_key)
    return outcome


def screen_or_quarantine(parts: Parts, images: list) -> list[ImageVerdict]:
    """The image screen's verdicts; if the screen cannot run, every image goes to review
    (quarantine), with the reason recorded. Unscreened images are never delivered."""
    try:
        return parts.screen.screen_images(images)
    except Exception as exc:
        reason = f"image screen failed, held for review: {type(exc).__name__}: {exc}"
        return [ImageVerdict(decision="review", scores={}, fired=[], reasons=[reason], screen="unavailable")
                for _ in images]
