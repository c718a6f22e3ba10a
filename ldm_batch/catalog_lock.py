"""The catalog's lock file (`models.lock.json` next to models.yaml): every file of every pinned
model, with its sha256, as `ldm-batch models add` or `models pull` found it.

A folder's catalog sha256 is the digest of exactly this file list (`catalog.folder_sha256`),
so a run, which checks the catalog's sha256 before loading, refuses the same weights that
`models verify` reports, and `models verify` says which file changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from ldm_batch.catalog import PINNED_REVISION, file_digests, folder_sha256, resolve, verified_configs
from ldm_batch.policies import LOCAL_PREFIXES, ModelEntry
from ldm_batch.problems import CatalogError

LOCK_NAME = "models.lock.json"


class LockedModel(BaseModel):
    source: str
    revision: str | None
    sha256: str
    files: dict[str, str]


def read_lock(policies_dir: Path) -> dict[str, LockedModel]:
    path = policies_dir / LOCK_NAME
    if not path.exists():
        return {}
    return {model_id: LockedModel.model_validate(entry)
            for model_id, entry in json.loads(path.read_text(encoding="utf-8"))["models"].items()}


def write_lock(policies_dir: Path, lock: dict[str, LockedModel]) -> None:
    data = {"models": {model_id: lock[model_id].model_dump() for model_id in sorted(lock)}}
    (policies_dir / LOCK_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def locked(entry: ModelEntry, path: Path, source: str) -> LockedModel:
    """The lock entry of weights at `path` (every file and the digest the catalog pins)."""
    files = file_digests(path)
    return LockedModel(source=source, revision=entry.revision, sha256=_pin(path, files), files=files)


def _pin(path: Path, files: dict[str, str]) -> str:
    """The catalog's sha256 of weights, from their files' digests: a single file's own, or the folder's."""
    return next(iter(files.values())) if path.is_file() else folder_sha256(files)


def local_weights(entry: ModelEntry) -> Path | None:
    """Where the entry's weights are on this machine, without downloading; None when they are not."""
    return _on_this_machine(entry.source, entry.revision, entry.from_hub)


def local_configs(entry: ModelEntry) -> Path | None:
    """Where a single file's named configs are on this machine, without downloading."""
    return _on_this_machine(entry.config, entry.config_revision, not entry.config.startswith(LOCAL_PREFIXES))


def _on_this_machine(source: str, revision: str | None, from_hub: bool) -> Path | None:
    try:
        if not from_hub:
            return resolve(source, revision)
        if not PINNED_REVISION.fullmatch(revision or ""):
            return None
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, revision=revision, local_files_only=True))
    except Exception:  # not in the cache, not installed, or missing
        return None


def differences(entry: ModelEntry, path: Path, lock: LockedModel | None) -> list[str]:
    """How the weights at `path` differ from the lock and from the catalog's sha256."""
    files = file_digests(path)
    problems = []
    if lock is not None:
        problems += [f"{name}: changed" for name in sorted(files.keys() & lock.files.keys())
                     if files[name] != lock.files[name]]
        problems += [f"{name}: missing" for name in sorted(lock.files.keys() - files.keys())]
        problems += [f"{name}: not in the lock" for name in sorted(files.keys() - lock.files.keys())]
        if lock.revision != entry.revision:
            problems.append(f"locked at revision {lock.revision!r}, the catalog names {entry.revision!r}")
    actual = _pin(path, files)
    if entry.sha256 and actual != entry.sha256:
        problems.append(f"sha256 {actual} does not match the catalog's {entry.sha256}")
    if entry.config:  # a single file's configs are pinned too
        try:
            verified_configs(entry.config, entry.config_revision, entry.config_sha256)
        except Exception as exc:
            problems.append(f"config: {exc}")
    return problems


def check_addable(path: Path, policies_dir: Path, roots: list[str], configs: bool = False) -> str:
    """The catalog source for a local folder or file: relative to the policies folder, under one
    of `local_weights_roots`, safetensors only (`configs`: a folder of a family's diffusers configs)."""
    path = path.resolve()
    allowed = [(policies_dir / root).resolve() for root in roots]
    if not any(path.is_relative_to(root) for root in allowed):
        raise CatalogError(f"{path}: put the weights under one of {', '.join(map(str, allowed))} "
                           "(local_weights_roots in models.yaml)")
    if path.is_file() and path.suffix != ".safetensors":
        raise CatalogError(f"{path}: only .safetensors files are registered (pickle formats can run code)")
    if configs and not (path / "model_index.json").is_file():
        raise CatalogError(f"{path}: not a diffusers config folder (no model_index.json)")
    if path.is_dir() and not configs and not any(path.rglob("*.safetensors")):
        raise CatalogError(f"{path}: no .safetensors weights in this folder")
    return "./" + path.relative_to(policies_dir.resolve()).as_posix()
