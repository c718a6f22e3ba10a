"""The bad-input corpus (tests/data/bad_inputs): malformed sheets, policies, catalog entries,
weights and command lines. Each is refused with exit 2 and a message naming the place and
what would be accepted; nothing is generated; no traceback."""

from __future__ import annotations

import json
import shutil
import tracemalloc

import pytest
from typer.testing import CliRunner

from conftest import DATA, REPO
from ldm_batch.audit import AuditLog
from ldm_batch.cli import app
from ldm_batch.storage import ObjectStore

CORPUS = DATA / "bad_inputs"
SMALL = str(REPO / "examples" / "campaign_small.csv")

# sheet -> the (row, column) places its errors name, and a phrase of the message
SHEETS = {
    "latin1.csv": ([(None, None)], "not UTF-8: byte 0xe9 in row 2"),
    "windows1252_quotes.csv": ([(None, None)], "Windows-1252"),
    "utf16_bom.csv": ([(None, None)], "UTF-16"),
    "utf16le_no_bom.csv": ([(None, None)], "UTF-16"),
    "pipe_delimited.csv": ([("header", "prompt")], "separated by commas, semicolons or tabs"),
    "unterminated_quote.csv": ([(None, None)], "need double quotes"),
    "ragged_long_row.csv": ([(2, None)], "4 cells but the header has 2 columns"),
    "formula_prompt.csv": ([(1, "prompt")], "spreadsheet formula"),
    "formula_at.csv": ([(1, "negative_prompt")], "spreadsheet formula"),
    "formula_dde.csv": ([(1, "notes")], "spreadsheet formula"),
    "control_character.csv": ([(2, "prompt")], "control character U+0007"),
    "escape_sequence.csv": ([(1, "prompt")], "control character U+001B"),
    "enormous_notes_cell.csv": ([(1, "notes")], "maximum is 2000"),
    "enormous_prompt.csv": ([(1, "prompt")], "maximum is 1000"),
    "traversal_asset_ids.csv": ([(row, "asset_id") for row in range(1, 7)], "letters, digits"),
    "quoted_newline_asset_id.csv": ([(1, "asset_id")], "letters, digits"),
    "unicode_asset_id.csv": ([(1, "asset_id")], "letters, digits"),
    "long_asset_id.csv": ([(1, "asset_id")], "1-128"),
    "traversal_brand.csv": ([(1, "brand")], "not defined in policies; known: acme, globex"),
    "traversal_campaign.csv": ([(1, "campaign")], "letters, digits"),
    "unknown_model.csv": ([(1, "model"), (2, "model")], "not defined in policies"),
    "too_small_size.csv": ([(1, "width"), (1, "height")], "from 32 to 2048"),
    "negative_size.csv": ([(1, "width")], "below the minimum 32"),
    "bad_steps.csv": ([(1, "steps"), (2, "steps")], "from 1 to 150"),
    "bad_guidance.csv": ([(1, "guidance"), (2, "guidance")], "0.0 to 30.0"),
    "fractional_variants.csv": ([(1, "variants")], "not a whole number"),
    "header_only.csv": ([(None, None)], "header but no rows"),
    "blank_lines_only.csv": ([(None, None)], "empty"),
    "duplicate_header_case.csv": ([("header", "prompt")], "more than once"),
    "json_document.csv": ([("header", "prompt")], "missing"),
    "html_page.csv": ([("header", "prompt")], "missing"),
    "gzip_compressed.csv": ([(None, None)], "binary content"),
    "png_image.csv": ([(None, None)], "binary content"),
    "corrupt.xlsx": ([(None, None)], "cannot be read"),
    "xlsx_two_sheets.xlsx": ([(None, None)], "2 sheets (prompts, notes)"),
    "xlsx_merged_cells.xlsx": ([(None, None)], "merged cells (C2:C3)"),
    "xlsx_formula.xlsx": ([(1, "prompt")], "spreadsheet formula"),
    "xlsx_empty.xlsx": ([(None, None)], "empty"),
}

