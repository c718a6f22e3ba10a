"""Plan: turn screened rows into `ImageJob`s and group them into `Batch`es.

This is the one place that decides an image's seed and S3 key. Both come from the job's
content only (never the run), so the same sheet asks for the same images every time and
a re-run can skip what is already stored.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict

from ldm_batch.policies import Policies
from ldm_batch.sheets import MAX_SEED, PromptRow


class LoraUse(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    scale: float


class GenerationSettings(BaseModel):
    """What a batch shares: one pipeline call can serve every job with equal settings."""

    model_config = ConfigDict(frozen=True)

    model: str
    loras: tuple[LoraUse, ...]
    width: int
    height: int
    steps: int
    guidance: float


class ImageJob(BaseModel):
    model_config = ConfigDict(frozen=True)

    row: int
    asset_id: str
    variant: int
    campaign: str
    brand: str | None
    prompt: str
    negative_prompt: str
    settings: GenerationSettings
    seed: int
    key: str
    text_verdict: dict = {}  # the row's text screen verdict, copied into the image's audit record
    metadata: dict[str, str] = {}  # the row's extra columns, kept with the image


class Batch(BaseModel):
    settings: GenerationSettings
    jobs: list[ImageJob]

    @property
    def id(self) -> str:
        """Content-derived: the same jobs in the same order make the same batch."""
        return _digest({"keys": [job.key for job in self.jobs]})[:32]


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def derive_seed(row: PromptRow, variant: int) -> int:
    """The row's seed plus the variant index, or a seed derived from the row's content."""
    if row.seed is not None:
        return (row.seed + variant) % (MAX_SEED + 1)
    content = row.model_dump(include={"asset_id", "prompt", "negative_prompt", "brand", "model",
                                      "width", "height", "steps", "guidance"})
    return int(_digest({"row": content, "variant": variant})[:8], 16)


def model_prompt(row: PromptRow, policies: Policies) -> str:
    """The prompt the model reads: a brand LoRA trained with a trigger word hears it in front
    of every prompt of the brand. The text screen screens this, not just the sheet's cell."""
    brand = policies.brands.get(row.brand) if row.brand else None
    return " ".join([lora.trigger for lora in (brand.loras if brand else []) if lora.trigger] + [row.prompt])


def plan_row(row: PromptRow, campaign: str, policies: Policies, text_verdict: dict | None = None) -> list[ImageJob]:
    """The row's images, each with its seed and key; `text_verdict` rides along to the record."""
    model_id = row.model or policies.default_model
    defaults = policies.models[model_id].defaults
    brand = policies.brands.get(row.brand) if row.brand else None
    settings = GenerationSettings(
        model=model_id,
        loras=tuple(LoraUse(id=lora.id, scale=lora.scale) for lora in (brand.loras if brand else [])),
        width=row.width or defaults.width,
        height=row.height or defaults.height,
        steps=row.steps or defaults.steps,
        guidance=row.guidance if row.guidance is not None else defaults.guidance,
    )
    campaign = row.campaign or campaign
    prompt = model_prompt(row, policies)
    jobs = []
    for variant in range(row.variants):
        seed = derive_seed(row, variant)
        spec = {"prompt": prompt, "negative_prompt": row.negative_prompt, "seed": seed,
                "settings": settings.model_dump(mode="json"),
                "weights": policies.models[model_id].sha256,
                "loras": [lora.sha256 for lora in (brand.loras if brand else [])]}
        key = f"{campaign}/{row.asset_id}/{row.asset_id}-v{variant + 1}-{_digest(spec)[:16]}.png"
        jobs.append(ImageJob(row=row.row, asset_id=row.asset_id, variant=variant + 1, campaign=campaign,
                             brand=row.brand, prompt=prompt, negative_prompt=row.negative_prompt,
                             settings=settings, seed=seed, key=key, text_verdict=text_verdict or {},
                             metadata=row.metadata))
    return jobs


def group_batches(jobs: list[ImageJob], batch_size: int) -> list[Batch]:
    """Jobs with equal settings share a batch, in sheet order, at most `batch_size` each."""
    groups: dict[GenerationSettings, list[ImageJob]] = {}
    for job in jobs:
        groups.setdefault(job.settings, []).append(job)
    return [Batch(settings=settings, jobs=group[i : i + batch_size])
            for settings, group in groups.items() for i in range(0, len(group), batch_size)]
