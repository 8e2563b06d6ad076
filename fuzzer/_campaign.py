"""A fuzzing campaign: search within a budget, then a verified minimal reproduction."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import hypothesis
from hypothesis import HealthCheck, Phase, Verbosity
from hypothesis import settings as Settings
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
from hypothesis.stateful import get_state_machine_test

from fuzzer._coverage import RoutineRecorder
from fuzzer._errors import KernelFailure, ModelLimitation, PluginError, UsageError
from fuzzer._machine import Machine
from fuzzer._model import Model
from fuzzer._search import Shrinker, Walker
from fuzzer._statemachine import Stats, build_state_machine
from fuzzer._steps import Step

#: Examples per Hypothesis run; the time budget is checked between runs.
BATCH = 50
#: Rules per example (Hypothesis's stateful_step_count).
STEPS_PER_EXAMPLE = 30


@attrs.frozen
class Outcome:
    """What a campaign ended with; outlives the machines it ran."""

    status: str
    """``passed``, ``failed`` (a kernel failure), ``interrupted`` or ``error``."""
    failure: KernelFailure | None
    """The verified, minimal kernel failure (``failed``); for ``interrupted``, one found
    before the interrupt, replayed but not shrunk."""
    steps: tuple[Step, ...]
    """The minimal reproduction's steps (``failed``, or a plugin error's)."""
    error: BaseException | None
    """A plugin error or internal error (``error``)."""
    examples: int
    emulated_steps: int
    duration: float
    time_to_first_failure: float | None = None
    examples_to_first_failure: int | None = None
    """Which example first failed (1 = the first one run); shrinking runs more after it."""
    routines: frozenset[str] = frozenset()
    """Modelled routines the campaign's examples entered (the cheap routine signal)."""
    distinct_failures: int = 0
    """Distinct kernel failure signatures seen, shrinking included."""


def replay(model: Model, steps: Sequence[Step]) -> tuple[Machine, KernelFailure | None]:
    """Replay ``steps`` on a fresh machine, then finish it; return the failure or None."""
    machine = Machine(model)
    try:
        for step in steps:
            machine.apply(step)
        if machine.booted:
            machine.finish()
    except KernelFailure as failure:
        failure.steps = tuple(machine.steps)
        return machine, failure
    return machine, None


#: Search engines ``run --engine`` offers; the first is the default.
ENGINES = ("walk", "hypothesis")
#: Seconds between progress reports and stop checks of the walk engine.
REPORT_EVERY = 0.2
#: Seconds the step-level shrinker may spend on one failure.
SHRINK_BUDGET = 60.0


