"""A fuzzing campaign: search within a budget, then a verified minimal reproduction."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from fuzzer._engine.hypothesis import HypothesisEngine
from fuzzer._engine.records import Caught, Finding, Outcome, Stats, Status
from fuzzer._engine.replay import replay
from fuzzer._engine.search import Engine, Events, Search
from fuzzer._engine.shrink import Shrinker
from fuzzer._engine.store import encode, steps_key
from fuzzer._engine.walk import WalkEngine
from fuzzer._errors import Signature, UsageError
from fuzzer._model import Model
from fuzzer._steps import Step

#: The engines ``run --engine`` offers, by name; the first is the default.
ENGINES: dict[str, Engine] = {"walk": WalkEngine(), "hypothesis": HypothesisEngine()}
#: Seconds the step-level shrinker may spend on one failure.
SHRINK_BUDGET = 60.0


def run_campaign(
    model: Model,
    *,
    seed: int,
    max_examples: int,
    time_budget: float,
    events: Events | None = None,
    database: str | ExampleDatabase | None = None,
    guide: bool = False,
    scheduler: str = "mixed",
    interleave: bool = True,
    should_stop: Callable[[], bool] | None = None,
    shrink: bool = True,
    engine: str = "walk",
    known: Iterable[Signature] = (),
) -> Outcome:
    """Search for a kernel failure; shrink and verify the first one found.

    ``max_examples`` and ``time_budget`` of 0 mean unbounded. The same seed
    gives the same examples, so the same outcome within the same budget.

    ``engine`` names one of :data:`ENGINES`: ``walk`` (examples at emulator
    speed) or ``hypothesis`` (the RuleBasedStateMachine in batches, shrunk by
    Hypothesis); either's failure is then shrunk by the step-level shrinker.

    ``database`` is a directory for an example database, or a database
    object (a ``RedisExampleDatabase``); None: off. The campaign first
    replays the failures saved there for this model's configuration, and
    saves the one it finds, so with a database the outcome is a function of
    the seed *and* the database.

    ``guide``: the walk keeps examples that entered new modelled routines and
    starts later examples from their prefixes; the Hypothesis engine reports
    each example's routine count to ``hypothesis.target``. ``should_stop`` is
    asked between examples (batches); True ends the campaign as ``passed``
    with what it ran (another worker found a failure). ``shrink=False``
    reports the first failure as found (benchmarks measure finding).
    ``known``: signatures of known findings, counted in the statistics when an
    example fails with one, while the search goes on; under ``--panic-on-warn`` ``known``
    (the default) the machines print those that are WARNINGs and go on
    (:meth:`fuzzer.Model.searching`), so a failure behind one is found, shrunk and
    verified with the same model. ``events``: the
    lifecycle callbacks (progress, examples, failures). ``scheduler`` and
    ``interleave``: how the walk chooses the CPUs of its run rules, and whether it
    keeps and reschedules examples that bring two routines together in a new order.
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    if isinstance(database, str):
        database = DirectoryBasedExampleDatabase(database)
    known = frozenset(known)
    search = Search(model=model.searching(known), stats=Stats(), seed=seed, max_examples=max_examples,
                    time_budget=time_budget, database=database, guide=guide, shrink=shrink,
                    scheduler=scheduler, interleave=interleave,
                    should_stop=should_stop, known=frozenset(known),
                    events=events if events is not None else Events())
    return _run(ENGINES[engine], search)


def _run(engine: Engine, search: Search) -> Outcome:
    """Search, then shrink and verify what was found; Ctrl-C keeps what there is."""
    stats, events, started = search.stats, search.events, search.started
    first: dict[str, float] = {}

    def first_failure(caught: Caught) -> None:
        first.setdefault("time", time.monotonic() - started)
        first.setdefault("example", stats.examples + 1)  # noted before the example is counted
        if events.failure_found is not None:
            events.failure_found(caught)

    stats.on_first_failure = first_failure
    shrinker: Shrinker | None = None
    try:
        found = engine.search(search)
        if isinstance(found, Finding) and search.shrink:
            shrinker = Shrinker(search.model, found.steps, found.signature,
                                deadline=time.monotonic() + SHRINK_BUDGET, seed=search.seed)
            shrinker.shrink()
    except KeyboardInterrupt:
        return _interrupted(search, shrinker, first)
    finally:
        if shrinker is not None:
            stats.emulated_steps += shrinker.emulated_steps
            stats.shrink_runs += shrinker.runs
            stats.shrink_cache_hits += shrinker.cache_hits
    duration = time.monotonic() - started
    if isinstance(found, Finding):
        return _verified(search, found, shrinker.best if shrinker is not None else found.steps, first)
    if found is not None:
        return Outcome(status=Status.ERROR, steps=search.fault_steps, error=found,
                       stats=stats.snapshot(), duration=duration)
    return Outcome(status=Status.PASSED, stats=stats.snapshot(), duration=duration)


def _verified(search: Search, found: Finding, steps: tuple[Step, ...], first: dict[str, float]) -> Outcome:
    """The reproduction, replayed strictly: it must fail the same way (else the model is
    not deterministic, an internal error); saved to the database; reported shrunk."""
    _, verified = replay(search.model, steps)
    if not isinstance(verified, Finding) or verified.signature != found.signature:
        raise RuntimeError(
            f"the shrunk reproduction did not replay to the same failure ({found.signature});"
            " the model is not deterministic"
        )
    if search.database is not None:
        search.database.save(steps_key(search.model), encode(verified.steps))
    if search.events.failure_shrunk is not None:
        search.events.failure_shrunk(verified)
    return Outcome(status=Status.FAILED, failure=verified, steps=verified.steps,
                   stats=search.stats.snapshot(), duration=time.monotonic() - search.started,
                   time_to_first_failure=first.get("time"),
                   examples_to_first_failure=int(first["example"]) if "example" in first else None)


def _interrupted(search: Search, shrinker: Shrinker | None, first: dict[str, float]) -> Outcome:
    """Ctrl-C: keep the smallest reproduction so far (replayed, not minimal) rather than lose it."""
    failure: Finding | None = None
    steps: tuple[Step, ...] = ()
    if shrinker is not None:
        steps = shrinker.best
    elif isinstance(search.stats.first_failure, Finding):
        steps = search.stats.first_failure.steps
    if steps:
        _, replayed = replay(search.model, steps)
        failure = replayed if isinstance(replayed, Finding) else None
        steps = failure.steps if failure is not None else ()
    return Outcome(status=Status.INTERRUPTED, failure=failure, steps=steps,
                   stats=search.stats.snapshot(), duration=time.monotonic() - search.started,
                   time_to_first_failure=first.get("time"))
