"""Sheets experts can read at once: every workbook the toolkit writes goes through here.

`era --xlsx`, `stats --xlsx` and `compare --xlsx` write tables that people scroll and filter
in Excel, so each sheet gets its header frozen and columns wide enough for their values
(measured on the first rows only: a million-row sheet must not be read twice).
"""

from __future__ import annotations

import pandas as pd

_ROWS_MEASURED = 2000


def write_readable_sheet(
    writer: pd.ExcelWriter,
    table: pd.DataFrame,
    sheet: str,
    *,
    max_width: int = 60,
    frozen: str = "A2",
):
    """Write `table` as `sheet`, header (and columns left of `frozen`) frozen; the worksheet."""
    table.to_excel(writer, sheet_name=sheet, index=False)
    worksheet = writer.sheets[sheet]
    worksheet.freeze_panes = frozen
    for i, column in enumerate(table.columns):
        lengths = table[column].astype(str).str.len().head(_ROWS_MEASURED)
        longest = max([len(str(column)), *lengths])
        letter = worksheet.cell(row=1, column=i + 1).column_letter
        worksheet.column_dimensions[letter].width = min(longest + 2, max_width)
    return worksheet
