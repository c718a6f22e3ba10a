"""Preflight: from screened rows to a typed `Plan`, before any weights load.

    screened rows -> rows the text screen refused (each an audit-ready row record)
                  -> jobs of the allowed rows
                  -> refusals: licenses, weights (safetensors, sha256, LoRA base model)
                  -> per job: already done, lost object to restore, or to generate (batched)

Plain Python: it needs the policies and a way to look
up what is already audited and stored (`ldm_batch.reconcile.image_states`), so it is
tested without Prefect, S3 or torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ldm_batch.audit import AuditRecord
from ldm_batch.catalog import verified_path
from ldm_batch.licenses import license_problems
from ldm_batch.plan import Batch, ImageJob, group_batches, model_prompt, plan_row
from ldm_batch.policies import Policies
from ldm_batch.problems import CatalogError, LicenseRefused, Problem, Refused
from ldm_batch.reconcile import ImageState
from ldm_batch.safety.text import PromptVerdict
from ldm_batch.sheets import PromptRow


@dataclass(frozen=True)
class ScreenedRow:
    """A sheet row with the text screen's verdict on it."""

    row: PromptRow
    verdict: PromptVerdict

    @property
    def allowed(self) -> bool:
        return self.verdict.decision == "allow"


@dataclass(frozen=True)
class Refusal:
    """Why a run cannot start, per row where a row is to blame: an audit-ready value."""

    error: Refused  # what the CLI and the inbox report
    rows: dict[int, list[Problem]] = field(default_factory=dict)  # sheet row -> its problems


@dataclass
class Plan:
    rows: list[ScreenedRow]  # the valid rows; those not allowed were blocked or held by the text screen
    jobs: list[ImageJob]  # every image the allowed rows ask for
    done: list[ImageJob] = field(default_factory=list)  # audited and stored before this run
    restore: list[AuditRecord] = field(default_factory=list)  # audited, object lost, not spooled
    batches: list[Batch] = field(default_factory=list)  # to generate
    refusal: Refusal | None = None  # set: nothing may be generated

    @property
    def refused_rows(self) -> list[ScreenedRow]:
        return [r for r in self.rows if not r.allowed]

    @property
    def to_generate(self) -> int:
        return sum(len(batch.jobs) for batch in self.batches)


def screen_rows(rows: list[PromptRow], screen, policies: Policies) -> list[ScreenedRow]:
    """Each row with the text screen's verdict on everything the model reads: the prompt with
    its brand's trigger words, and the negative prompt (its own verdict; the stricter wins)."""
    brands = [row.brand for row in rows]
    prompts = screen.screen([model_prompt(row, policies) for row in rows], brands)
    negatives = [row for row in rows if row.negative_prompt.strip()]
    negative = dict(zip((row.row for row in negatives),
                        screen.screen([row.negative_prompt for row in negatives], [row.brand for row in negatives],
                                      negative=True) if negatives else []))
    return [ScreenedRow(row, verdict.with_negative(negative.get(row.row))) for row, verdict in zip(rows, prompts)]


StateLookup = Callable[[list[str]], dict[str, ImageState]]


def preflight(sheet_name: str, rows: list[ScreenedRow], campaign: str, use: str, policies: Policies,
              states: StateLookup, batch_size: int, revenue_usd: int | None = None) -> Plan:
    """The plan of a run; with `plan.refusal` set when licenses or weights forbid it."""
    plan = Plan(rows=rows,
                jobs=[job for r in rows if r.allowed
                      for job in plan_row(r.row, campaign, policies, r.verdict.model_dump())])
    plan.refusal = refusal(plan.jobs, policies, use, revenue_usd)
    if plan.refusal is not None:
        return plan
    found = states([job.key for job in plan.jobs])
    plan.done = [job for job in plan.jobs if found[job.key].complete]
    plan.restore = [found[job.key].record for job in plan.jobs if found[job.key].lost]
    plan.batches = group_batches([job for job in plan.jobs if found[job.key].record is None], batch_size)
    return plan


def refusal(jobs: list[ImageJob], policies: Policies, use: str, revenue_usd: int | None = None) -> Refusal | None:
    """The first check that refuses the run, in the order a user fixes things: licenses
    (the campaign's declared use), then weights."""
    if problems := license_problems(jobs, policies, use, revenue_usd):
        return Refusal(LicenseRefused(problems), _by_row(problems))
    if problems := weight_problems(jobs, policies):
        return Refusal(CatalogError(problems), _by_row(problems))
    return None


def weight_problems(jobs: list[ImageJob], policies: Policies) -> list[Problem]:
    """Every model and LoRA the jobs use is safetensors with the catalog's sha256, and each LoRA
    was trained on the job's model. Digests are cached, so loading does not hash again."""
    loras = policies.loras
    entries, problems = {}, []
    for job in jobs:
        entries[job.settings.model] = policies.models[job.settings.model]
        for use in job.settings.loras:
            entries[use.id] = loras[use.id]
            if loras[use.id].base_model != job.settings.model:
                problems.append(Problem(row=job.row, column="brand", message=(
                    f"LoRA {use.id!r} was trained on {loras[use.id].base_model!r}, not on "
                    f"{job.settings.model!r}; use that model or another brand")))
                break
        if problems:
            return problems  # one mismatch says it all; the weights need not be hashed
    for entry in entries.values():
        try:
            verified_path(entry.source, getattr(entry, "revision", None), entry.sha256)
        except CatalogError as exc:
            problems += exc.problems
    return problems


def _by_row(problems: list[Problem]) -> dict[int, list[Problem]]:
    rows: dict[int, list[Problem]] = {}
    for p in problems:
        if isinstance(p.row, int):
            rows.setdefault(p.row, []).append(p)
    return rows
