"""The `ldm-batch` command line.

Every command prints a readable table for people and, with --json, one JSON object per
line for machines. Exit codes: 0 done, 2 bad input (nothing was generated), 1 failure.
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from datetime import UTC, datetime
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
from ldm_batch.sheets import SAFE_NAME, SheetInvalid, check_size, read_sheet

app = typer.Typer(help="Batch image generation with safety screens, S3 storage and an audit log.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
screen_app = typer.Typer(help="Run the safety screens on their own.", no_args_is_help=True)
audit_app = typer.Typer(help="Query and verify the audit log.", no_args_is_help=True)
store_app = typer.Typer(help="Look at the object store.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure the safety screens on labelled data.", no_args_is_help=True)
review_app = typer.Typer(help="Review quarantined images: list, show, approve, reject.", no_args_is_help=True)
reviewer_app = typer.Typer(help="Reviewer accounts of the console.", no_args_is_help=True)
brand_app = typer.Typer(help="Brand LoRAs: train and register.", no_args_is_help=True)
app.add_typer(screen_app, name="screen")
app.add_typer(audit_app, name="audit")
app.add_typer(store_app, name="store")
app.add_typer(eval_app, name="eval")
app.add_typer(review_app, name="review")
app.add_typer(reviewer_app, name="reviewer")
app.add_typer(brand_app, name="brand")


class Use(str, Enum):
    commercial = "commercial"
    non_commercial = "non-commercial"


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    parquet = "parquet"


out = Console()
err = Console(stderr=True)
ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML file of settings (keys as in LDM_BATCH_*)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines")]
SkipOption = Annotated[bool, typer.Option("--skip-invalid-rows", help="Run the valid rows; report and audit the invalid ones as skipped")]


def fail(message: str, code: int, as_json: bool = False, **fields) -> None:
    if as_json:
        print(json.dumps({"error": message, **fields}))
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def refuse(kind: str, headline: str, problems: list, lines: list[str], as_json: bool) -> None:
    """Exit 2 listing every problem: one JSON object for machines, one line each for people."""
    if as_json:
        print(json.dumps({"error": kind, "errors": problems}))
    err.print(headline)
    for line in lines:
        err.print(f"  {line}", highlight=False)
    raise typer.Exit(2)


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

    with embedded_s3(settings.home, settings.embedded_s3_port, settings.delivery_prefix) as server:
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


def _validate(sheet: str, settings: Settings, as_json: bool, skip_invalid: bool = False):
    """Read and check a sheet; on problems print them and exit 2."""
    from ldm_batch.storage import read_source

    try:
        policies = load_policies(settings.policies_dir)
        name, data = read_source(sheet, settings, partial(check_size, limits=policies.sheet_limits))
        return read_sheet(name, data, policies, skip_invalid)
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
             skip_invalid_rows: SkipOption = False, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Check a campaign sheet without generating anything."""
    settings = _settings(config)
    if sheet.startswith("s3://"):
        with object_store(settings) as settings:
            parsed = _validate(sheet, settings, as_json, skip_invalid_rows)
    else:
        parsed = _validate(sheet, settings, as_json, skip_invalid_rows)
    skipped = [p.model_dump() for row in parsed.skipped for p in row.problems]
    if as_json:
        print(json.dumps({"valid": True, "sheet": parsed.name, "rows": len(parsed.rows), "errors": [],
                          "skipped": skipped}))
    else:
        images = sum(r.variants for r in parsed.rows)
        out.print(f"[green]valid[/green]: {parsed.name}, {len(parsed.rows)} rows, {images} images requested")
        _print_skipped(skipped)


def _print_skipped(problems: list[dict]) -> None:
    for p in problems:
        err.print(f"[yellow]skipped[/yellow] row {p['row']}, column {p['column']!r}: {p['message']}", highlight=False)


