"""Policies: the YAML under `policies/`, loaded once into pydantic models and passed in.

`load_policies(dir)` is the only reader of those files. A YAML or schema error names the
file and the field, so a broken policy is refused before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ldm_batch.problems import PolicyError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SheetLimits(Strict):
    max_bytes: int = 20_000_000
    max_rows: int = 10000
    max_cell_chars: int = 2000
    max_prompt_chars: int = 1000
    max_variants: int = 16
    min_size: int = 64
    max_size: int = 2048
    size_multiple: int = 8
    max_steps: int = 150
    max_guidance: float = 30.0


class TextCategory(Strict):
    action: Literal["block", "review"]
    terms: list[str] = []
    context_terms: list[str] = Field([], description="when set, `terms` count only together with one of "
                                                     "these or with another category's rule hit")
    threshold: float = Field(0.5, gt=0, le=1, description="classifier probability at which it fires")
    language_terms: dict[str, list[str]] = Field({}, description="terms that apply only to prompts identified "
                                                                 "as that language (harmless words elsewhere)")
    names: bool = Field(False, description="a category of names (people, brands): the classifier's reading of "
                                           "an English gloss does not fire it, as a gloss translates words, "
                                           "not names (its rules still read the gloss)")
    any_of: list[str] = Field([], description="not a kind of content of its own: the classifier's probability "
                                            "that the prompt is in any of these categories (its head is "
                                            "trained on all their labels), for a prompt whose unsafety is "
                                            "split between them, none sure enough to fire (it fires only where "
                                            "they are all silent)")
    kind_of: str | None = Field(None, description="rules only, a kind of that category (dehumanising, of hate): "
                                                  "`eval` counts it as that category, and the classifier has no "
                                                  "head for it")

    @property
    def fired_by_gloss_classifier(self) -> bool:
        """Whether the classifier's reading of an English gloss may fire this category: not one
        that needs context (a crude gloss of a child's picture reads too much like one), not
        one of names (a gloss translates words, not names), not an any-of one (a crude gloss
        reads too much like its categories, minors among them). Its rules still read the gloss."""
        return not self.context_terms and not self.names and not self.any_of


class EmbeddingHeadSpec(Strict):
    """A sentence encoder (catalog id) and a head trained on its embeddings (file under policies/)."""

    encoder: str
    head: str
    head_sha256: str  # the head file's sha256: a head that differs is not loaded
    skip_below: float = Field(0.0, ge=0, lt=1, description="for the English head (classifier.english): a "
                              "text whose multilingual scores are all under this, and under the bound at "
                              "which the English head could lift them to their thresholds, is not read by "
                              "it (text_classifier.english_can_matter); 0: read wherever it could matter")


class TextClassifierSpec(Strict):
    """embedding-head: `encoder` (catalog id) + `head` (file under policies/), and optionally
    `english`, a second encoder and head that read the prompt in English (as written, or its
    gloss), the two heads' probabilities averaged;
    sequence-classification: `model` (catalog id) + `labels` (model label -> category)."""

    kind: Literal["embedding-head", "sequence-classification"]
    encoder: str | None = None
    head: str | None = None
    head_sha256: str | None = None  # the head file's sha256: a head that differs is not loaded
    english: EmbeddingHeadSpec | None = None
    model: str | None = None
    labels: dict[str, str] = {}


class LanguagePolicy(Strict):
    """Which languages the text screen was measured on, and what happens to the others."""

    supported: list[str] = ["en"]  # ISO 639-1; the first screens prompts too short to tell
    identify: list[str] = ["en", "de", "fr", "es", "it", "pt", "nl", "pl", "ja", "zh", "ko", "ru", "uk", "cs",
                           "sv", "da", "no", "fi", "tr", "ar", "he", "hi", "el", "hu", "ro", "id", "vi", "th"]
    min_confidence: float = Field(0.25, ge=0, le=1)
    unsupported_action: Literal["review", "block"] = "review"
    # A catalog model whose vocab.txt lists words of the first supported language: a prompt made
    # of such words (at least `lexicon_share` of them) is in that language, however short.
    lexicon: str | None = None
    lexicon_share: float = Field(0.8, gt=0, le=1)


class TranslationPolicy(Strict):
    """Apertium's rule-based translation to English (ldm_batch.safety.translation), for the
    languages it covers, in place of their word-by-word glosses: `chains` names each language's
    Apertium modes in order (French through Spanish: [fr-es, spa-eng]); each pair's data folder
    under `folder` is pinned by sha256. A missing or changed pair is treated as a missing
    dictionary."""

    folder: Path = Path("/usr/share/apertium")
    chains: dict[str, list[str]] = {}  # ISO 639-1 -> Apertium modes, in order
    sha256: dict[str, str] = {}  # pair folder (apertium-eng-spa) -> pin


class GlossaryPolicy(Strict):
    """Bilingual dictionaries for English glosses of the other languages' prompts
    (ldm_batch.safety.glossary): dictd files in `folder`, each pinned by sha256 (of its .index
    and .dict.dz together). A language whose dictionary is missing or changed is not allowed:
    its prompts go to `languages.unsupported_action`, as the screen was measured with it."""

    folder: Path = Path("/usr/share/dictd")
    sha256: dict[str, str] = {}  # ISO 639-1 -> pin
    translation: TranslationPolicy | None = None


class IdentityPolicy(Strict):
    """Words that say who someone is ("gay", "Muslim", "deaf", "hijab"), per language (English's
    also read every English reading). For every category but `read_by`, the classifier's score is
    the lesser of the text's with and without them (ldm_batch.safety.identity)."""
    read_by: list[str] = ["hate"]
    terms: dict[str, list[str]] = {}


class AgesPolicy(Strict):
    """An age: a number, then words for years (`after_number`: "25 year old", "30yo", "40 ans").
    For the rules, an adult's (at or above `adult`) reads as nothing, so minors' "year old" does
    not take a 25-year-old for a child, and a child's reads as `child_reads` ("12 ans": 12 year
    old, a minors term)."""
    adult: int = 18
    after_number: list[str] = []
    child_reads: str = "year old"


class TextSafetyPolicy(Strict):
    screen_id: str
    allow_phrases: list[str] = []
    categories: dict[str, TextCategory]
    # checked on negative prompts only: asking the model to avoid a safeguard (e.g. "clothes")
    negative_prompt_categories: dict[str, TextCategory] = {}
    classifier: TextClassifierSpec | None = None
    languages: LanguagePolicy = LanguagePolicy()
    glossary: GlossaryPolicy | None = None
    # a letter hidden behind a mask character ("g*ys", "J*den") is read as a guess: a prompt
    # that no category fires on goes here (allow: the guess is trusted)
    hidden_letters_action: Literal["review", "block", "allow"] = "review"
    identity: IdentityPolicy = IdentityPolicy()
    ages: AgesPolicy = AgesPolicy()

    @model_validator(mode="after")
    def _kinds_of_known_categories(self) -> TextSafetyPolicy:
        for name, category in self.categories.items():
            if category.kind_of is not None and category.kind_of not in self.categories:
                raise ValueError(f"categories.{name}.kind_of: {category.kind_of!r} is not a category "
                                 f"(one of {', '.join(self.categories)})")
        return self

    @property
    def classified_categories(self) -> dict[str, TextCategory]:
        """The categories the classifier's heads score: all but the rules-only kinds (`kind_of`)."""
        return {name: c for name, c in self.categories.items() if c.kind_of is None}


class ImageConcept(Strict):
    text: str
    category: str
    threshold: float = Field(gt=0, le=1)
    action: Literal["block", "review"] = "block"
    keep_image: bool = Field(True, description="False: when it fires, store no image, only hash and scores")


class NsfwSignal(Strict):
    """open_nsfw as a second signal beside the CLIP concepts."""

    model: str
    threshold: float = Field(0.8, gt=0, le=1)
    category: str = "sexual"
    action: Literal["block", "review"] = "block"
    combine: Literal["any-of", "review-on-disagreement"] = "any-of"


class ImageSafetyPolicy(Strict):
    screen_model: str
    neutral_concepts: list[str] = Field(min_length=1)
    concepts: list[ImageConcept]
    special_care: list[ImageConcept] = []
    special_care_adjustment: float = Field(0.1, ge=0, lt=1)
    nsfw: NsfwSignal | None = None
    # Multi-scale screening: besides the whole image, n x n overlapping tiles for each n here
    # (tiles smaller than the model's input are skipped); a concept's score is its highest.
    tile_grids: list[Annotated[int, Field(ge=2, le=16)]] = Field(
        [], description="e.g. [2, 4, 6]: 4 + 16 + 36 tiles more per large image")


class Watermark(Strict):
    enabled: bool = True
    # Length of the id it carries (a digest of the image key). 32 or 64: dwtDctSvd repeats the
    # bits over rows of 64 blocks, and other lengths alias with them (after a 50% resize and JPEG
    # q85, 48 bits read 17% of its bits wrong where 32 and 64 read 2-3% wrong).
    bits: Literal[32, 64] = 64
    # How many decoded bits may be wrong and still name a record: only when the copy's perceptual
    # hash agrees with that record's, and exactly one such record is that close.
    max_bit_errors: int = Field(16, ge=0, le=24)


class ProvenancePolicy(Strict):
    watermark: Watermark = Watermark()


class GenerationDefaults(Strict):
    width: int = 512
    height: int = 512
    steps: int = 30
    guidance: float = 7.5


class License(Strict):
    id: str
    url: str | None = None
    commercial_use: bool
    # Commercial use only for organisations under this annual revenue (USD), e.g. the Stability AI
    # Community License; checked against the declared `organisation_revenue_usd` setting.
    revenue_limit_usd: int | None = Field(None, gt=0)
    attribution: str | None = None  # a notice the license asks for; carried in every image's metadata
    use_restrictions: str | None = None  # where the use restrictions are (a RAIL license's Attachment A)


class GpuOptions(Strict):
    """How a diffusion model runs on a GPU (a CPU runs float32 with everything on it)."""

    dtype: Literal["float16", "bfloat16"] = "float16"  # bfloat16 for Flux and SD 3.x, which overflow float16
    cpu_offload: bool = False  # enable_model_cpu_offload: big models on small GPUs, each part moved in when used
    vae_tiling: bool = False  # decode large images tile by tile (less memory, seams blended)
    # With compile_unet: brands swap their LoRA into one adapter slot of this rank in place
    # (diffusers' LoRA hotswap), so switching brands does not recompile the denoiser.
    lora_hotswap_rank: int | None = Field(None, ge=1)


class ModelEntry(Strict):
    """A diffusion or CLIP checkpoint. `source` is a local path, a hub id, or builtin:NAME."""

    id: str
    kind: Literal["diffusion", "clip", "text", "nsfw"] = "diffusion"
    source: str
    revision: str | None = None
    sha256: str | None = Field(None, description="digest of the safetensors files (see catalog.weights_sha256)")
    license: License
    defaults: GenerationDefaults = GenerationDefaults()
    # Arguments the family's pipeline call takes beyond prompt, size, steps and guidance, e.g.
    # {max_sequence_length: 256} for Flux or {use_resolution_binning: false} for PixArt.
    call_options: dict[str, bool | int | float | str] = {}
    # A single-file checkpoint (one .safetensors in the original key layout, loaded with
    # `from_single_file`) does not always say its architecture, so it names its family's
    # diffusers configs: a local folder pinned by config_sha256, or a hub id at a 40-hex config_revision.
    config: str | None = None
    config_revision: str | None = None
    config_sha256: str | None = Field(None, description="digest of the config folder (catalog.folder_sha256)")
    gpu: GpuOptions = GpuOptions()

    @property
    def from_hub(self) -> bool:
        """Whether `source` is a hub id (not the demo kit, a package's files or a local path)."""
        return not self.source.startswith(("builtin:", "package:") + LOCAL_PREFIXES)


class LoraEntry(Strict):
    id: str
    source: str
    sha256: str | None = None
    scale: float = 1.0
    base_model: str
    license: License
    trigger: str | None = Field(None, description="word put before every prompt of the brand")
    manifest: str | None = Field(None, description="training manifest (ldm-batch brand train)")
    manifest_sha256: str | None = None


class BrandTrainingPolicy(Strict):
    min_images: int = Field(20, ge=1)
    max_images: int = 5000
    min_size: int = 32
    rank: int = 8
    steps: int = 300
    learning_rate: float = 2e-3
    batch_size: int = 32
    checkpoint_every: int = 50


class Brand(Strict):
    id: str
    loras: list[LoraEntry] = []
    text_rules: dict[str, TextCategory] = Field({}, description="extra text-safety categories for this "
                                                                 "brand's prompts, e.g. its competitors")


class CostRates(Strict):
    currency: str
    device_hour: dict[str, float]


class Policies(Strict):
    sheet_limits: SheetLimits
    text_safety: TextSafetyPolicy
    image_safety: ImageSafetyPolicy
    default_model: str
    models: dict[str, ModelEntry]
    brands: dict[str, Brand]
    costs: CostRates
    provenance: ProvenancePolicy
    brand_training: BrandTrainingPolicy

    @property
    def loras(self) -> dict[str, LoraEntry]:
        """Every brand's LoRAs by id."""
        return {lora.id: lora for brand in self.brands.values() for lora in brand.loras}

    @property
    def attributions(self) -> dict[str, str]:
        """Model or LoRA id -> the notice its license asks every output to carry."""
        return {entry.id: entry.license.attribution for entry in [*self.models.values(), *self.loras.values()]
                if entry.license.attribution}


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy file not found") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None


def _parse(model: type[BaseModel], path: Path, data):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"{path}: {problems}") from None


