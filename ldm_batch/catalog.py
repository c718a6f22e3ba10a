"""Catalog: turn a model or LoRA entry into verified local weights.

One place resolves a `source` (builtin:NAME, a local path, or a hub id) to files on disk
and checks their sha256 against the catalog before anything loads them.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from pathlib import Path

from ldm_batch.problems import CatalogError

DEMO_KIT = Path(__file__).parent / "demo_kit" / "weights"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}  # can run code when loaded
# Building models is not thread-safe: diffusers/accelerate create modules on the "meta"
# device by patching torch process-wide while loading, so a model built in another thread
# at that moment gets meta tensors. Every model construction in the package holds this.
LOADING = threading.RLock()


# What a loader reads from a checkpoint folder: weights, configs, tokenizers. All of it is pinned.
# (.npz: numpy arrays, read with allow_pickle=False; the multilingual sentence encoder ships so.)
PINNED_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".onnx", ".npz"}


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file, or of a folder's weights, configs and tokenizer files (one
    "relative/path digest" line each): a changed config or tokenizer changes the pin too."""
    if path.is_file():
        return _file_sha256(path)
    if not any(path.rglob("*.safetensors")) and not any(path.rglob("*.npz")):
        raise CatalogError(f"{path}: no .safetensors weights found (pickle formats are not loaded)")
    return folder_sha256(file_digests(path))


def file_digests(path: Path) -> dict[str, str]:
    """The sha256 of every file a loader reads (weights, configs, tokenizers), by its path in
    the folder; a single file by its name. What `models.lock.json` keeps per model."""
    if path.is_file():
        return {path.name: _file_sha256(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in PINNED_SUFFIXES)
    return {p.relative_to(path).as_posix(): _file_sha256(p) for p in files}


def folder_sha256(files: dict[str, str]) -> str:
    """The catalog's sha256 of a folder, from its files' digests (in `file_digests` order)."""
    return hashlib.sha256("".join(f"{name} {digest}\n" for name, digest in files.items()).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _cached_sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _cached_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """Digest of a file, once per process per (path, size, mtime): runs check weights before
    generation and again when loading them."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as weights:
            weights.keys()
    except Exception as exc:
        raise CatalogError(f"{path}: not a valid safetensors file ({exc}); only safetensors weights are loaded") from None


PINNED_REVISION = re.compile(r"[0-9a-f]{40}")


def resolve(source: str, revision: str | None, configs_only: bool = False) -> Path:
    """Local path of a source: builtin:NAME (the committed demo kit), package:PKG/dir, a path,
    or a hub id (with `configs_only`, its configs and tokenizers without weights)."""
    if source.startswith("builtin:"):
        path = DEMO_KIT / source.removeprefix("builtin:")
        if not path.exists():
            raise CatalogError(f"{source}: demo kit weights missing at {path}; "
                               "train them with `python -m ldm_batch.demo_kit.train`")
        return path
    if source.startswith("package:"):  # weights shipped inside an installed Python package
        import importlib.util

        package, _, inner = source.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise CatalogError(f"{source}: the Python package {package!r} is not installed")
        return Path(next(iter(spec.submodule_search_locations))) / inner
    local = Path(source).expanduser()
    if local.is_absolute():  # the policy loader made local sources absolute
        if not local.exists():
            raise CatalogError(f"{source}: no such file or folder")
        return local
    if local.exists():
        return local
    if not PINNED_REVISION.fullmatch(revision or ""):
        raise CatalogError(f"{source}: a hub id must be pinned to a commit (revision: 40 hex digits) in the "
                           f"catalog; revision {revision!r} can change under it between runs")
    from huggingface_hub import snapshot_download

    # Honours HF_HUB_OFFLINE; only safetensors weights and configs are fetched.
    patterns = ["*.json", "*.txt", "*.model"] + ([] if configs_only else ["*.safetensors"])
    return Path(snapshot_download(source, revision=revision, allow_patterns=patterns))


def verified_path(source: str, revision: str | None, sha256: str | None) -> tuple[Path, str]:
    """Resolve a source and check its weights; return (path, actual sha256)."""
    path = resolve(source, revision)
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise CatalogError(f"{path}: pickle weights ({path.suffix}) are not loaded; use safetensors")
    if path.is_file() and path.suffix != ".onnx":
        _check_safetensors(path)
    actual = weights_sha256(path)
    if sha256 and actual != sha256:
        raise CatalogError(f"{source}: weights sha256 {actual} does not match the catalog's {sha256}")
    return path, actual


def verified_configs(source: str, revision: str | None, sha256: str | None) -> Path:
    """The diffusers configs a single-file checkpoint names: a folder of configs, scheduler and
    tokenizers (no weights needed), checked against the catalog's config_sha256 when local."""
    path = resolve(source, revision, configs_only=True)
    if not (path / "model_index.json").is_file():
        raise CatalogError(f"{source}: not a diffusers config folder (no model_index.json)")
    actual = folder_sha256(file_digests(path))
    if sha256 and actual != sha256:
        raise CatalogError(f"{source}: configs sha256 {actual} does not match the catalog's config_sha256 {sha256}")
    if not sha256 and not PINNED_REVISION.fullmatch(revision or ""):
        raise CatalogError(f"{source}: a single file's configs must be pinned (config_sha256 for a folder, "
                           "config_revision for a hub id)")
    return path
