"""License governance: a campaign's declared use against its models' and LoRAs' licenses.

Checked on the plan, before any weights load: a run that would use a model or LoRA whose
license does not allow the campaign's use is refused as a whole, with every reason.
"""

from __future__ import annotations

from typing import Literal

from ldm_batch.plan import ImageJob
from ldm_batch.policies import License, Policies
from ldm_batch.problems import Problem

Use = Literal["commercial", "non-commercial"]


def refusal_reason(license: License, use: Use, revenue_usd: int | None) -> str | None:
    """Why the license does not allow the use (None when it does)."""
    if use == "non-commercial":
        return None
    if not license.commercial_use:
        return f"which does not allow {use} use"
    if license.revenue_limit_usd is None:
        return None
    limit = f"{license.revenue_limit_usd:,} USD"
    if revenue_usd is None:
        return (f"which allows commercial use only to organisations with annual revenue under {limit}; declare "
                "yours in the organisation_revenue_usd setting (LDM_BATCH_ORGANISATION_REVENUE_USD)")
    if revenue_usd >= license.revenue_limit_usd:
        return (f"which allows commercial use only under {limit} of annual revenue, and the organisation "
                f"declares {revenue_usd:,} USD; an enterprise license is needed")
    return None


def license_problems(jobs: list[ImageJob], policies: Policies, use: Use,
                     revenue_usd: int | None = None) -> list[Problem]:
    """One problem per sheet row and refused model or LoRA; `revenue_usd`: the organisation's
    declared annual revenue, for licenses that allow commercial use under a threshold."""
    loras = policies.loras
    problems, seen = [], set()
    for job in jobs:
        model = policies.models[job.settings.model]
        parts = [("model", model.id, model.license)]
        parts += [("brand", use_.id, loras[use_.id].license) for use_ in job.settings.loras]
        for column, name, license in parts:
            reason = refusal_reason(license, use, revenue_usd)
            if reason is None or (job.row, name) in seen:
                continue
            seen.add((job.row, name))
            kind = "model" if column == "model" else "LoRA"
            problems.append(Problem(row=job.row, column=column, message=(
                f"{kind} {name!r} is licensed under {license.id}, {reason}"
                f"{f' ({license.url})' if license.url else ''}; choose another {kind} or declare the campaign's use")))
    return problems