def run_campaign(
    model: Model,
    *,
    seed: int,
    max_examples: int,
    time_budget: float,
    progress: Callable[[Stats, float], None] | None = None,
    on_first_failure: Callable[[BaseException], None] | None = None,
    database: str | ExampleDatabase | None = None,
    guide: bool = False,
    should_stop: Callable[[], bool] | None = None,
    shrink: bool = True,
    engine: str = "walk",
) -> Outcome:
    """Search for a kernel failure; shrink and verify the first one found.

    ``max_examples`` and ``time_budget`` of 0 mean unbounded. The same seed
    gives the same examples, so the same outcome within the same budget.

    ``engine`` is ``walk`` (the default: :mod:`fuzzer._search`, examples at
    emulator speed, the step-level shrinker) or ``hypothesis`` (the
    RuleBasedStateMachine of :mod:`fuzzer._statemachine` in batches, shrunk by
    Hypothesis, then by the step-level shrinker).

    ``database`` is a directory for an example database, or a database
    object (a ``RedisExampleDatabase``); None: off. The campaign first
    replays the failures saved there for this model's configuration, and
    saves the one it finds. The replayed examples come first, so with a
    database the outcome is a function of the seed *and* the database.

    ``guide``: the walk keeps examples that entered new modelled routines and
    starts later examples from their prefixes; the Hypothesis engine reports
    each example's routine count to ``hypothesis.target``. ``should_stop`` is
    asked between examples (batches); True ends the campaign as ``passed``
    with what it ran (another worker found a failure). ``shrink=False``
    reports the first failure as found (benchmarks measure finding).
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    started = time.monotonic()
    first_at: list[float] = []
    first_example: list[int] = []

    def first_failure(exc: BaseException) -> None:
        first_at.append(time.monotonic() - started)
        first_example.append(stats.examples + 1)  # noted before the failing example is counted
        if on_first_failure is not None:
            on_first_failure(exc)

    stats = Stats(on_first_failure=first_failure)
    if isinstance(database, str):
        database = DirectoryBasedExampleDatabase(database)
    search = _walk if engine == "walk" else _hypothesis
    shrinker: Shrinker | None = None
    try:
        found = search(model, stats, seed=seed, max_examples=max_examples, time_budget=time_budget,
                       started=started, progress=progress, database=database, guide=guide,
                       should_stop=should_stop, shrink=shrink)
        if isinstance(found, KernelFailure) and shrink:
            shrinker = Shrinker(model, found.steps or (), found.signature,
                                deadline=time.monotonic() + SHRINK_BUDGET)
            shrinker.shrink()
    except KeyboardInterrupt:
        # Interrupted while shrinking: keep the smallest reproduction so far rather than lose it.
        failure = None
        steps: tuple[Step, ...] = ()
        if shrinker is not None:
            steps = shrinker.best
        elif isinstance(stats.first_failure, KernelFailure) and stats.first_failure.steps:
            steps = stats.first_failure.steps
        if steps:
            _, failure = replay(model, steps)
            steps = tuple(failure.steps or ()) if failure is not None else ()
        return Outcome("interrupted", failure, steps, None, stats.examples,
                       stats.emulated_steps, time.monotonic() - started,
                       first_at[0] if first_at else None, routines=frozenset(stats.routines),
                       distinct_failures=len(stats.signatures))
    first = first_at[0] if first_at else None
    if isinstance(found, KernelFailure):
        steps = shrinker.best if shrinker is not None else (found.steps or ())
        if shrinker is not None:
            stats.emulated_steps += shrinker.emulated_steps
        _, verified = replay(model, steps)
        if verified is None or verified.signature != found.signature:
            raise RuntimeError(
                f"the shrunk reproduction did not replay to the same failure ({found.signature});"
                " the model is not deterministic"
            )
        steps = tuple(verified.steps or steps)
        if isinstance(database, ExampleDatabase):
            database.save(_steps_key(model), _encode(steps))
        return Outcome("failed", verified, steps, None, stats.examples,
                       stats.emulated_steps, time.monotonic() - started, first,
                       first_example[0] if first_example else None,
                       routines=frozenset(stats.routines), distinct_failures=len(stats.signatures))
    duration = time.monotonic() - started
    if found is not None:
        steps = getattr(found, "steps", None) or ()
        return Outcome("error", None, tuple(steps), found, stats.examples, stats.emulated_steps,
                       duration, routines=frozenset(stats.routines))
    return Outcome("passed", None, (), None, stats.examples, stats.emulated_steps, duration,
                   routines=frozenset(stats.routines), distinct_failures=len(stats.signatures))


def _walk(model: Model, stats: Stats, *, seed: int, max_examples: int, time_budget: float,
          started: float, progress: Callable[[Stats, float], None] | None,
          database: ExampleDatabase | None, guide: bool,
          should_stop: Callable[[], bool] | None, shrink: bool) -> BaseException | None:
    """The walk engine's search: saved failures first, then random examples until a failure."""
    recorder = RoutineRecorder(model.routines, model.routine_infos)
    recorder.reached = stats.routines
    recorded = attrs.evolve(model, routines=recorder.table)
    walker = Walker(recorded, seed=seed, guide=guide, entered=recorder.example)
    saved: list[tuple[bytes, tuple[Step, ...]]] = []
    key = _steps_key(model)
    if database is not None:
        for value in list(database.fetch(key)):
            steps = _decode(value)
            if steps is None:
                database.delete(key, value)  # not a step list this version can read
            else:
                saved.append((value, steps))
    next_report = started + REPORT_EVERY
    while True:
        now = time.monotonic()
        if max_examples and stats.examples >= max_examples:
            return None
        if time_budget and now - started >= time_budget:
            return None
        if now >= next_report:
            next_report = now + REPORT_EVERY
            if should_stop is not None and should_stop():
                return None
            if progress is not None:
                progress(stats, now - started)
        if saved:
            value, prefix = saved.pop(0)
            m, found = walker.replay(prefix)
            if found is None and database is not None:
                database.delete(key, value)  # fixed, or not this model's any more
        else:
            m, found = walker.example()
        if found is not None:
            stats.note_failure(found)
        stats.count(m.nsteps if m is not None else 0)
        recorder.end_example()
        if found is not None:
            return found


