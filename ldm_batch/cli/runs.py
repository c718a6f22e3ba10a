"""Commands that take a sheet: validate, run, submit, resume."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ldm_batch.cli.context import (ConfigOption, Invocation, JsonOption, SkipOption, UseChoice, UseOption, abort,
                                   emit_json, err, fail, out, print_data, print_problems)
from ldm_batch.problems import Problem, Refused
from ldm_batch.sheets import SAFE_NAME, Sheet

app = typer.Typer()
SheetArgument = Annotated[str, typer.Argument(help="CSV or XLSX file, or s3://bucket/key")]
CampaignOption = Annotated[str | None, typer.Option(help="Campaign name (default: the sheet's name)")]


def read_checked(inv: Invocation, sheet: str, skip_invalid: bool = False) -> Sheet:
    """Read and check a sheet; on problems print them and exit 2."""
    from ldm_batch.policies import load_policies
    from ldm_batch.sheets import check_size, read_sheet
    from ldm_batch.storage import read_source

    settings = inv.store() if sheet.startswith("s3://") else inv.settings
    try:
        policies = load_policies(settings.policies_dir)
        name, data = read_source(sheet, settings, partial(check_size, limits=policies.sheet_limits))
        return read_sheet(name, data, policies, skip_invalid)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        problem = Problem(file=sheet, message=f"cannot read the file ({exc.strerror})")
        fail(problem.line(), 2, inv.as_json, valid=False, errors=[problem.model_dump()])
    except Refused as exc:
        if inv.as_json:
            emit_json({"valid": False, "sheet": getattr(exc, "sheet", sheet), "rows": None, "error": str(exc),
                       "errors": exc.dumps()})
        err.print("[red]invalid[/red] ", end="")
        print_data(exc.headline, err)
        print_problems(exc.problems)
        raise typer.Exit(2) from None


def check_campaign(campaign: str | None, as_json: bool) -> None:
    if campaign is not None and not SAFE_NAME.match(campaign):
        fail(f"--campaign {campaign!r}: use 1-128 letters, digits, '.', '_' or '-'", 2, as_json)


@app.command()
def validate(sheet: SheetArgument, skip_invalid_rows: SkipOption = False, config: ConfigOption = None,
             as_json: JsonOption = False) -> None:
    """Check a campaign sheet without generating anything."""
    with Invocation(config, as_json) as inv:
        parsed = read_checked(inv, sheet, skip_invalid_rows)
    skipped = [p for row in parsed.skipped for p in row.problems]
    if as_json:
        emit_json({"valid": True, "sheet": parsed.name, "rows": len(parsed.rows), "errors": [],
                   "skipped": [p.model_dump() for p in skipped]})
        return
    images = sum(r.variants for r in parsed.rows)
    out.print(f"[green]valid[/green]: {len(parsed.rows)} rows, {images} images requested in ", end="")
    print_data(parsed.name)
    print_problems(skipped, "skipped ")


@app.command()
def run(sheet: SheetArgument, campaign: CampaignOption = None, use: UseOption = UseChoice.commercial,
        skip_invalid_rows: SkipOption = False, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Run a campaign sheet: screen, generate, screen, store and audit."""
    from ldm_batch.config import settings_in_use
    from ldm_batch.orchestration import configure_prefect, local_flow, temporary_server
    from ldm_batch.parts import Parts

    check_campaign(campaign, as_json)
    with Invocation(config, as_json) as inv:
        parsed = None
        if not sheet.startswith("s3://"):
            parsed = read_checked(inv, sheet, skip_invalid_rows)  # before starting any server: bad sheets exit fast
        configure_prefect(inv.settings.home)
        try:
            server = inv.enter(temporary_server())  # before Prefect is imported: it reads PREFECT_API_URL once
            with ThreadPoolExecutor(max_workers=3, thread_name_prefix="start-up") as start_up:
                # the Prefect server, the flow's imports and the text screen start beside SeaweedFS
                flow = start_up.submit(local_flow, "campaign-batch")
                settings = inv.store()  # here: the embedded server's stop is tied to this thread's signals
                if sheet.startswith("s3://"):
                    parsed = read_checked(inv, sheet, skip_invalid_rows)
                else:  # the user named this file; the flow may read its folder
                    settings = settings.model_copy(update={"sheet_roots": [Path(sheet).resolve().parent]})
                if not settings.dask_address:  # with Dask workers, they screen the rows
                    start_up.submit(lambda: Parts.of(settings).text_screen)
                if not settings.uses_dask:
                    start_up.submit(_load_for_first_run, settings, parsed, campaign)
                if server is not None:
                    server.ready()
            with settings_in_use(settings):
                summary = _run_flow(flow.result(), sheet, campaign, use.value, skip_invalid_rows, quiet=as_json)
        except typer.Exit:
            raise
        except Refused as exc:
            abort(exc, as_json, "before generation: ")
        except Exception as exc:
            hint = _spool_hint(inv.settings)
            if hint:
                err.print(hint, markup=False, highlight=False)
            abort(exc, as_json, "run failed: ")
    if as_json:
        emit_json(summary.model_dump_json())
    else:
        _print_summary(summary, inv.settings)
    if summary.status == "partial":  # some images failed; they are recorded, and the next run makes them
        raise typer.Exit(1)


