"""The batch table's pure helpers: re-labelling, suspicion order, table rows, CSV."""

import csv
import io
from dataclasses import replace

import numpy as np

from covid import DISCLAIMER
from covid.model.decision import (
    ADVICE,
    FLAG_NONE,
    FLAG_NOT_CHEST,
    FLAG_UNUSUAL,
    NOT_A_CHEST_XRAY,
    UNUSUAL_ADVICE,
)
from covid.model.opacity import OpacitySegmentation, Severity
from covid.screening.pipeline import StudyResult, relabel
from covid.screening.table import (
    by_column,
    csv_bytes,
    spreadsheet_safe,
    suspicion_order,
    table_columns,
    table_key,
    table_rows,
)
from tests.results import THREE_CLASSES, scored
from tests.results import failed as _failed

CLASSES = ["COVID", "Normal"]
HEADER = ["file", "COVID %", "label", "flag", "advice", "evidence in lungs %",
          "opacity % of lungs", "opacity score /8", "triage", "error"]
ADMIT, GO_HOME = ADVICE["COVID"], ADVICE["Normal"]


def _scored(name: str, p: float, flag: str | None = None, threshold: float = 0.5,
            lungs: float | None = None) -> StudyResult:
    return scored(name, p, threshold=threshold, flag=flag, lung_evidence=lungs)


def test_table_columns_are_fixed_and_ordered():
    assert table_columns(CLASSES) == HEADER
    assert table_columns(THREE_CLASSES)[1:3] == ["COVID %", "Other pneumonia %"]


def test_a_three_class_row_has_a_column_per_finding_and_the_finding_advice():
    rows = table_rows([scored("p.png", [0.2, 0.5, 0.3], THREE_CLASSES)], THREE_CLASSES)
    assert rows[0]["COVID %"] == 20.0 and rows[0]["Other pneumonia %"] == 50.0
    assert rows[0]["label"] == "Other pneumonia"
    assert rows[0]["triage"] == f"{ADVICE['Other pneumonia']} {DISCLAIMER}"
    assert list(rows[0]) == table_columns(THREE_CLASSES)


def test_csv_has_the_table_columns_in_order_and_the_rows_in_order():
    results = [_scored("b.png", 0.2), _failed("broken.png"),
               _scored("a.png", 0.9, flag=FLAG_NONE, lungs=0.73456)]
    ranked = [results[i] for i in suspicion_order(results)]
    rows = table_rows(ranked, CLASSES)
    assert [list(row) for row in rows] == [HEADER] * 3

    text = csv_bytes(rows, table_columns(CLASSES)).decode("utf-8")
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == HEADER
    assert [r[0] for r in parsed[1:]] == ["a.png", "b.png", "broken.png"]
    a, b, broken = parsed[1:]
    assert a == ["a.png", "90.0", "COVID", "none", "admit", "73.5", "", "",
                 f"{ADMIT} {DISCLAIMER}", ""]
    # no detector ran (decided as unflagged) and no segmenter ran
    assert b[1:9] == ["20.0", "Normal", "none", "home", "", "", "", f"{GO_HOME} {DISCLAIMER}"]
    assert broken[:9] == ["broken.png", "", "", "", "", "", "", "", ""]
    assert broken[9].startswith("broken.png: ")
    assert text.endswith("\r\n") and len(text.splitlines()) == 4


def test_a_refused_image_gets_no_label_no_scores_and_no_advice():
    row = table_rows([_scored("cat.png", 0.99, flag=FLAG_NOT_CHEST)], CLASSES)[0]
    assert row["label"] == "" and row["flag"] == "not_chest" and row["advice"] == ""
    assert row["triage"].startswith(NOT_A_CHEST_XRAY) and row["COVID %"] is None
    assert row["evidence in lungs %"] is None
    text = csv_bytes([row], table_columns(CLASSES)).decode("utf-8")
    assert "admit" not in text.lower() and "go home" not in text.lower()
    assert NOT_A_CHEST_XRAY in text


def test_an_unusual_chest_xray_keeps_its_label_and_scores_and_is_admitted():
    row = table_rows([_scored("icu.png", 0.1, flag=FLAG_UNUSUAL, lungs=0.6)], CLASSES)[0]
    assert row["label"] == "Normal" and row["flag"] == "unusual" and row["advice"] == "admit"
    assert row["COVID %"] == 10.0 and row["evidence in lungs %"] == 60.0
    assert row["triage"].startswith(UNUSUAL_ADVICE) and GO_HOME not in row["triage"]


def test_evidence_in_lungs_is_a_number_that_sorts_numerically():
    results = [_scored(f"{i}.png", 0.5, lungs=share) for i, share in
               enumerate([0.9, 0.05, 0.456, None, 1.0])]
    column = by_column(table_rows(results, CLASSES), ["evidence in lungs %"])
    values = column["evidence in lungs %"]
    assert values == [90.0, 5.0, 45.6, None, 100.0]
    assert sorted(v for v in values if v is not None) == [5.0, 45.6, 90.0, 100.0]


