"""The Hypothesis engine: the model as a RuleBasedStateMachine, run in seeded batches.

Rules: boot (initialize), bring a CPU online or offline, start an operation
on a CPU (one rule per plugin operation, so Hypothesis can switch operations
on and off per example), deliver an interrupt, and advance CPUs. ``advance``
draws a block of schedule bytes, one emulated step each: a rule costs
Hypothesis ~100 us, an emulated step ~1 us, so one rule per step would
spend nearly all its time outside the emulator. Bytes shrink towards zero,
which means "the lowest-numbered runnable CPU", so shrunk schedules read
simply. Every rule records a :class:`fuzzer.Step`; the steps alone replay
the example without Hypothesis.

:func:`state_machine_class` is also what :func:`fuzzer.testing.state_machine`
hands to pytest users: the same class, run under their own settings.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import attrs
import hypothesis
from hypothesis import HealthCheck, Phase, Verbosity
from hypothesis import settings as Settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fuzzer import _sched
from fuzzer._args import strategy_of
from fuzzer._coverage import RoutineRecorder
from fuzzer._draws import BOUNDARY
from fuzzer._engine.records import Finding, Stats
from fuzzer._engine.replay import perform
from fuzzer._engine.search import Events, Found, Search
from fuzzer._engine.store import database_key
from fuzzer._engine.walk import SCHEDULE_BLOCK
from fuzzer._errors import KernelFailure, ModelLimitation, PluginError, Signature, UsageError
from fuzzer._machine import Machine
from fuzzer._model import Model
from fuzzer._schedulers import PCT, preempting_block, run_block
from fuzzer._specs import InterruptSource, Operation
from fuzzer._steps import StepAction
from fuzzer.kernel import faults

#: Examples per Hypothesis run; the time budget is checked between runs.
BATCH = 50
#: Rules per example (Hypothesis's stateful_step_count).
STEPS_PER_EXAMPLE = 30
#: The ``hypothesis.target`` label of guided runs.
TARGET_LABEL = "modelled routines entered"


@attrs.define
class Channel:
    """What the state machine tells its engine besides raising: the last failing example's
    finding (the exception Hypothesis re-raises after shrinking is that example's)."""

    stats: Stats = attrs.Factory(Stats)
    known: frozenset[Signature] = frozenset()
    events: Events = attrs.Factory(Events)
    last: tuple[BaseException, Finding | PluginError, tuple[Any, ...]] | None = None
    """(exception raised, what it means, the steps that reached it)."""
    notes: bool = False
    """Attach the kernel-style report to Hypothesis's output (``hypothesis.note``): for a
    pytest user's run, where Hypothesis prints the falsifying example."""

    def caught(self, exc: BaseException) -> tuple[Finding | PluginError, tuple[Any, ...]] | None:
        if self.last is not None and self.last[0] is exc:
            return self.last[1], self.last[2]
        return None


def _guard(sm: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` against the machine; a failure becomes a finding here, at the engine's
    boundary. A known finding ends the example as invalid, so Hypothesis searches on."""
    try:
        return fn()
    except (KernelFailure, PluginError) as exc:
        channel: Channel = sm.channel
        steps = tuple(getattr(getattr(sm, "machine", None), "steps", ()))
        caught = Finding.from_failure(exc, steps) if isinstance(exc, KernelFailure) else exc
        sm.failed = True
        known = isinstance(caught, Finding) and caught.signature in channel.known
        channel.stats.note_failure(caught, known=known)
        if known:
            hypothesis.reject()
        channel.last = (exc, caught, steps)
        if channel.notes:
            sm.note_failure(caught)
        raise


def state_machine_class(model: Model, channel: Channel | None = None, *,
                        guide: bool = False) -> type[RuleBasedStateMachine]:
    """A RuleBasedStateMachine class for ``model``, one rule per operation and interrupt.

    Every example's routines are recorded into ``channel.stats.routines``. With
    ``guide``, each example also reports how many distinct routines it entered to
    ``hypothesis.target``. The class is named after the model's configuration, so
    Hypothesis's example database keeps each configuration's failures apart.
    """
    channel = channel if channel is not None else Channel()
    recorder = RoutineRecorder(model.routines, model.routine_infos)
    recorder.reached = channel.stats.routines
    recorded = attrs.evolve(model, routines=recorder.table)
    ns = _base_rules(recorded, channel, recorder, guide)
    for op in model.operations:
        ns["start_" + _ident(op.name)] = _op_rule(op, model.run.cpus)
    for src in model.interrupts:
        ns["irq_" + _ident(src.name)] = _irq_rule(src, model.run.cpus)
    ns.update(_hidden_rules(model))
    name = f"KernelStateMachine_{database_key(model)[:16].decode()}"
    return type(name, (KernelStateMachine,), ns)


class KernelStateMachine(RuleBasedStateMachine):
    """The base of every model's state machine: reports a failure as the kernel would."""

    channel: Channel
    machine: Machine
    failed: bool = False

    def note_failure(self, caught: Finding | PluginError) -> None:
        """Attach the kernel-style report and the reproduction to the failure Hypothesis
        prints (a pytest user's run shows it under the falsifying example)."""
        if isinstance(caught, Finding):
            from fuzzer._report import format_failure

            hypothesis.note(format_failure(caught, self.machine.model, caught.steps))


def _base_rules(model: Model, channel: Channel, recorder: RoutineRecorder, guide: bool) -> dict[str, Any]:
    ncpus = model.run.cpus
    events = channel.events

    def __init__(self: Any) -> None:
        RuleBasedStateMachine.__init__(self)
        self.channel = channel
        recorder.example.clear()
        if events.example_start is not None:
            events.example_start()
        self.machine = _guard(self, lambda: Machine(model))

    def boot(self: Any, seed: int, draws: list[int]) -> None:
        _guard(self, lambda: self.machine.boot(seed, draws))

    def cpu_online(self: Any, i: int) -> None:
        m = self.machine
        cpus = [c for c in m.cpus if m.can_online(c)]
        _guard(self, lambda: m.cpu_up(cpus[i % len(cpus)]))

    def cpu_offline(self: Any, i: int) -> None:
        m = self.machine
        cpus = [c for c in m.cpus if m.can_offline(c)]
        _guard(self, lambda: m.cpu_down(cpus[i % len(cpus)]))

    def advance(self: Any, schedule: bytes) -> None:
        _guard(self, lambda: self.machine.run_bytes(schedule))

    def advance_pct(self: Any, order: list[int], change_points: list[int], steps: int) -> None:
        pct = PCT.fixed(order, change_points)
        _guard(self, lambda: run_block(self.machine, pct, random.Random(0), steps))

    def advance_bounded(self: Any, first: int, preempt_at: list[int], steps: int) -> None:
        _guard(self, lambda: preempting_block(self.machine, first, preempt_at, steps))

    def teardown(self: Any) -> None:
        _teardown(self, recorder, guide)

    return {
        "__init__": __init__,
        "boot": initialize(seed=st.integers(0, 2**32 - 1), draws=_DRAWS)(boot),
        "cpu_online": precondition(
            lambda self: any(self.machine.can_online(c) for c in self.machine.cpus)
        )(rule(i=st.integers(0, ncpus - 1))(cpu_online)),
        "cpu_offline": precondition(
            lambda self: any(self.machine.can_offline(c) for c in self.machine.cpus)
        )(rule(i=st.integers(0, ncpus - 1))(cpu_offline)),
        "advance": rule(schedule=st.binary(min_size=1, max_size=SCHEDULE_BLOCK))(advance),
        # The schedulers, their parameters drawn (and shrunk) by Hypothesis: PCT's priority
        # order and change points, a bounded block's first CPU and preemption points.
        "advance_pct": rule(order=st.permutations(range(ncpus)),
                            change_points=st.lists(st.integers(1, SCHEDULE_BLOCK), max_size=3),
                            steps=st.integers(1, 4 * SCHEDULE_BLOCK))(advance_pct),
        "advance_bounded": rule(first=st.integers(0, ncpus - 1),
                                preempt_at=st.lists(st.integers(1, SCHEDULE_BLOCK), max_size=3),
                                steps=st.integers(1, 4 * SCHEDULE_BLOCK))(advance_bounded),
        "teardown": teardown,
    }


#: The kernel's random draws at boot: none (the seed's) most often, else boundary values
#: of their ranges (:data:`fuzzer._draws.BOUNDARY`) or any 64-bit value.
_DRAWS: st.SearchStrategy[list[int]] = st.one_of(
    st.just([]),
    st.lists(st.sampled_from(BOUNDARY) | st.integers(0, 2**64 - 1), min_size=1, max_size=8))


def _teardown(sm: Any, recorder: RoutineRecorder, guide: bool) -> None:
    m = getattr(sm, "machine", None)
    if m is None:
        return
    channel: Channel = sm.channel
    try:
        # Not after a failure: one raised outside the scheduler (an exception-entry
        # check) leaves ``m.failure`` unset, and finishing would report a second one.
        if m.failure is None and m.booted and not sm.failed:
            # A known finding at the end is counted; teardown cannot reject (the data is frozen).
            with contextlib.suppress(hypothesis.errors.UnsatisfiedAssumption):
                _guard(sm, m.finish)
    finally:
        channel.stats.count(m.nsteps)
        if m.warnings:
            channel.stats.note_warned(m.warned_past())
        entered = recorder.end_example()
        if channel.events.example_finish is not None:
            last = channel.last[1] if channel.last is not None and sm.failed else None
            channel.events.example_finish(m, last)
        if guide:
            hypothesis.target(float(entered), label=TARGET_LABEL)


def _hidden_rules(model: Model) -> dict[str, Any]:
    """The decisions taken behind the kernel's back, as the walk takes them: a speculative TLB
    fill of a live translation, a preempted task resuming on an idle CPU (CONFIG_PREEMPT),
    an allocation made to fail (CONFIG_FAULT_INJECTION). Each is a recorded step."""
    ncpus = model.run.cpus
    index = st.integers(0, 2**16)

    def fill(self: Any, cpu_index: int, va_index: int) -> None:
        m: Machine = self.machine
        online = [c for c in m.cpus if c.online]
        cpu = online[cpu_index % len(online)]
        vas = _sched.fill_candidates(m, cpu)
        if vas:  # nothing mapped to load: no step, as in the walk
            _guard(self, lambda: perform(m, StepAction.FILL, cpu, vas[va_index % len(vas)]))

    def migrate(self: Any, cpu_index: int, to_index: int) -> None:
        m: Machine = self.machine
        movable = _sched.movable(m)
        cpu = movable[cpu_index % len(movable)]
        targets = _sched.migration_targets(m, cpu)
        _guard(self, lambda: perform(m, StepAction.MIGRATE, cpu, targets[to_index % len(targets)]))

    def fail(self: Any, cpu_index: int, site: str) -> None:
        m: Machine = self.machine
        hypothesis.assume(faults.can_arm(m, cpu_index, site))
        _guard(self, lambda: perform(m, StepAction.FAIL, m.cpus[cpu_index], site))

    rules = {
        "fill": precondition(lambda self: self.machine.booted and _sched.speculates(self.machine)
                             and any(c.online for c in self.machine.cpus))(
            rule(cpu_index=index, va_index=index)(fill)),
        "migrate": precondition(lambda self: self.machine.booted and _sched.preempt_enabled(self.machine)
                                and bool(_sched.movable(self.machine)))(
            rule(cpu_index=index, to_index=index)(migrate)),
    }
    if model.run.enabled("CONFIG_FAULT_INJECTION"):
        rules["fail"] = precondition(lambda self: self.machine.booted)(
            rule(cpu_index=st.integers(0, ncpus - 1), site=st.sampled_from(faults.SITES))(fail))
    return rules


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def _op_rule(op: Operation, ncpus: int) -> Any:
    def start(self: Any, cpu_index: int, **args: Any) -> None:
        m: Machine = self.machine
        idle = [c for c in m.cpus if m.can_start(c)]
        cpu = idle[cpu_index % len(idle)]
        _guard(self, lambda: m.start(cpu, op, args))

    start.__name__ = "start_" + _ident(op.name)
    reserved = {"cpu_index", "target", "targets", "self"} & set(op.args)
    if reserved:
        raise UsageError(
            f"operation {op.name!r}: argument name(s) {', '.join(sorted(reserved))} are reserved;"
            " rename them"
        )
    strategies: dict[str, Any] = {"cpu_index": st.integers(0, ncpus - 1),
                  **{k: strategy_of(a) for k, a in op.args.items()}}
    return precondition(lambda self: any(self.machine.can_start(c) for c in self.machine.cpus))(
        rule(**strategies)(start)
    )


def _irq_rule(src: InterruptSource, ncpus: int) -> Any:
    def irq(self: Any, cpu_index: int) -> None:
        m: Machine = self.machine
        ok = [c for c in m.cpus if m.can_interrupt(c, src)]
        cpu = ok[cpu_index % len(ok)]
        _guard(self, lambda: m.interrupt(cpu, src))

    irq.__name__ = "irq_" + _ident(src.name)
    return precondition(
        lambda self: any(self.machine.can_interrupt(c, src) for c in self.machine.cpus)
    )(rule(cpu_index=st.integers(0, ncpus - 1))(irq))


class HypothesisEngine:
    """The state machine in batches of :data:`BATCH` examples, each batch seeded from the
    campaign's seed; a failure comes back shrunk by Hypothesis."""

    name = "hypothesis"
    description = "hypothesis (RuleBasedStateMachine, shrunk by Hypothesis then step by step)"
    guidance = "hypothesis.target on the distinct modelled routines each example enters"

    def search(self, search: Search) -> Found:
        channel = Channel(stats=search.stats, known=search.known, events=search.events)
        machine_cls = state_machine_class(search.model, channel, guide=search.guide)
        batch = 0
        while not search.exhausted():
            if search.should_stop is not None and search.should_stop():
                return None
            left = search.max_examples - search.stats.examples if search.max_examples else BATCH
            hypothesis.seed(_batch_seed(search.seed, batch))(machine_cls)
            try:
                run_state_machine_as_test(machine_cls, settings=_settings(search, min(BATCH, left), batch))
            except Unsatisfiable:
                pass  # every example of the batch met a known finding: search on
            except (KernelFailure, PluginError, ModelLimitation) as exc:
                caught = channel.caught(exc)
                if caught is None:
                    raise
                search.fault_steps = caught[1]
                return caught[0]
            batch += 1
            if search.events.progress is not None:
                search.events.progress(search.stats.snapshot(), time.monotonic() - search.started)
        return None


def _settings(search: Search, n: int, batch: int) -> Settings:
    """One batch's settings: quiet, no deadline; the database (if any) saves what every
    batch finds, and only the first batch replays what was saved."""
    phases = (Phase.explicit, Phase.generate, Phase.target, *((Phase.shrink,) if search.shrink else ()))
    if search.database is not None and batch == 0:
        phases = (Phase.reuse, *phases)
    return Settings(max_examples=max(n, 1), stateful_step_count=STEPS_PER_EXAMPLE, deadline=None,
                    database=search.database, derandomize=False, report_multiple_bugs=False,
                    verbosity=Verbosity.quiet, phases=phases, suppress_health_check=list(HealthCheck))


def _batch_seed(seed: int, batch: int) -> int:
    return (seed * 1_000_003 + batch) & 0xFFFF_FFFF_FFFF
