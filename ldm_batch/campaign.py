"""A campaign run as plain Python: the stages between a screened sheet and audited images.

The Prefect flow (flows/campaign_batch.py) calls these functions and adds retries,
fan-out and reporting. Per worker process, `Workers.get(settings)` keeps one of each
heavy part (pipelines, CLIP screen, S3 client, database engine).

Order of writes for an image: the encoded PNG goes to the local spool, its audit record
is committed, then the object is put and the spooled copy removed. A failure in between
(S3 down, worker killed) leaves a record whose object is missing and the exact bytes in the
spool; `upload_spooled` (run at the start of every flow run and by `ldm-batch resume`)
puts them without generating again. It can never leave a delivered image that has no
audit record.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from importlib.metadata import version

from pydantic import BaseModel

from ldm_batch.audit import AuditLog, AuditRecord
from ldm_batch.audit.log import now
from ldm_batch.catalog import CatalogError, verified_path
from ldm_batch.config import Settings
from ldm_batch.cost import image_cost
from ldm_batch.generate import GeneratedImage, ImageGenerator, quiet_libraries, resolve_device
from ldm_batch.licenses import LicenseRefused
from ldm_batch.plan import Batch, ImageJob
from ldm_batch.policies import Policies, load_policies
from ldm_batch.provenance import Marker, pixels_sha256
from ldm_batch.safety.image import ImageScreen, ImageVerdict
from ldm_batch.safety.text import PromptVerdict, TextScreen
from ldm_batch.sheets import PromptRow, SheetInvalid, SkippedRow
from ldm_batch.spool import Spool
from ldm_batch.storage import ObjectStore

SOFTWARE = ("ldm-batch", "torch", "diffusers", "transformers", "open_clip_torch", "peft")


class RunContext(BaseModel):
    run_id: str
    campaign: str
    use: str
    sheet: str


class BatchOutcome(BaseModel):
    generated: int = 0
    delivered: int = 0
    quarantined: int = 0
    repaired: int = 0
    reused: int = 0
    discarded: int = 0  # blocked by a concept whose policy keeps only hash and scores
    cost: float = 0.0
    s3_keys: list[str] = []
    worker: str = ""  # host:pid of the process that generated the batch


class Workers:
    """The heavy parts one worker process loads once and reuses."""

    _cache: dict[str, Workers] = {}
    _lock = threading.Lock()

    def __init__(self, settings: Settings):
        quiet_libraries()
        self.settings = settings
        self.policies: Policies = load_policies(settings.policies_dir)
        self.store = ObjectStore(settings)
        self.audit = AuditLog(settings.audit_url)
        self.spool = Spool(settings.home / "spool")
        self.marker = Marker(self.policies.provenance, settings)
        self._generator: ImageGenerator | None = None
        self._screen: ImageScreen | None = None
        self._text_screen: TextScreen | None = None
        self._loading = threading.Lock()

    @classmethod
    def get(cls, settings: Settings) -> Workers:
        key = settings.identity()
        with cls._lock:
            if key not in cls._cache:
                cls._cache[key] = Workers(settings)
            return cls._cache[key]

    @property
    def generator(self) -> ImageGenerator:
        with self._loading:
            if self._generator is None:
                self._generator = ImageGenerator(self.policies, self.settings.device, self.settings.compile_unet)
            return self._generator

    @property
    def text_screen(self) -> TextScreen:
        with self._loading:
            if self._text_screen is None:
                self._text_screen = TextScreen(self.policies, self.settings.policies_dir)
            return self._text_screen

    @property
    def screen(self) -> ImageScreen:
        with self._loading:
            if self._screen is None:
                device = resolve_device(self.settings.device)
                self._screen = ImageScreen(self.policies, device)
            return self._screen


def software_versions() -> dict[str, str]:
    return {name: version(name) for name in SOFTWARE}


def row_record(run: RunContext, row: PromptRow, verdict: PromptVerdict,
               license_reasons: list[str] | None = None) -> AuditRecord:
    """The record of a row that makes no image: refused by the text screen (block), held for a
    person (review), or refused because a license does not allow the campaign's use."""
    held = verdict.decision == "review" and not license_reasons
    return AuditRecord(
        kind="row", run_id=run.run_id, campaign=row.campaign or run.campaign, use=run.use, sheet=run.sheet,
        sheet_row=row.row, asset_id=row.asset_id, decision="held" if held else "blocked",
        reasons=license_reasons or verdict.reasons, prompt=row.prompt, negative_prompt=row.negative_prompt,
        text_verdict=verdict.model_dump(), brand=row.brand, model_id=row.model,
        metadata=row.metadata, created_at=now().isoformat())


