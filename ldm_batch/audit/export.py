"""Audit records as JSON Lines, CSV (safe against spreadsheet formula injection) or Parquet."""

from __future__ import annotations

import io
import json
from typing import Literal

import pandas as pd

ExportFormat = Literal["json", "csv", "parquet"]


def export_bytes(records: list[dict], format: ExportFormat) -> bytes:
    if format == "json":  # JSON Lines: nothing for no records
        return "".join(json.dumps(r) + "\n" for r in records).encode()
    frame = pd.json_normalize(records, max_level=0)
    for column in frame.columns:  # nested values (verdicts, licenses, LoRAs) as JSON text
        if frame[column].map(lambda v: isinstance(v, dict | list)).any():
            frame[column] = frame[column].map(json.dumps)
    buffer = io.BytesIO()
    if format == "csv":
        defuse_formulas(frame).to_csv(buffer, index=False)
    else:
        frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def defuse_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells a spreadsheet would run as formulas get a leading apostrophe (OWASP CSV injection)."""
    def defuse(value):
        return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value

    return frame.map(defuse)
