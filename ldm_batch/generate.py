"""Generate: run a `Batch` through a diffusers pipeline, one torch.Generator per image.

Pipelines are loaded once per worker process and kept; brand LoRAs are loaded once per
pipeline with `load_lora_weights(adapter_name=...)` and switched with `set_adapters`,
never by reloading. Each image's generator is seeded from its job, so a batch of the
same composition reproduces every image byte for byte.
"""

from __future__ import annotations

import functools
import inspect
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ldm_batch.catalog import LOADING, verified_configs, verified_path
from ldm_batch.plan import Batch, ImageJob
from ldm_batch.policies import Policies
from ldm_batch.problems import CatalogError
from ldm_batch.torch_thread import on_torch_thread


@dataclass
class GeneratedImage:
    job: ImageJob
    image: Image.Image
    seconds: float  # this image's share of the measured batch time
    batch_size: int
    batch_index: int
    device: str
    scheduler: str
    model_sha256: str
    lora_sha256: dict[str, str]
    runtime: dict  # how the numbers were computed: dtype, attention, compiled, CPU threads


def quiet_libraries() -> None:
    """Keep library progress bars and advice off a batch job's output."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    # Loading a second brand adapter is intended: that is how brands are switched.
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def device_name(device: str) -> str:
    """The name cost rates are looked up by: 'cpu', or 'cuda:<GPU model>'."""
    if device.startswith("cuda"):
        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    return device


class ImageGenerator:
    """Holds loaded pipelines and adapters for one worker process."""

    def __init__(self, policies: Policies, device: str, compile_unet: bool = False):
        quiet_libraries()
        self.policies = policies
        self.device = resolve_device(device)
        self.compile_unet = compile_unet and self.device.startswith("cuda")  # inductor on CPU needs a compiler
        self.loads: Counter[str] = Counter()  # what was loaded from disk, for tests and reports
        self._pipelines: dict[str, tuple[object, str]] = {}
        self._adapters: dict[str, dict[str, str]] = {}  # model id -> {lora id: sha256}
        self._active: dict[str, tuple] = {}  # model id -> the (lora id, scale) pairs set on it now
        self._processors: dict[int, list[str]] = {}  # id(pipeline) -> its attention processors
        self._lock = threading.Lock()

    def pipeline(self, model_id: str):
        if model_id not in self._pipelines:
            entry = self.policies.models[model_id]
            gpu = self.device.startswith("cuda")
            dtype = getattr(torch, entry.gpu.dtype) if gpu else torch.float32
            with LOADING:
                pipe, sha = load_pipeline(entry, dtype)
            pipe.set_progress_bar_config(disable=True)
            if gpu and entry.gpu.cpu_offload:
                pipe.enable_model_cpu_offload(device=self.device)  # moves each part in when it runs
            else:
                pipe = pipe.to(self.device)
            if entry.gpu.vae_tiling:
                pipe.vae.enable_tiling()
            if entry.gpu.lora_hotswap_rank:  # before the first adapter: later brands swap in, no recompile
                pipe.enable_lora_hotswap(target_rank=entry.gpu.lora_hotswap_rank)
            if self.compile_unet:
                name = denoiser_name(pipe)
                setattr(pipe, name, torch.compile(getattr(pipe, name), fullgraph=True))
            self._pipelines[model_id] = (pipe, sha)
            self._adapters[model_id] = {}
            self.loads[f"model:{model_id}"] += 1
        return self._pipelines[model_id]

    def _lora_path(self, model_id: str, lora_id: str) -> tuple[Path, str]:
        entry = self.policies.loras[lora_id]
        if entry.base_model != model_id:
            raise ValueError(f"LoRA {lora_id!r} is trained for {entry.base_model!r}, not {model_id!r}")
        return verified_path(entry.source, None, entry.sha256)

    def _activate_loras(self, model_id: str, pipe, batch: Batch) -> dict[str, str]:
        if self.policies.models[model_id].gpu.lora_hotswap_rank:
            return self._swap_lora(model_id, pipe, batch)
        loaded = self._adapters[model_id]
        for use in batch.settings.loras:
            if use.id not in loaded:
                path, sha = self._lora_path(model_id, use.id)
                with LOADING:
                    pipe.load_lora_weights(path, adapter_name=use.id)
                loaded[use.id] = sha
                self.loads[f"lora:{use.id}"] += 1
        active = tuple((u.id, u.scale) for u in batch.settings.loras)
        if self._active.get(model_id) != active:  # batches come grouped by brand: most keep the adapters
            if active:
                pipe.enable_lora()
                pipe.set_adapters([u.id for u in batch.settings.loras], [u.scale for u in batch.settings.loras])
            elif loaded:
                pipe.disable_lora()
            self._active[model_id] = active
        return {u.id: loaded[u.id] for u in batch.settings.loras}

    def _swap_lora(self, model_id: str, pipe, batch: Batch) -> dict[str, str]:
        """One adapter slot whose weights each brand replaces in place (diffusers' LoRA hotswap),
        so a compiled denoiser is not recompiled when brands change; a row may use one LoRA."""
        uses = batch.settings.loras
        if len(uses) > 1:
            raise ValueError(f"{model_id} swaps one LoRA at a time (gpu.lora_hotswap_rank in models.yaml); "
                             f"this row asks for {len(uses)}")
        slot = self._adapters[model_id]  # {lora id: sha256} of what the slot holds now
        if uses and uses[0].id not in slot:
            path, sha = self._lora_path(model_id, uses[0].id)
            with LOADING:
                pipe.load_lora_weights(path, adapter_name="brand", hotswap=bool(slot))
            slot.clear()
            slot[uses[0].id] = sha
            self.loads[f"lora:{uses[0].id}"] += 1
        if uses:
            pipe.enable_lora()
            pipe.set_adapters(["brand"], [uses[0].scale])
        elif slot:
            pipe.disable_lora()
        return {u.id: slot[u.id] for u in uses}

    def load(self, model_id: str) -> None:
        """Load a model's pipeline now, on the process's torch thread (a batch loads it on
        first use otherwise)."""
        def load_it() -> None:
            with self._lock:
                self.pipeline(model_id)

        on_torch_thread(load_it)

    def generate(self, batch: Batch, cpu_threads: int | None = None) -> list[GeneratedImage]:
        """`cpu_threads`: torch's intra-op threads for this call (on CPU the last bits of the
        sums, and so some pixels, depend on it); None keeps the process's setting. Runs on
        the process's torch thread, whichever thread calls it."""
        return on_torch_thread(self._generate, batch, cpu_threads)

    def _generate(self, batch: Batch, cpu_threads: int | None) -> list[GeneratedImage]:
        s = batch.settings
        with self._lock:  # one pipeline call at a time; adapters and thread count are process state
            pipe, model_sha = self.pipeline(s.model)
            lora_sha = self._activate_loras(s.model, pipe, batch)
            generators = [torch.Generator(self.device).manual_seed(job.seed) for job in batch.jobs]
            threads = torch.get_num_threads()
            torch.set_num_threads(cpu_threads or threads)
            try:
                runtime = self.runtime(pipe)
                started = time.perf_counter()
                arguments = call_arguments(pipe, batch, self.policies.models[s.model].call_options)
                images = pipe(**arguments, generator=generators, output_type="pil").images
                seconds = time.perf_counter() - started
            finally:
                torch.set_num_threads(threads)
        n = len(batch.jobs)
        return [GeneratedImage(job=job, image=image, seconds=seconds / n, batch_size=n, batch_index=i,
                               device=device_name(self.device), scheduler=type(pipe.scheduler).__name__,
                               model_sha256=model_sha, lora_sha256=lora_sha, runtime=runtime)
                for i, (job, image) in enumerate(zip(batch.jobs, images))]

    def runtime(self, pipe) -> dict:
        denoiser = getattr(pipe, denoiser_name(pipe))
        if id(pipe) not in self._processors:  # a walk over every module: once per pipeline, not per batch
            self._processors[id(pipe)] = sorted({type(p).__name__ for p in denoiser.attn_processors.values()})
        return {"dtype": str(denoiser.dtype).removeprefix("torch."), "attention": self._processors[id(pipe)],
                "compiled": self.compile_unet, "cpu_threads": torch.get_num_threads()}


