"""Campaign batch: a prompt sheet in; screened, stored and audited images out.

    sheet -> text screen -> plan -> [generate + image screen + audit + store] per batch
          -> run summary (returned, recorded on the run, and published as a Prefect artifact)

Runs on Prefect's ephemeral server when no PREFECT_API_URL is set. All the work happens in
ldm_batch; this file wires the stages, fans generation out by batch and reports.
"""

from __future__ import annotations

import uuid
from contextlib import nullcontext
from functools import partial

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from ldm_batch import progress
from ldm_batch.campaign import (BatchOutcome, RunContext, Workers, check_weights, is_complete, process_batch,
                                refusal_problems, row_record, skipped_record, upload_spooled)
from ldm_batch.catalog import CatalogError
from ldm_batch.config import Settings, load_settings
from ldm_batch.contact_sheet import MAX_IMAGES, contact_sheet
from ldm_batch.licenses import LicenseRefused, Use, license_problems
from ldm_batch.plan import Batch, group_batches, plan_row
from ldm_batch.reproduce import restore_object
from ldm_batch.safety.text import PromptVerdict
from ldm_batch.sheets import PromptRow, Sheet, SheetInvalid, SheetProblem, check_size, read_sheet, sheet_stem
from ldm_batch.storage import read_source


def _not_refused(task, task_run, state) -> bool:
    """Retry reading a sheet when S3 hiccups, not when the sheet itself is invalid."""
    return refusal_problems(state.result(raise_on_failure=False)) is None


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=_not_refused)
def load_sheet(uri: str, settings: Settings, skip_invalid_rows: bool) -> Sheet:
    policies = Workers.get(settings).policies
    name, data = read_source(uri, settings, partial(check_size, limits=policies.sheet_limits))
    return read_sheet(name, data, policies, skip_invalid_rows)


@task(cache_policy=NO_CACHE)
def screen_text(sheet: Sheet, settings: Settings) -> list[PromptVerdict]:
    return Workers.get(settings).text_screen.screen([row.prompt for row in sheet.rows],
                                                    [row.brand for row in sheet.rows])


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def generate_batch(batch: Batch, run: RunContext, verdicts: dict[int, PromptVerdict],
                   rows: dict[int, PromptRow], settings: Settings) -> BatchOutcome:
    # The GPU's slot guards a process worker's GPU; a Dask worker owns its GPU (one thread each).
    dask = settings.dask_address or settings.dask_workers
    slot = partial(concurrency, settings.gpu_slot, strict=True) if settings.gpu_slot and not dask else nullcontext
    return process_batch(batch, run, verdicts, rows, Workers.get(settings), device_slot=slot)


def task_runner(settings: Settings) -> TaskRunner:
    """Where batches run: threads of this process, or the workers of a Dask cluster (one
    GPU each; every worker process loads the models once and keeps them)."""
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    if settings.dask_workers:
        return DaskTaskRunner(cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=2)  # one batch generates while the one before is screened and stored


def write_contact_sheet(run: RunContext, workers: Workers, settings: Settings) -> str:
    """The run's contact sheet, stored under the reports prefix; returns its s3:// URI."""
    records = workers.audit.query(run_id=run.run_id, kind="image")
    tiles = [(r, workers.store.get(r["s3_key"]) if r["s3_key"] else None) for r in records[:MAX_IMAGES]]
    key = workers.store.put_report(f"{settings.reports_prefix}{run.campaign}/{run.run_id}/contact-sheet.png",
                                   contact_sheet(tiles))
    return f"s3://{workers.store.bucket}/{key}"


def refuse_unlicensed(jobs: list, sheet: Sheet, verdicts: list[PromptVerdict], run: RunContext,
                      workers: Workers) -> None:
    """Before any generation: record and refuse rows whose weights' licenses forbid the use."""
    problems = license_problems(jobs, workers.policies, run.use)
    if not problems:
        return
    verdict_of = {row.row: v for row, v in zip(sheet.rows, verdicts)}
    rows = [row for row in sheet.rows if any(p["row"] == row.row for p in problems)]
    workers.audit.append([row_record(run, row, verdict_of[row.row],
                                     license_reasons=[p["message"] for p in problems if p["row"] == row.row])
                          for row in rows])
    raise LicenseRefused(problems)


