"""Running the product: the local Prefect stack, the console and its accounts, the object
store, brand LoRA training."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ldm_batch.cli.context import ConfigOption, Invocation, JsonOption, abort, emit_json, err, fail, out, print_data
from ldm_batch.problems import Refused
from ldm_batch.sheets import SAFE_NAME

app = typer.Typer()
store_app = typer.Typer(help="Look at the object store.", no_args_is_help=True)
reviewer_app = typer.Typer(help="Reviewer accounts of the console.", no_args_is_help=True)
brand_app = typer.Typer(help="Brand LoRAs: train and register.", no_args_is_help=True)


@app.command()
def serve(port: Annotated[int, typer.Option(help="Port of the Prefect server's API")] = 4200,
          workers: Annotated[int | None, typer.Option(help="Workers, one per GPU (default: the GPUs here, at least 1)")] = None,
          config: ConfigOption = None) -> None:
    """Run a local Prefect server, SeaweedFS, a long-lived Dask worker per GPU (models stay
    loaded across sheets), the work pool, one worker per GPU and the deployments, all on
    127.0.0.1, until Ctrl-C."""
    import signal
    import threading

    from ldm_batch.serve import gpu_count, local_stack

    with Invocation(config) as inv:
        settings = inv.settings
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        count = workers or max(gpu_count(), 1)
        with local_stack(settings, port, count) as env:
            print_data(f"ready: Prefect API {env['PREFECT_API_URL']}, S3 {env['LDM_BATCH_S3_ENDPOINT_URL']}, "
                       f"{count} worker(s) in pool 'gpu', Dask GPU workers at {env['LDM_BATCH_DASK_ADDRESS']}; "
                       f"logs under {settings.home.resolve()}")
            print_data(f"submit a sheet:  PREFECT_API_URL={env['PREFECT_API_URL']} ldm-batch submit SHEET")
            try:
                stopping.wait()
            except KeyboardInterrupt:
                pass
            out.print("stopping")


@app.command()
def console(host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless behind a proxy")] = "127.0.0.1",
            port: Annotated[int, typer.Option(help="Port")] = 8765,
            secure_cookies: Annotated[bool, typer.Option("--secure-cookies", help="Mark session cookies Secure "
                                                         "(on when served over HTTPS)")] = False,
            config: ConfigOption = None) -> None:
    """Serve the console: authors' campaigns (upload, check, start, watch, download, schedules) and
    reviewers' runs, images, lineage, review queue and export."""
    import uvicorn

    from ldm_batch.console.app import create_app
    from ldm_batch.console.reviewers import Reviewers

    with Invocation(config) as inv:
        if not Reviewers(inv.settings.home / "reviewers.json").names():
            fail("no accounts yet; add one with `ldm-batch reviewer add NAME [--role author|reviewer|admin]`", 2)
        from ldm_batch.orchestration import configure_prefect

        configure_prefect(inv.settings.home)  # runs started from the console are Prefect flow runs
        settings = inv.store()
        out.print(f"console on http://{host}:{port}/ (Ctrl-C stops it)")
        uvicorn.run(create_app(settings, secure_cookies), host=host, port=port, log_level="warning")


@reviewer_app.command("add")
def reviewer_add(name: Annotated[str, typer.Argument(help="The account's name, as audit records will show it")],
                 password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
                 role: Annotated[list[str] | None, typer.Option(
                     "--role", help="author (uploads and runs sheets), reviewer (reviews), admin (manages accounts); "
                                    "repeat for several; default: reviewer, or the account's roles")] = None,
                 config: ConfigOption = None) -> None:
    """Add a console account (or set a new password); only a hash of the password is stored."""
    from ldm_batch.console.reviewers import Reviewers

    with Invocation(config) as inv:
        password = sys.stdin.readline().rstrip("\n") if password_stdin else typer.prompt(
            "Password", hide_input=True, confirmation_prompt=True)
        try:
            accounts = Reviewers(inv.settings.home / "reviewers.json")
            accounts.add(name, password, role or None)
        except ValueError as exc:
            fail(str(exc), 2)
    print_data(f"{name} ({', '.join(accounts.roles(name))}) can sign in to the console")


@reviewer_app.command("remove")
def reviewer_remove(name: Annotated[str, typer.Argument(help="The reviewer to remove")],
                    config: ConfigOption = None) -> None:
    """Remove a reviewer; their open console sessions end at once."""
    from ldm_batch.console.reviewers import Reviewers

    with Invocation(config) as inv:
        try:
            Reviewers(inv.settings.home / "reviewers.json").remove(name)
        except ValueError as exc:
            fail(str(exc), 2)
    print_data(f"reviewer {name} removed; their sessions have ended")


@store_app.command("export")
def store_export(destination: Annotated[Path, typer.Argument(help="Folder to copy images into")],
                 prefix: Annotated[str, typer.Option(help="Only keys under this prefix")] = "",
                 config: ConfigOption = None) -> None:
    """Copy objects from the bucket into a local folder (keys become paths inside it)."""
    from ldm_batch.storage import ObjectStore, export_path

    with Invocation(config) as inv:
        store = ObjectStore(inv.store())
        keys = store.keys(prefix)
        for key in keys:
            try:
                target = export_path(destination, key)
            except ValueError as exc:
                fail(f"{exc}; nothing more copied", 1)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.get(key))
    print_data(f"copied {len(keys)} objects from s3://{store.bucket}/{prefix} to {destination}")


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
    from ldm_batch.brand_training import train_brand
    from ldm_batch.generate import resolve_device
    from ldm_batch.policies import License, load_policies
    from ldm_batch.safety.text import TextScreen

    if not SAFE_NAME.match(brand):
        fail(f"brand {brand!r}: use 1-128 letters, digits, '.', '_' or '-'", 2, as_json)
    if not images.is_dir():
        fail(f"--images {images}: not a folder", 2, as_json)
    with Invocation(config, as_json) as inv:
        settings = inv.settings
        try:
            policies = load_policies(settings.policies_dir)
        except Refused as exc:
            abort(exc, as_json)
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
            except Refused as exc:
                abort(exc, as_json, "cannot train: ")
    if as_json:
        emit_json({k: v for k, v in manifest.items() if k != "training_images"}
                  | {"training_images": len(manifest["training_images"])})
    else:
        out.print("[green]trained[/green] ", end="")
        print_data(f"{manifest['lora_id']} on {len(manifest['training_images'])} images, loss "
                   f"{manifest['final_loss']}; registered in {settings.policies_dir / 'brands' / (brand + '.yaml')}")
