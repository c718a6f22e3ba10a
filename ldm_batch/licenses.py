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


def allows(license: License, use: Use) -> bool:
    return use == "non-commercial" or license.commercial_use


def license_problems(jobs: list[ImageJob], policies: Policies, use: Use) -> list[Problem]:
    """One problem per sheet row and refused model or LoRA."""
    loras = policies.loras
    problems, seen = [], set()
    for job in jobs:
        model = policies.models[job.settings.model]
        parts = [("model", model.id, model.license)]
        parts += [("brand", use_.id, loras[use_.id].license) for use_ in job.settings.loras]
        for column, name, license in parts:
            if allows(license, use) or (job.row, name) in seen:
                continue
            seen.add((job.row, name))
            kind = "model" if column == "model" else "LoRA"
            problems.append(Problem(row=job.row, column=column, message=(
                f"{kind} {name!r} is licensed under {license.id}, which does not allow {use} use"
                f"{f' ({license.url})' if license.url else ''}; choose another {kind} or declare the campaign's use")))
    return problems
