"""The `ldm-batch` command line.

Every command prints a readable table for people and, with --json, one JSON object per
line for machines. Exit codes: 0 done, 2 bad input (nothing was generated), 1 failure.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ldm_batch.config import Settings, load_settings
from ldm_batch.policies import PolicyError, load_policies
from ldm_batch.sheets import SAFE_NAME, SheetInvalid, read_sheet

app = typer.Typer(help="Batch image generation with safety screens, S3 storage and an audit log.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
screen_app = typer.Typer(help="Run the safety screens on their own.", no_args_is_help=True)
audit_app = typer.Typer(help="Query and verify the audit log.", no_args_is_help=True)
store_app = typer.Typer(help="Look at the object store.", no_args_is_help=True)
app.add_typer(screen_app, name="screen")
app.add_typer(audit_app, name="audit")
app.add_typer(store_app, name="store")

out = Console()
err = Console(stderr=True)
ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML file of settings (keys as in LDM_BATCH_*)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines")]


def fail(message: str, code: int, as_json: bool = False, **fields) -> None:
    if as_json:
        print(json.dumps({"error": message, **fields}))
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except Exception as exc:  # a broken config file or variable is bad input, not a crash
        fail(f"settings: {exc}", 2)


@contextmanager
def object_store(settings: Settings) -> Iterator[Settings]:
    """Settings with a reachable S3 endpoint: the configured one, or the embedded SeaweedFS."""
    if settings.s3_endpoint_url:
        yield settings
        return
    from ldm_batch.embedded_s3 import embedded_s3

    with embedded_s3(settings.home, settings.embedded_s3_port) as server:
        variables = {"LDM_BATCH_S3_ENDPOINT_URL": server.endpoint_url,
                     "LDM_BATCH_S3_ACCESS_KEY_ID": server.access_key_id,
                     "LDM_BATCH_S3_SECRET_ACCESS_KEY": server.secret_access_key}
        saved = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)  # the flow reads its settings from the environment
        try:
            yield settings.model_copy(update={"s3_endpoint_url": server.endpoint_url,
                                              "s3_access_key_id": server.access_key_id,
                                              "s3_secret_access_key": SecretStr(server.secret_access_key)})
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _validate(sheet: str, settings: Settings, as_json: bool):
    """Read and check a sheet; on problems print them and exit 2."""
    from ldm_batch.storage import read_source

    try:
        policies = load_policies(settings.policies_dir)
        name, data = read_source(sheet, settings)
        return read_sheet(name, data, policies)
    except PolicyError as exc:
        fail(str(exc), 2, as_json, valid=False, errors=[{"row": None, "column": None, "message": str(exc)}])
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        problem = {"row": None, "column": None, "message": f"{sheet}: cannot read the file ({exc.strerror})"}
        fail(problem["message"], 2, as_json, valid=False, errors=[problem])
    except SheetInvalid as exc:
        if as_json:
            print(json.dumps({"valid": False, "sheet": exc.sheet, "rows": None,
                              "errors": [p.model_dump() for p in exc.problems]}))
        err.print(f"[red]invalid sheet[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def validate(sheet: Annotated[str, typer.Argument(help="CSV or XLSX file, or s3://bucket/key")],
             config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Check a campaign sheet without generating anything."""
    settings = _settings(config)
    if sheet.startswith("s3://"):
        with object_store(settings) as settings:
            parsed = _validate(sheet, settings, as_json)
    else:
        parsed = _validate(sheet, settings, as_json)
    if as_json:
        print(json.dumps({"valid": True, "sheet": parsed.name, "rows": len(parsed.rows), "errors": []}))
    else:
        images = sum(r.variants for r in parsed.rows)
        out.print(f"[green]valid[/green]: {parsed.name}, {len(parsed.rows)} rows, {images} images requested")