def _load_for_first_run(settings, sheet: Sheet, campaign: str | None) -> None:
    """A campaign's first run generates every image it plans: load its models and the image
    screen while the servers start. A campaign run before may have its images stored already
    (one query tells), and then nothing is loaded unless the flow finds a batch to make."""
    from ldm_batch.parts import Parts
    from ldm_batch.sheets import sheet_stem

    parts = Parts.of(settings)
    parts.audit.migrate()
    if parts.audit.query(kind="image", campaign=campaign or sheet_stem(sheet.name), limit=1):
        return
    for model_id in sorted({row.model or parts.policies.default_model for row in sheet.rows}):
        parts.generator.load(model_id)
    _ = parts.screen  # the property loads it


def _run_flow(campaign_batch, sheet: str, campaign: str | None, use: str, skip_invalid_rows: bool, quiet: bool):
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
            return campaign_batch(sheet=sheet, campaign=campaign, use=use, skip_invalid_rows=skip_invalid_rows)
        finally:
            stop_listening()


def _print_summary(summary, settings) -> None:
    out.print("run [bold]", end="")
    print_data(f"{summary.run_id}, campaign {summary.campaign}")
    table = Table(show_header=False)
    for name in ("rows", "prompts_blocked", "prompts_held", "images", "images_generated", "images_reused",
                 "images_delivered", "images_blocked", "images_stored", "images_failed", "cost"):
        table.add_row(name, str(getattr(summary, name)))
    out.print(table)
    print_problems(summary.skipped, "skipped ")
    for refused in summary.refused:
        print_data(f"row {refused.row} ({refused.asset_id}) {refused.decision}: " + "; ".join(refused.reasons))
    for failure in summary.failures:
        err.print("[red]failed[/red] ", end="")
        print_data(f"row {failure.row} ({failure.image_key}): {failure.error}", err)
    if summary.failures:
        print_data(f"{summary.images_failed} image(s) failed; run the sheet again to make only those", err)
    for warning in summary.warnings:
        err.print("[yellow]warning[/yellow] ", end="")
        print_data(warning, err)
    print_data(f"images: s3://{summary.bucket}/{settings.delivery_prefix} (quarantine: "
               f"{settings.quarantine_prefix}); audit log: {_safe_url(settings.audit_url)}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _spool_hint(settings) -> str:
    from ldm_batch.audit import AuditLog
    from ldm_batch.spool import Spool

    keys = Spool(settings.home / "spool").keys()
    if not keys:
        return ""
    runs = sorted({record.run_id for record in AuditLog(settings.audit_url).image_records(keys).values()})
    return (f"{len(keys)} audited images wait in the local spool; once S3 answers, "
            + " and ".join(f"`ldm-batch resume {run}`" for run in runs) + " stores them without generating again")


@app.command()
def submit(sheet: Annotated[Path, typer.Argument(help="CSV or XLSX file")], campaign: CampaignOption = None,
           use: UseOption = UseChoice.commercial, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Put a sheet into the S3 inbox. With a Prefect server (PREFECT_API_URL) the inbox-sweep
    deployment is started for it; without one the sweep runs here. A sheet already run is
    not run again."""
    from ldm_batch.config import settings_in_use
    from ldm_batch.orchestration import configure_prefect, local_flow

    check_campaign(campaign, as_json)
    with Invocation(config, as_json) as inv:
        read_checked(inv, str(sheet))  # a bad sheet is refused here, not uploaded
        configure_prefect(inv.settings.home)
        server = os.environ.get("PREFECT_API_URL")
        from ldm_batch.inbox import Inbox
        from ldm_batch.storage import ObjectStore

        settings = inv.store()
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
        try:
            with settings_in_use(settings):
                result = local_flow("inbox-sweep")(keys=[item.key])
        except Exception as exc:
            fail(f"run failed; the sheet stays in the inbox for the next sweep: {exc}", 1, as_json)
    if as_json:
        emit_json({"submitted": item.uri, **result})
        raise typer.Exit(2 if result["rejected"] else 0)
    for entry in result["processed"]:
        print_data(f"processed {entry['sheet']}: run {entry['run_id']}; report s3://{store.bucket}/{entry['report']}")
    for entry in result["rejected"]:
        err.print("[red]rejected[/red] ", end="")
        print_data(f"{entry['sheet']}; report s3://{store.bucket}/{entry['report']}", err)
        print_problems([Problem(**p) for p in entry.get("errors", [])])
    if result["rejected"]:
        raise typer.Exit(2)


def _report(report: dict, text: str, as_json: bool) -> None:
    if as_json:
        emit_json(report)
    else:
        print_data(text)


@app.command()
def resume(run_id: Annotated[str, typer.Argument(help="The run whose audited images are not stored yet")],
           config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Store a run's audited images that wait in the local spool (S3 was down, a worker died),
    without generating them again. Exit 1 while any of the run's images is still missing."""
    from ldm_batch.audit import AuditLog
    from ldm_batch.reconcile import missing_objects, upload_spooled
    from ldm_batch.spool import Spool
    from ldm_batch.storage import ObjectStore

    with Invocation(config, as_json) as inv:
        settings = inv.store()
        audit, store = AuditLog(settings.audit_url), ObjectStore(settings)
        try:
            counts = upload_spooled(audit, store, Spool(settings.home / "spool"), run_id)
        except Exception as exc:
            abort(exc, as_json, "resume failed: ")
        images, missing = missing_objects(run_id, audit, store)
    if not images:
        fail(f"run {run_id!r}: no image records in the audit log", 2, as_json)
    if as_json:
        emit_json({**counts, "missing": missing})
    else:
        print_data(f"run {run_id}: {counts['uploaded']} images stored from the spool, {len(missing)} missing")
        if missing:
            print_data("run the sheet again to regenerate the missing images: " + ", ".join(missing))
    raise typer.Exit(1 if missing else 0)
