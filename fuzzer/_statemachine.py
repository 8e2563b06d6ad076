"""The interleaving state machine: a Hypothesis RuleBasedStateMachine built from the model.

Rules: boot (initialize), bring a CPU online or offline, start an operation
on a CPU (one rule per plugin operation, so Hypothesis can switch operations
on and off per example), deliver an interrupt, and advance CPUs. ``advance``
draws a block of schedule bytes, one emulated step each: a rule costs
Hypothesis ~100 us, an emulated step ~1 us, so one rule per step would
spend nearly all its time outside the emulator. Bytes shrink towards zero,
which means "the lowest-numbered runnable CPU", so shrunk schedules read
simply. Every rule records a :class:`fuzzer.Step`; the steps alone replay
the example without Hypothesis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import hypothesis
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from fuzzer._coverage import RoutineRecorder
from fuzzer._errors import KernelFailure, PluginError, Signature, UsageError
from fuzzer._machine import Machine
from fuzzer._model import Model
from fuzzer._specs import InterruptSource, Operation

#: Schedule bytes drawn per ``advance`` rule.
SCHEDULE_BLOCK = 48


@attrs.define
class Stats:
    """What a campaign has done so far (read by the progress line)."""

    examples: int = 0
    """Examples run: state-machine runs, each from boot to its end-state checks."""
    emulated_steps: int = 0
    failures_seen: int = 0
    first_failure: KernelFailure | PluginError | None = None
    on_first_failure: Callable[[BaseException], None] | None = None
    signatures: set[Signature] = attrs.Factory(set)
    """Distinct kernel failures seen (shrinking meets others on its way)."""
    routines: set[str] = attrs.Factory(set)
    """Modelled routines any example entered (the cheap routine signal)."""

    def count(self, nsteps: int) -> None:
        self.examples += 1
        self.emulated_steps += nsteps

    def note_failure(self, exc: BaseException) -> None:
        """A failing example (counted by :meth:`count` once it ends): tally it, and report
        the first one to ``on_first_failure``."""
        self.failures_seen += 1
        if isinstance(exc, KernelFailure):
            self.signatures.add(exc.signature)
        if self.first_failure is None:
            self.first_failure = exc  # type: ignore[assignment]
            if self.on_first_failure is not None:
                self.on_first_failure(exc)


def _guard(sm: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` against the machine, attaching the recorded steps to any finding."""
    try:
        return fn()
    except (KernelFailure, PluginError) as exc:
        exc.steps = tuple(getattr(getattr(sm, "machine", None), "steps", ()))
        sm.failed = True
        sm.stats.note_failure(exc)
        raise


#: The ``hypothesis.target`` label of guided runs.
TARGET_LABEL = "modelled routines entered"


def build_state_machine(model: Model, stats: Stats, *, guide: bool = False) -> type[RuleBasedStateMachine]:
    """A RuleBasedStateMachine class for ``model``, one rule per operation.

    Every example's routines are recorded into ``stats.routines``. With
    ``guide``, each example also reports how many distinct routines it
    entered to ``hypothesis.target``, so Hypothesis's targeted phase prefers
    examples that reach more of the model.
    """
    ncpus = model.run.cpus
    recorder = RoutineRecorder(model.routines, model.routine_infos)
    recorder.reached = stats.routines
    recorded = attrs.evolve(model, routines=recorder.table)

    def __init__(self: Any) -> None:
        RuleBasedStateMachine.__init__(self)
        self.stats = stats
        recorder.example.clear()
        self.machine = _guard(self, lambda: Machine(recorded))

    def boot(self: Any, seed: int) -> None:
        _guard(self, lambda: self.machine.boot(seed))

    def _pick(cands: list[Any], i: int) -> Any:
        return cands[i % len(cands)]

    def cpu_online(self: Any, i: int) -> None:
        m = self.machine
        cpu = _pick([c for c in m.cpus if m.can_online(c)], i)
        _guard(self, lambda: m.cpu_up(cpu))

    def cpu_offline(self: Any, i: int) -> None:
        m = self.machine
        cpu = _pick([c for c in m.cpus if m.can_offline(c)], i)
        _guard(self, lambda: m.cpu_down(cpu))

    def advance(self: Any, schedule: bytes) -> None:
        _guard(self, lambda: self.machine.run_bytes(schedule))

    def teardown(self: Any) -> None:
        m = getattr(self, "machine", None)
        if m is None:
            return
        try:
            # Not after a failure: one raised outside the scheduler (an exception-entry
            # check) leaves ``m.failure`` unset, and finishing would report a second one.
            if m.failure is None and m.booted and not getattr(self, "failed", False):
                _guard(self, m.finish)
        finally:
            stats.count(m.nsteps)
            entered = recorder.end_example()
            if guide:
                hypothesis.target(float(entered), label=TARGET_LABEL)

    ns: dict[str, Any] = {
        "__init__": __init__,
        "boot": initialize(seed=st.integers(0, 2**32 - 1))(boot),
        "cpu_online": precondition(
            lambda self: any(self.machine.can_online(c) for c in self.machine.cpus)
        )(rule(i=st.integers(0, ncpus - 1))(cpu_online)),
        "cpu_offline": precondition(
            lambda self: any(self.machine.can_offline(c) for c in self.machine.cpus)
        )(rule(i=st.integers(0, ncpus - 1))(cpu_offline)),
        "advance": rule(schedule=st.binary(min_size=1, max_size=SCHEDULE_BLOCK))(advance),
        "teardown": teardown,
    }
    for op in model.operations:
        ns["start_" + _ident(op.name)] = _op_rule(op, ncpus)
    for src in model.interrupts:
        ns["irq_" + _ident(src.name)] = _irq_rule(src, ncpus)
    return type("KernelStateMachine", (RuleBasedStateMachine,), ns)


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
    strategies: dict[str, Any] = {"cpu_index": st.integers(0, ncpus - 1), **op.args}
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