def load_pipeline(entry, dtype):
    """A catalog entry's pipeline and its weights' sha256: a diffusers folder (its
    model_index.json picks the pipeline class: SD 1.x/2.x, SDXL, SD3, Flux, ...) or a single-file
    checkpoint, built from the family's configs that the entry names."""
    path, sha = verified_path(entry.source, entry.revision, entry.sha256)
    if path.is_dir():  # its own class, not AutoPipeline, whose import loads every pipeline diffusers has (3-4 s)
        return pipeline_class(path).from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                    **absent_components(path)), sha
    if not entry.config:
        raise CatalogError(f"{entry.id}: {path.name} is a single-file checkpoint; name its family's diffusers "
                           "configs in the catalog entry (config: a local folder with config_sha256, or a hub id "
                           "with a 40-hex config_revision)")
    configs = verified_configs(entry.config, entry.config_revision, entry.config_sha256)
    return pipeline_class(configs).from_single_file(str(path), config=str(configs), dtype=dtype,
                                                    local_files_only=True, **absent_components(configs)), sha


def pipeline_class(folder: Path):
    """The diffusers pipeline class that a model folder's model_index.json names."""
    import diffusers

    family = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
    found = getattr(diffusers, family, None) if family.endswith("Pipeline") else None
    if found is None:
        raise CatalogError(f"{folder / 'model_index.json'}: _class_name {family!r} is not a diffusers pipeline "
                           "this version has")
    return found