def skipped_record(run: RunContext, row: SkippedRow) -> AuditRecord:
    """The record of an invalid row left out by --skip-invalid-rows, with its problems."""
    return AuditRecord(
        kind="row", run_id=run.run_id, campaign=run.campaign, use=run.use, sheet=run.sheet, sheet_row=row.row,
        asset_id=(row.cells.get("asset_id") or f"row{row.row}")[:128], decision="skipped",
        reasons=[f"column {p.column!r}: {p.message}" for p in row.problems], prompt=row.cells.get("prompt", ""),
        text_verdict={}, metadata=row.cells, created_at=now().isoformat())


def check_weights(jobs: list[ImageJob], policies: Policies) -> None:
    """Before generation: every model and LoRA the plan uses is safetensors with the catalog's
    sha256 (raises CatalogError naming the file). Digests are cached, so loading does not hash again."""
    loras = {lora.id: lora for brand in policies.brands.values() for lora in brand.loras}
    entries = {}
    for job in jobs:
        entries[job.settings.model] = policies.models[job.settings.model]
        entries.update({use.id: loras[use.id] for use in job.settings.loras})
        for use in job.settings.loras:
            if loras[use.id].base_model != job.settings.model:
                raise CatalogError(f"row {job.row}: LoRA {use.id!r} was trained on {loras[use.id].base_model!r}, "
                                   f"not on {job.settings.model!r}; use that model or another brand")
    for entry in entries.values():
        verified_path(entry.source, getattr(entry, "revision", None), entry.sha256)


def refusal_problems(exc: BaseException) -> list[dict] | None:
    """The problems of a refused sheet (bad rows, licenses, weights: nothing was generated,
    running it again will not help), as {row, column, message}; None for other failures."""
    if isinstance(exc, SheetInvalid):
        return [p.model_dump() for p in exc.problems]
    if isinstance(exc, LicenseRefused):
        return exc.problems
    if isinstance(exc, CatalogError):
        return [{"row": None, "column": None, "message": str(exc)}]
    return None


def is_complete(record: AuditRecord | None, workers: Workers) -> bool:
    """True when an image is audited and stored (or audited as not to be stored)."""
    return record is not None and (record.s3_key is None or workers.store.head(record.s3_key) is not None)


