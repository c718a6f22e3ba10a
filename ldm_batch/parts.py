"""The heavy parts a process loads once and reuses across batches and runs.

`Parts.of(settings)` keeps one set per settings value and process: the policies, the S3
client, the audit database engine, the spool, the provenance marker, and (loaded on first
use) the diffusion pipelines, the image screen and the text screen. A Prefect thread, a
Dask worker and the CLI all reach the models through it, so each loads once per process.
A long-lived process (a Dask GPU worker under `ldm-batch serve`) notices a changed policies
folder (a new catalog entry or sha256, a new brand LoRA) and loads afresh: it never serves
weights the catalog no longer names, and drops the old set.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from ldm_batch.audit import AuditLog
from ldm_batch.audit.seal import Sealer
from ldm_batch.config import Settings
from ldm_batch.policies import Policies, load_policies
from ldm_batch.provenance import Marker
from ldm_batch.safety.text import TextScreen
from ldm_batch.spool import Spool
from ldm_batch.storage import ObjectStore

if TYPE_CHECKING:  # torch, diffusers and open_clip load with the first generator or image screen
    from ldm_batch.generate import ImageGenerator
    from ldm_batch.safety.image import ImageScreen


def policies_stamp(directory) -> tuple:
    """Every file of the policies folder with its size and modification time: cheap to take
    per batch, and different after any edit of the catalog, a brand or a policy."""
    root = Path(directory)
    return tuple(sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in root.rglob("*") if p.is_file()))


class Parts:
    """The loaded parts of one process, for one settings value."""

    _cache: dict[str, Parts] = {}
    _lock = threading.Lock()

    def __init__(self, settings: Settings, stamp: tuple = ()):
        self.settings = settings
        self.stamp = stamp  # the policies folder as it was loaded
        self.policies: Policies = load_policies(settings.policies_dir)
        self.store = ObjectStore(settings)
        self.audit = AuditLog(settings.audit_url, Sealer.for_settings(settings, self.store))
        self.spool = Spool(settings.home / "spool")
        self.marker = Marker(self.policies.provenance, settings, self.policies.attributions)
        self._generator: ImageGenerator | None = None
        self._screen: ImageScreen | None = None
        self._text_screen: TextScreen | None = None
        self.screen_loads: Counter = Counter()
        self._loading = threading.Lock()

    @classmethod
    def of(cls, settings: Settings) -> Parts:
        key, stamp = settings.identity(), policies_stamp(settings.policies_dir)
        with cls._lock:
            if key not in cls._cache or cls._cache[key].stamp != stamp:
                cls._cache[key] = Parts(settings, stamp)  # the old set, if any, is dropped with its models
            return cls._cache[key]

    @classmethod
    def drop_all(cls) -> None:
        """Forget every loaded set: their models go once nothing else holds them. For a process
        done with its settings values (the tests, after each module)."""
        with cls._lock:
            cls._cache.clear()

    @classmethod
    def model_loads(cls) -> dict[str, int]:
        """What this process loaded from disk, over all sets: the generators' "model:ID" and
        "lora:ID", and "text-screen" and "image-screen"."""
        with cls._lock:
            sets = list(cls._cache.values())
        return dict(sum((parts.screen_loads + (parts._generator.loads if parts._generator else Counter())
                         for parts in sets), Counter()))

    @classmethod
    def loaded(cls) -> list[Parts]:
        """Every set this process holds (the benchmarks count their model loads)."""
        with cls._lock:
            return list(cls._cache.values())

    @property
    def generator(self) -> ImageGenerator:
        with self._loading:
            if self._generator is None:
                from ldm_batch.generate import ImageGenerator

                self._generator = ImageGenerator(self.policies, self.settings.device, self.settings.compile_unet)
            return self._generator

    @property
    def text_screen(self) -> TextScreen:
        with self._loading:
            if self._text_screen is None:
                self._text_screen = TextScreen(self.policies, self.settings.policies_dir)
                self.screen_loads["text-screen"] += 1
            return self._text_screen

    @property
    def screen(self) -> ImageScreen:
        with self._loading:
            if self._screen is None:
                from ldm_batch.generate import quiet_libraries, resolve_device
                from ldm_batch.safety.image import ImageScreen

                quiet_libraries()
                self._screen = ImageScreen(self.policies, resolve_device(self.settings.device))
                self.screen_loads["image-screen"] += 1
            return self._screen