@flow(name="campaign-batch")
def campaign_batch(sheet: str, campaign: str | None = None, use: Use = "commercial",
                   skip_invalid_rows: bool = False, config: str | None = None) -> dict:
    settings = load_settings(config)
    workers = Workers.get(settings)
    workers.audit.migrate()
    workers.store.ensure_bucket()
    upload_spooled(workers)  # images an earlier run audited but could not store

    parsed = load_sheet(sheet, settings, skip_invalid_rows)
    verdicts = screen_text(parsed, settings)
    run = RunContext(run_id=str(uuid.uuid4()), campaign=campaign or sheet_stem(parsed.name), use=use,
                     sheet=parsed.name)
    workers.audit.start_run(run.run_id, run.campaign, parsed.name, parsed.sha256)
    summary = {"run_id": run.run_id, "campaign": run.campaign, "sheet": parsed.name,
               "rows": len(parsed.rows), "errors": [],
               "skipped": [p.model_dump() for row in parsed.skipped for p in row.problems]}
    try:
        workers.audit.append([skipped_record(run, row) for row in parsed.skipped])
        refused = [(row, v) for row, v in zip(parsed.rows, verdicts) if v.decision != "allow"]
        workers.audit.append([row_record(run, row, v) for row, v in refused])
        allowed = [row for row, v in zip(parsed.rows, verdicts) if v.decision == "allow"]
        jobs = [job for row in allowed for job in plan_row(row, run.campaign, workers.policies)]
        refuse_unlicensed(jobs, parsed, verdicts, run, workers)
        check_weights(jobs, workers.policies)
        unmarkable = {job.row: problem for job in jobs
                      if (problem := workers.marker.size_problem(job.settings.width, job.settings.height))}
        if unmarkable:
            raise SheetInvalid(parsed.name, [SheetProblem(row=row, column="width", message=problem)
                                             for row, problem in unmarkable.items()])
        records = {job.key: workers.audit.image_record(job.key) for job in jobs}
        missing = [job for job in jobs if not is_complete(records[job.key], workers)]
        lost = [records[job.key] for job in missing if records[job.key] is not None]
        for record in lost:  # audited, but the object is gone and not in the spool
            restore_object(record, workers)
        lost_keys = {record.image_key for record in lost}
        batches = group_batches([job for job in missing if job.key not in lost_keys], settings.batch_size)
        progress.report("planned", sum(len(batch.jobs) for batch in batches))
        with task_runner(settings) as runner:
            futures = runner.map(generate_batch, {
                "batch": batches, "run": unmapped(run),
                "verdicts": unmapped({r.row: v for r, v in zip(parsed.rows, verdicts)}),
                "rows": unmapped({r.row: r for r in parsed.rows}), "settings": unmapped(settings)}) if batches else []
            outcomes = []
            for future in as_completed(futures):  # progress from here: Dask workers are other processes
                outcomes.append(future.result())
                progress.report("image", outcomes[-1].generated)
        summary.update(
            prompts_blocked=sum(v.decision == "block" for _, v in refused),
            prompts_held=sum(v.decision == "review" for _, v in refused),
            refused=[{"row": row.row, "asset_id": row.asset_id, "decision": v.decision, "reasons": v.reasons}
                     for row, v in refused],
            images=len(jobs),
            images_generated=sum(o.generated for o in outcomes),
            images_reused=len(jobs) - len(missing) + sum(o.reused for o in outcomes),
            images_delivered=sum(o.delivered for o in outcomes),
            images_blocked=sum(o.quarantined + o.discarded for o in outcomes),
            images_repaired=len(lost) + sum(o.repaired for o in outcomes),
            images_stored=len(lost) + sum(o.delivered + o.quarantined + o.repaired for o in outcomes),
            cost=round(sum(o.cost for o in outcomes), 8), currency=workers.policies.costs.currency,
            bucket=settings.s3_bucket, s3_keys=[key for o in outcomes for key in o.s3_keys],
            workers=sorted({o.worker for o in outcomes}),
        )
    except (SheetInvalid, LicenseRefused, CatalogError) as exc:
        workers.audit.finish_run(run.run_id, "refused", {**summary, "errors": refusal_problems(exc)})
        raise
    except BaseException as exc:
        workers.audit.finish_run(run.run_id, "failed", {**summary, "errors": [{"row": None, "column": None,
                                                                               "message": str(exc)}]})
        raise
    summary["contact_sheet"] = write_contact_sheet(run, workers, settings)
    workers.audit.finish_run(run.run_id, "finished", summary)
    create_markdown_artifact(key="campaign-contact-sheet", description=f"Contact sheet of run {run.run_id}",
                             markdown=f"Contact sheet: `{summary['contact_sheet']}` (`ldm-batch console` shows it)")
    create_table_artifact(
        key="campaign-run", description=f"Campaign {run.campaign}, run {run.run_id}",
        table=[{"asset_id": r["asset_id"], "row": r["sheet_row"], "decision": r["decision"],
                "s3_key": r.get("s3_key"), "cost": r.get("cost")}
               for r in workers.audit.query(run_id=run.run_id)])
    return summary


if __name__ == "__main__":
    import sys

    print(campaign_batch(sys.argv[1]))
