"""Reproduce an audited image from the audit log alone and say whether it is byte-identical
(and pixel-identical: a C2PA-signed image's bytes differ on every signing, its pixels do not).

Images reproduce exactly only at a fixed batch composition (one generator per image, but
one batched pipeline call), so the whole batch is rebuilt from its records, in order.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel

from ldm_batch.audit import AuditRecord
from ldm_batch.parts import Parts
from ldm_batch.plan import Batch, GenerationSettings, ImageJob, LoraUse
from ldm_batch.provenance import pixels_sha256
from ldm_batch.reconcile import store_image


class Reproduction(BaseModel):
    image_key: str
    identical: bool
    pixels_identical: bool
    recorded_sha256: str
    reproduced_sha256: str
    batch_size: int
    notes: list[str]


def job_from_record(record: dict) -> ImageJob:
    settings = GenerationSettings(
        model=record["model_id"], loras=tuple(LoraUse(id=l["id"], scale=l["scale"]) for l in record["loras"]),
        width=record["width"], height=record["height"], steps=record["steps"], guidance=record["guidance"])
    return ImageJob(row=record["sheet_row"], asset_id=record["asset_id"], variant=record["variant"],
                    campaign=record["campaign"], brand=record["brand"], prompt=record["prompt"],
                    negative_prompt=record["negative_prompt"], settings=settings, seed=record["seed"],
                    key=record["image_key"])


def regenerate(record: dict, parts: Parts) -> tuple[bytes, list[str]]:
    """The image of an audit record made again, in its recorded batch, and notes on anything
    that may keep it from matching."""
    members: dict[str, dict] = {}
    for member in parts.audit.query(batch_id=record["batch_id"], kind="image"):
        members.setdefault(member["image_key"], member)
    ordered = sorted(members.values(), key=lambda r: r["batch_index"])
    notes = []
    if len(ordered) != record["batch_size"]:
        notes.append(f"the log holds {len(ordered)} of the batch's {record['batch_size']} images; "
                     "bytes may differ")
    entry = parts.policies.models[record["model_id"]]
    if entry.sha256 and entry.sha256 != record["model_sha256"]:
        notes.append("the catalog's weights for this model have changed since the image was made")
    batch = Batch(settings=job_from_record(record).settings, jobs=[job_from_record(r) for r in ordered])
    runtime = record.get("runtime") or {}
    generated = {g.job.key: g for g in parts.generator.generate(batch, runtime.get("cpu_threads"))}[
        record["image_key"]]
    differs = {k: (v, generated.runtime.get(k)) for k, v in runtime.items()
               if k != "cpu_threads" and generated.runtime.get(k) != v}
    if differs:
        notes.append("computed differently now: " + ", ".join(f"{k} {a} then, {b} now" for k, (a, b) in differs.items()))
    return parts.marker.encode_generated(generated), notes


def reproduce(record: dict, parts: Parts) -> Reproduction:
    png, notes = regenerate(record, parts)
    digest = hashlib.sha256(png).hexdigest()
    return Reproduction(image_key=record["image_key"], identical=digest == record["image_sha256"],
                        pixels_identical=pixels_sha256(png) == record.get("pixels_sha256"),
                        recorded_sha256=record["image_sha256"], reproduced_sha256=digest,
                        batch_size=record["batch_size"], notes=notes)


def restore_object(record: AuditRecord, parts: Parts) -> None:
    """Put back the object of an audited image that was lost (and is not in the spool):
    regenerated in its recorded batch, stored only if it has the audited sha256."""
    png, notes = regenerate(record.model_dump(mode="json"), parts)
    if hashlib.sha256(png).hexdigest() != record.image_sha256:
        raise RuntimeError(f"{record.image_key}: its object is lost and a regeneration differs from the audited "
                           f"sha256 ({'; '.join(notes) or 'C2PA signatures differ on every signing'}); not stored")
    store_image(parts.store, parts.spool, record, png)
