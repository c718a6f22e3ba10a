"""Campaign sheets: good sheets become rows; every bad sheet names row, column and fix."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import DATA, REPO
from ldm_batch.cli import app
from ldm_batch.sheets import SheetInvalid, read_sheet

BAD = DATA / "bad_sheets"
SMALL = REPO / "examples" / "campaign_small.csv"

# sheet -> the (row, column) pairs its errors must name, and a phrase of the message
EXPECTED = {
    "missing_prompt_column.csv": ([("header", "prompt")], "missing"),
    "empty_prompts.csv": ([(2, "prompt"), (3, "prompt")], "empty"),
    "bad_variants.csv": ([(1, "variants"), (2, "variants"), (3, "variants")], "whole number from 1 to 16"),
    "bad_sizes.csv": ([(1, "width"), (2, "width")], "multiple of 8"),
    "duplicate_asset_ids.csv": ([(2, "asset_id")], "unique"),
    "unknown_brand.csv": ([(1, "brand")], "not defined in policies"),
    "bad_seeds.csv": ([(1, "seed"), (2, "seed"), (3, "seed")], "0 to 4294967295"),
    "empty_file.csv": ([(None, None)], "empty"),
    "not_a_sheet.csv": ([(None, None)], "not a CSV/XLSX sheet"),
}


def test_campaign_small_gives_five_rows_with_their_values(policies):
    sheet = read_sheet(SMALL.name, SMALL.read_bytes(), policies)
    assert [r.asset_id for r in sheet.rows] == [f"spring-0{i}" for i in range(1, 6)]
    first, second = sheet.rows[0], sheet.rows[1]
    assert (first.brand, first.variants, first.seed, first.width) == ("acme", 2, None, None)
    assert (second.seed, second.width, second.steps, second.negative_prompt) == (42, 64, 10, "blurry")
    assert sheet.rows[4].brand is None


def test_headers_are_case_insensitive_and_unknown_columns_kept_as_metadata(policies):
    data = b" Prompt ,ASSET_ID,Owner\na red circle,a-1,marketing\n"
    row = read_sheet("s.csv", data, policies).rows[0]
    assert (row.prompt, row.asset_id, row.metadata) == ("a red circle", "a-1", {"owner": "marketing"})


def test_xlsx_sheet_reads_like_the_csv(policies, tmp_path):
    frame = pd.read_csv(SMALL, dtype=str, keep_default_na=False)
    buffer = io.BytesIO()
    frame.to_excel(buffer, index=False)
    from_xlsx = read_sheet("campaign.xlsx", buffer.getvalue(), policies).rows
    from_csv = read_sheet(SMALL.name, SMALL.read_bytes(), policies).rows
    assert from_xlsx == from_csv


def test_asset_ids_that_look_like_paths_are_refused(policies):
    with pytest.raises(SheetInvalid) as raised:
        read_sheet("s.csv", b"asset_id,prompt\n../etc,a red circle\n", policies)
    assert (raised.value.problems[0].row, raised.value.problems[0].column) == (1, "asset_id")


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_sheet_exits_2_naming_row_and_column(name, command, settings):
    places, phrase = EXPECTED[name]
    result = CliRunner().invoke(app, [command, str(BAD / name), "--json"])
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    named = [(e["row"], e["column"]) for e in report["errors"]]
    assert named == places
    assert any(phrase in e["message"] for e in report["errors"]), report["errors"]


def test_bad_sheet_run_from_the_shell_has_no_traceback_and_generates_nothing(settings):
    result = subprocess.run([sys.executable, "-m", "ldm_batch", "run", str(BAD / "bad_seeds.csv")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "row 1, column 'seed'" in result.stderr
    assert not Path(settings.audit_url.removeprefix("sqlite:///")).exists()  # nothing was run
