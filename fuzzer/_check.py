"""Bounded exhaustive checking: every schedule of a small scenario with at most K preemptions.

A scenario is a few operations on named CPUs::

    # setup: run one after another, to completion, before anything else
    setup 0 kprobes.register site=0
    # the concurrent part: each CPU runs its operations in order, all CPUs at once
    cpu 1 kprobes.hit site=0
    cpu 0 kprobes.unregister site=0

The checker boots (kernel seed 0), brings every named CPU online, runs the
setup, starts each CPU's first operation and then explores the schedules of
the concurrent part the way CHESS does (Musuvathi and Qadeer, PLDI 2007):
depth first, a CPU runs on until it blocks or finishes unless a preemption
is spent, and at most ``K`` preemptions per schedule. Schedules are replayed
from the start (generators cannot be copied), so a schedule is its list of
choices and a failure is an ordinary list of steps, shrunk and reported as
the fuzzer's are.

Pruning (``prune=True``): at each choice point the machine's state is
fingerprinted (:func:`fingerprint`: memory, locks, every plugin's state, each
CPU's registers and the position and plain local values of every modelled
routine it is in); a state already reached with at least as many
preemptions left is not explored again, since everything after it was.
The fingerprint abstracts objects by their plain fields, so two states it
confuses would have to differ only in object identity.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from fuzzer._errors import KernelFailure, UsageError
from fuzzer._machine import Machine
from fuzzer._model import Model
from fuzzer._steps import Step


@attrs.frozen
class Call:
    """One operation of a scenario: ``cpu`` runs ``op(**args)``."""

    cpu: int
    op: str
    args: tuple[tuple[str, Any], ...] = ()


@attrs.frozen
class Scenario:
    """What ``check`` explores: setup calls, then each CPU's calls concurrently."""

    setup: tuple[Call, ...] = ()
    calls: tuple[Call, ...] = ()

    @property
    def cpus(self) -> list[int]:
        return sorted({c.cpu for c in (*self.setup, *self.calls)})

    def threads(self) -> dict[int, list[Call]]:
        out: dict[int, list[Call]] = {}
        for c in self.calls:
            out.setdefault(c.cpu, []).append(c)
        return out


def parse_call(text: str) -> Call:
    """``1:kprobes.hit(site=0)`` or ``1 kprobes.hit site=0`` -> a :class:`Call`."""
    text = text.strip()
    cpu_text, sep, rest = text.partition(":") if ":" in text.split("(")[0] else text.partition(" ")
    if not sep or not cpu_text.strip().isdigit():
        raise UsageError(f"scenario: {text!r} does not start with a CPU number"
                         " (write CPU:op(arg=value, ...) or CPU op arg=value ...)")
    rest = rest.strip()
    if "(" in rest:
        name, _, inner = rest.partition("(")
        if not inner.endswith(")"):
            raise UsageError(f"scenario: {text!r}: unbalanced parentheses")
        pairs = [p for p in inner[:-1].split(",") if p.strip()]
    else:
        name, *pairs = rest.split()
    args = []
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise UsageError(f"scenario: {text!r}: argument {pair.strip()!r} is not name=value")
        try:
            args.append((key.strip(), ast.literal_eval(value.strip())))
        except (ValueError, SyntaxError):
            raise UsageError(f"scenario: {text!r}: {value.strip()!r} is not a number, string"
                             " or boolean") from None
    return Call(int(cpu_text), name.strip(), tuple(args))


def parse_scenario(text: str) -> Scenario:
    """A scenario file: ``setup CPU op k=v`` and ``cpu CPU op k=v`` lines, ``#`` comments."""
    setup: list[Call] = []
    calls: list[Call] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind not in ("setup", "cpu"):
            raise UsageError(f"scenario line {n}: {line!r} starts with neither 'setup' nor 'cpu'")
        (setup if kind == "setup" else calls).append(parse_call(rest))
    if not calls:
        raise UsageError("scenario: no 'cpu' line, nothing runs concurrently")
    return Scenario(tuple(setup), tuple(calls))


def validate(model: Model, scenario: Scenario) -> None:
    """Every CPU exists and every operation is the model's: else one clear usage error."""
    names = [op.name for op in model.operations]
    for call in (*scenario.setup, *scenario.calls):
        if not 0 <= call.cpu < model.run.cpus:
            raise UsageError(f"scenario: CPU {call.cpu} does not exist (the machine has"
                             f" {model.run.cpus}; use --cpus)")
        if call.op not in names:
            raise UsageError(f"scenario: unknown operation {call.op!r}; known: {', '.join(names)}")


