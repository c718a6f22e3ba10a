"""`ldm-batch models list|add|verify|pull`: the model catalog (policies/models.yaml) and its
lock file (ldm_batch.catalog_lock)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, get_args

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from ldm_batch.cli.context import ConfigOption, Invocation, JsonOption, abort, emit_json, fail, out, print_data

models_app = typer.Typer(help="The model catalog: list, register, verify and download pinned weights.",
                         no_args_is_help=True)


def _policies(inv: Invocation):
    from ldm_batch.policies import load_policies
    from ldm_batch.problems import Refused

    try:
        return load_policies(inv.settings.policies_dir)
    except Refused as exc:
        abort(exc, inv.as_json)


def _family(entry, path: Path | None) -> str | None:
    """The pipeline class of a diffusers folder, or of a single file's named configs."""
    if path is None:
        return None
    if path.is_file():
        if not entry.config:
            return "single file"
        from ldm_batch.catalog_lock import local_configs

        path = local_configs(entry)
        if path is None:
            return "single file"
    index = path / "model_index.json"
    return json.loads(index.read_text(encoding="utf-8")).get("_class_name") if index.exists() else None


@models_app.command("list")
def models_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every catalog entry: kind, family, source, pinned revision, license, whether its weights
    are on this machine and whether the lock file holds them."""
    from ldm_batch.catalog import PINNED_REVISION
    from ldm_batch.catalog_lock import local_weights, read_lock

    with Invocation(config, as_json) as inv:
        policies = _policies(inv)
        lock = read_lock(inv.settings.policies_dir)
    rows = []
    for entry in policies.models.values():
        path = local_weights(entry)
        rows.append({"id": entry.id, "kind": entry.kind, "family": _family(entry, path), "source": entry.source,
                     "revision": entry.revision,
                     "pinned": bool(PINNED_REVISION.fullmatch(entry.revision or "")) if entry.from_hub
                     else entry.sha256 is not None,
                     "license": entry.license.id, "commercial_use": entry.license.commercial_use,
                     "present": path is not None, "locked": entry.id in lock})
    if as_json:
        for row in rows:
            emit_json(row)
        return
    table = Table("id", "kind", "family", "revision", "pinned", "license", "commercial", "present", "locked")
    for r in rows:
        table.add_row(*(escape(str(r[k])) for k in ("id", "kind", "family", "revision", "pinned", "license",
                                                     "commercial_use", "present", "locked")))
    out.print(table)


@models_app.command("add")
def models_add(
    path: Annotated[Path, typer.Argument(help="A diffusers folder or a .safetensors file under local_weights_roots",
                                         exists=True)],
    model_id: Annotated[str, typer.Option("--id", help="Catalog id, as sheets name it in the model column")],
    license_id: Annotated[str, typer.Option("--license", help="License id, e.g. CreativeML-OpenRAIL-M")],
    license_url: Annotated[str, typer.Option("--license-url", help="Where the license text is")],
    commercial_use: Annotated[bool, typer.Option("--commercial-use/--non-commercial",
                                                 help="Whether the license allows commercial campaigns")],
    kind: Annotated[str, typer.Option(help="diffusion, clip, text or nsfw")] = "diffusion",
    configs: Annotated[Path | None, typer.Option(
        "--configs", exists=True, file_okay=False,
        help="For a single-file checkpoint: a folder with its family's diffusers configs (model_index.json, "
             "component configs, scheduler, tokenizers) under local_weights_roots")] = None,
    config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """Register local weights: their sha256 into models.yaml, every file's into the lock. A
    single-file checkpoint needs --configs for a diffusion model."""
    from ldm_batch.catalog import file_digests, folder_sha256
    from ldm_batch.catalog_lock import LOCK_NAME, check_addable, locked, read_lock, write_lock
    from ldm_batch.policies import License, ModelEntry, load_policies
    from ldm_batch.problems import Refused
    from ldm_batch.sheets import SAFE_NAME

    with Invocation(config, as_json) as inv:
        policies_dir = inv.settings.policies_dir
        policies = _policies(inv)
        if not SAFE_NAME.match(model_id):
            fail(f"--id {model_id!r}: use letters, digits, '.', '_' and '-'", 2, as_json)
        if model_id in policies.models:
            fail(f"--id {model_id!r} is already in the catalog; choose another id", 2, as_json)
        if kind not in get_args(ModelEntry.model_fields["kind"].annotation):
            fail(f"--kind {kind!r}: use diffusion, clip, text or nsfw", 2, as_json)
        catalog = yaml.safe_load((policies_dir / "models.yaml").read_text(encoding="utf-8"))
        roots = catalog.get("local_weights_roots", [])
        try:
            source = check_addable(path, policies_dir, roots)
            if path.is_file() and kind == "diffusion" and configs is None:
                fail(f"{path}: a single-file checkpoint does not always say its architecture; pass --configs with "
                     "a folder of its family's diffusers configs (the family's model folder without its weights)",
                     2, as_json)
            config_fields = {} if configs is None else {
                "config": check_addable(configs, policies_dir, roots, configs=True),
                "config_sha256": folder_sha256(file_digests(configs))}
        except Refused as exc:
            abort(exc, as_json)
        entry = ModelEntry(id=model_id, kind=kind, source=source, revision=None,
                           license=License(id=license_id, url=license_url, commercial_use=commercial_use))
        lock = read_lock(policies_dir)
        lock[model_id] = locked(entry, path.resolve(), source)
        fields = {"id": model_id, "kind": kind, "source": source, "sha256": lock[model_id].sha256, **config_fields,
                  "license": entry.license.model_dump()}
        catalog_path = policies_dir / "models.yaml"  # appended to (`models` is its last key): comments stay
        text = catalog_path.read_text(encoding="utf-8")
        item = "".join(f"  {line}\n" for line in yaml.safe_dump([fields], sort_keys=False, width=200).splitlines())
        lock_path = policies_dir / LOCK_NAME
        old_lock = lock_path.read_text(encoding="utf-8") if lock_path.exists() else None
        catalog_path.write_text(text + ("" if text.endswith("\n") else "\n") + item, encoding="utf-8")
        write_lock(policies_dir, lock)
        try:
            load_policies(policies_dir)  # the catalog still loads, or nothing is left changed
        except Refused as exc:
            catalog_path.write_text(text, encoding="utf-8")
            lock_path.write_text(old_lock, encoding="utf-8") if old_lock is not None else lock_path.unlink()
            abort(exc, as_json)
    if as_json:
        emit_json(fields)
    else:
        print_data(f"added {model_id}: {source} sha256 {fields['sha256']} ({len(lock[model_id].files)} files locked)")


@models_app.command("verify")
def models_verify(model_ids: Annotated[list[str] | None, typer.Argument(help="Ids to check; all present ones if none")] = None,
                  config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every file of each present model against the lock (configs and tokenizers included) and
    the catalog's sha256; exit 1 when any differs."""
    from ldm_batch.catalog_lock import differences, local_weights, read_lock

    with Invocation(config, as_json) as inv:
        policies = _policies(inv)
        lock = read_lock(inv.settings.policies_dir)
    unknown = [m for m in model_ids or [] if m not in policies.models]
    if unknown:
        fail(f"not in the catalog: {', '.join(unknown)}", 2, as_json)
    failed = False
    for model_id in model_ids or list(policies.models):
        entry = policies.models[model_id]
        path = local_weights(entry)
        if path is None:
            result = {"id": model_id, "present": False, "locked": model_id in lock, "problems": []}
            failed |= bool(model_ids)  # asked for by name, and not here
        else:
            problems = differences(entry, path, lock.get(model_id))
            result = {"id": model_id, "present": True, "locked": model_id in lock, "problems": problems}
            failed |= bool(problems)
        if as_json:
            emit_json(result)
        else:
            state = ("not on this machine" if not result["present"] else
                     "OK" if not result["problems"] else "DIFFERS: " + "; ".join(result["problems"]))
            print_data(f"{model_id}: {state}" + ("" if result["locked"] or not result["present"] else " (not locked)"))
    raise typer.Exit(1 if failed else 0)