# policies overlay -> the file its error names and a phrase of the message
POLICIES = {
    "image_safety_bad_yaml": ("image_safety.yaml", "not valid YAML"),
    "image_safety_threshold_above_1": ("image_safety.yaml", "concepts.0.threshold"),
    "image_safety_unknown_field": ("image_safety.yaml", "colour: Extra inputs are not permitted"),
    "image_safety_no_neutrals": ("image_safety.yaml", "neutral_concepts"),
    "image_safety_unknown_model": ("policies", "'clip-xxl' is named by policy but not in models.yaml"),
    "text_safety_bad_action": ("text_safety.yaml", "action"),
    "models_missing_license": ("models.yaml", "models.0.license: Field required"),
    "models_unknown_default": ("policies", "'nope' is named by policy but not in models.yaml"),
    "models_not_a_mapping": ("models.yaml", "valid dictionary"),
    "models_empty": ("models.yaml", "valid dictionary"),
    "brand_id_mismatch": ("acme.yaml", "must match the file name"),
    "brand_unknown_base_model": ("acme.yaml", "base_model 'sd-9'"),
    "brand_lora_absolute_path": ("acme.yaml", "outside the allowed weights folders"),
    "brand_lora_traversal": ("acme.yaml", "outside the allowed weights folders"),
    "costs_a_list": ("costs.yaml", "valid dictionary"),
    "sheet_limits_wrong_type": ("sheet_limits.yaml", "max_rows"),
    "provenance_bad_bits": ("provenance.yaml", "watermark.bits"),
}

# weights overlay (brands/acme.yaml and its LoRA file) -> a phrase of the refusal
WEIGHTS = {
    "lora_pickle": "pickle weights (.bin) are not loaded",
    "lora_sha_mismatch": "does not match the catalog's",
    "lora_not_safetensors": "not a valid safetensors file",
    "lora_missing_file": "no such file",
}


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no crash
    return result


def report_of(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_corpus_has_at_least_40_inputs():
    files = [p for p in (CORPUS / "sheets").iterdir()]
    assert len(files) == len(SHEETS)
    assert len(SHEETS) + len(POLICIES) + len(WEIGHTS) + len(COMMAND_LINES) + 2 >= 40


@pytest.mark.parametrize("name", sorted(SHEETS))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_sheet_names_the_place(name, command, settings):
    places, phrase = SHEETS[name]
    result = cli(command, CORPUS / "sheets" / name, "--json")
    assert result.exit_code == 2, result.output
    errors = report_of(result)["errors"]
    assert [(e["row"], e["column"]) for e in errors] == places
    assert any(phrase in e["message"] for e in errors), errors


def test_enormous_sheet_is_refused_before_it_is_read(settings, tmp_path):
    sheet = tmp_path / "millions.csv"
    with sheet.open("w") as f:
        f.write("asset_id,prompt\n")
        f.writelines(f"a-{i},a red circle on a white background\n" for i in range(2_000_000))
    tracemalloc.start()
    result = cli("validate", sheet, "--json")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.exit_code == 2
    assert "the policy maximum is 20000000" in report_of(result)["errors"][0]["message"]
    assert peak < sheet.stat().st_size / 4  # never read whole


def test_too_many_rows_are_refused(settings, tmp_path):
    sheet = tmp_path / "rows.csv"
    sheet.write_text("asset_id,prompt\n" + "".join(f"a-{i},a red circle\n" for i in range(10_001)))
    result = cli("validate", sheet, "--json")
    assert result.exit_code == 2
    assert "more than 10000 rows" in report_of(result)["errors"][0]["message"]


def overlay(tmp_path, *sources):
    """A copy of the repository's policies with the corpus files of `sources` laid over it."""
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    for source in sources:
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target


@pytest.mark.parametrize("case", sorted(POLICIES))
def test_bad_policy_names_the_file_and_field(case, settings, tmp_path, monkeypatch):
    file, phrase = POLICIES[case]
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(overlay(tmp_path, CORPUS / "policies" / case)))
    result = cli("validate", SMALL, "--json")
    assert result.exit_code == 2, result.output
    message = report_of(result)["errors"][0]["message"]
    assert file in message and phrase in message, message


@pytest.mark.parametrize("case", sorted(WEIGHTS))
def test_bad_lora_weights_refuse_the_run_before_generation(case, prefect_harness, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(overlay(tmp_path, CORPUS / "weights" / case)))
    sheet = tmp_path / "acme.csv"
    sheet.write_text("asset_id,prompt,brand\nw-1,a red circle on a white background,acme\n")
    result = cli("run", sheet, "--campaign", "weights", "--json")
    assert result.exit_code == 2, result.output
    assert WEIGHTS[case] in report_of(result)["error"]
    assert ObjectStore(settings).image_keys() == []
    assert AuditLog(settings.audit_url).query(kind="image") == []


COMMAND_LINES = {
    "missing file": (["validate", "no/such/sheet.csv"], "cannot read the file"),
    "a directory": (["validate", "tests"], "cannot read the file"),
    "campaign name with a path": (["run", SMALL, "--campaign", "../x"], "--campaign"),
    "unknown use": (["run", SMALL, "--use", "personal"], "personal"),
}