@app.command()
def run(sheet: Annotated[str, typer.Argument(help="CSV or XLSX file, or s3://bucket/key")],
        campaign: Annotated[str | None, typer.Option(help="Campaign name (default: the sheet's name)")] = None,
        use: Annotated[Use, typer.Option(help="The campaign's use; licenses must allow it")] = Use.commercial,
        skip_invalid_rows: SkipOption = False, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Run a campaign sheet: screen, generate, screen, store and audit."""
    from ldm_batch.catalog import CatalogError
    from ldm_batch.licenses import LicenseRefused

    settings = _settings(config)
    if campaign is not None and not SAFE_NAME.match(campaign):
        fail(f"--campaign {campaign!r}: use 1-128 letters, digits, '.', '_' or '-'", 2, as_json)
    if not sheet.startswith("s3://"):
        _validate(sheet, settings, as_json, skip_invalid_rows)  # before starting any server: bad sheets exit fast
    from ldm_batch.orchestration import configure_prefect

    configure_prefect(settings.home)
    try:
        with object_store(settings) as settings:
            if sheet.startswith("s3://"):
                _validate(sheet, settings, as_json, skip_invalid_rows)
            summary = _run_flow(sheet, campaign, use.value, skip_invalid_rows, config, quiet=as_json)
    except typer.Exit:
        raise
    except CatalogError as exc:
        fail(f"refused before generation: {exc}", 2, as_json, errors=[{"row": None, "column": None, "message": str(exc)}])
    except SheetInvalid as exc:
        refuse("sheet", f"[red]refused before generation[/red]: {exc.sheet}:", [p.model_dump() for p in exc.problems],
               [f"row {p.row}, column {p.column!r}: {p.message}" for p in exc.problems], as_json)
    except LicenseRefused as exc:
        refuse("license", "[red]refused before generation[/red]: the campaign's use is not allowed by these licenses:",
               exc.problems, [f"row {p['row']}, column '{p['column']}': {p['message']}" for p in exc.problems],
               as_json)
    except Exception as exc:
        fail(f"run failed: {type(exc).__name__}: {exc}{_spool_hint(settings)}", 1, as_json,
             errors=[{"row": None, "column": None, "message": str(exc)}])
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, settings)


@app.command()
def submit(sheet: Annotated[Path, typer.Argument(help="CSV or XLSX file")],
           campaign: Annotated[str | None, typer.Option(help="Campaign name (default: the sheet's name)")] = None,
           use: Annotated[Use, typer.Option(help="The campaign's use; licenses must allow it")] = Use.commercial,
           config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Put a sheet into the S3 inbox. With a Prefect server (PREFECT_API_URL) the inbox-sweep
    deployment is started for it; without one the sweep runs here. A sheet already run is
    not run again."""
    import hashlib

    from ldm_batch.orchestration import configure_prefect

    settings = _settings(config)
    if campaign is not None and not SAFE_NAME.match(campaign):
        fail(f"--campaign {campaign!r}: use 1-128 letters, digits, '.', '_' or '-'", 2, as_json)
    _validate(str(sheet), settings, as_json)  # a bad sheet is refused here, not uploaded
    configure_prefect(settings.home)
    server = os.environ.get("PREFECT_API_URL")
    with object_store(settings) as settings:
        from ldm_batch.inbox import Inbox
        from ldm_batch.storage import ObjectStore

        store = ObjectStore(settings)
        store.ensure_bucket()
        inbox = Inbox(store, settings.inbox_prefix)
        data = sheet.read_bytes()
        if first := inbox.report(hashlib.sha256(data).hexdigest()):
            report = {"submitted": None, "already": first[0], "report": f"s3://{store.bucket}/{first[1]}"}
            _report(report, f"already {first[0]}: this sheet was run before; report {report['report']}", as_json)
            return
        item = inbox.submit(sheet.name, data, campaign, use.value)
        if server:
            from prefect.deployments import run_deployment

            flow_run = run_deployment("inbox-sweep/inbox-sweep", parameters={"keys": [item.key]}, timeout=0)
            report = {"submitted": item.uri, "flow_run_id": str(flow_run.id), "deployment": "inbox-sweep/inbox-sweep"}
            _report(report, f"submitted {item.uri}; flow run {flow_run.id} of inbox-sweep/inbox-sweep", as_json)
            return
        from flows.inbox_sweep import inbox_sweep

        try:
            result = inbox_sweep(keys=[item.key], config=str(config) if config else None)
        except Exception as exc:
            fail(f"run failed; the sheet stays in the inbox for the next sweep: {exc}", 1, as_json)
    if as_json:
        print(json.dumps({"submitted": item.uri, **result}))
        raise typer.Exit(2 if result["rejected"] else 0)
    for entry in result["processed"]:
        out.print(f"processed {entry['sheet']}: run {entry['run_id']}; report s3://{store.bucket}/{entry['report']}",
                  highlight=False, soft_wrap=True)
    for entry in result["rejected"]:
        err.print(f"[red]rejected[/red] {entry['sheet']}; report s3://{store.bucket}/{entry['report']}",
                  highlight=False, soft_wrap=True)
        for p in entry.get("errors", []):
            err.print(f"  row {p['row']}, column {p['column']!r}: {p['message']}", highlight=False)
    if result["rejected"]:
        raise typer.Exit(2)


def _report(report: dict, text: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
    else:
        out.print(text, highlight=False, soft_wrap=True)


def _spool_hint(settings: Settings) -> str:
    from ldm_batch.audit import AuditLog
    from ldm_batch.spool import Spool

    keys = Spool(settings.home / "spool").keys()
    if not keys:
        return ""
    log = AuditLog(settings.audit_url)
    runs = sorted({record.run_id for key in keys if (record := log.image_record(key)) is not None})
    return (f"\n{len(keys)} audited images wait in the local spool; once S3 answers, "
            + " and ".join(f"`ldm-batch resume {run}`" for run in runs) + " stores them without generating again")


@app.command()
def resume(run_id: Annotated[str, typer.Argument(help="The run whose audited images are not stored yet")],
           config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Store a run's audited images that wait in the local spool (S3 was down, a worker died),
    without generating them again. Exit 1 while any of the run's images is still missing."""
    from ldm_batch.campaign import Workers, upload_spooled

    settings = _settings(config)
    with object_store(settings) as settings:
        workers = Workers.get(settings)
        try:
            counts = upload_spooled(workers, run_id)
        except Exception as exc:
            fail(f"resume failed: {type(exc).__name__}: {exc}", 1, as_json)
        records = workers.audit.query(run_id=run_id, kind="image")
        missing = [r["image_key"] for r in records if r["s3_key"] and workers.store.head(r["s3_key"]) is None]
    if not records:
        fail(f"run {run_id!r}: no image records in the audit log", 2, as_json)
    report = {**counts, "missing": missing}
    if as_json:
        print(json.dumps(report))
    else:
        out.print(f"run {run_id}: {counts['uploaded']} images stored from the spool, {len(missing)} missing")
        if missing:
            out.print("run the sheet again to regenerate the missing images: " + ", ".join(missing), highlight=False)
    raise typer.Exit(1 if missing else 0)


def _run_flow(sheet: str, campaign: str | None, use: str, skip_invalid_rows: bool, config: Path | None,
              quiet: bool) -> dict:
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
            return campaign_batch(sheet=sheet, campaign=campaign, use=use, skip_invalid_rows=skip_invalid_rows,
                                  config=str(config) if config else None)
        finally:
            stop_listening()


def _print_summary(summary: dict, settings: Settings) -> None:
    out.print(f"run [bold]{summary['run_id']}[/bold], campaign {summary['campaign']}")
    table = Table(show_header=False)
    for name in ("rows", "prompts_blocked", "prompts_held", "images", "images_generated", "images_reused",
                 "images_delivered", "images_blocked", "images_stored", "cost"):
        table.add_row(name, str(summary.get(name)))
    out.print(table)
    _print_skipped(summary.get("skipped", []))
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
    """Screen prompts with the text safety policy (rules and classifier)."""
    texts = list(prompts or [])
    if file is not None:
        try:
            texts += [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"{file}: cannot read prompts ({exc})", 2)
    if not texts:
        fail("give prompts as arguments or --file FILE", 2)
    for verdict in _text_screen(_settings(config)).screen(texts):
        if as_json:
            print(verdict.model_dump_json(include={"prompt", "decision", "categories", "reasons", "scores"}))
        else:
            colour = {"allow": "green", "review": "yellow", "block": "red"}[verdict.decision]
            out.print(f"[{colour}]{verdict.decision:6}[/{colour}] {verdict.prompt}"
                      + (f"  ({'; '.join(verdict.reasons)})" if verdict.reasons else ""), highlight=False)


def _text_screen(settings: Settings):
    from ldm_batch.safety.text import TextScreen

    try:
        screen = TextScreen(load_policies(settings.policies_dir), settings.policies_dir)
    except PolicyError as exc:
        fail(str(exc), 2)
    if screen.unavailable:
        err.print(f"[red]warning:[/red] {screen.unavailable}; every prompt is blocked", highlight=False)
    return screen


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
    screen = ImageScreen(load_policies(settings.policies_dir))
    for path, verdict in zip(paths, screen.screen_images(images)):
        if as_json:
            print(json.dumps({"path": str(path), "decision": verdict.decision, "scores": verdict.scores,
                              "fired": verdict.fired}))
        else:
            out.print(f"{verdict.decision:6} {path}  {verdict.scores}", highlight=False)


@eval_app.command("text-safety")
def eval_text_safety(
    labelled: Annotated[Path, typer.Argument(help="CSV with columns prompt,label (label: safe or a category)")],
    split: Annotated[str, typer.Option(help="heldout, train or all")] = "heldout",
    config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """Precision, recall and false-positive rate of the text screen, per category and overall."""
    from ldm_batch.safety.text_eval import evaluate, load_labelled

    if split not in ("heldout", "train", "all"):
        fail(f"--split {split!r}: expected heldout, train or all", 2)
    screen = _text_screen(_settings(config))
    try:
        frame = load_labelled(labelled, list(screen.policy.categories))
    except (OSError, ValueError) as exc:
        fail(str(exc), 2)
    if split != "all":
        frame = frame[frame["split"] == split]
    report = {"split": split, **evaluate(screen, frame)}
    if as_json:
        print(json.dumps(report))
        return
    table = Table("category", "precision", "recall", "false positive rate", "support",
                  title=f"{report['screen']} on {len(frame)} {split} prompts")
    for name, m in report["categories"].items():
        table.add_row(name, *(str(m[k]) for k in ("precision", "recall", "false_positive_rate", "support")))
    out.print(table)
    overall = report["overall"]
    out.print(f"unsafe recall {overall['unsafe_recall']} ({overall['unsafe']} unsafe), "
              f"safe false-positive rate {overall['safe_false_positive_rate']} ({overall['safe']} safe)")
    for miss in report["errors"]:
        out.print(f"  miss: ({miss['label']}) {miss['prompt']} -> {miss['decision']} {miss['categories']}",
                  highlight=False)


@eval_app.command("image-safety")
def eval_image_safety(
    directory: Annotated[Path, typer.Argument(help="Folder with one sub-folder of images per label "
                                                   "(a concept category, or safe)")],
    target_fpr: Annotated[float, typer.Option(help="False-positive rate the suggested threshold keeps")] = 0.05,
    config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """Recall, false-positive rate and a suggested threshold per image-safety concept."""
    from ldm_batch.safety.image import ImageScreen
    from ldm_batch.safety.image_eval import evaluate, load_labelled_images

    settings = _settings(config)
    try:
        items = load_labelled_images(directory)
    except (OSError, ValueError) as exc:
        fail(str(exc), 2)
    report = evaluate(ImageScreen(load_policies(settings.policies_dir)), items, target_fpr)
    if as_json:
        print(json.dumps(report))
        return
    table = Table("concept", "threshold", "recall", "FPR", "suggested", "recall at suggested",
                  title=f"{report['screen']} on {report['images']} images")
    for text, m in report["concepts"].items():
        table.add_row(text, str(m["threshold"]), str(m["recall"]), str(m["false_positive_rate"]),
                      str(m["suggested_threshold"]), str(m["recall_at_suggested"]))
    out.print(table)


# -- audit -------------------------------------------------------------------------------
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
    brand: Annotated[str | None, typer.Option(help="Brand id")] = None,
    license: Annotated[str | None, typer.Option(help="License id of the model or a LoRA, e.g. CreativeML-OpenRAIL-M")] = None,
    lora: Annotated[str | None, typer.Option(help="Images made with this LoRA")] = None,
    since: Annotated[datetime | None, typer.Option(help="Records made at or after this time (UTC)")] = None,
    until: Annotated[datetime | None, typer.Option(help="Records made before this time (UTC)")] = None,
    text: Annotated[str | None, typer.Option(help="Prompts containing this text (case-insensitive)")] = None,
    reviewer: Annotated[str | None, typer.Option(help="Review decisions by this reviewer")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many records")] = None,
    format: Annotated[Format, typer.Option("--format", help="Output format")] = Format.table,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout")] = None,
    config: ConfigOption = None,
) -> None:
    """Records of the audit log, filtered."""
    from ldm_batch.audit.export import export_bytes

    records = _audit_log(config).query(run_id=run_id, campaign=campaign, asset_id=asset_id, decision=decision,
                                       model_id=model, kind=kind, brand=brand, license=license,
                                       since=_utc(since), until=_utc(until), text=text, reviewer=reviewer,
                                       lora=lora, limit=limit)
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
    data = export_bytes(records, format.value)
    if out_file:
        out_file.write_bytes(data)
    else:
        sys.stdout.write(data.decode())


def _image_records(log, settings: Settings, image: str) -> list[dict]:
    """All records of one image, found by its image key, S3 key or sha256."""
    key = image
    for prefix in (settings.delivery_prefix, settings.quarantine_prefix):
        key = key.removeprefix(prefix)
    records = log.query(image_key=key) or log.query(image_sha256=image)
    if not records:
        fail(f"no image with key, S3 key or sha256 {image!r} in the audit log", 2)
    return records


@audit_app.command("explain")
def audit_explain(image: Annotated[str, typer.Argument(help="Image key, S3 key or sha256")],
                  config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The full lineage of one image: run, sheet row, screens, model, licenses, storage, reviews."""
    from ldm_batch.audit.lineage import lineage, lineage_rows

    settings = _settings(config)
    log = _audit_log(config)
    found = lineage(log, _image_records(log, settings, image))
    if as_json:
        print(json.dumps(found))
        return
    table = Table(show_header=False, title=f"image {found['image']['image_key']}")
    for name, value in lineage_rows(found):
        table.add_row(name, str(value))
    out.print(table)


@audit_app.command("reproduce")
def audit_reproduce(image: Annotated[str, typer.Argument(help="Image key, S3 key or sha256")],
                    config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Regenerate an image from its audit record; exit 0 when byte-identical (or, for a
    C2PA-signed image, whose signature differs on every signing, pixel-identical), 1 when not."""
    from ldm_batch.campaign import Workers
    from ldm_batch.reproduce import reproduce

    settings = _settings(config)
    record = _image_records(_audit_log(config), settings, image)[0]
    result = reproduce(record, Workers.get(settings))
    signed = bool((record.get("provenance") or {}).get("c2pa"))
    if as_json:
        print(result.model_dump_json())
    else:
        state = ("[green]identical[/green]" if result.identical else
                 "[green]pixel-identical[/green] (C2PA signature differs)" if result.pixels_identical and signed
                 else "[red]DIFFERENT[/red]")
        out.print(f"{result.image_key}: {state} (recorded {result.recorded_sha256}, now {result.reproduced_sha256})")
        for note in result.notes:
            out.print(f"  note: {note}", highlight=False)
    raise typer.Exit(0 if result.identical or (result.pixels_identical and signed) else 1)


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


@audit_app.command("verify")
def audit_verify(objects: Annotated[bool, typer.Option("--objects", help="Also check every stored "
                                                        "object still has its recorded sha256")] = False,
                 config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Check the audit log's hash chain: any edited, deleted or reordered record is reported."""
    log = _audit_log(config)
    report = log.verify()
    if objects:
        from ldm_batch.audit.log import verify_objects
        from ldm_batch.storage import ObjectStore

        with object_store(_settings(config)) as settings:
            problems = verify_objects(log, ObjectStore(settings))
        report = report.model_copy(update={"ok": report.ok and not problems, "problems": report.problems + problems})
    if as_json:
        print(report.model_dump_json())
    else:
        state = "[green]ok[/green]" if report.ok else "[red]BROKEN[/red]"
        out.print(f"audit log {state}: {report.records} records")
        for problem in report.problems:
            out.print(f"  {problem}", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


# -- review ------------------------------------------------------------------------------
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (required; goes into the audit log)")]
ReviewerOption = Annotated[str | None, typer.Option(help="Your name (default: $LDM_BATCH_REVIEWER or the login)")]


@review_app.command("list")
def review_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Quarantined images waiting for a decision."""
    queue = _audit_log(config).review_queue()
    if as_json:
        for record in queue:
            print(json.dumps({"image_key": record.image_key, "asset_id": record.asset_id, "campaign": record.campaign,
                              "prompt": record.prompt, "reasons": record.reasons, "s3_key": record.s3_key}))
        return
    table = Table("image key", "campaign", "prompt", "why quarantined", title=f"{len(queue)} image(s) to review")
    for record in queue:
        table.add_row(record.image_key, record.campaign, record.prompt, "; ".join(record.reasons))
    out.print(table)


@review_app.command("show")
def review_show(image: Annotated[str, typer.Argument(help="Image key, S3 key or sha256")],
                save: Annotated[Path | None, typer.Option("--out", help="Save the image to this file")] = None,
                config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """An image's lineage, and optionally the image itself, for a reviewer."""
    audit_explain(image, config=config, as_json=as_json)
    if save is not None:
        from ldm_batch.storage import ObjectStore

        record = _image_records(_audit_log(config), _settings(config), image)[0]
        with object_store(_settings(config)) as settings:
            save.write_bytes(ObjectStore(settings).get(record["s3_key"]))
        err.print(f"saved {save}")


def _decide(image: str, approve: bool, reason: str, reviewer: str | None, config: Path | None, as_json: bool):
    from ldm_batch.review import ReviewError, decide, reviewer_name
    from ldm_batch.storage import ObjectStore

    log = _audit_log(config)
    key = _image_records(log, _settings(config), image)[0]["image_key"]
    with object_store(_settings(config)) as settings:
        try:
            record = decide(log, ObjectStore(settings), key, approve, reason, reviewer_name(reviewer))
        except ReviewError as exc:
            fail(str(exc), 2, as_json)
    if as_json:
        print(json.dumps({"image_key": key, "decision": record.decision, "reviewer": record.reviewer,
                          "s3_key": record.s3_key}))
    else:
        out.print(f"{key}: {record.decision} by {record.reviewer}" + (f", delivered to {record.s3_key}" if approve else ""))


@review_app.command("approve")
def review_approve(image: Annotated[str, typer.Argument(help="Image key, S3 key or sha256")], reason: ReasonOption,
                   reviewer: ReviewerOption = None, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Approve a quarantined image: recorded, then copied to the delivery prefix."""
    _decide(image, True, reason, reviewer, config, as_json)


@review_app.command("reject")
def review_reject(image: Annotated[str, typer.Argument(help="Image key, S3 key or sha256")], reason: ReasonOption,
                  reviewer: ReviewerOption = None, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Reject a quarantined image: recorded; it stays in quarantine."""
    _decide(image, False, reason, reviewer, config, as_json)


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


# -- operation ---------------------------------------------------------------------------
@app.command()
def serve(port: Annotated[int, typer.Option(help="Port of the Prefect server's API")] = 4200,
          workers: Annotated[int | None, typer.Option(help="Workers, one per GPU (default: the GPUs here, at least 1)")] = None,
          config: ConfigOption = None) -> None:
    """Run a local Prefect server, SeaweedFS, the work pool, one worker and concurrency limit per
    GPU and the deployments, all on 127.0.0.1, until Ctrl-C."""
    import signal
    import threading

    from ldm_batch.serve import gpu_count, local_stack

    settings = _settings(config)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    count = workers or max(gpu_count(), 1)
    with local_stack(settings, port, count) as env:
        out.print(f"ready: Prefect API {env['PREFECT_API_URL']}, S3 {env['LDM_BATCH_S3_ENDPOINT_URL']}, "
                  f"{count} worker(s) in pool 'gpu'; logs under {settings.home.resolve()}", highlight=False,
                  soft_wrap=True)
        out.print(f"submit a sheet:  PREFECT_API_URL={env['PREFECT_API_URL']} ldm-batch submit SHEET",
                  highlight=False, soft_wrap=True)
        try:
            stopping.wait()
        except KeyboardInterrupt:
            pass
        out.print("stopping")


# -- console -----------------------------------------------------------------------------
@app.command()
def console(host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless behind a proxy")] = "127.0.0.1",
            port: Annotated[int, typer.Option(help="Port")] = 8765, config: ConfigOption = None) -> None:
    """Serve the reviewer console (runs, images, lineage, review queue, export)."""
    import uvicorn

    from ldm_batch.console.app import create_app
    from ldm_batch.console.reviewers import Reviewers

    settings = _settings(config)
    if not Reviewers(settings.home / "reviewers.json").names():
        fail("no reviewers yet; add one with `ldm-batch reviewer add NAME`", 2)
    with object_store(settings) as settings:
        out.print(f"console on http://{host}:{port}/ (Ctrl-C stops it)")
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


@reviewer_app.command("add")
def reviewer_add(name: Annotated[str, typer.Argument(help="The reviewer's name, as audit records will show it")],
                 password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
                 config: ConfigOption = None) -> None:
    """Add a reviewer (or set a new password); only a hash of the password is stored."""
    from ldm_batch.console.reviewers import Reviewers

    settings = _settings(config)
    password = sys.stdin.readline().rstrip("\n") if password_stdin else typer.prompt(
        "Password", hide_input=True, confirmation_prompt=True)
    try:
        Reviewers(settings.home / "reviewers.json").add(name, password)
    except ValueError as exc:
        fail(str(exc), 2)
    out.print(f"reviewer {name} can sign in to the console")


# -- brand -------------------------------------------------------------------------------
@brand_app.command("train")
def brand_train(
    brand: Annotated[str, typer.Argument(help="Brand id (policies/brands/BRAND.yaml is created or updated)")],
    images: Annotated[Path, typer.Option(help="Folder of the brand's images (PNG, JPEG, WebP)")],
    license_id: Annotated[str, typer.Option("--license", help="License of the training images, e.g. proprietary")],
    rights_holder: Annotated[str, typer.Option(help="Who holds the rights to the training images")],
    commercial_use: Annotated[bool, typer.Option(help="Whether the images' license allows commercial use")] = True,
    captions: Annotated[Path | None, typer.Option(help="CSV with columns file, caption (else FILE.txt or the file name)")] = None,
    base: Annotated[str | None, typer.Option(help="Base model id (default: the catalog's default model)")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank (default: policies/brand_training.yaml)")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (default: policies/brand_training.yaml)")] = None,
    trigger: Annotated[str | None, typer.Option(help="Trigger word put before every prompt of the brand")] = None,
    config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """Train a brand LoRA on the base model's UNet and register it with its manifest."""
    from ldm_batch.brand_training import BrandTrainingError, train_brand
    from ldm_batch.generate import resolve_device
    from ldm_batch.policies import License
    from ldm_batch.safety.text import TextScreen

    settings = _settings(config)
    if not SAFE_NAME.match(brand):
        fail(f"brand {brand!r}: use 1-128 letters, digits, '.', '_' or '-'", 2, as_json)
    if not images.is_dir():
        fail(f"--images {images}: not a folder", 2, as_json)
    try:
        policies = load_policies(settings.policies_dir)
    except PolicyError as exc:
        fail(str(exc), 2, as_json)
    base = base or policies.default_model
    if base not in policies.models or policies.models[base].kind != "diffusion":
        fail(f"--base {base!r} is not a diffusion model in models.yaml", 2, as_json)
    total = steps or policies.brand_training.steps
    columns = (TextColumn("training {task.fields[brand]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=as_json, transient=True) as bar:
        task = bar.add_task("train", total=total, brand=brand, loss="-")
        try:
            manifest = train_brand(
                policies, settings.policies_dir, TextScreen(policies, settings.policies_dir), brand, images,
                captions, base, rank, steps, trigger,
                License(id=license_id, commercial_use=commercial_use), rights_holder,
                resolve_device(settings.device),
                on_step=lambda step, loss: bar.update(task, completed=step, loss=f"{loss:.4f}"))
        except BrandTrainingError as exc:
            refuse("training images", "[red]cannot train[/red]:", exc.problems, exc.problems, as_json)
    if as_json:
        print(json.dumps({k: v for k, v in manifest.items() if k != "training_images"}
                         | {"training_images": len(manifest["training_images"])}))
    else:
        out.print(f"[green]trained[/green] {manifest['lora_id']} on {len(manifest['training_images'])} images, "
                  f"loss {manifest['final_loss']}; registered in {settings.policies_dir / 'brands' / (brand + '.yaml')}")
