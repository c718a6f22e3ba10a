"""Campaign sheets: CSV or XLSX bytes in, validated `PromptRow`s out.

Every problem names the place a spreadsheet user would look: the 1-based data row (or
"header", or the file) and the column, and says what would be accepted. All problems of a
sheet are collected before it is refused, so a user can fix them in one pass; with
`skip_invalid=True` the valid rows are kept and the invalid ones reported as skipped.

Accepted: CSV in UTF-8 (with or without BOM) separated by commas, semicolons or tabs, and
XLSX workbooks with one sheet and no merged cells. Size and row limits come from
policies/sheet_limits.yaml and are checked before a sheet is read whole.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from pathlib import PurePath

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ldm_batch.policies import Policies, SheetLimits
from ldm_batch.problems import ParameterInvalid, Problem, SheetInvalid

MAX_SEED = 2**32 - 1
# Asset ids and campaign names become parts of S3 keys: keep them to safe characters.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # \Z: no trailing newline
KNOWN_COLUMNS = (
    "asset_id", "prompt", "negative_prompt", "brand", "model", "variants", "seed",
    "width", "height", "steps", "guidance", "campaign", "channel", "notes",
)
XLSX_MAGIC = b"PK\x03\x04"
DELIMITERS = {",": "commas", ";": "semicolons", "\t": "tabs"}
# What spreadsheets evaluate (OWASP CSV injection): a cell starting with = + - @ is a
# formula, not a prompt, unless it is just a number.
FORMULA = re.compile(r"^(?:[=@]|[+-](?![\d.]+$))")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


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


class SkippedRow(BaseModel):
    row: int
    cells: dict[str, str]
    problems: list[Problem]


class Sheet(BaseModel):
    name: str
    sha256: str
    rows: list[PromptRow]
    skipped: list[SkippedRow] = []


def read_sheet(name: str, data: bytes, policies: Policies, skip_invalid: bool = False) -> Sheet:
    """Parse and validate a sheet's bytes; raise `SheetInvalid` listing every problem, or with
    `skip_invalid`, keep the valid rows and report the others in `Sheet.skipped` (problems
    with the file or its header still refuse the whole sheet)."""
    table = _read_table(name, data, policies.sheet_limits)
    problems: list[Problem] = []
    header = [str(c).strip().lower() for c in table.columns]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    # A file that is not a sheet (a key file, say) must not be echoed back: of its header, name
    # only the columns this product knows.
    for column in duplicated:
        known = column in KNOWN_COLUMNS
        problems.append(Problem(row="header", column=column if known else None,
                                message="column appears more than once" if known else
                                "a column name appears more than once; name each column once"))
    if "prompt" not in header:
        found = [c for c in header if c in KNOWN_COLUMNS]
        problems.append(Problem(
            row="header", column="prompt",
            message=f"required column 'prompt' is missing (found {len(header)} column(s)"
                    + (f", known: {', '.join(found)}" if found else "") + ")"
                    + ("; columns must be separated by commas, semicolons or tabs" if len(header) == 1 else ""),
        ))
    if problems:
        raise SheetInvalid(name, problems)
    table.columns = header
    if len(table) == 0:
        raise SheetInvalid(name, [Problem(row=None, column=None, message="the sheet has a header but no rows")])

    rows: list[PromptRow] = []
    skipped: list[SkippedRow] = []
    seen_assets: dict[str, int] = {}
    for index, record in enumerate(table.to_dict(orient="records"), start=1):
        cells = {k: "" if _missing(v) else str(v).strip() for k, v in record.items()}
        row, row_problems = _parse_row(index, cells, policies, name)
        if row is not None and row.asset_id in seen_assets:
            row_problems.append(Problem(
                row=index, column="asset_id",
                message=f"asset_id {row.asset_id!r} already used in row {seen_assets[row.asset_id]}; asset ids must be unique"))
        if row_problems:
            problems.extend(row_problems)
            skipped.append(SkippedRow(row=index, cells=cells, problems=row_problems))
            continue
        seen_assets[row.asset_id] = index
        rows.append(row)
    if problems and not skip_invalid:
        raise SheetInvalid(name, problems)
    if not rows:
        raise SheetInvalid(name, problems + [Problem(row=None, column=None, message="no valid rows are left")])
    return Sheet(name=name, sha256=hashlib.sha256(data).hexdigest(), rows=rows, skipped=skipped)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # NaN: a short row


def _file_problem(name: str, message: str) -> SheetInvalid:
    return SheetInvalid(name, [Problem(row=None, column=None, message=message)])


def check_size(name: str, size: int, limits: SheetLimits) -> None:
    """Refuse a sheet file above the policy's size limit (called before it is read)."""
    if size > limits.max_bytes:
        raise _file_problem(name, f"the file has {size} bytes; the policy maximum is {limits.max_bytes} "
                                  "(split the campaign into several sheets)")


