"""The compliance side: query, explain, reproduce and verify the audit log; review quarantined images."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ldm_batch.cli.context import ConfigOption, Invocation, JsonOption, abort, emit_json, err, fail, out, print_data

audit_app = typer.Typer(help="Query and verify the audit log.", no_args_is_help=True)
review_app = typer.Typer(help="Review quarantined images: list, show, approve, reject.", no_args_is_help=True)
ImageArgument = Annotated[str, typer.Argument(help="Image key, S3 key or sha256")]


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    parquet = "parquet"


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _cells(*values) -> list[str]:
    """Table cells from data: markup in prompts or keys is shown, not interpreted."""
    return [escape("" if v is None else str(v)) for v in values]


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

    if format is Format.parquet and out_file is None:
        fail("--format parquet needs --out FILE", 2)
    with Invocation(config) as inv:
        records = inv.audit_log().query(
            run_id=run_id, campaign=campaign, asset_id=asset_id, decision=decision, model_id=model, kind=kind,
            brand=brand, license=license, since=_utc(since), until=_utc(until), text=text, reviewer=reviewer,
            lora=lora, limit=limit)
    if format is Format.table:
        table = Table("seq", "run", "asset", "row", "decision", "model", "license", "seed", "cost", "s3 key")
        for r in records:
            table.add_row(*_cells(r["seq"], r["run_id"][:8], r["asset_id"], r["sheet_row"], r["decision"],
                                  r["model_id"], (r["model_license"] or {}).get("id"), r["seed"],
                                  f"{r['cost']:.8f}" if r["cost"] is not None else None, r["s3_key"]))
        Console(file=out_file.open("w") if out_file else None, width=200).print(table)
        return
    data = export_bytes(records, format.value)
    if out_file:
        out_file.write_bytes(data)
    else:
        sys.stdout.write(data.decode())


@audit_app.command("explain")
def audit_explain(image: ImageArgument, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The full lineage of one image: run, sheet row, screens, model, licenses, storage, reviews."""
    with Invocation(config, as_json) as inv:
        _explain(inv, image)


def _explain(inv: Invocation, image: str) -> None:
    from ldm_batch.audit.lineage import lineage, lineage_rows

    found = lineage(inv.audit_log(), inv.image_records(image))
    if inv.as_json:
        emit_json(found)
        return
    table = Table(show_header=False, title=escape(f"image {found['image']['image_key']}"))
    for name, value in lineage_rows(found):
        table.add_row(*_cells(name, value))
    out.print(table)


@audit_app.command("reproduce")
def audit_reproduce(image: ImageArgument, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Regenerate an image from its audit record; exit 0 when byte-identical (or, for a
    C2PA-signed image, whose signature differs on every signing, pixel-identical), 1 when not."""
    from ldm_batch.parts import Parts
    from ldm_batch.reproduce import reproduce

    with Invocation(config, as_json) as inv:
        record = inv.image_records(image)[0]
        result = reproduce(record, Parts.of(inv.settings))
    signed = bool((record.get("provenance") or {}).get("c2pa"))
    if as_json:
        emit_json(result.model_dump_json())
    else:
        state = ("[green]identical[/green]" if result.identical else
                 "[green]pixel-identical[/green] (C2PA signature differs)" if result.pixels_identical and signed
                 else "[red]DIFFERENT[/red]")
        out.print(f"{escape(result.image_key)}: {state} (recorded {result.recorded_sha256}, "
                  f"now {result.reproduced_sha256})")
        for note in result.notes:
            print_data(f"  note: {note}")
    raise typer.Exit(0 if result.identical or (result.pixels_identical and signed) else 1)


@audit_app.command("verify")
def audit_verify(objects: Annotated[bool, typer.Option("--objects", help="Also check every stored "
                                                        "object still has its recorded sha256")] = False,
                 config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Check the audit log's hash chain: any edited, deleted or reordered record is reported."""
    with Invocation(config, as_json) as inv:
        log = inv.audit_log(with_store=objects)
        report = log.verify()
        if objects:
            from ldm_batch.reconcile import verify_objects
            from ldm_batch.storage import ObjectStore

            problems = verify_objects(log, ObjectStore(inv.store()))
            report = report.model_copy(update={"ok": report.ok and not problems,
                                               "problems": report.problems + problems})
    if as_json:
        emit_json(report.model_dump_json())
    else:
        state = "[green]ok[/green]" if report.ok else "[red]BROKEN[/red]"
        out.print(f"audit log {state}: {report.records} records")
        for problem in report.problems:
            print_data(f"  {problem}")
    raise typer.Exit(0 if report.ok else 1)


# -- review ------------------------------------------------------------------------------
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (required; goes into the audit log)")]
ReviewerOption = Annotated[str | None, typer.Option(help="Your name (default: $LDM_BATCH_REVIEWER or the login)")]


@review_app.command("list")
def review_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Quarantined images waiting for a decision."""
    with Invocation(config, as_json) as inv:
        queue = inv.audit_log().review_queue()
    if as_json:
        for record in queue:
            emit_json({"image_key": record.image_key, "asset_id": record.asset_id, "campaign": record.campaign,
                       "prompt": record.prompt, "reasons": record.reasons, "s3_key": record.s3_key})
        return
    table = Table("image key", "campaign", "prompt", "why quarantined", title=f"{len(queue)} image(s) to review")
    for record in queue:
        table.add_row(*_cells(record.image_key, record.campaign, record.prompt, "; ".join(record.reasons)))
    out.print(table)


@review_app.command("show")
def review_show(image: ImageArgument,
                save: Annotated[Path | None, typer.Option("--out", help="Save the image to this file")] = None,
                config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """An image's lineage, and optionally the image itself, for a reviewer."""
    from ldm_batch.storage import ObjectStore

    with Invocation(config, as_json) as inv:
        _explain(inv, image)
        if save is not None:
            record = inv.image_records(image)[0]
            save.write_bytes(ObjectStore(inv.store()).get(record["s3_key"]))
            err.print(f"saved {escape(str(save))}")


def _decide(image: str, approve: bool, reason: str, reviewer: str | None, config: Path | None, as_json: bool):
    from ldm_batch.review import ReviewError, decide, reviewer_name
    from ldm_batch.storage import ObjectStore

    with Invocation(config, as_json) as inv:
        key = inv.image_records(image)[0]["image_key"]
        try:
            record = decide(inv.audit_log(with_store=True), ObjectStore(inv.store()), key, approve, reason,
                            reviewer_name(reviewer))
        except ReviewError as exc:
            fail(str(exc), 2, as_json)
        except Exception as exc:
            abort(exc, as_json)
    if as_json:
        emit_json({"image_key": key, "decision": record.decision, "reviewer": record.reviewer,
                   "s3_key": record.s3_key})
    else:
        print_data(f"{key}: {record.decision} by {record.reviewer}"
                   + (f", delivered to {record.s3_key}" if approve else ""))


@review_app.command("approve")
def review_approve(image: ImageArgument, reason: ReasonOption, reviewer: ReviewerOption = None,
                   config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Approve a quarantined image: recorded, then copied to the delivery prefix."""
    _decide(image, True, reason, reviewer, config, as_json)


@review_app.command("reject")
def review_reject(image: ImageArgument, reason: ReasonOption, reviewer: ReviewerOption = None,
                  config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Reject a quarantined image: recorded; it stays in quarantine."""
    _decide(image, False, reason, reviewer, config, as_json)
