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

Deep interleavings (two CPUs in a particular order) in Hypothesis's own terms:

* a rule that puts work on a CPU draws what that CPU does ``then``: nothing
  yet (``stay``, what it shrinks to), run alone up to its next access of a
  shared object (``to next access``: paused there while other CPUs run), or
  run alone until it blocks or is done (``alone``: a ``register_kprobe`` takes
  ~450 emulated steps, ten ``advance`` rules); ``run_alone`` does the same for
  a CPU already busy, and ``pause`` holds one CPU while the others run until
  none can -- the other side of a race that needs one CPU paused for a dozen
  steps of another;
* an operation's argument is, half the time, a value already drawn in the
  example for the same declared argument (``st.runner()`` gives the state
  machine, ``st.sampled_from`` its values): a race needs two operations on one
  probe site or one key;
* the schedulers' parameters are draws (``advance_pct``, ``advance_bounded``);
* the example's ordered pairs of conflicting accesses (:mod:`fuzzer._interleave`)
  are counted for ``--stats`` and, with interleaving feedback, reported to
  ``hypothesis.target``.

:func:`state_machine_class` is also what :func:`fuzzer.testing.state_machine`
hands to pytest users: the same class, run under their own settings.
"""

from __future__ import annotations

import contextlib
import functools
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
from fuzzer._args import Boolean, Choice, IntRange, strategy_of
from fuzzer._coverage import RoutineRecorder
from fuzzer._draws import BOUNDARY
from fuzzer._engine.records import Finding, Stats
from fuzzer._engine.replay import perform
from fuzzer._engine.search import REPORT_EVERY, Events, Found, Search
from fuzzer._engine.store import database_key
from fuzzer._engine.walk import SCHEDULE_BLOCK
from fuzzer._errors import KernelFailure, ModelLimitation, PluginError, Signature, UsageError
from fuzzer._interleave import AccessLog, Pair
from fuzzer._local_constants import local_constants_off
from fuzzer._machine import Cpu, Machine
from fuzzer._model import Model
from fuzzer._schedulers import PCT, preempting_block, run_chosen
from fuzzer._specs import InterruptSource, Operation
from fuzzer._steps import StepAction
from fuzzer.kernel import faults

#: Examples per Hypothesis run (the budget is checked before every example, not between
#: runs). Each run starts with up to a tenth of its examples "simplest" (every choice after a
#: novel prefix its first: no ``then``, no reuse) and hill-climbs its targets half-way
#: through. On static_key_dec_stale_count (300 examples, seeds 1-3), runs of 100 found it on
#: two seeds (43, 64 examples); runs of 1,000, whose targeting never started, on one (263).
BATCH = 100
#: Rules per example (Hypothesis's stateful_step_count). 30 left the operations a deep
#: mistake needs (a probe registered to completion, then hit and unregistered on two CPUs,
#: at one site) in order in about one example in fifteen; 100 in one in seven, at twice
#: the time an example.
STEPS_PER_EXAMPLE = 60
#: The ``hypothesis.target`` label of guided runs.
TARGET_LABEL = "modelled routines entered"
#: The ``hypothesis.target`` label of the interleaving feedback.
PAIRS_LABEL = "interleaving pairs"
#: What a CPU given work by a rule does next (the rule's ``then``): stay (the schedule rules
#: run it), run alone until it blocks or is done, or run alone to its next access of a shared
#: object and be held there: from then on it runs only when no other CPU can, until its work
#: is done. The first is what Hypothesis shrinks to.
THEN = ("stay", "alone", "hold at next access")
#: The most emulated steps one CPU runs alone (``register_kprobe`` is about 450).
ALONE_MOST = 2_000


class Stop(KeyboardInterrupt):
    """The engine's budget is spent (or another worker found a failure): ends a Hypothesis run
    from inside. A KeyboardInterrupt is the one exception Hypothesis's engine lets through
    at once, without recording the example (any other one it records, and then the next
    example's shorter draw looks flaky); the engine catches it right outside the run."""


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
    pairs: set[Pair] = attrs.Factory(set)
    """The ordered pairs of conflicting accesses every example so far formed."""
    check: Callable[[], None] | None = None
    """Called as each example starts: the engine's budget and progress (raises :class:`Stop`)."""

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
        channel.check = None  # Hypothesis shrinks it now, whatever the budget says
        if channel.notes and hypothesis.currently_in_test_context():
            sm.note_failure(caught)
        raise


def state_machine_class(model: Model, channel: Channel | None = None, *,
                        guide: bool = False, interleave: bool = True) -> type[RuleBasedStateMachine]:
    """A RuleBasedStateMachine class for ``model``, one rule per operation and interrupt.

    Every example's routines are recorded into ``channel.stats.routines``, and its
    interleaving pairs into ``channel.pairs``. With ``guide``, each example also
    reports how many distinct routines it entered to ``hypothesis.target``; with
    ``interleave``, how many ordered pairs of conflicting accesses it formed. The
    class is named after the model's configuration, so Hypothesis's example
    database keeps each configuration's failures apart.
    """
    channel = channel if channel is not None else Channel()
    recorder = RoutineRecorder(model.routines, model.routine_infos)
    recorder.reached = channel.stats.routines
    recorded = attrs.evolve(model, routines=recorder.table)
    ns = _base_rules(recorded, channel, recorder, (guide, interleave))
    for op in model.operations:
        ns["start_" + _ident(op.name)] = _op_rule(op, model.run.cpus)
    for src in model.interrupts:
        ns["irq_" + _ident(src.name)] = _irq_rule(src, model.run.cpus)
    ns.update(_hotplug_rules(model.run.cpus))
    ns.update(_schedule_rules())
    ns.update(_race_rules(model))
    ns.update(_hidden_rules(model))
    name = f"KernelStateMachine_{database_key(model)[:16].decode()}"
    return type(name, (KernelStateMachine,), ns)


class KernelStateMachine(RuleBasedStateMachine):
    """The base of every model's state machine: reports a failure as the kernel would."""

    channel: Channel
    machine: Machine
    failed: bool = False
    started: list[tuple[Operation, dict[str, Any], Any]]
    """Every operation the example started: (operation, arguments, its task)."""
    held: list[Cpu]
    """CPUs held back: they run only when no other CPU can (``then="hold at next access"``,
    ``pause``), under ``advance``, ``advance_pct``, ``pause`` and at the end of the example."""

    def note_failure(self, caught: Finding | PluginError) -> None:
        """Attach the kernel-style report and the reproduction to the failure Hypothesis
        prints (a pytest user's run shows it under the falsifying example)."""
        if isinstance(caught, Finding):
            from fuzzer._report import format_failure

            hypothesis.note(format_failure(caught, self.machine.model, caught.steps))


def _base_rules(model: Model, channel: Channel, recorder: RoutineRecorder,
                targets: tuple[bool, bool]) -> dict[str, Any]:
    ncpus = model.run.cpus
    events = channel.events

    def __init__(self: Any) -> None:
        RuleBasedStateMachine.__init__(self)
        self.channel = channel
        recorder.example.clear()
        if channel.check is not None:
            channel.check()
        if events.example_start is not None:
            events.example_start()
        self.machine = _guard(self, lambda: Machine(model, boot_cache=True))
        self.machine.accesses = Accesses(self.machine)
        self.held = []
        self.started = []

    def boot(self: Any, seed: int, draws: list[int], online: int) -> None:
        _guard(self, lambda: self.machine.boot(seed, draws))
        _bring_up(self, online)

    def advance(self: Any, schedule: bytes) -> None:
        if not self.held:
            _guard(self, lambda: self.machine.run_bytes(schedule))
            return
        byte = iter(schedule)
        _guard(self, lambda: run_chosen(self.machine, len(schedule),
                                        lambda r: (u := _unheld(self, r))[next(byte) % len(u)]))

    def advance_pct(self: Any, order: list[int], change_points: list[int], steps: int) -> None:
        pct = PCT.fixed(order, change_points)
        rng = random.Random(0)
        _guard(self, lambda: run_chosen(self.machine, steps, lambda r: pct.pick(_unheld(self, r), rng)))

    def advance_bounded(self: Any, first: int, preempt_at: list[int], steps: int) -> None:
        _guard(self, lambda: preempting_block(self.machine, first, preempt_at, steps))

    def teardown(self: Any) -> None:
        _teardown(self, recorder, targets)

    return {
        "__init__": __init__,
        "boot": initialize(seed=st.integers(0, 2**32 - 1), draws=_DRAWS,
                           online=st.integers(0, ncpus - 1))(boot),
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


#: ``then`` is "stay" one time in six: a CPU left busy keeps others from starting operations.
_THEN = st.one_of(st.sampled_from(THEN), st.sampled_from(THEN[1:]))


@attrs.define
class Accesses(AccessLog):
    """The example's access log (:class:`fuzzer._interleave.AccessLog`), counting each CPU's
    accesses too: ``then="to next access"`` stops a CPU right after its next one."""

    by_cpu: dict[int, int] = attrs.Factory(dict)

    def note(self, cpu: Cpu, key: Any, write: bool) -> None:
        self.by_cpu[cpu.n] = self.by_cpu.get(cpu.n, 0) + 1
        super().note(cpu, key, write)


def _then(sm: Any, cpu: Cpu, then: str) -> None:
    """What ``cpu``, just given work, does next: see :data:`THEN`."""
    if then == "stay":
        return
    _guard(sm, lambda: run_alone(sm.machine, cpu, to_access=then != "alone"))
    if then != "alone" and cpu.stack and cpu not in sm.held:
        sm.held.append(cpu)


def _unheld(sm: Any, runnable: list[Cpu]) -> list[Cpu]:
    """The runnable CPUs a schedule may pick: those not held, else (none other can run) the
    held ones. A held CPU whose work is done is let go."""
    sm.held[:] = [c for c in sm.held if c.stack]
    return [c for c in runnable if c not in sm.held] or runnable


def run_alone(m: Machine, cpu: Cpu, *, to_access: bool, most: int = ALONE_MOST) -> None:
    """Advance ``cpu`` alone (every other CPU paused) until it blocks or is done, or, with
    ``to_access``, just after its next access of a shared object; recorded as a ``run`` step."""
    log = m.accesses
    done: list[int] = []
    try:
        while len(done) < most and cpu.runnable():
            before = log.by_cpu.get(cpu.n, 0) if isinstance(log, Accesses) else 0
            done.append(cpu.n)
            m.advance(cpu)
            if to_access and isinstance(log, Accesses) and log.by_cpu.get(cpu.n, 0) != before:
                break
    finally:
        m._record_run(done)


def _run_holding(sm: Any, most: int = ALONE_MOST) -> None:
    """Run the CPUs that are not held, in turn, until none can (blocked or done); recorded
    as a ``run`` step. What ``pause`` and the end of an example do while CPUs are held."""
    m: Machine = sm.machine
    done: list[int] = []
    try:
        while len(done) < most:
            others = [c for c in m.runnable() if c not in sm.held]
            if not others:
                break
            cpu = others[len(done) % len(others)]
            done.append(cpu.n)
            m.advance(cpu)
    finally:
        m._record_run(done)


def _bring_up(sm: Any, n: int) -> None:
    """Bring ``n`` CPUs online right after the boot, each alone to the end of its bring-up."""
    m: Machine = sm.machine
    for _ in range(n):
        up = next((c for c in m.cpus if m.can_online(c)), None)
        if up is None:
            break
        _guard(sm, functools.partial(m.cpu_up, up))
        _then(sm, up, "alone")


def _hotplug_rules(ncpus: int) -> dict[str, Any]:
    """Bring a CPU online or take one offline; the CPU then does what ``then`` draws."""

    def hotplug(self: Any, i: int, then: str, can: str, act: str) -> None:
        m = self.machine
        cpus = [c for c in m.cpus if getattr(m, can)(c)]
        cpu = cpus[i % len(cpus)]
        _guard(self, lambda: getattr(m, act)(cpu))
        _then(self, cpu, then)

    def cpu_online(self: Any, i: int, then: str) -> None:
        hotplug(self, i, then, "can_online", "cpu_up")

    def cpu_offline(self: Any, i: int, then: str) -> None:
        hotplug(self, i, then, "can_offline", "cpu_down")

    return {
        "cpu_online": precondition(
            lambda self: any(self.machine.can_online(c) for c in self.machine.cpus)
        )(rule(i=st.integers(0, ncpus - 1), then=_THEN)(cpu_online)),
        "cpu_offline": precondition(
            lambda self: any(self.machine.can_offline(c) for c in self.machine.cpus)
        )(rule(i=st.integers(0, ncpus - 1), then=_THEN)(cpu_offline)),
    }


def _schedule_rules() -> dict[str, Any]:
    """Rules that hold CPUs back: ``run_alone`` advances one busy CPU alone (until it blocks
    or is done, or to its next access and held there, as :data:`THEN`); ``pause`` holds one
    busy CPU and runs the others until none can."""
    index = st.integers(0, 2**16)

    def alone(self: Any, cpu_index: int, then: str) -> None:
        runnable = self.machine.runnable()
        _then(self, runnable[cpu_index % len(runnable)], then)

    def pause(self: Any, cpu_index: int) -> None:
        busy = self.machine.busy()
        held = busy[cpu_index % len(busy)]
        if held not in self.held:
            self.held.append(held)
        _guard(self, lambda: _run_holding(self))

    alone.__name__, pause.__name__ = "run_alone", "pause"
    return {
        "run_alone": precondition(lambda self: bool(self.machine.runnable()))(
            rule(cpu_index=index, then=st.sampled_from(THEN[1:]))(alone)),
        "pause": precondition(lambda self: len(self.machine.busy()) >= 2)(
            rule(cpu_index=index)(pause)),
    }


def _teardown(sm: Any, recorder: RoutineRecorder, targets: tuple[bool, bool]) -> None:
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
                if sm.held:  # held CPUs go last
                    _guard(sm, lambda: _run_holding(sm, most=100 * ALONE_MOST))
                _guard(sm, m.finish)
    finally:
        channel.stats.count(m.nsteps)
        if m.warnings:
            channel.stats.note_warned(m.warned_past())
        entered = recorder.end_example()
        pairs = m.accesses.pairs if isinstance(m.accesses, AccessLog) else {}
        channel.pairs.update(pairs)
        channel.stats.pairs = len(channel.pairs)
        if channel.events.example_finish is not None:
            last = channel.last[1] if channel.last is not None and sm.failed else None
            channel.events.example_finish(m, last)
        # Nothing to target in a machine stepped by hand, outside Hypothesis.
        guide, interleave = targets if hypothesis.currently_in_test_context() else (False, False)
        if guide:
            hypothesis.target(float(entered), label=TARGET_LABEL)
        if interleave:
            hypothesis.target(float(len(pairs)), label=PAIRS_LABEL)


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
        if not faults.can_arm(m, cpu_index, site):
            self.failed = True  # the example is rejected: the teardown does not finish it
            hypothesis.reject()
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


#: The k of an ``("access", k)`` stop, by the draw's value (what it shrinks to first): the
#: first three accesses of an operation are where the deep set's races turn (a hit's trap
#: fetch and lookup, an unregister's unhash, a register's publish and its arming store, its
#: 3rd; a dec's read), so they make seven stops in eight; before (1, 1, 1, 2, 2, 3, 4, 6) a
#: register stopped after its arming store was one in eight.
ACCESS_STOPS = (1, 1, 1, 2, 2, 3, 3, 4)
#: Where a racing operation's CPU stops (:func:`run_to`): right after its k-th access of a
#: shared object (what a race turns on; the first accesses likelier), after n emulated steps
#: (a point between two accesses: after a grace period, before the store that follows), or
#: when it blocks or is done (``end``).
_STOP_ACCESS = st.integers(0, 7).map(lambda v: ("access", ACCESS_STOPS[v]))
#: A step stop within 16 steps half the time: an unregister whose grace period is over
#: but which has not disarmed yet is 3-13 steps in (kprobe_rcu_too_early, traced: the
#: disarm maps the text before its store).
_STOP_STEPS = st.one_of(st.integers(1, 16), st.integers(1, 64)).map(lambda n: ("steps", n))


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices`` (weight, strategy), the first likeliest to shrink to: a draw of
    which, then its value. Not ``st.one_of(a, a, a, b)``: ``one_of`` flattens nested
    ``one_of`` branches and drops repeated ones, so that draws ``a`` half the time (and
    ``st.one_of(e, e, e, st.one_of(a, a, a, b))`` each of ``e``, ``a``, ``b``'s two
    branches a quarter: a racing operation ran to its end one time in four, not three)."""
    table = tuple(s for w, s in choices for _ in range(w))
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


_STOP = weighted((3, _STOP_ACCESS), (1, _STOP_STEPS))
_END = st.just(("end", 0))
_STOP_OR_END = weighted((3, _END), (1, _STOP))


def run_to(m: Machine, cpu: Cpu, stop: tuple[str, int], most: int = ALONE_MOST) -> None:
    """Advance ``cpu`` alone until it blocks or is done, or earlier at ``stop``: just after
    its k-th access of a shared object (``("access", k)``) or after n steps (``("steps", n)``).
    Recorded as a ``run`` step."""
    how, n = stop
    log = m.accesses
    start = log.by_cpu.get(cpu.n, 0) if isinstance(log, Accesses) else 0
    done: list[int] = []
    try:
        while len(done) < most and cpu.runnable():
            if how == "steps" and len(done) >= n:
                break
            done.append(cpu.n)
            m.advance(cpu)
            if how == "access" and isinstance(log, Accesses) and log.by_cpu.get(cpu.n, 0) - start >= n:
                break
    finally:
        m._record_run(done)


def _running(m: Machine, task: Any) -> bool:
    return any(a.task is task for c in m.cpus for a in c.stack)


def objects(sm: Any, family: list[Operation]) -> list[tuple[Operation, dict[str, Any]]]:
    """The objects the example made with ``family``'s operations (one plugin's), the latest
    last, each once: the arguments of each that returned success and
    :attr:`~fuzzer.Operation.makes` (a probe registered) and no later one
    :attr:`~fuzzer.Operation.unmakes`; if none of them makes, of every one that succeeded."""
    makers = any(op.makes for op in family)
    seen: dict[Any, tuple[Operation, dict[str, Any]]] = {}
    for op, args, task in sm.started:
        if op not in family or task.result or _running(sm.machine, task):
            continue
        if op.unmakes:
            for key, (made_by, made) in list(seen.items()):
                if _names(op, args, made_by, made):
                    del seen[key]
        if op.makes or not makers:
            key = (op.name, tuple(sorted((k, repr(v)) for k, v in args.items())))
            seen.pop(key, None)
            seen[key] = (op, args)
    return list(seen.values())


def _alike(made_by: Operation) -> dict[int, str]:
    """``made_by``'s arguments by the identity of their declared type: an operation's argument
    declared with the same object (kprobes' probe site) names the same thing."""
    return {id(a): k for k, a in made_by.args.items()}


def _names(op: Operation, args: dict[str, Any], made_by: Operation, made: dict[str, Any]) -> bool:
    """``op`` with ``args`` names the object ``made_by`` made with ``made``: every argument
    the two declare alike (the same declared type) has one value."""
    same = _alike(made_by)
    return all(made[same[id(a)]] == args[k] for k, a in op.args.items() if id(a) in same)


def _plugin(op: Operation) -> str:
    return op.name.rsplit(".", 1)[0]


def _object_args(data: Any, sm: Any, op: Operation, obj: tuple[Operation, dict[str, Any]]) -> dict[str, Any]:
    """``op``'s arguments on the object ``obj``: each argument ``obj``'s operation declares
    too (the same declared type: kprobes' probe site) takes its value three times in four,
    else another value (:func:`_other`: a second probe at the site); the rest are drawn as
    the operation's rule draws them."""
    made_by, made = obj
    same = _alike(made_by)
    args: dict[str, Any] = {}
    for k, a in op.args.items():
        if id(a) not in same:
            args[k] = data.draw(_reusable(a, strategy_of(a)), label=k)
        elif data.draw(st.integers(0, 3), label=f"fresh {k}"):
            args[k] = made[same[id(a)]]
        else:
            args[k] = data.draw(_other(a, made[same[id(a)]]), label=k)
    return args


def _other(declared: Any, value: Any) -> st.SearchStrategy[Any]:
    """A value of the declared argument other than ``value``, where its values can be
    listed (an ``IntRange`` of up to 64, a ``Choice``, a ``Boolean``): kprobes' second probe
    at a site is ``probe`` 1 whenever the first is 0, where any value was 0 half the time.
    Else any value."""
    values: tuple[Any, ...] = ()
    if isinstance(declared, IntRange) and declared.hi - declared.lo < 64:
        values = tuple(range(declared.lo, declared.hi + 1))
    elif isinstance(declared, Choice):
        values = declared.values
    elif isinstance(declared, Boolean):
        values = (False, True)
    others = tuple(v for v in values if v != value)
    return st.sampled_from(others) if others else strategy_of(declared)


def _race_start(sm: Any, data: Any, family: list[Operation], obj: Any,
                stop: Any) -> tuple[Cpu, Any, tuple[Operation, dict[str, Any]]]:
    """Start one of ``family`` on an idle CPU (on ``obj``, if given) and run it alone to
    ``stop``: its CPU, the stop, and the operation with its arguments."""
    m: Machine = sm.machine
    ops = family
    if obj is not None and obj[0].makes:
        naming = [op for op in family if _declares_alike(op, obj[0])]
        if naming != family and data.draw(_NAMING, label="an operation naming it"):
            ops = naming
    op = data.draw(st.sampled_from(ops), label="operation")
    args = _object_args(data, sm, op, obj) if obj is not None else {
        k: data.draw(strategy_of(a), label=k) for k, a in op.args.items()}
    idle = [c for c in m.cpus if m.can_start(c)]
    cpu = idle[data.draw(st.integers(0, m.model.run.cpus - 1), label="cpu") % len(idle)]
    how = data.draw(stop, label="stop")
    task = _guard(sm, lambda: m.start(cpu, op, args))
    _remember(m, op, args)
    sm.started.append((op, args, task))
    _guard(sm, lambda: run_to(m, cpu, how))
    return cpu, how, (op, args)


#: On a made object, the racing operation is one that names it (declares an argument alike
#: with its maker: kprobes' site, not ``kprobes.enabled``'s ``on``) three times in four.
_NAMING = st.integers(0, 3).map(lambda v: v != 0)


def _declares_alike(op: Operation, maker: Operation) -> bool:
    """``op`` declares an argument alike with ``maker`` (the same declared type)."""
    same = _alike(maker)
    return any(id(a) in same for a in op.args.values())


def _drain(sm: Any) -> None:
    """Let every held CPU go and run all CPUs in turn until none can (blocked or done)."""
    sm.held.clear()
    _guard(sm, lambda: _run_holding(sm, most=10 * ALONE_MOST))


def _idle(m: Machine) -> int:
    return sum(m.can_start(c) for c in m.cpus)


def _race_round(sm: Any, data: Any, family: list[Operation]) -> bool:
    """One race on an object of ``family``'s plugin (see :func:`_race_rules`); False when
    fewer than two CPUs are free for it."""
    m: Machine = sm.machine
    _drain(sm)
    if _idle(m) < 2:
        return False
    makers = [op for op in family if op.makes] or family
    if data.draw(_RACE_THE_MAKING, label="race the making"):
        # The object is the one being made: its maker stopped on the way (a register
        # stopped after its arming store), the second operation on its arguments.
        first, _, obj = _race_start(sm, data, makers, None, _STOP)
    else:
        made = objects(sm, family)
        if not made or data.draw(st.booleans(), label="make an object"):
            _race_start(sm, data, makers, None, _END)
            made = objects(sm, family)
            if not made or _idle(m) < 2:
                return True
        obj = made[-1] if not data.draw(st.booleans(), label="an earlier object") \
            else data.draw(st.sampled_from(made[::-1]), label="object")
        first, _, _ = _race_start(sm, data, family, obj, _STOP)
    if not first.stack or not _idle(m):
        return True
    second, how, _ = _race_start(sm, data, family, obj, _STOP_OR_END)
    stopped = second
    if how[0] != "end" and second.stack:
        _guard(sm, lambda: run_to(m, first, ("end", 0)))
    else:
        stopped = first
    if stopped.stack and stopped not in sm.held:
        sm.held.append(stopped)
    return True


#: The most races one ``race_*`` rule runs, one after another.
RACE_ROUNDS = 16
#: A race on the object being made one time in four: its maker (``register``) is the first
#: operation, stopped, and the second works on its arguments (a hit at the probe's site).
_RACE_THE_MAKING = st.integers(0, 3).map(lambda v: v == 3)


def _race_rules(model: Model) -> dict[str, Any]:
    """One ``race_<plugin>`` rule per plugin with operations: up to :data:`RACE_ROUNDS`
    rounds, each on a quiet machine (every CPU run until none can) and an object the
    example made with that plugin's operations -- the arguments of one that returned
    success, a probe ``register`` returned, or one made first -- two operations of the
    plugin on it, on two CPUs: the first runs alone to a stop (:data:`_STOP`: after an
    access, say its trap's fetch), the second alone to its end or a stop of its own; if it
    stopped, the first runs alone on until it blocks or is done. The CPU left stopped is
    held (runs only when no other can). One round in four races the making instead: the
    first operation is a maker (``register``) on fresh arguments, stopped, and the second
    works on its arguments. A hit looked up before an unregister and single-stepping after
    it; an unregister that ends its grace period, lets a hit look the probe up, and frees
    its slot; a register stopped after arming, before hashing, and a hit at its site."""
    rules: dict[str, Any] = {}
    for plugin in dict.fromkeys(_plugin(op) for op in model.operations):
        family = [op for op in model.operations if _plugin(op) == plugin]

        def race(self: Any, data: Any, family: list[Operation] = family) -> None:
            _two_online(self)
            for _ in range(data.draw(st.integers(1, RACE_ROUNDS), label="rounds")):
                if not _race_round(self, data, family):
                    return

        race.__name__ = "race_" + _ident(plugin)
        rules[race.__name__] = precondition(_can_race)(rule(data=st.data())(race))
    return rules


def _can_race(sm: Any) -> bool:
    m: Machine = sm.machine
    return m.booted and (sum(c.online for c in m.cpus) >= 2 or any(m.can_online(c) for c in m.cpus))


def _two_online(sm: Any) -> None:
    """A race needs two CPUs: on a machine with one online (the boot brought up no other,
    which its draw shrinks to: a third of the examples), the race rule brings one up first,
    alone to the end of its bring-up, once the machine is quiet."""
    m: Machine = sm.machine
    lacking = 2 - sum(c.online for c in m.cpus)
    if lacking > 0:
        _drain(sm)
        _bring_up(sm, lacking)


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def _op_rule(op: Operation, ncpus: int) -> Any:
    def start(self: Any, cpu_index: int, then: str, **args: Any) -> None:
        m: Machine = self.machine
        idle = [c for c in m.cpus if m.can_start(c)]
        cpu = idle[cpu_index % len(idle)]
        task = _guard(self, lambda: m.start(cpu, op, args))
        _remember(m, op, args)
        self.started.append((op, args, task))
        _then(self, cpu, then)

    start.__name__ = "start_" + _ident(op.name)
    reserved = {"cpu_index", "then", "target", "targets", "self"} & set(op.args)
    if reserved:
        raise UsageError(
            f"operation {op.name!r}: argument name(s) {', '.join(sorted(reserved))} are reserved;"
            " rename them"
        )
    strategies: dict[str, Any] = {"cpu_index": st.integers(0, ncpus - 1), "then": _THEN,
                  **{k: _reusable(a, strategy_of(a)) for k, a in op.args.items()}}
    return precondition(lambda self: any(self.machine.can_start(c) for c in self.machine.cpus))(
        rule(**strategies)(start)
    )


def _remember(m: Machine, op: Operation, args: dict[str, Any]) -> None:
    """Note the values an operation started with, each declared argument's latest last."""
    for k, value in args.items():
        used = m.arg_pool.setdefault(id(op.args[k]), [])
        if value in used:
            used.remove(value)
        used.append(value)


def _reusable(declared: Any, fresh: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """An operation argument, once the example has started operations with values of the
    same declared argument (``declared``, shared by kprobes' operations for the probe site):
    one time in four a fresh draw (what it shrinks to), half the time the value used last,
    else any value used. (A fresh draw half the time and else any value used, as the walk
    draws, left a hit on a probe armed earlier in the example to about one example in a
    hundred: the values spread over nine sites.)"""
    key = id(declared)

    def given(sm: Any) -> st.SearchStrategy[Any]:
        m = getattr(sm, "machine", None)
        pool = tuple(m.arg_pool.get(key, ())) if isinstance(m, Machine) else ()
        if not pool:
            return fresh
        return st.integers(0, 3).flatmap(
            lambda how: fresh if how == 0 else st.just(pool[-1]) if how < 3 else st.sampled_from(pool[::-1]))

    return st.runner(default=None).flatmap(given)


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
    """The state machine in runs of :data:`BATCH` examples, each run seeded from the
    campaign's seed and stopped from inside when the budget is spent; a failure comes back
    shrunk by Hypothesis."""

    name = "hypothesis"
    description = "hypothesis (RuleBasedStateMachine, shrunk by Hypothesis then step by step)"
    guidance = "hypothesis.target on the distinct modelled routines each example enters"

    def search(self, search: Search) -> Found:
        channel = Channel(stats=search.stats, known=search.known, events=search.events,
                          check=_checker(search))
        machine_cls = state_machine_class(search.model, channel, guide=search.guide,
                                          interleave=search.interleave)
        batch = 0
        while not search.exhausted():
            hypothesis.seed(_batch_seed(search.seed, batch))(machine_cls)
            try:
                # Always a whole run, stopped from inside when the budget is spent: a run's
                # examples do not depend on how many of them the budget leaves.
                with local_constants_off():  # nor on what the process imported before
                    run_state_machine_as_test(machine_cls, settings=_settings(search, BATCH, batch))
            except Stop:
                # Spent while Hypothesis shrank a failure it had found: that failure, unshrunk
                # (the step shrinker and the replay check still run on it), never lost.
                first = search.stats.first_failure
                return first if isinstance(first, Finding) else None
            except Unsatisfiable:
                pass  # every example of the run met a known finding: search on
            except (KernelFailure, PluginError, ModelLimitation) as exc:
                caught = channel.caught(exc)
                if caught is None:
                    raise
                search.fault_steps = caught[1]
                return caught[0]
            batch += 1
        return None


def _checker(search: Search) -> Callable[[], None]:
    """Before each example: :class:`Stop` once the budget is spent or the search should stop;
    progress reported every :data:`~fuzzer._engine.search.REPORT_EVERY` seconds."""
    next_report = [search.started + REPORT_EVERY]

    def check() -> None:
        if search.exhausted():
            raise Stop
        now = time.monotonic()
        if now >= next_report[0]:
            next_report[0] = now + REPORT_EVERY
            if search.report():
                raise Stop

    return check


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
