"""What an engine searches with: the budget, the statistics, the events, the known findings."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from hypothesis.database import ExampleDatabase

from fuzzer._engine.records import Caught, Finding, Stats, StatsSnapshot
from fuzzer._errors import Signature
from fuzzer._model import Model

#: Seconds between progress reports and stop checks.
REPORT_EVERY = 0.2


@attrs.frozen
class Events:
    """Campaign-lifecycle callbacks, resolved once per campaign: None where nothing listens,
    so an engine pays nothing per example for an event no plugin implements."""

    example_start: Callable[[], None] | None = None
    example_finish: Callable[[Any, Caught | None], None] | None = None
    """Called with the machine (None if it could not be built) and the finding, if any."""
    progress: Callable[[StatsSnapshot, float], None] | None = None
    """Called about every :data:`REPORT_EVERY` seconds with the statistics and the time spent."""
    failure_found: Callable[[Caught], None] | None = None
    """The first failing example (not a known finding), before it is shrunk."""
    failure_shrunk: Callable[[Finding], None] | None = None
    """The minimal, verified reproduction."""


@attrs.define
class Search:
    """One campaign's search, as an engine sees it."""

    model: Model
    stats: Stats
    seed: int
    max_examples: int = 0
    """0: no limit."""
    time_budget: float = 0.0
    """Seconds; 0: no limit."""
    started: float = attrs.Factory(time.monotonic)
    database: ExampleDatabase | None = None
    guide: bool = False
    scheduler: str = "mixed"
    """The walk's scheduler of ``run`` rules (:data:`fuzzer._schedulers.SCHEDULERS`)."""
    interleave: bool = True
    """The walk's interleaving feedback (:mod:`fuzzer._interleave`)."""
    shrink: bool = True
    should_stop: Callable[[], bool] | None = None
    """Asked between examples (batches); True ends the search (another worker found one)."""
    known: frozenset[Signature] = frozenset()
    """Signatures of known findings: counted when seen, and the search goes on."""
    events: Events = attrs.Factory(Events)
    fault_steps: tuple[Any, ...] = ()
    """Set by the engine when it stops on a plugin error: the steps that reach it."""

    def exhausted(self) -> bool:
        """The example or time budget is spent."""
        if self.max_examples and self.stats.examples >= self.max_examples:
            return True
        return bool(self.time_budget) and time.monotonic() - self.started >= self.time_budget

    def report(self) -> bool:
        """Report progress; True when the search should stop."""
        if self.should_stop is not None and self.should_stop():
            return True
        if self.events.progress is not None:
            self.events.progress(self.stats.snapshot(), time.monotonic() - self.started)
        return False

    def is_known(self, caught: Caught | None) -> bool:
        return isinstance(caught, Finding) and caught.signature in self.known


#: What an engine's search ends with: the failure it stops on, or None (budget spent).
Found = Caught | None


class Engine(Protocol):
    """A way of generating examples. Both engines tally into ``search.stats`` and stop at
    the first failure that is not a known finding, or when the budget is spent."""

    name: str
    description: str
    """What ``run`` prints on its ``engine:`` line."""
    guidance: str
    """What ``run --guide`` means for it."""

    def search(self, search: Search) -> Found: ...
