"""The archive's Parquet files (``covid/screening/archive_parts.py``), without Ray.

Which rows a folder holds, whose they are, and the row written last for a path
replacing the older ones, as a run killed between the two leaves the folder.
"""

from pathlib import Path

import pytest

from covid.screening import archive, archive_parts
from covid.screening.archive_parts import PartWriter, read_parts, read_rows, row_schema
from covid.screening.scoring import COLUMNS, archive_scoring


def test_a_folder_holding_another_models_rows_is_refused(tmp_path, tiny_model_file):
    out = tmp_path / "out"
    out.mkdir()
    scoring = archive_scoring()
    row = dict.fromkeys(COLUMNS, "")
    PartWriter(out, row_schema(COLUMNS), "0" * 64, []).add(
        row, ("/films/a.png", "1" * 64))  # pending: not written yet
    assert not list(out.glob("part-*.parquet"))
    writer = PartWriter(out, row_schema(COLUMNS), "0" * 64, [])
    writer.add(row, ("/films/a.png", "1" * 64))
    writer.flush()
    (part,) = read_parts(out, "0" * 64, COLUMNS)
    assert part.films == (("/films/a.png", "1" * 64),) and part.seq == 1
    job = archive.Job([tmp_path], out, tiny_model_file, tmp_path / "none.keras", scoring)
    with pytest.raises(archive.ArchiveError, match="another model"):
        archive.score_archive(job)


def test_a_folder_holding_rows_with_other_columns_is_refused(tmp_path):
    older = COLUMNS[:-1]  # as an earlier version of the command wrote them
    writer = PartWriter(tmp_path, row_schema(older), "0" * 64, [])
    writer.add(dict.fromkeys(older, ""), ("/films/a.png", "1" * 64))
    writer.flush()
    with pytest.raises(archive.ArchiveError, match="other columns"):
        read_parts(tmp_path, "0" * 64, COLUMNS)


def _write(out: Path, films: dict[str, str], parts: list) -> None:
    """Writes one Parquet file whose rows are ``path -> sha`` (the path doubles as the label)."""
    writer = PartWriter(out, row_schema(COLUMNS), "0" * 64, parts)
    for path, sha in films.items():
        writer.add({**dict.fromkeys(COLUMNS, ""), "path": path, "label": sha}, (path, sha))
    writer.flush()


def test_the_row_written_last_for_a_path_replaces_the_older_ones(tmp_path):
    # As a run killed between writing a changed film's new row and removing its old one
    # leaves the folder: /a and /b in the first file, /a's new row in a later one.
    _write(tmp_path, {"/a": "old", "/b": "b"}, [])
    first = read_parts(tmp_path, "0" * 64, COLUMNS)
    _write(tmp_path, {"/c": "c", "/a": "new"}, first)
    parts = read_parts(tmp_path, "0" * 64, COLUMNS)
    assert archive_parts.stale_rows(parts) == {first[0].path: {0}}

    assert archive_parts.drop_replaced(tmp_path, "0" * 64, COLUMNS) == 1
    assert sorted((r["path"], r["label"]) for r in read_rows(tmp_path)) == [
        ("/a", "new"), ("/b", "b"), ("/c", "c")]
    kept = read_parts(tmp_path, "0" * 64, COLUMNS)
    assert [(p.path, p.seq) for p in kept] == [(p.path, p.seq) for p in parts]  # same files
    assert kept[0].films == (("/b", "b"),)
    assert archive_parts.drop_replaced(tmp_path, "0" * 64, COLUMNS) == 0  # nothing left to do
    _write(tmp_path, {"/b": "b2"}, kept)  # the first file's last row: the file goes
    assert archive_parts.drop_replaced(tmp_path, "0" * 64, COLUMNS) == 1
    assert not first[0].path.exists() and len(read_rows(tmp_path)) == 3
