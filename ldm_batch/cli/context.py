"""What every command shares: one `Invocation` per command (settings loaded once, the
embedded object store started at most once), the consoles, and the one way a command ends
with an error (exit 2 for refused input, 1 for a failure: `ldm_batch.problems.exit_code`).

Data from sheets and records (prompts, asset ids, reasons) is printed with `markup=False`,
so text like "[/b]" or "[link=...]" is shown as written, never interpreted by the terminal.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn, get_args

import typer
from rich.console import Console

from ldm_batch.config import Settings, load_settings
from ldm_batch.licenses import Use
from ldm_batch.problems import Problem, Refused, exit_code

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML file of settings (keys as in LDM_BATCH_*)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines")]
SkipOption = Annotated[bool, typer.Option("--skip-invalid-rows",
                                          help="Run the valid rows; report and audit the invalid ones as skipped")]
UseChoice = Enum("UseChoice", {use: use for use in get_args(Use)}, type=str)  # the licenses' `Use`, as CLI choices
UseOption = Annotated[UseChoice, typer.Option(help="The campaign's use; licenses must allow it")]


def fail(message: str, code: int, as_json: bool = False, **fields) -> NoReturn:
    if as_json:
        print(json.dumps({"error": message, **fields}))
    err.print("[red]error:[/red] ", end="")
    err.print(message, markup=False, highlight=False)
    raise typer.Exit(code)


def abort(exc: BaseException, as_json: bool, prefix: str = "") -> NoReturn:
    """End the command for an error: every problem of a refusal (exit 2), or the failure (exit 1)."""
    if isinstance(exc, Refused):
        if as_json:
            print(json.dumps({"error": f"{prefix}{exc}", "refused": exc.kind, "errors": exc.dumps()}))
        err.print(f"[red]refused[/red] {prefix}", end="")
        err.print(exc.headline if len(exc.problems) != 1 else "", markup=False, highlight=False)
        print_problems(exc.problems)
    else:
        message = f"{prefix}{type(exc).__name__}: {exc}"
        if as_json:
            print(json.dumps({"error": message, "errors": [Problem(message=str(exc)).model_dump()]}))
        err.print("[red]error:[/red] ", end="")
        err.print(message, markup=False, highlight=False)
    raise typer.Exit(exit_code(exc))


def print_problems(problems: list[Problem], label: str = "") -> None:
    for p in problems:
        err.print(f"  {label}{p.line()}", markup=False, highlight=False)


def print_data(text: str, console: Console = out) -> None:
    """A line holding data (prompts, keys, reasons): shown as written."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def emit_json(value) -> None:
    print(value if isinstance(value, str) else json.dumps(value))


class Invocation:
    """One command's settings and servers. `with Invocation(config) as inv:` loads settings
    (a broken config is bad input: exit 2) and stops what `inv.store()` started."""

    def __init__(self, config: Path | None, as_json: bool = False):
        self.as_json = as_json
        try:
            self.settings: Settings = load_settings(config)
        except Exception as exc:  # a broken config file or variable is bad input, not a crash
            fail(f"settings: {exc}", 2, as_json)
        self._stack = ExitStack()
        self._store_started = bool(self.settings.s3_endpoint_url)
        self._logs: dict[bool, object] = {}  # the audit log, without and with the bucket's checkpoints
        # the home holds keys, the audit database and Prefect's: readable by this user only
        try:
            self.settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.settings.home, 0o700)
        except OSError as exc:
            fail(f"LDM_BATCH_HOME {self.settings.home}: {exc.strerror}; choose a folder this user owns", 2, as_json)

    def __enter__(self) -> Invocation:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def enter(self, context):
        """Enter a context manager (a server) for the rest of the command; its value."""
        return self._stack.enter_context(context)

    def store(self) -> Settings:
        """Settings with a reachable S3 endpoint: the configured one, or the embedded SeaweedFS
        under the home, started on first use and stopped when the command ends."""
        if not self._store_started:
            from ldm_batch.embedded_s3 import EmbeddedS3Error, embedded_s3

            try:
                server = self._stack.enter_context(embedded_s3(self.settings.home, self.settings.embedded_s3_port,
                                                               self.settings.delivery_prefix))
            except EmbeddedS3Error as exc:
                fail(str(exc), 1, self.as_json)
            self.settings = server.client_settings(self.settings)
            self._store_started = True
        return self.settings

    def audit_log(self, with_store: bool = False):
        """The audit log, with its checkpoints: in the home, and in the bucket when the store is
        configured or `with_store` (the embedded one is started for it)."""
        from ldm_batch.audit import AuditLog
        from ldm_batch.audit.seal import Sealer
        from ldm_batch.storage import ObjectStore

        settings = self.store() if with_store else self.settings
        reaches_store = bool(settings.s3_endpoint_url)
        if reaches_store not in self._logs:  # one engine and one migration check per command
            store = ObjectStore(settings) if reaches_store else None
            log = AuditLog(settings.audit_url, Sealer.for_settings(settings, store))
            log.migrate()
            self._logs[reaches_store] = log
        return self._logs[reaches_store]

    def image_records(self, image: str) -> list[dict]:
        """All records of one image, by its image key, S3 key or sha256; exit 2 when none."""
        records = self.audit_log().records_of_image(
            image, (self.settings.delivery_prefix, self.settings.quarantine_prefix))
        if not records:
            fail(f"no image with key, S3 key or sha256 {image!r} in the audit log", 2, self.as_json)
        return records