def _steps_key(model: Model) -> bytes:
    return database_key(model) + b".steps"


def _encode(steps: Sequence[Step]) -> bytes:
    return json.dumps([s.to_json() for s in steps], separators=(",", ":")).encode()


def _decode(value: bytes) -> tuple[Step, ...] | None:
    """A saved step list (JSON data, never code); None if it is not one."""
    try:
        data = json.loads(value)
        if not isinstance(data, list):
            return None
        return tuple(Step.from_json(item) for item in data)
    except (ValueError, UnicodeDecodeError):
        return None


def _hypothesis(model: Model, stats: Stats, *, seed: int, max_examples: int, time_budget: float,
                started: float, progress: Callable[[Stats, float], None] | None,
                database: ExampleDatabase | None, guide: bool,
                should_stop: Callable[[], bool] | None, shrink: bool) -> BaseException | None:
    """The Hypothesis engine's search: state-machine batches until a failure (shrunk by Hypothesis)."""
    machine_cls = build_state_machine(model, stats, guide=guide)
    batch = 0
    while True:
        elapsed = time.monotonic() - started
        if max_examples and stats.examples >= max_examples:
            return None
        if time_budget and elapsed >= time_budget:
            return None
        if should_stop is not None and should_stop():
            return None
        n = BATCH if not max_examples else min(BATCH, max_examples - stats.examples)
        settings = Settings(
            max_examples=max(n, 1),
            stateful_step_count=STEPS_PER_EXAMPLE,
            deadline=None,
            database=None,
            derandomize=False,
            report_multiple_bugs=False,
            verbosity=Verbosity.quiet,
            phases=(Phase.explicit, Phase.generate, Phase.target, *((Phase.shrink,) if shrink else ())),
            suppress_health_check=list(HealthCheck),
        )
        if database is not None:
            # Every batch saves what it finds; only the first replays what was saved.
            reuse = (Phase.reuse,) if batch == 0 else ()
            settings = Settings(settings, database=database, phases=(*reuse, *settings.phases))
        test = get_state_machine_test(machine_cls, settings=settings)
        test = hypothesis.seed(_batch_seed(seed, batch))(test)
        if settings.database is not None:
            _use_database(test, settings, database_key(model))
        batch += 1
        try:
            test()
        except (KernelFailure, PluginError, ModelLimitation) as exc:
            return exc
        if progress is not None:
            progress(stats, time.monotonic() - started)


def database_key(model: Model) -> bytes:
    """A key for Hypothesis's database, distinct per model configuration.

    Every configuration's state machine is the same function to Hypothesis,
    so without this the failures saved for one kernel would be replayed on all.
    """
    run = model.run
    ident: dict[str, Any] = {
        "kernel": run.kernel, "mmu": run.mmu, "cpus": run.cpus,
        "config": dict(run.config.values), "options": {k: repr(v) for k, v in run.options.items()},
        "plugins": sorted(model.plugin_modules),
        "operations": [o.name for o in model.operations],
        "interrupts": [s.name for s in model.interrupts],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest().encode()


def _use_database(test: Any, settings: Settings, key: bytes) -> None:
    """Give a seeded state-machine test its database back, under ``key``.

    ``hypothesis.seed`` turns the database off (a seeded run should not depend
    on it); here it is wanted, for the reuse phase only. Hypothesis has no
    public way to do either, so this sets the attributes its own
    ``@settings``/``@seed`` and pytest parametrisation set (checked against
    Hypothesis 6.100-6.155); where they are gone, the database stays off.
    """
    inner = getattr(getattr(test, "hypothesis", None), "inner_test", None)
    if inner is None or not hasattr(test, "_hypothesis_internal_use_settings"):
        return  # pragma: no cover - a Hypothesis without these internals
    inner._hypothesis_internal_add_digest = key
    test._hypothesis_internal_use_settings = settings


def _batch_seed(seed: int, batch: int) -> int:
    return (seed * 1_000_003 + batch) & 0xFFFF_FFFF_FFFF