def process_batch(batch: Batch, run: RunContext, text_verdicts: dict[int, PromptVerdict],
                  rows: dict[int, PromptRow], workers: Workers,
                  device_slot: Callable[[], AbstractContextManager] = nullcontext) -> BatchOutcome:
    """Generate, screen, encode, audit and store one batch of images. Generation runs inside
    `device_slot()` (the flow passes a per-GPU concurrency limit); the rest runs outside it.

    The flow plans batches of images that have no record yet; an image that got one
    meanwhile (another worker on the same sheet) is left as it is, or its object put back
    from the spool or from these bytes when they match the record.
    """
    policies = workers.policies
    with device_slot():
        generated = workers.generator.generate(batch)
    verdicts = screen_or_quarantine(workers, [g.image for g in generated])
    model = policies.models[batch.settings.model]
    loras = {lora.id: lora for brand in policies.brands.values() for lora in brand.loras}
    software = software_versions()
    outcome = BatchOutcome(generated=len(generated), worker=f"{socket.gethostname()}:{os.getpid()}")
    new_records, uploads = [], []
    for image, verdict in zip(generated, verdicts):
        job = image.job
        placement = "delivery" if verdict.decision == "allow" else "quarantine" if verdict.keep_image else None
        png = encode(image, workers.marker)
        existing = workers.audit.image_record(job.key)
        if existing is not None:
            if is_complete(existing, workers):
                outcome.reused += 1
            else:  # audited before but its object was lost: put back the audited bytes
                uploads.append((existing, workers.spool.read(job.key, existing.image_sha256) or png))
                outcome.repaired += 1
            continue
        cost = image_cost(image.seconds, image.device, policies.costs)
        record = AuditRecord(
            kind="image", run_id=run.run_id, campaign=job.campaign, use=run.use, sheet=run.sheet, sheet_row=job.row,
            asset_id=job.asset_id,
            decision=DECISION_OF_PLACEMENT[placement],
            reasons=verdict.reasons, prompt=job.prompt, negative_prompt=job.negative_prompt,
            text_verdict=text_verdicts[job.row].model_dump(), brand=job.brand,
            model_id=model.id, model_revision=model.revision, model_sha256=image.model_sha256,
            model_license=model.license.model_dump(),
            loras=[{"id": use.id, "scale": use.scale, "sha256": image.lora_sha256[use.id],
                    "license": loras[use.id].license.model_dump(), "trigger": loras[use.id].trigger,
                    "manifest": loras[use.id].manifest, "manifest_sha256": loras[use.id].manifest_sha256}
                   for use in batch.settings.loras],
            scheduler=image.scheduler, steps=batch.settings.steps, guidance=batch.settings.guidance,
            width=batch.settings.width, height=batch.settings.height, seed=job.seed, variant=job.variant,
            batch_id=batch.id, batch_size=image.batch_size, batch_index=image.batch_index, device=image.device,
            runtime=image.runtime, software=software, generation_seconds=round(image.seconds, 6), cost=cost,
            currency=policies.costs.currency, image_verdict=verdict.model_dump(), image_key=job.key,
            s3_bucket=workers.store.bucket if placement else None,
            s3_key=workers.store.object_key(placement, job.key) if placement else None,
            image_sha256=_sha256(png), pixels_sha256=pixels_sha256(png), provenance=workers.marker.record(),
            metadata=rows[job.row].metadata, created_at=now().isoformat())
        new_records.append(record)
        if placement:
            workers.spool.hold(job.key, png)
            uploads.append((record, png))
        outcome.delivered += placement == "delivery"
        outcome.quarantined += placement == "quarantine"
        outcome.discarded += placement is None
        outcome.cost += cost
    workers.audit.append(new_records)
    for record, png in uploads:
        if _sha256(png) != record.image_sha256:
            raise RuntimeError(f"{record.image_key}: its object is lost and the image cannot be put back: the "
                               f"spool has no copy and a regeneration differs from the audited sha256 "
                               f"(C2PA signatures differ each time); not stored")
        store_image(workers, record, png)
        outcome.s3_keys.append(record.s3_key)
    return outcome


def store_image(workers: Workers, record: AuditRecord, png: bytes) -> None:
    workers.store.put_image(placement_of(record), record.image_key, png, {"run-id": record.run_id})
    workers.spool.release(record.image_key)


def upload_spooled(workers: Workers, run_id: str | None = None) -> dict[str, int]:
    """Put spooled images whose audit records are committed (of one run, or all) and drop
    spooled images that never got a record (their run died before auditing them; they
    were never delivered and will be generated again)."""
    counts = {"uploaded": 0, "dropped": 0}
    for key in workers.spool.keys():
        record = workers.audit.image_record(key)
        if record is None:
            workers.spool.release(key)
            counts["dropped"] += 1
            continue
        if run_id is not None and record.run_id != run_id:
            continue
        png = workers.spool.read(key, record.image_sha256)
        if png is None:  # not the audited bytes: useless
            workers.spool.release(key)
            counts["dropped"] += 1
        elif record.s3_key and workers.store.head(record.s3_key) is None:
            store_image(workers, record, png)
            counts["uploaded"] += 1
        else:
            workers.spool.release(key)
    return counts


def screen_or_quarantine(workers: Workers, images: list) -> list[ImageVerdict]:
    """The image screen's verdicts; if the screen cannot run, every image goes to review
    (quarantine), with the reason recorded. Unscreened images are never delivered."""
    try:
        return workers.screen.screen_images(images)
    except Exception as exc:
        reason = f"image screen failed, held for review: {type(exc).__name__}: {exc}"
        return [ImageVerdict(decision="review", scores={}, fired=[], reasons=[reason], screen="unavailable")
                for _ in images]


def encode(image: GeneratedImage, marker: Marker) -> bytes:
    """The PNG stored for a generated image, marked with how it was made."""
    job = image.job
    parameters = {"prompt": job.prompt, "negative_prompt": job.negative_prompt, "seed": job.seed,
                  "model_sha256": image.model_sha256, **job.settings.model_dump(mode="json")}
    return marker.encode(image.image, parameters)


def placement_of(record: AuditRecord) -> str:
    return "delivery" if record.decision == "delivered" else "quarantine"


# Where an image is put, and the decision its record states; None: not stored at all.
DECISION_OF_PLACEMENT = {"delivery": "delivered", "quarantine": "quarantined", None: "blocked"}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
