"""One image's lineage from the audit log: what `audit explain` prints and the console shows."""

from __future__ import annotations

from ldm_batch.audit.log import AuditLog


def lineage(log: AuditLog, records: list[dict]) -> dict:
    """The image's first record, its run, and every later record (reviews)."""
    first = records[0]
    run = next((r for r in log.runs() if r["run_id"] == first["run_id"]), None)
    return {"image": first, "run": run, "later_records": records[1:]}


def lineage_rows(found: dict) -> list[tuple[str, str]]:
    """The lineage as (name, value) rows a person reads."""
    first, run = found["image"], found["run"]
    licence = first["model_license"] or {}
    rows = [
        ("run", f"{first['run_id']} ({run['status'] if run else '?'}), campaign {first['campaign']}, use {first['use']}"),
        ("sheet", f"{first['sheet']} row {first['sheet_row']}, asset {first['asset_id']} v{first['variant']}"),
        ("prompt", first["prompt"]), ("negative prompt", first["negative_prompt"] or "-"),
        ("text screen", f"{first['text_verdict']['decision']} by {first['text_verdict']['screen']}"),
        ("model", f"{first['model_id']} rev {first['model_revision']} sha256 {first['model_sha256']}"),
        ("model license", f"{licence.get('id')} (commercial use: {licence.get('commercial_use')})"),
        ("LoRAs", ", ".join(f"{l['id']} x{l['scale']} ({l['license']['id']})" for l in first["loras"]) or "-"),
        *[(f"LoRA {l['id']} training", f"manifest {l['manifest']} sha256 {l.get('manifest_sha256')}")
          for l in first["loras"] if l.get("manifest")],
        ("settings", f"{first['width']}x{first['height']}, {first['steps']} steps, guidance {first['guidance']}, "
                     f"{first['scheduler']}, seed {first['seed']}, batch {first['batch_index'] + 1}/{first['batch_size']}"),
        ("device, cost", f"{first['device']}, {first['generation_seconds']} s, {first['cost']} {first['currency']}"),
        ("image screen", f"{first['image_verdict']['decision']} by {first['image_verdict']['screen']}: "
                         + ("; ".join(first["reasons"]) or "nothing fired")),
        ("provenance", _provenance(first.get("provenance"))),
        ("stored", f"s3://{first['s3_bucket']}/{first['s3_key']} sha256 {first['image_sha256']}"
                   if first["s3_key"] else f"not stored (policy); sha256 {first['image_sha256']}"),
        ("decision", first["decision"]), ("audit record", f"#{first['seq']} hash {first['record_hash']}"),
    ]
    rows += [(f"record #{later['seq']}", f"{later['decision']}: {'; '.join(later['reasons'])}")
             for later in found["later_records"]]
    return rows


def _provenance(marks: dict | None) -> str:
    """The marks an image carries, as a reviewer reads them (records of every version)."""
    if not marks:
        return "parameters chunk, XMP"
    parts = ["parameters chunk", "XMP trainedAlgorithmicMedia"]
    watermark = marks.get("watermark") or {}
    if watermark.get("id"):
        parts.append(f"invisible watermark id {watermark['id']}")
    elif watermark.get("payload"):  # records made before watermark ids
        parts.append(f"invisible watermark {watermark['payload']!r}")
    elif watermark.get("reason"):
        parts.append(f"no watermark: {watermark['reason']}")
    parts.append(f"C2PA signed ({marks['c2pa']['certificate']})" if marks.get("c2pa") else "not C2PA-signed")
    return ", ".join(parts)
