"""Image safety screen, first version: open_clip concept scores with policy thresholds.

Each concept in the policy is readable text. Its score for an image is the zero-shot
probability of the concept against the policy's neutral concepts (CLIP logits, softmax),
so a threshold means the same thing for any CLIP model. Text embeddings are computed
once per screen; images are scored in one batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from pydantic import BaseModel

from ldm_batch.catalog import verified_path
from ldm_batch.policies import ImageSafetyPolicy, Policies
from ldm_batch.safety.text import Decision


class ImageVerdict(BaseModel):
    decision: Decision
    scores: dict[str, float]
    fired: list[str]
    reasons: list[str]
    screen: str


class ImageScreen:
    def __init__(self, policies: Policies, models_dir: Path, device: str = "cpu"):
        import open_clip

        self.policy: ImageSafetyPolicy = policies.image_safety
        entry = policies.models[self.policy.screen_model]
        path, self.sha256 = verified_path(entry.source, entry.revision, entry.sha256, models_dir)
        self.screen = f"{entry.id}@{entry.revision or self.sha256[:12]}"
        self.device = device
        model, _, self.preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}", device=device)
        self.model = model.eval()
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        texts = [c.text for c in self.policy.concepts] + list(self.policy.neutral_concepts)
        with torch.no_grad():
            embeddings = self.model.encode_text(tokenizer(texts).to(device))
        self.text_embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def scores(self, images: list[Image.Image]) -> list[dict[str, float]]:
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        embeddings = self.model.encode_image(pixels)
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        logits = self.model.logit_scale.exp() * embeddings @ self.text_embeddings.T
        n = len(self.policy.concepts)
        neutral = logits[:, n:]
        result = []
        for row, neutral_row in zip(logits[:, :n], neutral):
            per_concept = {}
            for concept, logit in zip(self.policy.concepts, row):
                probs = torch.softmax(torch.cat([logit.view(1), neutral_row]), dim=0)
                per_concept[concept.text] = round(float(probs[0]), 6)
            result.append(per_concept)
        return result

    def screen_images(self, images: list[Image.Image]) -> list[ImageVerdict]:
        verdicts = []
        for scores in self.scores(images):
            fired = [c for c in self.policy.concepts if scores[c.text] >= c.threshold]
            actions = {c.action for c in fired}
            decision: Decision = "block" if "block" in actions else "review" if actions else "allow"
            verdicts.append(ImageVerdict(
                decision=decision, scores=scores, fired=[c.text for c in fired],
                reasons=[f"{c.category} ({c.action}): {c.text!r} scored {scores[c.text]:.3f} >= {c.threshold}"
                         for c in fired],
                screen=self.screen))
        return verdicts
