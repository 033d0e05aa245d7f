"""The one writer of ``--format``: the same rows as CSV, JSON or a table."""

import csv
import io
import json

import pytest

from covid.flags import FORMATS
from covid.screening.output import write_rows

COLUMNS = ("path", "label", "p_covid", "error")
ROWS = [{"path": "a.png", "label": "COVID", "p_covid": 0.91, "error": ""},
        {"path": "=b.png", "label": "", "p_covid": "", "error": "=b.png: no such file."}]


def _written(fmt: str) -> tuple[str, list[dict]]:
    out = io.StringIO()
    returned = write_rows(iter(ROWS), COLUMNS, fmt, out)
    return out.getvalue(), returned


def test_every_format_writes_every_row_and_returns_them():
    for fmt in FORMATS:
        _, returned = _written(fmt)
        assert returned == ROWS, fmt


def test_csv_has_the_header_and_guards_formulas():
    text, _ = _written("csv")
    assert text.splitlines()[0] == ",".join(COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0] == {"path": "a.png", "label": "COVID", "p_covid": "0.91", "error": ""}
    assert rows[1]["path"] == "'=b.png" and rows[1]["error"] == "'=b.png: no such file."


def test_json_is_a_list_of_the_rows_as_they_are():
    text, _ = _written("json")
    assert json.loads(text) == ROWS  # numbers stay numbers, nothing is guarded


def test_table_aligns_the_columns_under_a_header():
    lines = _written("table")[0].splitlines()
    assert lines[0].split() == list(COLUMNS) and len(lines) == 3
    assert lines[1].index("COVID") == lines[0].index("label")
    assert lines[2].startswith("=b.png ")


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="csv, json, table"):
        write_rows(iter(ROWS), COLUMNS, "xml", io.StringIO())
