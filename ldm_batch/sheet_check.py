"""What a sheet will do before it runs: the check an author sees after uploading one.

Per row: the validation problems (the checks of `ldm-batch validate`), the text screen's
verdict with its reasons, the model, brand and licenses and whether the campaign's use is
allowed, and the planned images. For the sheet: an estimate of generation time and cost from
what the audit log recorded for the same model and size on this deployment, the campaign
budget, and whether these bytes already ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean

from ldm_batch.audit import AuditLog
from ldm_batch.licenses import license_problems, refusal_reason
from ldm_batch.plan import ImageJob, plan_row
from ldm_batch.policies import Policies
from ldm_batch.preflight import screen_rows
from ldm_batch.problems import Problem, Refused
from ldm_batch.sheets import check_size, read_sheet


@dataclass
class RowCheck:
    row: int
    asset_id: str
    prompt: str
    decision: str  # the text screen's: allow, review (held) or block
    reasons: list[str]
    language: str | None
    model: str
    brand: str | None
    licenses: list[str]  # "model demo-tiny-sd: Apache-2.0", "LoRA acme-style: CC-BY-NC-4.0"
    images: int  # planned; 0 when the screen blocks or holds the row


@dataclass
class Estimate:
    images: int
    seconds: float | None  # None: nothing of that model and size recorded yet
    cost: float | None
    currency: str
    basis: str  # what the figures come from
    budget: float | None = None
    over_budget: bool = False


@dataclass
class SheetCheck:
    name: str
    sha256: str
    use: str
    errors: list[Problem]  # validation and license problems: the sheet cannot start
    rows: list[RowCheck] = field(default_factory=list)
    estimate: Estimate | None = None
    ran: dict | None = None  # the run these bytes already had: {"run_id", "status", "campaign"}

    @property
    def startable(self) -> bool:
        return (not self.errors and self.ran is None and self.estimate is not None
                and self.estimate.images > 0 and not self.estimate.over_budget)


def check_sheet(name: str, data: bytes, use: str, policies: Policies, screen, audit: AuditLog,
                revenue_usd: int | None = None, budget: float | None = None) -> SheetCheck:
    """Everything the upload page shows about a sheet; nothing is generated or stored."""
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    ran = next(({"run_id": r["run_id"], "status": r["status"], "campaign": r["campaign"]}
                for r in reversed(audit.runs()) if r["sheet_sha256"] == sha), None)
    try:
        check_size(name, len(data), policies.sheet_limits)
        sheet = read_sheet(name, data, policies, skip_invalid=True)
    except Refused as exc:  # the file or its header: no row can be read
        return SheetCheck(name, sha, use, exc.problems, ran=ran)
    errors = [p for row in sheet.skipped for p in row.problems]
    screened = screen_rows(sheet.rows, screen, policies) if sheet.rows else []
    rows, jobs = [], []
    for checked in screened:
        row, verdict = checked.row, checked.verdict
        planned = plan_row(row, "check", policies, verdict.model_dump()) if checked.allowed else []
        jobs += planned
        model = row.model or policies.default_model
        rows.append(RowCheck(row=row.row, asset_id=row.asset_id, prompt=row.prompt, decision=verdict.decision,
                             reasons=verdict.reasons, language=verdict.language, model=model, brand=row.brand,
                             licenses=_licenses(model, row.brand, use, policies, revenue_usd), images=len(planned)))
    errors += license_problems(jobs, policies, use, revenue_usd)
    return SheetCheck(name, sha, use, errors, rows, estimate(jobs, policies, audit, budget), ran)


def _licenses(model: str, brand: str | None, use: str, policies: Policies, revenue_usd: int | None) -> list[str]:
    parts = [("model", model, policies.models[model].license)]
    if brand:
        parts += [("LoRA", lora.id, lora.license) for lora in policies.brands[brand].loras]
    return [f"{kind} {name}: {license.id}" + (f" - not allowed: {reason}" if (reason := refusal_reason(
        license, use, revenue_usd)) else f" - {use} use allowed") for kind, name, license in parts]


def estimate(jobs: list[ImageJob], policies: Policies, audit: AuditLog, budget: float | None) -> Estimate:
    """Time and cost of the planned images from the mean recorded per-image time and cost of
    the same model and size (every device this deployment ran it on)."""
    currency = policies.costs.currency
    if not jobs:
        return Estimate(0, 0.0, 0.0, currency, "nothing to generate", budget)
    seconds = cost = 0.0
    unknown, counted = set(), 0
    groups: dict[tuple[str, int, int], int] = {}
    for job in jobs:
        size = (job.settings.model, job.settings.width, job.settings.height)
        groups[size] = groups.get(size, 0) + 1
    for (model, width, height), n in groups.items():
        recorded = [r for r in audit.query(kind="image", model_id=model)
                    if (r["width"], r["height"]) == (width, height) and r["generation_seconds"] is not None]
        if not recorded:
            unknown.add(f"{model} at {width}x{height}")
            continue
        counted += len(recorded)
        seconds += n * mean(r["generation_seconds"] for r in recorded)
        cost += n * mean(r["cost"] or 0.0 for r in recorded)
    if unknown:
        return Estimate(len(jobs), None, None, currency, f"no images of {', '.join(sorted(unknown))} recorded yet "
                        "on this deployment: no estimate", budget)
    return Estimate(len(jobs), round(seconds, 1), round(cost, 8), currency,
                    f"mean of {counted} recorded images of the same model and size", budget,
                    over_budget=budget is not None and cost > budget)