def test_table_rows_can_drop_the_repeated_disclaimer():
    rows = table_rows([_scored("a.png", 0.9)], CLASSES, disclaimer=False)
    assert rows[0]["triage"] == ADMIT


def test_percentage_matches_the_bars_when_covid_is_the_second_class():
    result = scored("x.png", [0.3334, 0.6666], ["Normal", "COVID"])
    assert table_rows([result], ["Normal", "COVID"])[0]["COVID %"] == 66.7


def test_csv_neutralises_spreadsheet_formulas():
    rows = table_rows([_failed("=HYPERLINK(\"http://x\").png")], CLASSES)
    parsed = list(csv.reader(io.StringIO(csv_bytes(rows, HEADER).decode())))
    assert parsed[1][0].startswith("'=") and parsed[1][-1].startswith("'=")


def test_the_formula_guard_prefixes_only_text_a_spreadsheet_would_run():
    for text in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_safe(text) == f"'{text}"
    for value in ("a.png", "", "1=1", -0.5, 3, None):
        assert spreadsheet_safe(value) == value


def test_suspicion_order_is_descending_with_errors_last_and_stable_ties():
    results = [_failed("bad1"), _scored("low", 0.1), _scored("tie1", 0.6), _scored("high", 0.95),
               _scored("tie2", 0.6), _failed("bad2")]
    assert [results[i].name for i in suspicion_order(results)] == [
        "high", "tie1", "tie2", "low", "bad1", "bad2"]


def test_refused_images_rank_after_every_classified_film_and_before_errors():
    results = [_failed("bad"), _scored("cat", 0.99, flag=FLAG_NOT_CHEST), _scored("low", 0.1),
               _scored("icu", 0.5, flag=FLAG_UNUSUAL)]
    assert [results[i].name for i in suspicion_order(results)] == ["icu", "low", "cat", "bad"]


def test_relabel_follows_the_threshold_and_leaves_the_cached_result_alone():
    cached = _scored("a.png", 0.4)
    assert cached.label == "Normal"
    lower = relabel(cached, 0.3)
    assert lower.label == "COVID" and lower.triage == f"{ADMIT} {DISCLAIMER}"
    assert cached.label == "Normal" and cached.triage.startswith(GO_HOME)
    assert lower.probs is cached.probs and lower.p_positive == cached.p_positive
    higher = relabel(lower, 0.5)
    assert higher.label == "Normal" and higher.triage.startswith(GO_HOME)


def test_relabel_keeps_flagged_and_failed_results_safe():
    refused = relabel(_scored("cat.png", 0.9, flag=FLAG_NOT_CHEST), 0.1)
    assert refused.triage.startswith(NOT_A_CHEST_XRAY) and refused.label == ""
    unusual = relabel(_scored("icu.png", 0.2, flag=FLAG_UNUSUAL), 0.9)
    assert unusual.label == "Normal" and unusual.decision.advice == "admit"
    failed = _failed("bad.png")
    assert relabel(failed, 0.1) is failed


def test_by_column_turns_rows_into_columns_in_order():
    rows = table_rows([_scored("b.png", 0.2), _failed("bad.png")], CLASSES)
    columns = by_column(rows, ["error", "file"])
    assert list(columns) == ["error", "file"]
    assert columns["file"] == ["b.png", "bad.png"] and columns["error"][0] == ""


def test_table_key_changes_with_the_uploads_only():
    key = table_key(["a", "b"])
    assert key == table_key(["a", "b"]) and key.startswith("batch_table_") and len(key) == 28
    assert key != table_key(["b", "a"]) and key != table_key(["a"])


def test_relabel_clears_the_lung_share_of_a_label_whose_map_was_not_made():
    cached = scored("a.png", 0.4, cam_target=1, lung_evidence=0.8)  # Normal, its own map
    assert relabel(cached, 0.5) is cached  # same decision: the very same value
    flipped = relabel(cached, 0.3)
    assert flipped.label == "COVID" and flipped.lung_evidence is None
    assert relabel(cached, 0.45).lung_evidence == 0.8


def _outlined(result: StudyResult, severity: Severity) -> StudyResult:
    return replace(result, opacity=OpacitySegmentation(np.zeros((4, 4), bool), severity))


def test_the_opacity_columns_give_the_extent_and_score_of_outlined_films_only():
    severity = Severity(right=0.35, left=0.1, extent=0.23456, right_score=2, left_score=1,
                        score=3)
    results = [_outlined(_scored("covid.png", 0.9), severity), _scored("plain.png", 0.9),
               _failed("broken.png")]
    rows = table_rows(results, CLASSES)
    assert [(r["opacity % of lungs"], r["opacity score /8"]) for r in rows] == [
        (23.5, 3), (None, None), (None, None)]
    parsed = list(csv.DictReader(io.StringIO(csv_bytes(rows, HEADER).decode())))
    assert [(r["opacity % of lungs"], r["opacity score /8"]) for r in parsed] == [
        ("23.5", "3"), ("", ""), ("", "")]
