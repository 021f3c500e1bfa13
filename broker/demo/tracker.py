"""The demo server's fake issue tracker: a few deterministic issues, kept in memory.

This is the data behind the demo tools, with no MCP in sight: it searches, reads and creates
issues, and pretends to delete repositories. Each tracker starts from the same seed, so every
demo server (and every test) sees the same numbers and titles. No I/O, no clock, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

REPOSITORY = "acme/widgets"


class Issue(msgspec.Struct, frozen=True):
    """One issue, as the tools return it."""

    number: int
    title: str
    body: str
    state: str
    labels: list[str]


class IssueSummary(msgspec.Struct, frozen=True):
    """What a search returns per issue."""

    number: int
    title: str
    state: str


SEED_ISSUES: tuple[Issue, ...] = (
    Issue(1, "Crash when saving an empty widget", "Steps: create a widget, save.", "open", ["bug"]),
    Issue(2, "Add dark mode", "The settings page needs a theme switch.", "open", ["feature"]),
    Issue(3, "Typo in the README", "'recieve' should be 'receive'.", "closed", ["docs"]),
    Issue(4, "Widget export drops colours", "Exported SVGs lose fill colours.", "open", ["bug"]),
)


@dataclass
class IssueTracker:
    """The issues of one demo repository; ``create`` appends with the next number."""

    issues: list[Issue] = field(default_factory=lambda: list(SEED_ISSUES))

    def search(self, query: str) -> list[IssueSummary]:
        """Issues whose title, body or a label contains ``query`` (case-insensitive), by number.

        An empty query matches every issue.
        """
        needle = query.casefold()
        return [
            IssueSummary(issue.number, issue.title, issue.state)
            for issue in self.issues
            if needle in issue.title.casefold()
            or needle in issue.body.casefold()
            or any(needle in label.casefold() for label in issue.labels)
        ]

    def get(self, number: int) -> Issue | None:
        return next((issue for issue in self.issues if issue.number == number), None)

    def create(self, title: str, body: str) -> Issue:
        number = max((issue.number for issue in self.issues), default=0) + 1
        issue = Issue(number, title, body, "open", [])
        self.issues.append(issue)
        return issue

    def delete_repository(self, name: str) -> str:
        """The confirmation a real tracker would give. Nothing is deleted: it is a demo."""
        return f"Repository {name!r} deleted (demo: nothing was deleted)."
