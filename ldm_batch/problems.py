"""One refusal vocabulary: a `Problem` says where, what, and what would be accepted; a
`Refused` exception carries the problems of one refused input.

Sheets, policies, the catalog, licenses, brand training and the inbox all refuse with a
subclass of `Refused`. Nothing was generated when one is raised, and running the same input
again will not help, so the CLI exits 2 for every `Refused` and 1 for anything else
(`exit_code`), and the inbox files the sheet as rejected instead of retrying it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """One thing wrong with an input, named where a person would look for it."""

    row: int | str | None = Field(default=None, description="1-based data row, 'header', or None")
    column: str | None = None
    message: str
    file: str | None = Field(default=None, description="the file, policy or image the problem is in")

    def where(self) -> str:
        parts = [self.file, None if self.row is None else "header" if self.row == "header" else f"row {self.row}",
                 self.column and f"column {self.column!r}"]
        return ", ".join(p for p in parts if p) or "file"

    def line(self) -> str:
        """The problem as one line for people."""
        return f"{self.where()}: {self.message}"


class Refused(Exception):
    """An input was refused before anything was generated; `problems` lists every reason."""

    kind = "input"  # what was refused, for the CLI's JSON ("sheet", "license", ...)

    def __init__(self, problems: list[Problem] | str, headline: str | None = None):
        self.problems = [Problem(message=problems)] if isinstance(problems, str) else list(problems)
        self.headline = headline or f"{self.kind} refused"
        super().__init__("\n".join([self.headline] + [f"  {p.line()}" for p in self.problems])
                         if len(self.problems) != 1 or headline else self.problems[0].message)

    def dumps(self) -> list[dict]:
        return [p.model_dump() for p in self.problems]


class SheetInvalid(Refused):
    """A campaign sheet (its file, header or rows) is not valid."""

    kind = "sheet"

    def __init__(self, sheet: str, problems: list[Problem]):
        self.sheet = sheet
        super().__init__(problems, f"{sheet}: {len(problems)} problem(s)")


class PolicyError(Refused):
    """A policy file is missing or invalid; the message names the file and the field."""

    kind = "policy"


class CatalogError(Refused):
    """Weights the catalog names are missing, not safetensors, or not the pinned ones."""

    kind = "weights"


class LicenseRefused(Refused):
    """The run would use weights whose license does not allow the campaign's use."""

    kind = "license"

    def __init__(self, problems: list[Problem]):
        super().__init__(problems, "the campaign's use is not allowed by these licenses")


class ParameterInvalid(Refused):
    """A flow parameter (the sheet's location, the campaign name) that the flow does not accept."""

    kind = "parameter"


class BrandTrainingError(Refused):
    """Training images or captions that cannot be used."""

    kind = "training images"


def exit_code(exc: BaseException) -> int:
    """The CLI's exit code for an error: 2 for refused input (nothing was made), 1 otherwise."""
    return 2 if isinstance(exc, Refused) else 1