@models_app.command("pull")
def models_pull(model_id: Annotated[str, typer.Argument(help="Catalog id of a hub model")],
                config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Download a hub model into the local cache at its pinned revision and lock its files;
    refused for an unpinned revision, and when the files differ from the catalog's sha256."""
    from ldm_batch.catalog import resolve
    from ldm_batch.catalog_lock import differences, locked, read_lock, write_lock
    from ldm_batch.problems import Refused

    with Invocation(config, as_json) as inv:
        policies = _policies(inv)
        if model_id not in policies.models:
            fail(f"{model_id!r} is not in the catalog (ldm-batch models list)", 2, as_json)
        entry = policies.models[model_id]
        try:
            path = resolve(entry.source, entry.revision)
        except Refused as exc:
            abort(exc, as_json)
        except Exception as exc:  # no network, no such repository or commit
            fail(f"{entry.source}@{entry.revision}: {type(exc).__name__}: {exc}", 1, as_json)
        problems = differences(entry, path, None)
        if problems:
            fail(f"{model_id}: " + "; ".join(problems), 1, as_json)
        lock = read_lock(inv.settings.policies_dir)
        lock[model_id] = locked(entry, path, entry.source)
        write_lock(inv.settings.policies_dir, lock)
    if as_json:
        emit_json({"id": model_id, "path": str(path), "files": len(lock[model_id].files), "sha256": lock[model_id].sha256})
    else:
        print_data(f"{model_id}: {len(lock[model_id].files)} files locked at {entry.revision}, sha256 "
                   f"{lock[model_id].sha256}" + ("" if entry.sha256 else "; put this sha256 into models.yaml"))
