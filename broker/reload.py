"""Policy hot reload that never loses the last good policy set.

The policies directory is watched (a cheap fingerprint of names, sizes, times and inodes, which
also catches Kubernetes ConfigMap updates: they swap a ``..data`` symlink, so every file's target
changes) and reloaded on SIGHUP. A change is applied only once the files have stood still for one
interval, and only when they did not change while being read: a file written in place is valid
YAML, and often a valid policy, long before its writer is done, and the first half of a rule can
grant more than the whole (the condition or the ``metadata`` that narrows it not written yet).
A new set is parsed and validated in a worker thread, off the request path, then swapped in with
one reference assignment: requests in flight keep the set they started with. An invalid set is
refused: the last good set keeps serving, every problem is logged, the failure is counted and
reported by ``/readyz``. Tokens cached under an old revision are never served afterwards because
the revision is part of the cache key. Operators who edit files in place should still write a
new file and rename it over the old one: a writer that pauses for longer than an interval in the
middle of a file cannot be told from one that is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.errors import PolicyError, PolicyProblem
from broker.policy import PolicySet, load_policy_dir, policy_dir_revision

logger = logging.getLogger("broker.reload")


@dataclass(slots=True)
class PolicyReloader:
    directory: str
    current: Callable[[], PolicySet]
    apply: Callable[[PolicySet], None]
    interval_seconds: float = 2.0
    warnings: Callable[[PolicySet], list[PolicyProblem]] = lambda _: []
    """Warnings about a valid set that only the running broker can see (logged on each swap)."""
    reloads: int = 0
    failures: int = 0
    last_error: str | None = None
    _fingerprint: Any = None
    """The files as last read (applied or refused); None until the watch first looks."""
    _pending: Any = None
    """A change seen at the last look, applied at the next if the files still look the same."""
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _task: asyncio.Task[None] | None = None
    _hangup: asyncio.Task[None] | None = None
    _hangup_again: bool = False

    async def reload(self, reason: str = "requested", *, stood_still: Any = None) -> bool:
        """Load and validate the directory; swap it in when valid. False when refused, or
        postponed because the files changed while being read (or, with ``stood_still``, the
        fingerprint the watch saw twice, since then)."""
        async with self._lock:
            fingerprint = await asyncio.to_thread(fingerprint_dir, self.directory)
            try:
                if stood_still is not None and fingerprint != stood_still:
                    return self._postponed(reason)
                unchanged = self.current().revision
                if await asyncio.to_thread(policy_dir_revision, self.directory) == unchanged:
                    # The same files (touched, rewritten alike, or the first look after start):
                    # nothing to parse. The fingerprint check below still applies.
                    new = self.current()
                else:
                    new = await asyncio.to_thread(load_policy_dir, self.directory)
                if await asyncio.to_thread(fingerprint_dir, self.directory) != fingerprint:
                    # Read while being written: what was read may be a part of the new files.
                    return self._postponed(reason)
            except PolicyError as exc:
                # For /readyz, which anyone may read: a count, not the problems (paths, rule
                # ids, claim names and values), which go to the log below.
                self._refused(
                    fingerprint,
                    f"{len(exc.problems)} problem(s) in the policy files; details in the log",
                )
                logger.error(  # noqa: TRY400 - a refused file is expected; no traceback
                    "policy reload (%s) refused, still serving revision %s: %d problem(s)",
                    reason,
                    self.current().revision,
                    len(exc.problems),
                )
                for problem in exc.problems:
                    logger.error("  %s", problem)  # noqa: TRY400
                return False
            except Exception as exc:  # a bug in the loader: refuse the set, keep serving
                self._refused(
                    fingerprint, f"the policy files could not be loaded ({type(exc).__name__})"
                )
                logger.exception(
                    "policy reload (%s) failed, still serving revision %s",
                    reason,
                    self.current().revision,
                )
                return False
            self._fingerprint = fingerprint
            self.last_error = None
            old = self.current().revision
            if new.revision != old:
                self.apply(new)
                self.reloads += 1
                logger.warning(
                    "policy reloaded (%s): revision %s -> %s, %d rule(s)",
                    reason,
                    old,
                    new.revision,
                    len(new.rules),
                )
                for warning in self.warnings(new):
                    logger.warning("  warning: %s", warning)
            return True

    def _postponed(self, reason: str) -> bool:
        """Not a refusal: the files are being written. Tried again once they stand still."""
        logger.warning(
            "policy reload (%s) postponed: the files changed while being read; still serving "
            "revision %s; %s",
            reason,
            self.current().revision,
            "the watch looks again"
            if self.interval_seconds > 0
            else "send SIGHUP again once they are complete",
        )
        return False

    def _refused(self, fingerprint: Any, summary: str) -> None:
        """The newest files were not swapped in: count it, and look again only once they
        change."""
        self.failures += 1
        self._fingerprint = fingerprint
        self.last_error = summary

    async def check(self) -> None:
        """Reload if the directory changed since the last read and has not changed since the
        previous look (a writer still at work would hand over half a file)."""
        fingerprint = await asyncio.to_thread(fingerprint_dir, self.directory)
        if fingerprint == self._fingerprint:
            self._pending = None
        elif fingerprint != self._pending:
            self._pending = fingerprint  # changed, or still changing: look again next time
        else:
            self._pending = None
            await self.reload("files changed", stood_still=fingerprint)

    async def start(self) -> None:
        # No baseline is taken here: the set being served was read earlier (before the app was
        # built), and files changed since then would match a baseline taken now and never be
        # applied. The watch's first looks read the files once; an unchanged revision is a
        # no-op.
        self._fingerprint = None
        if self.interval_seconds > 0:
            self._task = asyncio.create_task(self._watch(), name="policy-watch")
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_hangup)
        except (ValueError, RuntimeError, NotImplementedError):
            # Not the main thread (in-process test clients) or no signals on this platform.
            logger.debug("SIGHUP reload not available here; the directory watch still runs")

    def _on_hangup(self) -> None:
        """SIGHUP: reload now (the operator says the files are complete). Signals that arrive
        during a reload are answered by one more reload after it, not one each."""
        if self._hangup is not None and not self._hangup.done():
            self._hangup_again = True
            return
        self._hangup = asyncio.create_task(self._reload_on_hangup(), name="policy-sighup")

    async def _reload_on_hangup(self) -> None:
        again = True
        while again:
            self._hangup_again = False
            try:
                await self.reload("SIGHUP")
            except Exception:
                logger.exception("policy reload (SIGHUP) failed; the watch still runs")
            again = self._hangup_again

    async def stop(self) -> None:
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in (self._task, self._hangup):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            try:
                await self.check()
            except Exception:  # the watch must outlive any one failure
                # A watch that ended would keep the old rules, revoked access included, for
                # good and without a word.
                logger.exception("policy watch failed; looking again at the next interval")


def fingerprint_dir(directory: str) -> tuple[Any, ...]:
    """What changes when any policy file changes (content, rename, symlink swap, deletion).

    The change time is there because the modification time can be set back (``cp -p``,
    ``rsync -t``, archives with fixed dates): a rewrite of the same size would go unseen."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        return ("unreadable", exc.errno)
    out: list[tuple[Any, ...]] = [("dir", os.path.realpath(directory))]
    for entry in entries:
        if not entry.name.endswith((".yaml", ".yml")):
            continue
        try:
            stat = entry.stat(follow_symlinks=True)
        except OSError as exc:
            out.append((entry.name, "unreadable", exc.errno))
            continue
        out.append(
            (
                entry.name,
                stat.st_size,
                stat.st_mtime_ns,
                stat.st_ctime_ns,
                stat.st_ino,
                stat.st_dev,
            )
        )
    return tuple(out)
