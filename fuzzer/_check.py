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

Pruning (``prune``, ``--prune``) compares states by their
:func:`~fuzzer._snapshot.snapshot`: memory, every kernel object and plugin
state, page tables, each CPU's registers, TLB and per-CPU variables, and the
position and every local of each modelled routine on its stack -- everything
a later step can read, objects by their fields, identity left out.

* ``por`` (the default): a partial-order reduction by state. Two schedules
  that run commuting steps in two orders reach one state; the second is cut
  there, since everything after it was explored from the first (or is
  being). The check is made at every state, and it allows for the preemption
  budget: a state reached with ``u2`` preemptions, the CPU ``l2`` last,
  covers the same state reached with ``used``, ``last`` when
  ``u2 <= used - 1``, or ``u2 <= used`` and ``l2`` is ``last`` or could not
  run on (:meth:`Explorer._covered`). That is the care Musuvathi and Qadeer
  ("Partial-order reduction for context-bounded state exploration", 2007)
  and Coons, Musuvathi and McKinley ("Bounded partial-order reduction",
  OOPSLA 2013) show a preemption bound needs: reordering two steps can
  change what a schedule spends. Unlike sleep sets it needs no conflict
  relation: the accesses the emulator notes (text, the kprobe table, static
  keys) do not cover locks, page tables, TLBs or per-CPU state, so steps
  could not be proved independent from them; equal states prove it after
  the fact.
* ``state``: at choice points only, the same state with the same CPU last
  and at least as many preemptions left (what ``check`` did first).
* ``none``: every schedule, for comparison.

Every mode finds the same failures and the same final states (tests/test_check.py).
"""

from __future__ import annotations

import ast
import time
from collections.abc import Sequence
from typing import Any

import attrs

from fuzzer._errors import KernelFailure, UsageError
from fuzzer._machine import Machine
from fuzzer._model import Model
from fuzzer._snapshot import snapshot
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
    emulated: int
    """Emulated steps run in the concurrent part, replays of schedule prefixes included."""
    pruned: int
    """Schedules cut at a state already explored with a budget that covers theirs."""
    preemptions: int
    seconds: float
    steps: tuple[Step, ...] | None = None
    """The first failure's steps (None: no failure), shrunk when asked."""
    failure: KernelFailure | None = None
    complete: bool = True
    """False when ``max_schedules`` stopped the exploration early."""


#: ``--prune``: none; states at choice points (the same state and last CPU with as much budget
#: left); or every state, whichever CPU ran last (commuting steps: see :meth:`Explorer._covered`).
PRUNE_MODES = ("none", "state", "por")


def prune_mode(prune: bool | str) -> str:
    """``True`` is the default mode (``por``), ``False`` is ``none``."""
    if isinstance(prune, bool):
        return "por" if prune else "none"
    if prune not in PRUNE_MODES:
        raise UsageError(f"prune: {prune!r} is not one of {', '.join(PRUNE_MODES)}")
    return prune


class Explorer:
    """Depth-first exploration of a scenario's schedules, replayed from the start each time."""

    def __init__(self, model: Model, scenario: Scenario, *, preemptions: int,
                 prune: bool | str = True) -> None:
        validate(model, scenario)
        self.model = model
        self.scenario = scenario
        self.bound = preemptions
        self.prune = prune_mode(prune)
        self.seen: dict[Any, Any] = {}
        self.schedules = 0
        self.pruned = 0
        self.emulated = 0
        """Emulated steps of the concurrent part run, replays included (the cost of it all)."""
        self.machine: Machine | None = None
        """The machine of the schedule being explored."""

    def start(self) -> tuple[Machine, dict[int, list[Call]]]:
        """A machine with the setup done and each CPU's first call started."""
        m = self.machine = Machine(self.model, boot_cache=True)
        self.frozen: dict[int, Any] = {}  # the snapshot's cache for this machine
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
        self.emulated += 1
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
            if self.prune == "por" and self._covered(m, queues, last if last in runnable else None,
                                                     used):
                self.pruned += 1
                return
            if not runnable:
                m.finish()  # a deadlock if some CPU is still busy; end-state checks
                self.schedules += 1
                return
            opts = self.options(runnable, last, used)
            if len(opts) > 1 and self.prune == "state":
                key = (hash(snapshot(m, self.frozen)), last, tuple(len(q) for q in queues.values()))
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

    def _covered(self, m: Machine, queues: dict[int, list[Call]], last: int | None,
                 used: int) -> bool:
        """Was this state explored already with a budget that covers ours? Else record it.

        ``last`` is the CPU that ran last if it can run on (None if not: then any CPU
        runs next without a preemption). From a state reached with ``u2`` preemptions
        used and ``l2`` last, every continuation costs at most one preemption more than
        from the same state with any other last CPU (only its first step can differ),
        and none more than with ``l2`` None. So (``l2``, ``u2``) covers (``last``,
        ``used``) when ``u2 <= used - 1``, or ``u2 <= used`` and ``l2`` is ``last`` or None.
        """
        key = hash((snapshot(m, self.frozen), tuple(len(q) for q in queues.values())))
        budgets = self.seen.setdefault(key, {})
        if budgets and last is None and not m.runnable():
            return True  # a final state: nothing follows, whatever the budget
        if any(u2 <= used - 1 or (u2 <= used and l2 in (last, None)) for l2, u2 in budgets.items()):
            return True
        budgets[last] = min(used, budgets.get(last, used))
        return False


def _run_alone(m: Machine, n: int) -> None:
    """Run CPU ``n`` alone until its work is done, recorded (so the steps replay)."""
    from fuzzer._schedulers import run_chosen

    cpu = m.cpus[n]
    while cpu.stack:
        if not cpu.runnable():
            raise UsageError(f"scenario setup: CPU {n} blocked with nothing else running")
        run_chosen(m, 1, lambda runnable: cpu)


def check(model: Model, scenario: Scenario, *, preemptions: int, prune: bool | str = True,
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
    return CheckResult(ex.schedules, ex.emulated, ex.pruned, preemptions, time.monotonic() - started, steps,
                       failure, complete)


def _shrink(model: Model, steps: tuple[Step, ...], failure: KernelFailure,
            deadline: float) -> tuple[Step, ...]:
    from fuzzer._engine.shrink import Shrinker

    return tuple(Shrinker(model, steps, failure.signature, deadline=deadline).shrink())

