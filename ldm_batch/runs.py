"""A run's typed values: what it is (`RunContext`), what one batch did (`BatchOutcome`), and
what the whole run did (`RunSummary`, folded from the plan and the batches' outcomes).

The summary is returned by the flow, stored on the run in the audit log, printed by the
CLI, shown by the console and written into the inbox reports: one model, read by field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from ldm_batch.problems import Problem

RunStatus = Literal["running", "finished", "partial", "refused", "failed"]


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


class RefusedRow(BaseModel):
    """A row the text screen blocked or held for a person."""

    row: int
    asset_id: str
    decision: str
    reasons: list[str]


class ImageFailure(BaseModel):
    """An image whose batch still failed after its retries: recorded as failed, made again
    when the sheet runs again."""

    row: int
    asset_id: str
    image_key: str
    error: str


class RunSummary(BaseModel):
    """What a run did; `ldm-batch run --json` prints it (the contract's keys included)."""

    run_id: str
    campaign: str
    sheet: str
    status: RunStatus = "running"
    rows: int
    errors: list[Problem] = []
    skipped: list[Problem] = []
    prompts_blocked: int = 0
    prompts_held: int = 0
    refused: list[RefusedRow] = []
    images: int = 0
    images_generated: int = 0
    images_reused: int = 0
    images_delivered: int = 0
    images_blocked: int = 0
    images_repaired: int = 0
    images_stored: int = 0
    images_failed: int = 0
    failures: list[ImageFailure] = []
    cost: float = 0.0
    currency: str | None = None
    bucket: str | None = None
    s3_keys: list[str] = []
    workers: list[str] = []
    contact_sheet: str | None = None
    checkpoint: dict | None = None  # the signed audit checkpoint written after the run
    warnings: list[str] = []  # what the run did that a compliance reviewer should know (unsigned images)

    def fold(self, outcomes: list[BatchOutcome], *, done: int, restored: int,
             failures: list[ImageFailure] = ()) -> RunSummary:
        """This summary with the batches' outcomes added; `done` images were complete before
        the run, `restored` lost objects were put back before generation, `failures` are the
        images of batches that failed."""
        return self.model_copy(update=dict(
            images_failed=len(failures), failures=list(failures),
            images_generated=sum(o.generated for o in outcomes),
            images_reused=done + sum(o.reused for o in outcomes),
            images_delivered=sum(o.delivered for o in outcomes),
            images_blocked=sum(o.quarantined + o.discarded for o in outcomes),
            images_repaired=restored + sum(o.repaired for o in outcomes),
            images_stored=restored + sum(o.delivered + o.quarantined + o.repaired for o in outcomes),
            cost=round(sum(o.cost for o in outcomes), 8),
            s3_keys=[key for o in outcomes for key in o.s3_keys],
            workers=sorted({o.worker for o in outcomes}),
        ))

    def ended(self, status: RunStatus, errors: list[Problem] | None = None) -> RunSummary:
        """The summary at the end; a "finished" run with failed images is "partial"."""
        if status == "finished" and self.failures:
            status = "partial"
        return self.model_copy(update={"status": status, "errors": errors or self.errors})
