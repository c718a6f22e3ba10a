"""The `ldm-batch` command line: command groups over one per-invocation context.

Every command prints a readable table for people and, with --json, one JSON object per
line for machines. Exit codes: 0 done, 2 bad input (nothing was generated), 1 failure.
Commands import what they need when they run, so `validate`, `screen text`, `audit` and
`review` start without loading diffusion models.

    runs.py     validate, run, submit, resume
    screens.py  screen text|image, eval text-safety|image-safety
    audit.py    audit query|explain|reproduce|verify, review list|show|approve|reject
    operate.py  serve, console, reviewer add, store export, brand train
    provenance.py  provenance check FILE...: is a copy ours, and which record is it
    models.py   models list|add|verify|pull: the catalog and its lock file
    context.py  settings once per command, the embedded store started once, errors and exit codes
"""

from __future__ import annotations

import typer

from ldm_batch.cli import audit, models, operate, provenance, runs, screens

app = typer.Typer(help="Batch image generation with safety screens, S3 storage and an audit log.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
for group in (runs.app, operate.app):
    app.registered_commands += group.registered_commands
app.add_typer(screens.screen_app, name="screen")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(operate.store_app, name="store")
app.add_typer(screens.eval_app, name="eval")
app.add_typer(audit.review_app, name="review")
app.add_typer(operate.reviewer_app, name="reviewer")
app.add_typer(operate.brand_app, name="brand")
app.add_typer(provenance.provenance_app, name="provenance")
app.add_typer(models.models_app, name="models")

__all__ = ["app"]
