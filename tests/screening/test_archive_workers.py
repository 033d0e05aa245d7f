"""What the archive's actors keep per film (``covid/screening/archive_workers.py``), without Ray."""

from covid.screening.archive_workers import TryLedger


def test_the_ledger_counts_only_tries_that_never_ended():
    ledger = TryLedger()
    assert ledger.begin([("/a", "1"), ("/b", "2")]) == [1, 1]
    ledger.end([("/a", "1")])  # /b's try never ended: its process died
    assert ledger.begin([("/a", "1"), ("/b", "2")]) == [1, 2]
    ledger.end([("/a", "1"), ("/b", "2")])
    assert ledger.begin([("/b", "2")]) == [1]
