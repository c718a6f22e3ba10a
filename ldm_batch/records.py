"""Audit records of a campaign run: one builder per kind of outcome.

A row that makes no image (refused by the text screen, held for a person, refused by a
license or a preflight check, or skipped as invalid) gets a "row" record; every generated
image gets an "image" record. Every row of a sheet is accounted for.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import TYPE_CHECKING

from ldm_batch.audit import AuditRecord
from ldm_batch.audit.log import now
from ldm_batch.plan import Batch, ImageJob
from ldm_batch.policies import Policies
from ldm_batch.problems import Problem
from ldm_batch.runs import RunContext
from ldm_batch.sheets import PromptRow, SkippedRow

if TYPE_CHECKING:
    from ldm_batch.preflight import Plan
    from ldm_batch.provenance import ImageMarks
    from ldm_batch.safety.image import ImageVerdict
    from ldm_batch.safety.text import PromptVerdict

SOFTWARE = ("ldm-batch", "torch", "diffusers", "transformers", "open_clip_torch", "peft")
# Where an image is put, and the decision its record states; None: not stored at all.
DECISION_OF_PLACEMENT = {"delivery": "delivered", "quarantine": "quarantined", None: "blocked"}


def software_versions() -> dict[str, str]:
    return {name: version(name) for name in SOFTWARE}


def row_record(run: RunContext, row: PromptRow, verdict: PromptVerdict,
               refusal: list[Problem] | None = None) -> AuditRecord:
    """The record of a row that makes no image: refused by the text screen (block), held for a
    person (review), or refused before generation (a license, its weights, its size)."""
    held = verdict.decision == "review" and not refusal
    return AuditRecord(
        kind="row", run_id=run.run_id, campaign=row.campaign or run.campaign, use=run.use, sheet=run.sheet,
        sheet_row=row.row, asset_id=row.asset_id, decision="held" if held else "blocked",
        reasons=[p.message for p in refusal] if refusal else verdict.reasons, prompt=row.prompt,
        negative_prompt=row.negative_prompt, text_verdict=verdict.model_dump(), brand=row.brand,
        model_id=row.model, metadata=row.metadata, created_at=now().isoformat())


def plan_records(run: RunContext, plan: Plan) -> list[AuditRecord]:
    """Row records of a plan: rows the text screen refused, and rows a refusal names."""
    records = [row_record(run, r.row, r.verdict) for r in plan.refused_rows]
    if plan.refusal is not None:
        records += [row_record(run, r.row, r.verdict, refusal=plan.refusal.rows[r.row.row])
                    for r in plan.rows if r.allowed and r.row.row in plan.refusal.rows]
    return records


def failed_record(run: RunContext, job: ImageJob, error: str) -> AuditRecord:
    """The record of an image whose batch failed after its retries. A "row" record, so the
    image counts as not made: running the sheet again makes it."""
    return AuditRecord(
        kind="row", run_id=run.run_id, campaign=job.campaign, use=run.use, sheet=run.sheet, sheet_row=job.row,
        asset_id=job.asset_id, decision="failed", reasons=[f"generation failed after retries: {error}"],
        prompt=job.prompt, negative_prompt=job.negative_prompt, text_verdict=job.text_verdict, brand=job.brand,
        model_id=job.settings.model, seed=job.seed, variant=job.variant, image_key=job.key,
        metadata=job.metadata, created_at=now().isoformat())


def skipped_record(run: RunContext, row: SkippedRow) -> AuditRecord:
    """The record of an invalid row left out by --skip-invalid-rows, with its problems."""
    return AuditRecord(
        kind="row", run_id=run.run_id, campaign=run.campaign, use=run.use, sheet=run.sheet, sheet_row=row.row,
        asset_id=(row.cells.get("asset_id") or f"row{row.row}")[:128], decision="skipped",
        reasons=[f"column {p.column!r}: {p.message}" for p in row.problems], prompt=row.cells.get("prompt", ""),
        text_verdict={}, metadata=row.cells, created_at=now().isoformat())


def image_record(run: RunContext, batch: Batch, job: ImageJob, generated, verdict: ImageVerdict,
                 placement: str | None, marks: ImageMarks, *, policies: Policies,
                 bucket: str, s3_key: str | None, cost: float, software: dict) -> AuditRecord:
    """The record of one generated image: how it was made, what the screens said, where it is."""
    model = policies.models[batch.settings.model]
    loras = policies.loras
    return AuditRecord(
        kind="image", run_id=run.run_id, campaign=job.campaign, use=run.use, sheet=run.sheet, sheet_row=job.row,
        asset_id=job.asset_id, decision=DECISION_OF_PLACEMENT[placement], reasons=verdict.reasons,
        prompt=job.prompt, negative_prompt=job.negative_prompt, text_verdict=job.text_verdict, brand=job.brand,
        model_id=model.id, model_revision=model.revision, model_sha256=generated.model_sha256,
        model_license=model.license.model_dump(),
        loras=[{"id": use.id, "scale": use.scale, "sha256": generated.lora_sha256[use.id],
                "license": loras[use.id].license.model_dump(), "trigger": loras[use.id].trigger,
                "manifest": loras[use.id].manifest, "manifest_sha256": loras[use.id].manifest_sha256}
               for use in batch.settings.loras],
        scheduler=generated.scheduler, steps=batch.settings.steps, guidance=batch.settings.guidance,
        width=batch.settings.width, height=batch.settings.height, seed=job.seed, variant=job.variant,
        batch_id=batch.id, batch_size=generated.batch_size, batch_index=generated.batch_index,
        device=generated.device, runtime=generated.runtime, software=software,
        generation_seconds=round(generated.seconds, 6), cost=cost, currency=policies.costs.currency,
        image_verdict=verdict.model_dump(), image_key=job.key, s3_bucket=bucket if placement else None,
        s3_key=s3_key, **marks.model_dump(),
        metadata=job.metadata, created_at=now().isoformat())


def placement_of(record: AuditRecord) -> str:
    return "delivery" if record.decision == "delivered" else "quarantine"
