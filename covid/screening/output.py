"""Rows on stdout in the format ``--format`` names: the one writer of ``predict`` and ``pacs``.

``csv`` streams each row as soon as it is scored, its text cells guarded against
spreadsheet formulas (:func:`covid.screening.table.spreadsheet_safe`); ``json``
prints one list of rows once all are in; ``table`` prints aligned plain text once
all are in (a terminal's view, nothing to guard).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from covid.flags import FORMATS
from covid.screening.table import spreadsheet_safe


def write_rows(rows: Iterable[dict[str, Any]], columns: Sequence[str], fmt: str,
               out: TextIO) -> list[dict[str, Any]]:
    """Writes rows in one of :data:`covid.flags.FORMATS`; returns them.

    Args:
        rows: Dicts with the keys of ``columns`` (consumed as they come).
        columns: The columns, in order.
        fmt: ``csv``, ``json`` or ``table``.
        out: The text stream, e.g. ``sys.stdout``.

    Returns:
        The rows written, in order.

    Raises:
        ValueError: ``fmt`` is not one of the formats.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    done: list[dict[str, Any]] = []
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    if fmt == "csv":
        writer.writeheader()
    for row in rows:
        done.append(row)
        if fmt == "csv":
            writer.writerow({key: spreadsheet_safe(value) for key, value in row.items()})
            out.flush()
    if fmt == "json":
        json.dump(done, out, indent=1)
        out.write("\n")
    elif fmt == "table":
        write_table(done, columns, out)
    return done


def write_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    """Writes rows as an aligned plain-text table, a header line first."""
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        out.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
        out.write("\n")