class _Catalog(Strict):
    default_model: str
    # Local weights (a source starting with /, ./, ../ or ~) must lie under one of these
    # folders (relative to the policies folder); builtin:, package: and hub ids are not local.
    local_weights_roots: list[str] = ["loras"]
    models: list[ModelEntry]


LOCAL_PREFIXES = ("/", "./", "../", "~")


def _confine(entry, directory: Path, roots: list[Path], path: Path):
    """The entry with its local paths (source, config, manifest) made absolute, if they lie under an allowed root."""
    update = {}
    for field in ("source", "config"):
        value = getattr(entry, field, None)
        if not value or not value.startswith(LOCAL_PREFIXES):
            continue
        local = (directory / Path(value).expanduser()).resolve()
        if not any(local.is_relative_to(root) for root in roots):
            raise PolicyError(f"{path}: {entry.id!r} {field} {value!r} lies outside the allowed weights folders "
                              f"({', '.join(map(str, roots)) or 'none'}; see local_weights_roots in models.yaml)")
        update[field] = str(local)
    if "source" in update and getattr(entry, "manifest", None):
        update["manifest"] = str((directory / entry.manifest).resolve())
    return entry.model_copy(update=update) if update else entry


def load_policies(directory: Path) -> Policies:
    directory = Path(directory)
    catalog = _parse(_Catalog, directory / "models.yaml", _load_yaml(directory / "models.yaml"))
    roots = [(directory / root).resolve() for root in catalog.local_weights_roots]
    models = {m.id: _confine(m, directory, roots, directory / "models.yaml") for m in catalog.models}
    brands = {}
    for path in sorted((directory / "brands").glob("*.yaml")):
        brand = _parse(Brand, path, _load_yaml(path))
        brand = brand.model_copy(update={"loras": [_confine(lora, directory, roots, path) for lora in brand.loras]})
        if brand.id != path.stem:
            raise PolicyError(f"{path}: id {brand.id!r} must match the file name {path.stem!r}")
        for lora in brand.loras:
            if lora.base_model not in models:
                raise PolicyError(f"{path}: LoRA {lora.id!r} names base_model {lora.base_model!r}, "
                                  f"which is not in models.yaml")
        brands[brand.id] = brand
    policies = Policies(
        sheet_limits=_parse(SheetLimits, directory / "sheet_limits.yaml", _load_yaml(directory / "sheet_limits.yaml")),
        text_safety=_parse(TextSafetyPolicy, directory / "text_safety.yaml", _load_yaml(directory / "text_safety.yaml")),
        image_safety=_parse(ImageSafetyPolicy, directory / "image_safety.yaml", _load_yaml(directory / "image_safety.yaml")),
        default_model=catalog.default_model,
        models=models,
        brands=brands,
        costs=_parse(CostRates, directory / "costs.yaml", _load_yaml(directory / "costs.yaml")),
        provenance=_parse(ProvenancePolicy, directory / "provenance.yaml", _load_yaml(directory / "provenance.yaml")),
        brand_training=_parse(BrandTrainingPolicy, directory / "brand_training.yaml",
                              _load_yaml(directory / "brand_training.yaml")),
    )
    classifier = policies.text_safety.classifier
    named = [policies.default_model, policies.image_safety.screen_model]
    named += [classifier.encoder or classifier.model] if classifier else []
    named += [policies.image_safety.nsfw.model] if policies.image_safety.nsfw else []
    named += [policies.text_safety.languages.lexicon] if policies.text_safety.languages.lexicon else []
    for name in named:
        if name not in models:
            raise PolicyError(f"{directory}: model {name!r} is named by policy but not in models.yaml")
    return policies