@attrs.frozen
class CheckResult:
    """What one exploration found."""

    schedules: int
    """Complete schedules explored (each ran to the end or to a failure)."""
    pruned: int
    """Choice points not explored again because their state was seen with as much budget."""
    preemptions: int
    seconds: float
    steps: tuple[Step, ...] | None = None
    """The first failure's steps (None: no failure), shrunk when asked."""
    failure: KernelFailure | None = None
    complete: bool = True
    """False when ``max_schedules`` stopped the exploration early."""


class Explorer:
    """Depth-first exploration of a scenario's schedules, replayed from the start each time."""

    def __init__(self, model: Model, scenario: Scenario, *, preemptions: int,
                 prune: bool = True) -> None:
        validate(model, scenario)
        self.model = model
        self.scenario = scenario
        self.bound = preemptions
        self.prune = prune
        self.seen: dict[Any, int] = {}
        self.schedules = 0
        self.pruned = 0
        self.machine: Machine | None = None
        """The machine of the schedule being explored."""

    def start(self) -> tuple[Machine, dict[int, list[Call]]]:
        """A machine with the setup done and each CPU's first call started."""
        m = self.machine = Machine(self.model)
        m.boot(0)
        for n in self.scenario.cpus:
            if n != 0:
                m.cpu_up(m.cpus[n])
                _run_alone(m, n)
        for call in self.scenario.setup:
            m.start(m.cpus[call.cpu], self.model.operation(call.op), dict(call.args))
            _run_alone(m, call.cpu)
        queues = {n: list(calls) for n, calls in self.scenario.threads().items()}
        for n in queues:
            self._next(m, queues, n)
        return m, queues

    def _next(self, m: Machine, queues: dict[int, list[Call]], n: int) -> None:
        cpu = m.cpus[n]
        if not cpu.stack and queues.get(n):
            call = queues[n].pop(0)
            m.start(cpu, self.model.operation(call.op), dict(call.args))

    def _advance(self, m: Machine, queues: dict[int, list[Call]], n: int) -> None:
        from fuzzer._schedulers import run_chosen

        run_chosen(m, 1, lambda runnable: m.cpus[n])
        self._next(m, queues, n)

    def options(self, runnable: Sequence[int], last: int | None, used: int) -> list[tuple[int, int]]:
        """(CPU, preemptions used after choosing it): the current CPU first (no preemption)."""
        if last is not None and last in runnable:
            out = [(last, used)]
            if used < self.bound:
                out += [(n, used + 1) for n in runnable if n != last]
            return out
        return [(n, used) for n in runnable]

    def run(self, choices: Sequence[int]) -> tuple[Machine, dict[int, list[Call]]]:
        m, queues = self.start()
        for n in choices:
            self._advance(m, queues, n)
        return m, queues

    def explore(self, *, max_schedules: int | None = None) -> tuple[Machine | None, bool]:
        """Explore; return the failing machine (None if none failed) and whether it finished."""
        stack: list[tuple[tuple[int, ...], int | None, int]] = [((), None, 0)]
        while stack:
            if max_schedules is not None and self.schedules >= max_schedules:
                return None, False
            choices, last, used = stack.pop()
            try:
                m, queues = self.run(choices)
                self._extend(m, queues, list(choices), last, used, stack)
            except KernelFailure:
                self.schedules += 1
                return self.machine, True
        return None, True

    def _extend(self, m: Machine, queues: dict[int, list[Call]], choices: list[int],
                last: int | None, used: int, stack: list[Any]) -> None:
        """Run one schedule on from its prefix, pushing the alternatives met on the way."""
        while True:
            runnable = [c.n for c in m.runnable()]
            if not runnable:
                m.finish()  # a deadlock if some CPU is still busy; end-state checks
                self.schedules += 1
                return
            opts = self.options(runnable, last, used)
            if len(opts) > 1 and self.prune:
                key = (fingerprint(m), last, tuple(len(q) for q in queues.values()))
                if self.seen.get(key, self.bound + 1) <= used:
                    self.pruned += 1
                    return
                self.seen[key] = used
            for n, u in reversed(opts[1:]):
                stack.append(((*choices, n), n, u))
            n, used = opts[0]
            last = n
            choices.append(n)
            self._advance(m, queues, n)


