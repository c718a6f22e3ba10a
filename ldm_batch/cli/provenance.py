"""`ldm-batch provenance check FILE...`: for a file in hand, which marks survived and which
audit record it leads to (ldm_batch.provenance_check)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ldm_batch.cli.context import ConfigOption, Invocation, JsonOption, abort, emit_json, out

provenance_app = typer.Typer(help="Check image files against the audit log.", no_args_is_help=True)


@provenance_app.command("check")
def provenance_check(
    files: Annotated[list[Path], typer.Argument(help="PNG, JPEG or WebP files", exists=True, dir_okay=False)],
    config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """Is each file ours? Its C2PA manifest (signature, certificate chain, whether the content
    changed after signing), XMP source type, watermark, and the audit record it leads to: by
    sha256, by pixels, by watermark id, else by perceptual hash. Exit 0 when every file was
    read (matched or not), 2 when one is not an image."""
    from ldm_batch.policies import load_policies
    from ldm_batch.provenance_check import check_file
    from ldm_batch.problems import Refused

    with Invocation(config, as_json) as inv:
        try:
            watermark = load_policies(inv.settings.policies_dir).provenance.watermark
        except Refused as exc:
            abort(exc, as_json)
        anchors = inv.settings.c2pa_trust_anchors.read_text() if inv.settings.c2pa_trust_anchors else None
        log = inv.audit_log()
        for path in files:
            try:
                result = check_file(path.read_bytes(), str(path), log, watermark, anchors)
            except Refused as exc:
                abort(exc, as_json)
            if as_json:
                emit_json(result.model_dump_json())
                continue
            table = Table(show_header=False, title=escape(f"{path}: {result.verdict}"), title_justify="left")
            c2pa = result.c2pa
            rows = [("format", f"{result.format} {result.size[0]}x{result.size[1]}, sha256 {result.sha256}"),
                    ("C2PA", "absent" if not c2pa.present else
                     f"{c2pa.state}, signer {c2pa.signer}, content changed after signing: {c2pa.pixels_changed}"
                     + "".join(f"\n{p}" for p in c2pa.problems)),
                    ("XMP source type", result.xmp_source_type or "absent"),
                    ("watermark", f"id {result.watermark_id}" if result.watermark_id else "none that names a record"),
                    ("perceptual hash", result.perceptual_hash),
                    ("layers that survived", ", ".join(result.layers) or "none")]
            if result.match:
                m = result.match
                rows += [("audit record", f"#{m.record_seq} {m.image_key} (run {m.run_id})"),
                         ("decision", m.decision + (f" by {m.reviewer}" if m.reviewer else "")),
                         ("model", f"{m.model} ({m.model_license})"),
                         ("found by", f"{m.method}, {m.confidence} confidence: {m.detail}")]
            elif result.candidates:
                rows.append(("look-alikes", ", ".join(result.candidates)))
            for name, value in rows:
                table.add_row(escape(name), escape(str(value)))
            out.print(table)
