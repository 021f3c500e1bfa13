"""The demo's fake issue tracker: deterministic seed data, search, create."""

from __future__ import annotations

from broker.demo.tracker import SEED_ISSUES, IssueSummary, IssueTracker


def test_every_tracker_starts_from_the_same_issues() -> None:
    first, second = IssueTracker(), IssueTracker()
    first.create("Only here", "")
    assert second.issues == list(SEED_ISSUES)
    assert [issue.number for issue in SEED_ISSUES] == [1, 2, 3, 4]


def test_search_looks_in_title_body_and_labels_case_insensitively() -> None:
    tracker = IssueTracker()
    assert [s.number for s in tracker.search("WIDGET")] == [1, 4]
    assert [s.number for s in tracker.search("receive")] == [3]
    assert [s.number for s in tracker.search("docs")] == [3]
    assert tracker.search("no such text") == []
    assert len(tracker.search("")) == len(SEED_ISSUES)
    assert tracker.search("dark")[0] == IssueSummary(2, "Add dark mode", "open")


def test_create_takes_the_next_number() -> None:
    tracker = IssueTracker()
    created = tracker.create("Title", "Body")
    assert (created.number, created.state, created.labels) == (5, "open", [])
    assert tracker.get(5) == created
    assert tracker.create("Again", "").number == 6


def test_get_unknown_number() -> None:
    assert IssueTracker().get(0) is None


def test_delete_repository_deletes_nothing() -> None:
    tracker = IssueTracker()
    assert "nothing was deleted" in tracker.delete_repository("acme/widgets")
    assert tracker.issues == list(SEED_ISSUES)