@pytest.mark.parametrize("case", sorted(COMMAND_LINES))
def test_bad_command_line_exits_2_and_says_why(case, settings):
    args, phrase = COMMAND_LINES[case]
    result = cli(*args)
    assert result.exit_code == 2
    assert phrase in result.output


def test_broken_config_file_exits_2(settings, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("s3_bucket: [not, a, name\n")
    result = cli("validate", SMALL, "--config", config)
    assert result.exit_code == 2 and "settings" in result.output


def test_skip_invalid_rows_runs_the_valid_ones_and_audits_the_rest(prefect_harness, settings, tmp_path):
    sheet = tmp_path / "mixed.csv"
    sheet.write_text("asset_id,prompt,seed\n"
                     "ok-1,a red circle on a white background,1\n"
                     "../bad,a blue square,2\n"
                     "ok-2,a green star on a black background,3\n"
                     "bad-2,=HYPERLINK(\"x\"),4\n")
    strict = cli("run", sheet, "--campaign", "mixed", "--json")
    assert strict.exit_code == 2 and [e["row"] for e in report_of(strict)["errors"]] == [2, 4]

    result = cli("run", sheet, "--campaign", "mixed", "--skip-invalid-rows", "--json")
    assert result.exit_code == 0, result.output
    summary = report_of(result)
    assert [(s["row"], s["column"]) for s in summary["skipped"]] == [(2, "asset_id"), (4, "prompt")]
    assert summary["rows"] == 2 and summary["images_delivered"] == 2
    assert len(ObjectStore(settings).image_keys()) == 2
    records = AuditLog(settings.audit_url).query(campaign="mixed")
    assert sorted((r["sheet_row"], r["decision"]) for r in records) == [
        (1, "delivered"), (2, "skipped"), (3, "delivered"), (4, "skipped")]
    skipped = next(r for r in records if r["sheet_row"] == 4)
    assert "spreadsheet formula" in skipped["reasons"][0] and skipped["s3_key"] is None


def forged_xlsx(path, rows: int, dimension: str | None) -> None:
    """An XLSX whose declared dimension lies (or is missing), as an attacker would write it."""
    import re
    import zipfile

    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("prompts")
    sheet.append(["asset_id", "prompt"])
    for i in range(rows):
        sheet.append([f"a-{i}", "a red circle"])
    plain = path.with_suffix(".plain.xlsx")
    workbook.save(plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.startswith("xl/worksheets/"):
                data = re.sub(rb"<dimension [^>]*/>", b"" if dimension is None else
                              f'<dimension ref="{dimension}"/>'.encode(), data)
            target.writestr(item, data)


@pytest.mark.parametrize("dimension", [None, "A1:B2"])
def test_an_xlsx_that_lies_about_its_size_is_counted_while_read(settings, tmp_path, dimension):
    sheet = tmp_path / "rows.xlsx"
    forged_xlsx(sheet, 12_000, dimension)
    result = cli("validate", sheet, "--json")
    assert result.exit_code == 2, result.output
    assert "more than 10000 rows" in report_of(result)["errors"][0]["message"]


def test_a_huge_xlsx_stops_at_the_row_limit_in_bounded_memory(settings, tmp_path):
    sheet = tmp_path / "huge.xlsx"
    forged_xlsx(sheet, 50_000, "A1:B2")  # loaded whole, this took about 145 MB (200,000 rows: 578 MB)
    tracemalloc.start()
    result = cli("validate", sheet, "--json")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.exit_code == 2 and "more than 10000 rows" in report_of(result)["errors"][0]["message"]
    assert peak < 64 * 2**20


def test_the_flow_refuses_parameters_a_deployment_caller_could_abuse(prefect_harness, settings, tmp_path):
    from flows.campaign_batch import campaign_batch
    from ldm_batch.problems import ParameterInvalid

    sheet = tmp_path / "ok.csv"
    sheet.write_text("asset_id,prompt\na-1,a red circle\n")
    with pytest.raises(ParameterInvalid, match="campaign"):
        campaign_batch(sheet=str(sheet), campaign="../../delivery/x")
    with pytest.raises(ParameterInvalid, match="LDM_BATCH_SHEET_ROOTS"):
        campaign_batch(sheet=str(REPO / "policies" / "models.yaml"))
    with pytest.raises(ParameterInvalid, match="sheets are read from"):
        campaign_batch(sheet="s3://another-bucket/sheets/x.csv")
    with pytest.raises(ParameterInvalid, match="sheets are read from"):
        campaign_batch(sheet=f"s3://{settings.s3_bucket}/delivery/x.csv")
    assert AuditLog(settings.audit_url).runs() == []  # nothing started