def _run_alone(m: Machine, n: int) -> None:
    """Run CPU ``n`` alone until its work is done, recorded (so the steps replay)."""
    from fuzzer._schedulers import run_chosen

    cpu = m.cpus[n]
    while cpu.stack:
        if not cpu.runnable():
            raise UsageError(f"scenario setup: CPU {n} blocked with nothing else running")
        run_chosen(m, 1, lambda runnable: cpu)


def check(model: Model, scenario: Scenario, *, preemptions: int, prune: bool = True,
          shrink_seconds: float = 10.0, max_schedules: int | None = None) -> CheckResult:
    """Explore every schedule of ``scenario`` with at most ``preemptions`` preemptions."""
    started = time.monotonic()
    ex = Explorer(model, scenario, preemptions=preemptions, prune=prune)
    m, complete = ex.explore(max_schedules=max_schedules)
    steps: tuple[Step, ...] | None = None
    failure = None
    if m is not None:
        failure = m.failure
        steps = tuple(m.steps)
        if shrink_seconds > 0 and failure is not None:
            steps = _shrink(model, steps, failure, started + (time.monotonic() - started) + shrink_seconds)
    return CheckResult(ex.schedules, ex.pruned, preemptions, time.monotonic() - started, steps,
                       failure, complete)


def _shrink(model: Model, steps: tuple[Step, ...], failure: KernelFailure,
            deadline: float) -> tuple[Step, ...]:
    from fuzzer._engine.shrink import Shrinker

    return tuple(Shrinker(model, steps, failure.signature, deadline=deadline).shrink())


# -- the state fingerprint -------------------------------------------------------------------


def fingerprint(m: Machine) -> int:
    """A hash of everything a later step of ``m`` can depend on (see the module docstring)."""
    parts: list[Any] = [tuple(sorted(m.mem.items())), m.booted, m.hotplug_busy,
                        tuple(sorted(m.static_keys.items())), _plain(m.state, 3)]
    for c in m.cpus:
        parts.append((c.online, c.irqs_enabled, c.preempt_count, c.irq_depth,
                      getattr(c.loaded_mm, "name", None), _plain(c.tlb, 2), _plain(c.dawr, 2),
                      _plain(c.current_brk, 2), _plain(c.state, 3), c.wait is not None,
                      tuple(_activation(a) for a in c.stack)))
    return hash(tuple(parts))


def _activation(act: Any) -> tuple[Any, ...]:
    frames = []
    g = act.gen
    while g is not None:
        frame = getattr(g, "gi_frame", None)
        if frame is not None:
            frames.append((g.gi_code.co_name, frame.f_lasti,
                           tuple((k, _plain(v, 1)) for k, v in sorted(frame.f_locals.items()))))
        g = getattr(g, "gi_yieldfrom", None)
    return (act.kind, act.label, act.saved_irqs, tuple(frames))


def _plain(value: Any, depth: int) -> Any:
    """A hashable abstraction of ``value``: plain values as they are, containers element by
    element, objects by their class and plain fields (``depth`` levels down)."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if depth <= 0:
        return type(value).__name__
    if isinstance(value, dict):
        return tuple(sorted(((repr(k), _plain(v, depth - 1)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return tuple(_plain(v, depth - 1) for v in value)
    if isinstance(value, set | frozenset):
        return tuple(sorted(repr(_plain(v, depth - 1)) for v in value))
    fields = _fields(value)
    if fields is None:
        return type(value).__name__
    return (type(value).__name__, tuple((k, _plain(v, depth - 1)) for k, v in fields))


#: Fields that memoise a check's last result (``checked``: the store count when an invariant
#: last passed), not kernel state: two states differing only there are the same.
MEMO_FIELDS = frozenset({"checked"})


def _fields(value: Any) -> Iterable[tuple[str, Any]] | None:
    if attrs.has(type(value)):
        return [(a.name, getattr(value, a.name)) for a in attrs.fields(type(value))
                if a.name not in MEMO_FIELDS]
    slots = getattr(type(value), "__slots__", None)
    if slots:
        return [(s, getattr(value, s, None)) for s in slots]
    d = getattr(value, "__dict__", None)
    if isinstance(d, dict) and not callable(value):
        return sorted(d.items())
    return None
