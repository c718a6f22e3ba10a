"""The safety screens on their own (`screen text|image`) and measured (`eval text-safety|image-safety`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ldm_batch.cli.context import ConfigOption, Invocation, JsonOption, abort, emit_json, err, fail, out, print_data
from ldm_batch.problems import Refused

screen_app = typer.Typer(help="Run the safety screens on their own.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure the safety screens on labelled data.", no_args_is_help=True)


def text_screen(inv: Invocation):
    from ldm_batch.policies import load_policies
    from ldm_batch.safety.text import TextScreen

    try:
        screen = TextScreen(load_policies(inv.settings.policies_dir), inv.settings.policies_dir)
    except Refused as exc:
        abort(exc, inv.as_json)
    if screen.unavailable:
        err.print("[red]warning:[/red] ", end="")
        print_data(f"{screen.unavailable}; every prompt is blocked", err)
    return screen


def image_screen(inv: Invocation):
    from ldm_batch.policies import load_policies
    from ldm_batch.safety.image import ImageScreen

    try:
        return ImageScreen(load_policies(inv.settings.policies_dir))
    except Refused as exc:
        abort(exc, inv.as_json)


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
            fail(f"{file}: cannot read prompts ({type(exc).__name__})", 2)
    if not texts:
        fail("give prompts as arguments or --file FILE", 2)
    with Invocation(config, as_json) as inv:
        verdicts = text_screen(inv).screen(texts)
    for verdict in verdicts:
        if as_json:
            emit_json(verdict.model_dump_json(include={"prompt", "decision", "categories", "reasons", "scores",
                                                       "language", "normalised", "gloss", "screen"}))
        else:
            colour = {"allow": "green", "review": "yellow", "block": "red"}[verdict.decision]
            reasons = f"  ({'; '.join(verdict.reasons)})" if verdict.reasons else ""
            out.print(f"[{colour}]{verdict.decision:6}[/{colour}] {escape(verdict.prompt + reasons)}",
                      highlight=False, soft_wrap=True)


@screen_app.command("image")
def screen_image(paths: Annotated[list[Path], typer.Argument(help="Image files")],
                 config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Screen image files with the image safety policy."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            fail(f"{path}: not a readable image ({type(exc).__name__})", 2)
    with Invocation(config, as_json) as inv:
        verdicts = image_screen(inv).screen_images(images)
    for path, verdict in zip(paths, verdicts):
        if as_json:
            emit_json({"path": str(path), "decision": verdict.decision, "scores": verdict.scores,
                       "fired": verdict.fired})
        else:
            print_data(f"{verdict.decision:6} {path}  {verdict.scores}")


@eval_app.command("text-safety")
def eval_text_safety(
    labelled: Annotated[Path, typer.Argument(help="CSV with columns prompt,label (label: safe or a category)")],
    split: Annotated[str, typer.Option(help="heldout, train or all")] = "heldout",
    obfuscated: Annotated[bool, typer.Option(
        "--obfuscated", help="Also screen every unsafe prompt obfuscated (look-alike letters, leetspeak, masked, "
                             "stretched and spaced-out letters, ...) and report how often each way is caught")] = False,
    config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """Precision, recall and false-positive rate of the text screen, per category and overall."""
    from ldm_batch.safety.text_eval import evaluate, evaluate_obfuscated, load_labelled

    if split not in ("heldout", "train", "all"):
        fail(f"--split {split!r}: expected heldout, train or all", 2)
    with Invocation(config, as_json) as inv:
        screen = text_screen(inv)
    try:
        frame = load_labelled(labelled, list(screen.policy.categories))
    except (OSError, ValueError) as exc:
        fail(str(exc), 2)
    if split != "all":
        frame = frame[frame["split"] == split]
    report = {"split": split, **evaluate(screen, frame)}
    if obfuscated:
        report["obfuscated"] = evaluate_obfuscated(screen, frame)
    if as_json:
        emit_json(report)
        return
    table = Table("category", "precision", "recall", "false positive rate", "support",
                  title=f"{report['screen']} on {len(frame)} {split} prompts")
    for name, m in report["categories"].items():
        table.add_row(name, *(str(m[k]) for k in ("precision", "recall", "false_positive_rate", "support")))
    out.print(table)
    languages = Table("language", "unsafe not allowed", "safe not allowed", "held as unsupported", "unsafe", "safe",
                      title="per language")
    for name, m in report["languages"].items():
        languages.add_row(name, *(str(m[k]) for k in ("unsafe_not_allowed", "safe_not_allowed",
                                                       "held_as_unsupported", "unsafe", "safe")))
    out.print(languages)
    overall = report["overall"]
    out.print(f"unsafe recall {overall['unsafe_recall']} ({overall['unsafe']} unsafe; 95% over concepts "
              f"{overall['unsafe_recall_95']}), safe false-positive rate {overall['safe_false_positive_rate']} "
              f"({overall['safe']} safe; 95% over concepts {overall['safe_false_positive_rate_95']}; "
              f"blocked {overall['safe_blocked_rate']}, the rest held for review)")
    for miss in report["errors"]:
        print_data(f"  miss: ({miss['label']}) {miss['prompt']} -> {miss['decision']} {miss['categories']}")
    if obfuscated:
        ways = Table("obfuscation", "unsafe prompts", "caught plain", "caught obfuscated", title="obfuscated")
        for way, m in report["obfuscated"].items():
            ways.add_row(way, str(m["prompts"]), str(m["caught_plain"]), str(m["caught_obfuscated"]))
        out.print(ways)
        for way, m in report["obfuscated"].items():
            for prompt in m["let_through"]:
                print_data(f"  let through ({way}): {prompt}")


@eval_app.command("image-safety")
def eval_image_safety(
    directory: Annotated[Path, typer.Argument(help="Folder with one sub-folder of images per label "
                                                   "(a concept category, or safe)")],
    target_fpr: Annotated[float, typer.Option(help="False-positive rate the suggested threshold keeps")] = 0.05,
    config: ConfigOption = None, as_json: JsonOption = False,
) -> None:
    """Recall, false-positive rate and a suggested threshold per image-safety concept."""
    from ldm_batch.safety.image_eval import evaluate, load_labelled_images

    try:
        items = load_labelled_images(directory)
    except (OSError, ValueError) as exc:
        fail(str(exc), 2)
    with Invocation(config, as_json) as inv:
        report = evaluate(image_screen(inv), items, target_fpr)
    if as_json:
        print(json.dumps(report))
        return
    table = Table("concept", "threshold", "recall", "FPR", "suggested", "recall at suggested",
                  title=f"{report['screen']} on {report['images']} images")
    for text, m in report["concepts"].items():
        table.add_row(escape(text), str(m["threshold"]), str(m["recall"]), str(m["false_positive_rate"]),
                      str(m["suggested_threshold"]), str(m["recall_at_suggested"]))
    out.print(table)
    for text, m in report["concepts"].items():
        if len(m["groups"]) > 1:
            groups = Table("variation-size", "recall", "FPR", "positives", "negatives", title=f"{escape(text)}: per group")
            for group, g in m["groups"].items():
                groups.add_row(group, *(str(g[k]) for k in ("recall", "false_positive_rate", "positives", "negatives")))
            out.print(groups)