@app.command()
def run(sheet: Annotated[str, typer.Argument(help="CSV or XLSX file, or s3://bucket/key")],
        campaign: Annotated[str | None, typer.Option(help="Campaign name (default: the sheet's name)")] = None,
        config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Run a campaign sheet: screen, generate, screen, store and audit."""
    settings = _settings(config)
    if campaign is not None and not SAFE_NAME.match(campaign):
        fail(f"--campaign {campaign!r}: use 1-128 letters, digits, '.', '_' or '-'", 2, as_json)
    if not sheet.startswith("s3://"):
        _validate(sheet, settings, as_json)  # before starting any server: bad sheets exit fast
    from ldm_batch.orchestration import configure_prefect

    configure_prefect(settings.home)
    try:
        with object_store(settings) as settings:
            if sheet.startswith("s3://"):
                _validate(sheet, settings, as_json)
            summary = _run_flow(sheet, campaign, config, quiet=as_json)
    except typer.Exit:
        raise
    except Exception as exc:
        fail(f"run failed: {type(exc).__name__}: {exc}", 1, as_json,
             errors=[{"row": None, "column": None, "message": str(exc)}])
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, settings)


def _run_flow(sheet: str, campaign: str | None, config: Path | None, quiet: bool) -> dict:
    from flows.campaign_batch import campaign_batch
    from ldm_batch import progress

    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=quiet, transient=True) as bar:
        task = bar.add_task("images", total=None)

        def on_event(event: str, n: int) -> None:
            if event == "planned":
                bar.update(task, total=n)
            else:
                bar.advance(task, n)

        stop_listening = progress.listen(on_event)
        try:
            return campaign_batch(sheet=sheet, campaign=campaign, config=str(config) if config else None)
        finally:
            stop_listening()


def _print_summary(summary: dict, settings: Settings) -> None:
    out.print(f"run [bold]{summary['run_id']}[/bold], campaign {summary['campaign']}")
    table = Table(show_header=False)
    for name in ("rows", "prompts_blocked", "prompts_held", "images", "images_generated", "images_reused",
                 "images_delivered", "images_blocked", "images_stored", "cost"):
        table.add_row(name, str(summary.get(name)))
    out.print(table)
    for refused in summary.get("refused", []):
        out.print(f"row {refused['row']} ({refused['asset_id']}) {refused['decision']}: "
                  + "; ".join(refused["reasons"]))
    out.print(f"images: s3://{summary['bucket']}/{settings.delivery_prefix} (quarantine: "
              f"{settings.quarantine_prefix}); audit log: {_safe_url(settings.audit_url)}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- screen ------------------------------------------------------------------------------
@screen_app.command("text")
def screen_text(prompts: Annotated[list[str] | None, typer.Argument(help="Prompts to screen")] = None,
                file: Annotated[Path | None, typer.Option("--file", help="A text file, one prompt per line")] = None,
                config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Screen prompts with the text safety policy."""
    from ldm_batch.safety.text import screen_prompts

    texts = list(prompts or [])
    if file is not None:
        try:
            texts += [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"{file}: cannot read prompts ({exc})", 2)
    if not texts:
        fail("give prompts as arguments or --file FILE", 2)
    try:
        policy = load_policies(_settings(config).policies_dir).text_safety
    except PolicyError as exc:
        fail(str(exc), 2)
    for verdict in screen_prompts(texts, policy):
        if as_json:
            print(verdict.model_dump_json(include={"prompt", "decision", "categories", "reasons", "scores"}))
        else:
            colour = {"allow": "green", "review": "yellow", "block": "red"}[verdict.decision]
            out.print(f"[{colour}]{verdict.decision:6}[/{colour}] {verdict.prompt}"
                      + (f"  ({'; '.join(verdict.reasons)})" if verdict.reasons else ""), highlight=False)


@screen_app.command("image")
def screen_image(paths: Annotated[list[Path], typer.Argument(help="Image files")],
                 config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Screen image files with the image safety policy."""
    from PIL import Image, UnidentifiedImageError

    from ldm_batch.safety.image import ImageScreen

    settings = _settings(config)
    images = []
    for path in paths:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            fail(f"{path}: not a readable image ({exc})", 2)
    screen = ImageScreen(load_policies(settings.policies_dir), settings.models_dir)
    for path, verdict in zip(paths, screen.screen_images(images)):
        if as_json:
            print(json.dumps({"path": str(path), "decision": verdict.decision, "scores": verdict.scores,
                              "fired": verdict.fired}))
        else:
            out.print(f"{verdict.decision:6} {path}  {verdict.scores}", highlight=False)


# -- audit -------------------------------------------------------------------------------
class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    parquet = "parquet"


def _audit_log(config: Path | None):
    from ldm_batch.audit import AuditLog

    log = AuditLog(_settings(config).audit_url)
    log.migrate()
    return log


@audit_app.command("query")
def audit_query(
    run_id: Annotated[str | None, typer.Option("--run", help="Run id")] = None,
    campaign: Annotated[str | None, typer.Option(help="Campaign name")] = None,
    asset_id: Annotated[str | None, typer.Option("--asset", help="Asset id")] = None,
    decision: Annotated[str | None, typer.Option(help="delivered, quarantined, blocked or held")] = None,
    model: Annotated[str | None, typer.Option(help="Model id")] = None,
    kind: Annotated[str | None, typer.Option(help="image or row")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many records")] = None,
    format: Annotated[Format, typer.Option("--format", help="Output format")] = Format.table,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout")] = None,
    config: ConfigOption = None,
) -> None:
    """Records of the audit log, filtered."""
    import pandas as pd

    records = _audit_log(config).query(run_id=run_id, campaign=campaign, asset_id=asset_id,
                                       decision=decision, model_id=model, kind=kind, limit=limit)
    if format is Format.parquet and out_file is None:
        fail("--format parquet needs --out FILE", 2)
    if format is Format.table:
        table = Table("seq", "run", "asset", "row", "decision", "model", "license", "seed", "cost", "s3 key")
        for r in records:
            table.add_row(str(r["seq"]), r["run_id"][:8], r["asset_id"], str(r["sheet_row"]), r["decision"],
                          r["model_id"] or "", (r["model_license"] or {}).get("id", ""), str(r["seed"] or ""),
                          f"{r['cost']:.8f}" if r["cost"] is not None else "", r["s3_key"] or "")
        Console(file=out_file.open("w") if out_file else None, width=200).print(table)
        return
    frame = pd.json_normalize(records, max_level=0)
    for column in frame.columns:  # nested values (verdicts, licenses, LoRAs) as JSON text
        if frame[column].map(lambda v: isinstance(v, dict | list)).any():
            frame[column] = frame[column].map(json.dumps)
    if format is Format.json:
        text = "\n".join(json.dumps(r) for r in records)
        out_file.write_text(text + "\n") if out_file else print(text)
    elif format is Format.csv:
        frame.to_csv(out_file or sys.stdout, index=False)
    else:
        frame.to_parquet(out_file, index=False)


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Check the audit log's hash chain: any edited, deleted or reordered record is reported."""
    report = _audit_log(config).verify()
    if as_json:
        print(report.model_dump_json())
    else:
        state = "[green]ok[/green]" if report.ok else "[red]BROKEN[/red]"
        out.print(f"audit log {state}: {report.records} records")
        for problem in report.problems:
            out.print(f"  {problem}", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


# -- store -------------------------------------------------------------------------------
@store_app.command("export")
def store_export(destination: Annotated[Path, typer.Argument(help="Folder to copy images into")],
                 prefix: Annotated[str, typer.Option(help="Only keys under this prefix")] = "",
                 config: ConfigOption = None) -> None:
    """Copy objects from the bucket into a local folder (keys become paths)."""
    from ldm_batch.storage import ObjectStore

    with object_store(_settings(config)) as settings:
        store = ObjectStore(settings)
        keys = store.keys(prefix)
        for key in keys:
            target = destination / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.get(key))
    out.print(f"copied {len(keys)} objects from s3://{settings.s3_bucket}/{prefix} to {destination}")


def main() -> None:  # pragma: no cover - the console script calls `app`
    app()
