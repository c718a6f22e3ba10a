"""Campaign sheets: CSV or XLSX bytes in, validated `PromptRow`s out.

Every problem names the place a spreadsheet user would look: the 1-based data row (or
"header", or the file) and the column, and says what would be accepted. All problems of a
sheet are collected before it is refused, so a user can fix them in one pass.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from pathlib import PurePath

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ldm_batch.policies import Policies

MAX_SEED = 2**32 - 1
# Asset ids and campaign names become parts of S3 keys: keep them to safe characters.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
KNOWN_COLUMNS = (
    "asset_id", "prompt", "negative_prompt", "brand", "model", "variants", "seed",
    "width", "height", "steps", "guidance", "campaign", "channel", "notes",
)
XLSX_MAGIC = b"PK\x03\x04"


class SheetProblem(BaseModel):
    row: int | str | None = Field(description="1-based data row, 'header', or None for the file")
    column: str | None
    message: str


class SheetInvalid(Exception):
    def __init__(self, sheet: str, problems: list[SheetProblem]):
        self.sheet = sheet
        self.problems = problems
        lines = [f"{sheet}: {len(problems)} problem(s)"]
        for p in problems:
            where = ", ".join(x for x in (_row_label(p.row), p.column and f"column {p.column!r}") if x)
            lines.append(f"  {where or 'file'}: {p.message}")
        super().__init__("\n".join(lines))


def _row_label(row: int | str | None) -> str | None:
    if row is None:
        return None
    return "header" if row == "header" else f"row {row}"


class PromptRow(BaseModel):
    """One validated sheet row. Unset optional fields fall back to the model's defaults."""

    model_config = ConfigDict(frozen=True)

    row: int
    asset_id: str
    prompt: str
    negative_prompt: str = ""
    brand: str | None = None
    model: str | None = None
    variants: int = 1
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    campaign: str | None = None
    channel: str | None = None
    notes: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class Sheet(BaseModel):
    name: str
    sha256: str
    rows: list[PromptRow]


def read_sheet(name: str, data: bytes, policies: Policies) -> Sheet:
    """Parse and validate a sheet's bytes; raise `SheetInvalid` listing every problem."""
    table = _read_table(name, data)
    problems: list[SheetProblem] = []
    header = [str(c).strip().lower() for c in table.columns]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    for column in duplicated:
        problems.append(SheetProblem(row="header", column=column, message="column appears more than once"))
    if "prompt" not in header:
        problems.append(SheetProblem(
            row="header", column="prompt",
            message=f"required column 'prompt' is missing (found: {', '.join(header) or 'none'})",
        ))
    if problems:
        raise SheetInvalid(name, problems)
    table.columns = header
    limits = policies.sheet_limits
    if len(table) == 0:
        raise SheetInvalid(name, [SheetProblem(row=None, column=None, message="the sheet has a header but no rows")])
    if len(table) > limits.max_rows:
        raise SheetInvalid(name, [SheetProblem(
            row=None, column=None, message=f"{len(table)} rows is above the policy maximum of {limits.max_rows}")])

    rows: list[PromptRow] = []
    seen_assets: dict[str, int] = {}
    for index, record in enumerate(table.to_dict(orient="records"), start=1):
        cells = {k: str(v).strip() for k, v in record.items()}
        row, row_problems = _parse_row(index, cells, policies, name)
        problems.extend(row_problems)
        if row is None:
            continue
        if row.asset_id in seen_assets:
            problems.append(SheetProblem(
                row=index, column="asset_id",
                message=f"asset_id {row.asset_id!r} already used in row {seen_assets[row.asset_id]}; asset ids must be unique"))
        seen_assets.setdefault(row.asset_id, index)
        rows.append(row)
    if problems:
        raise SheetInvalid(name, problems)
    return Sheet(name=name, sha256=hashlib.sha256(data).hexdigest(), rows=rows)