def _read_table(name: str, data: bytes, limits: SheetLimits) -> pd.DataFrame:
    check_size(name, len(data), limits)
    if not data.strip():
        raise _file_problem(name, "the file is empty; expected a CSV or XLSX sheet with a header row including 'prompt'")
    if data.startswith(XLSX_MAGIC):
        return _read_xlsx(name, data, limits)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_utf16(data):
        raise _file_problem(name, "the file is UTF-16 text; save the sheet as CSV UTF-8 (or XLSX)")
    if b"\x00" in data[:4096]:
        raise _file_problem(name, "the file is not a CSV/XLSX sheet (binary content); save the sheet as CSV UTF-8 or XLSX")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n")
        where = "the header" if line == 0 else f"row {line}"
        raise _file_problem(name, f"the file is not UTF-8: byte 0x{data[exc.start]:02x} in {where} (Latin-1 or "
                                  "Windows-1252?); save the sheet as CSV UTF-8 or XLSX") from None
    header_line = text.split("\n", 1)[0]
    delimiter = max(DELIMITERS, key=header_line.count)
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                            sep=delimiter, nrows=limits.max_rows + 1)
    except pd.errors.ParserError as exc:
        detail = str(exc).strip().removeprefix("Error tokenizing data. C error: ")
        line = re.search(r"in line (\d+), saw (\d+)", detail)
        if line:  # pandas counts the header as line 1
            raise SheetInvalid(name, [Problem(row=int(line[1]) - 1, column=None, message=(
                f"the row has {line[2]} cells but the header has {len(header_line.split(delimiter))} columns; "
                f"cells containing {DELIMITERS[delimiter]} need double quotes"))]) from None
        raise _file_problem(name, f"the CSV cannot be parsed ({detail}); every row needs the header's number of "
                                  f"cells, and cells with {DELIMITERS[delimiter]}, quotes or line breaks need "
                                  "double quotes") from None
    _check_rows(name, len(table), limits)
    return table


def _looks_utf16(data: bytes) -> bool:
    """UTF-16 without a byte-order mark: every other byte of ASCII text is zero."""
    head = data[:400]
    return len(head) >= 8 and max(head[0::2].count(0), head[1::2].count(0)) >= 0.9 * (len(head) // 2)


def _check_rows(name: str, rows: int, limits: SheetLimits) -> None:
    if rows > limits.max_rows:
        raise _file_problem(name, f"the sheet has more than {limits.max_rows} rows, the policy maximum; "
                                  "split the campaign into several sheets")


def _read_xlsx(name: str, data: bytes, limits: SheetLimits) -> pd.DataFrame:
    """The workbook's one sheet, read as a stream: rows are counted as they are read, never
    trusting the workbook's declared dimension, so an oversized sheet stops at the limit."""
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(io.BytesIO(data), read_only=True)
        try:
            sheets = workbook.sheetnames
            if len(sheets) != 1:
                raise _file_problem(name, f"the workbook has {len(sheets)} sheets ({', '.join(sheets)}); keep the "
                                          "prompts on a single sheet")
            sheet = workbook.active
            sheet.reset_dimensions()  # the declared dimension can lie; read what is there
            values: list[list[str]] = []
            for row in sheet.iter_rows(values_only=True):
                values.append(["" if v is None else str(v) for v in row])
                _check_rows(name, len(values) - 1, limits)
            merged = _merged_ranges(data, sheet._worksheet_path)
        finally:
            workbook.close()
    except SheetInvalid:
        raise
    except Exception as exc:  # openpyxl raises many types for corrupt workbooks
        raise _file_problem(name, f"the file looks like XLSX but cannot be read ({type(exc).__name__}); "
                                  "save it again from the spreadsheet, or as CSV UTF-8") from None
    if merged:
        raise _file_problem(name, f"merged cells ({', '.join(merged[:5])}); unmerge them so each row has its "
                                  "own values")
    if not values:
        raise _file_problem(name, "the workbook's sheet is empty; expected a header row including 'prompt'")
    width = max(len(row) for row in values)
    values = [row + [""] * (width - len(row)) for row in values]
    return pd.DataFrame(values[1:], columns=values[0], dtype=str)


MERGE_CELL = re.compile(rb'<(?:\w+:)?mergeCell\s+ref="([A-Z]+[0-9]+:[A-Z]+[0-9]+)"')


def _merged_ranges(data: bytes, worksheet_path: str) -> list[str]:
    """Merged ranges of a worksheet, found by streaming its XML (read-only sheets do not say)."""
    import zipfile

    found: set[bytes] = set()
    tail = b""
    with zipfile.ZipFile(io.BytesIO(data)) as archive, archive.open(worksheet_path) as xml:
        while chunk := xml.read(1 << 20):
            window = tail + chunk  # a tag cut by a chunk boundary is whole in the next window
            found.update(MERGE_CELL.findall(window))
            tail = window[-200:]
    return sorted(m.decode() for m in found)


def _parse_row(index: int, cells: dict[str, str], policies: Policies, sheet_name: str):
    problems: list[Problem] = []

    def problem(column: str, message: str) -> None:
        problems.append(Problem(row=index, column=column, message=message))

    def cell(column: str, parse: Callable[[str], object]):
        raw = cells.get(column, "")
        if raw == "":
            return None
        try:
            return parse(raw)
        except ValueError as exc:
            problem(column, str(exc))
            return None

    limits = policies.sheet_limits
    for column, value in cells.items():
        if len(value) > limits.max_cell_chars and column != "prompt":
            problem(column, f"the cell has {len(value)} characters; the policy maximum is {limits.max_cell_chars}")
        elif CONTROL.search(value):
            code = ord(CONTROL.search(value).group())
            problem(column, f"contains the control character U+{code:04X}; remove it (text, tabs and line breaks are fine)")
        elif FORMULA.match(value):
            problem(column, f"{value[:40]!r} looks like a spreadsheet formula; enter the text itself "
                            "(a leading apostrophe in the spreadsheet keeps it text)")
    if problems:
        return None, problems

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


def check_campaign_name(campaign: str | None) -> None:
    """A campaign name becomes part of every S3 key of the run: refuse anything but safe names."""
    if campaign is not None and not SAFE_NAME.match(campaign):
        raise ParameterInvalid([Problem(column="campaign", message=(
            f"campaign {campaign[:140]!r}: use 1-128 letters, digits, '.', '_' or '-'"))])


def sheet_stem(sheet_name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", PurePath(sheet_name).stem).strip("-._")[:128]
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
