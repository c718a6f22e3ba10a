"""Campaign batch: a prompt sheet in; screened, stored and audited images out.

    load sheet -> screen text -> preflight -> map(generate batch) -> summarise

Each stage is a Prefect task, so the Prefect UI shows the README's diagram. The work
happens in ldm_batch; this file wires the stages, fans generation out by batch, and reports.
Settings are the worker's own (or those the CLI put in use), never a flow parameter.
Runs on Prefect's ephemeral server when no PREFECT_API_URL is set.
"""

from __future__ import annotations

import uuid
from contextlib import nullcontext
from functools import partial
from typing import Literal

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from ldm_batch import progress
from ldm_batch.campaign import process_batch
from ldm_batch.config import Settings, current_settings, fill_secrets, secret_environment, split_secrets
from ldm_batch.contact_sheet import MAX_IMAGES, contact_sheet
from ldm_batch.parts import Parts
from ldm_batch.plan import Batch
from ldm_batch.preflight import Plan, ScreenedRow, preflight, screen_rows
from ldm_batch.provenance import unsigned_production_models
from ldm_batch.problems import Problem, Refused
from ldm_batch.reconcile import image_states, upload_spooled
from ldm_batch.records import failed_record, plan_records, skipped_record
from ldm_batch.reproduce import restore_object
from ldm_batch.runs import BatchOutcome, ImageFailure, RefusedRow, RunContext, RunSummary
from ldm_batch.sheets import Sheet, check_campaign_name, check_size, read_sheet, sheet_stem
from ldm_batch.storage import check_sheet_location, read_source


def _not_refused(task, task_run, state) -> bool:
    """Retry reading a sheet when S3 hiccups, not when the sheet itself is refused."""
    return not isinstance(state.result(raise_on_failure=False), Refused)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=_not_refused)
def load_sheet(uri: str, settings: Settings, skip_invalid_rows: bool) -> Sheet:
    check_sheet_location(uri, settings)
    policies = Parts.of(settings).policies
    name, data = read_source(uri, settings, partial(check_size, limits=policies.sheet_limits))
    return read_sheet(name, data, policies, skip_invalid_rows)


@task(cache_policy=NO_CACHE)
def screen_text(sheet: Sheet, settings: Settings, secrets: tuple[str, ...] = ()) -> list[ScreenedRow]:
    settings = fill_secrets(settings, secrets) if secrets else settings  # on a Dask worker: its own secrets
    parts = Parts.of(settings)
    return screen_rows(sheet.rows, parts.text_screen, parts.policies)


def screened(sheet: Sheet, settings: Settings) -> list[ScreenedRow]:
    """The text screen's verdicts on the sheet's rows. With long-lived Dask workers (under
    `ldm-batch serve`) a worker screens them: its text screen stays loaded between sheets,
    while a process worker's flow run is a new process that would load it for every sheet."""
    if not settings.dask_address:
        return screen_text(sheet, settings)
    shipped, secrets = split_secrets(settings)
    with task_runner(settings) as runner:
        return runner.submit(screen_text, {"sheet": sheet, "settings": shipped, "secrets": secrets}).result()


@task(name="preflight", cache_policy=NO_CACHE)
def plan_run(sheet: Sheet, rows: list[ScreenedRow], run: RunContext, settings: Settings) -> Plan:
    """The plan, with every row that makes no image recorded; lost objects put back. Raises the
    refusal (licenses, weights) after recording the rows it names."""
    parts = Parts.of(settings)
    plan = preflight(sheet.name, rows, run.campaign, run.use, parts.policies,
                     partial(image_states, audit=parts.audit, store=parts.store), settings.batch_size,
                     settings.organisation_revenue_usd)
    parts.audit.append([skipped_record(run, row) for row in sheet.skipped] + plan_records(run, plan))
    if plan.refusal is not None:
        raise plan.refusal.error
    for record in plan.restore:  # audited, but the object is gone and not in the spool
        restore_object(record, parts)
    return plan


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def generate_batch(batch: Batch, run: RunContext, settings: Settings, secrets: tuple[str, ...] = ()) -> BatchOutcome:
    settings = fill_secrets(settings, secrets) if secrets else settings  # on a Dask worker: its own secrets
    # The GPU's slot guards a process worker's GPU; a Dask worker owns its GPU (one thread each).
    slot = partial(concurrency, settings.gpu_slot, strict=True) if settings.gpu_slot and not settings.uses_dask \
        else nullcontext
    return process_batch(batch, run, Parts.of(settings), device_slot=slot)


@task(cache_policy=NO_CACHE)
def summarise(summary: RunSummary, run: RunContext, settings: Settings) -> RunSummary:
    """The run's contact sheet and Prefect artifacts; the summary stored on the run."""
    parts = Parts.of(settings)
    records = parts.audit.query(run_id=run.run_id)
    images = [r for r in records if r["kind"] == "image"]
    tiles = list(zip(images[:MAX_IMAGES], parts.store.get_many([r["s3_key"] for r in images[:MAX_IMAGES]])))
    key = parts.store.put_report(f"{settings.reports_prefix}{run.campaign}/{run.run_id}/contact-sheet.png",
                                 contact_sheet(tiles))
    summary = summary.model_copy(update={"contact_sheet": f"s3://{parts.store.bucket}/{key}"}).ended("finished")
    parts.audit.finish_run(run.run_id, summary.status, summary.model_dump(mode="json"))
    summary = summary.model_copy(update={"checkpoint": parts.audit.seal()})
    create_markdown_artifact(key="campaign-contact-sheet", description=f"Contact sheet of run {run.run_id}",
                             markdown=f"Contact sheet: `{summary.contact_sheet}` (`ldm-batch console` shows it)")
    create_table_artifact(
        key="campaign-run", description=f"Campaign {run.campaign}, run {run.run_id}",
        table=[{"asset_id": r["asset_id"], "row": r["sheet_row"], "decision": r["decision"],
                "s3_key": r.get("s3_key"), "cost": r.get("cost")} for r in records])
    return summary