def absent_components(path: Path) -> dict:
    """Components a pipeline loads as None: those its checkpoint was saved without (an SD3
    pipeline without its T5 encoder), and SD's own NSFW checker, which the image screen replaces."""
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    absent = {name: None for name, value in index.items() if value == [None, None]}
    if "safety_checker" in index:
        absent |= {"safety_checker": None, "requires_safety_checker": False}
    return absent


@functools.lru_cache(maxsize=None)
def _call_parameters(pipeline_class) -> frozenset[str]:
    return frozenset(inspect.signature(pipeline_class.__call__).parameters)


def denoiser_name(pipe) -> str:
    """The pipeline's denoising network: `unet` (SD 1.x/2.x, SDXL) or `transformer` (SD3, Flux,
    PixArt, Sana)."""
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def call_arguments(pipe, batch: Batch, options: dict) -> dict:
    """The pipeline call's arguments for a batch: those its family takes, and the catalog
    entry's `call_options`. A negative prompt goes only to a pipeline that takes one; a row that
    asks for one from a pipeline that does not is an error, as is an option the pipeline lacks."""
    s = batch.settings
    arguments = {"prompt": [job.prompt for job in batch.jobs],
                 "negative_prompt": [job.negative_prompt for job in batch.jobs],
                 "width": s.width, "height": s.height, "num_inference_steps": s.steps, "guidance_scale": s.guidance}
    accepted = _call_parameters(type(pipe))
    if "negative_prompt" not in accepted and any(job.negative_prompt for job in batch.jobs):
        raise ValueError(f"{type(pipe).__name__} takes no negative prompt; leave the negative_prompt column empty")
    if unknown := sorted(set(options) - set(accepted)):
        raise ValueError(f"{type(pipe).__name__} takes no {', '.join(unknown)}; fix call_options in models.yaml")
    return {name: value for name, value in arguments.items() if name in accepted} | options