def _read_table(name: str, data: bytes) -> pd.DataFrame:
    def file_problem(message: str) -> SheetInvalid:
        return SheetInvalid(name, [SheetProblem(row=None, column=None, message=message)])

    if not data.strip():
        raise file_problem("the file is empty; expected a CSV or XLSX sheet with a header row including 'prompt'")
    if data.startswith(XLSX_MAGIC):
        try:
            return pd.read_excel(io.BytesIO(data), dtype=str, keep_default_na=False, engine="openpyxl")
        except Exception as exc:  # openpyxl raises many types for corrupt workbooks
            raise file_problem(f"the file looks like XLSX but cannot be read ({exc})") from None
    if b"\x00" in data[:4096]:
        raise file_problem("the file is not a CSV/XLSX sheet (binary content); save the sheet as CSV (UTF-8) or XLSX")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise file_problem(f"the file is not UTF-8 text (byte {exc.start}); save the sheet as CSV UTF-8 or XLSX") from None
    if any(ord(ch) < 32 and ch not in "\t\r\n" for ch in text[:4096]):
        raise file_problem("the file is not a CSV/XLSX sheet (binary content); save the sheet as CSV (UTF-8) or XLSX")
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.ParserError as exc:
        raise file_problem(f"the CSV cannot be parsed: {exc}") from None


def _parse_row(index: int, cells: dict[str, str], policies: Policies, sheet_name: str):
    limits = policies.sheet_limits
    problems: list[SheetProblem] = []

    def problem(column: str, message: str) -> None:
        problems.append(SheetProblem(row=index, column=column, message=message))

    def cell(column: str, parse: Callable[[str], object]):
        raw = cells.get(column, "")
        if raw == "":
            return None
        try:
            return parse(raw)
        except ValueError as exc:
            problem(column, str(exc))
            return None

    prompt = cells.get("prompt", "")
    if not prompt:
        problem("prompt", "prompt is empty; every row needs the text of the image to generate")
    elif len(prompt) > limits.max_prompt_chars:
        problem("prompt", f"prompt has {len(prompt)} characters; the policy maximum is {limits.max_prompt_chars}")

    size = _integer(limits.min_size, limits.max_size, multiple_of=limits.size_multiple)
    fields = {
        "asset_id": cell("asset_id", _safe_name("asset_id")),
        "negative_prompt": cells.get("negative_prompt", ""),
        "brand": cell("brand", _one_of("brand", policies.brands)),
        "model": cell("model", _one_of("model", {k: m for k, m in policies.models.items() if m.kind == "diffusion"})),
        "variants": cell("variants", _integer(1, limits.max_variants)),
        "seed": cell("seed", _integer(0, MAX_SEED)),
        "width": cell("width", size),
        "height": cell("height", size),
        "steps": cell("steps", _integer(1, limits.max_steps)),
        "guidance": cell("guidance", _number(0.0, limits.max_guidance)),
        "campaign": cell("campaign", _safe_name("campaign")),
        "channel": cells.get("channel") or None,
        "notes": cells.get("notes") or None,
    }
    if problems:
        return None, problems
    metadata = {k: v for k, v in cells.items() if k not in KNOWN_COLUMNS and v != ""}
    asset_id = fields.pop("asset_id") or f"{sheet_stem(sheet_name)}-row{index}"
    variants = fields.pop("variants") or 1
    row = PromptRow(row=index, asset_id=asset_id, prompt=prompt, variants=variants,
                    metadata=metadata, **fields)
    return row, problems


def sheet_stem(sheet_name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", PurePath(sheet_name).stem).strip("-.")
    return stem or "sheet"


def _integer(lo: int, hi: int, multiple_of: int | None = None) -> Callable[[str], int]:
    accepted = f"a whole number from {lo} to {hi}" + (f" that is a multiple of {multiple_of}" if multiple_of else "")

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            try:
                as_float = float(raw)
            except ValueError:
                raise ValueError(f"{raw!r} is not a number; expected {accepted}") from None
            if not as_float.is_integer():
                raise ValueError(f"{raw!r} is not a whole number; expected {accepted}") from None
            value = int(as_float)
        if value < lo:
            raise ValueError(f"{value} is below the minimum {lo}; expected {accepted}")
        if value > hi:
            raise ValueError(f"{value} is above the policy maximum {hi}; expected {accepted}")
        if multiple_of and value % multiple_of:
            raise ValueError(f"{value} is not a multiple of {multiple_of}; expected {accepted}")
        return value

    return parse


def _number(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number; expected a number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"{value} is outside {lo} to {hi}")
        return value

    return parse


def _one_of(column: str, known: dict) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in known:
            raise ValueError(f"{column} {raw!r} is not defined in policies; known: {', '.join(sorted(known))}")
        return raw

    return parse


def _safe_name(column: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not SAFE_NAME.match(raw):
            raise ValueError(
                f"{column} {raw!r} is not accepted; use 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit")
        return raw

    return parse