def task_runner(settings: Settings) -> TaskRunner:
    """Where batches run: threads of this process, or the workers of a Dask cluster (one
    GPU each; every worker process loads the models once and keeps them)."""
    from prefect_dask import DaskTaskRunner  # Dask's client loads only for runs that use it

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    if settings.dask_workers:  # local worker processes get the secrets in their environment at start
        return DaskTaskRunner(cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None,
                                              "env": secret_environment(settings)})
    return ThreadPoolTaskRunner(max_workers=2)  # one batch generates while the one before is screened and stored


def generate(plan: Plan, run: RunContext, settings: Settings) -> tuple[list[BatchOutcome], list[ImageFailure]]:
    """Every batch of the plan, each a task run; progress as batches finish. A batch that still
    fails after its retries has its images recorded as failed while the others finish; a
    failure after images were audited (S3 or the database down) fails the run instead, so
    `ldm-batch resume` can store what the spool holds."""
    progress.report("planned", plan.to_generate)
    if not plan.batches:
        return [], []
    outcomes, failed = [], []
    shipped, secrets = split_secrets(settings) if settings.uses_dask else (settings, ())  # secrets never go over the wire
    with task_runner(settings) as runner:
        futures = runner.map(generate_batch, {"batch": plan.batches, "run": unmapped(run),
                                              "settings": unmapped(shipped), "secrets": unmapped(secrets)})
        batch_of = {future.task_run_id: batch for future, batch in zip(futures, plan.batches)}
        for future in as_completed(futures):  # progress from here: Dask workers are other processes
            try:
                outcomes.append(future.result())
            except Exception as exc:
                failed.append((batch_of[future.task_run_id], exc))
                continue
            progress.report("image", outcomes[-1].generated)
    return outcomes, record_failures(failed, run, settings)


def record_failures(failed: list, run: RunContext, settings: Settings) -> list[ImageFailure]:
    parts = Parts.of(settings)
    failures, records = [], []
    for batch, exc in failed:
        audited = parts.audit.image_records([job.key for job in batch.jobs])
        if audited:  # it failed after auditing: storage or the database, not this batch
            raise exc
        error = f"{type(exc).__name__}: {exc}"[:500]
        failures += [ImageFailure(row=job.row, asset_id=job.asset_id, image_key=job.key, error=error)
                     for job in batch.jobs]
        records += [failed_record(run, job, error) for job in batch.jobs]
    parts.audit.append(records)
    return failures


@flow(name="campaign-batch")
def campaign_batch(sheet: str, campaign: str | None = None,
                   use: Literal["commercial", "non-commercial"] = "commercial",
                   skip_invalid_rows: bool = False, started_by: str | None = None) -> RunSummary:
    """Run one campaign sheet; returns what the run did. `started_by`: the console author."""
    check_campaign_name(campaign)
    settings = current_settings()
    parts = Parts.of(settings)
    parts.audit.migrate()
    parts.store.ensure_bucket()
    upload_spooled(parts.audit, parts.store, parts.spool)  # images an earlier run audited but could not store

    parsed = load_sheet(sheet, settings, skip_invalid_rows)
    rows = screened(parsed, settings)
    run = RunContext(run_id=str(uuid.uuid4()), campaign=campaign or sheet_stem(parsed.name), use=use,
                     sheet=parsed.name)
    parts.audit.start_run(run.run_id, run.campaign, parsed.name, parsed.sha256, by=started_by)
    summary = RunSummary(run_id=run.run_id, campaign=run.campaign, sheet=parsed.name, rows=len(parsed.rows),
                         skipped=[p for row in parsed.skipped for p in row.problems],
                         currency=parts.policies.costs.currency, bucket=settings.s3_bucket)
    try:
        plan = plan_run(parsed, rows, run, settings)
        warnings = unsigned_production_models({job.settings.model for job in plan.jobs}, parts.policies, parts.marker)
        for warning in warnings:
            get_run_logger().warning(warning)
        summary = summary.model_copy(update=dict(
            warnings=warnings,
            images=len(plan.jobs),
            prompts_blocked=sum(r.verdict.decision == "block" for r in plan.refused_rows),
            prompts_held=sum(r.verdict.decision == "review" for r in plan.refused_rows),
            refused=[RefusedRow(row=r.row.row, asset_id=r.row.asset_id, decision=r.verdict.decision,
                                reasons=r.verdict.reasons) for r in plan.refused_rows]))
        outcomes, failures = generate(plan, run, settings)
        summary = summary.fold(outcomes, done=len(plan.done), restored=len(plan.restore), failures=failures)
    except Refused as exc:
        parts.audit.finish_run(run.run_id, "refused", summary.ended("refused", exc.problems).model_dump(mode="json"))
        parts.audit.seal()
        raise
    except BaseException as exc:
        failed = summary.ended("failed", [Problem(message=str(exc))])
        parts.audit.finish_run(run.run_id, "failed", failed.model_dump(mode="json"))
        raise
    return summarise(summary, run, settings)


if __name__ == "__main__":
    import sys

    print(campaign_batch(sys.argv[1]))
