"""Interleaving feedback: ordered pairs of conflicting accesses by two CPUs.

A cheap signal for the search (issue 14, item 4). The machine notes accesses
to shared modelled objects -- kernel text and insn-slot words (every
instruction fetch and every store), and what plugins declare with
:meth:`Machine.note_access` (the kprobe table, static key state) -- while
an :class:`AccessLog` is attached. Two accesses to one object by two CPUs,
at least one a write, in the order they happened, with the modelled routine
that made each, form a pair::

    ("text", "__patch_mem", "w", "op_hit", "r")

An example that forms a pair has reached an interleaving of two routines: the
walk keeps the first few that form each pair, and later examples replay one
with one of its ``run`` steps rescheduled (:func:`replay_rescheduled`), or up
to just after the pair's second access and go on with fresh rules from there
(:func:`extension_prefix`). Accesses of one CPU to its own objects, and reads
after reads, make no pair.
"""

from __future__ import annotations

import inspect
import random
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._routines import FRAME_BY_CODE
from fuzzer._steps import Step

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine
    from fuzzer._schedulers import Scheduler

Pair = tuple[str, str, str, str, str]


def running_routine(depth: int = 2) -> str:
    """The modelled routine that is executing (the innermost on the Python stack); else the
    innermost generator (an operation's entry point, ``op_hit``); else ``?``."""
    f: Any = sys._getframe(depth)
    fallback = "?"
    frames = FRAME_BY_CODE  # frame_of_code, without a call per Python frame
    while f is not None:
        code = f.f_code
        frame = frames.get(code)
        if frame is not None:
            return frame.function
        if fallback == "?" and code.co_flags & inspect.CO_GENERATOR:
            fallback = code.co_name
        f = f.f_back
    return fallback


@attrs.frozen
class Where:
    """Where a pair's accesses were: the first one's CPU, and the scheduled steps (counted
    from the first after the boot) under way at each access."""

    cpu: int
    first: int
    second: int


@attrs.define
class AccessLog:
    """One example's accesses: the last access to each object, and the pairs they made."""

    m: Machine
    last: dict[Any, tuple[int, str, bool, int]] = attrs.Factory(dict)
    pairs: dict[Pair, tuple[int, Where]] = attrs.Factory(dict)
    """Each pair, with the number of steps recorded when it first formed (the ``run`` step
    that formed it is the next one recorded, or the last one), and where its two accesses
    were among the scheduled emulated steps."""

    def note(self, cpu: Cpu, key: Any, write: bool) -> None:
        """``cpu`` read (or wrote) the object ``key`` (a hashable name: ``("text", pa)``)."""
        m = self.m
        prev = self.last.get(key)
        routine = running_routine(3)
        at = m.nsteps - m.boot_steps  # the scheduled step under way (0 is the first)
        if prev is not None and prev[0] != cpu.n and (write or prev[2]):
            kind = key[0] if isinstance(key, tuple) else str(key)
            pair = (kind, prev[1], "w" if prev[2] else "r", routine, "w" if write else "r")
            if pair not in self.pairs:
                self.pairs[pair] = (len(m.steps), Where(prev[0], prev[3], at))
        self.last[key] = (cpu.n, routine, write, at)


@attrs.define
class Interleavings:
    """A campaign's pairs so far, and the examples that added some (kept for mutation)."""

    pairs: set[Pair] = attrs.Factory(set)
    kept: list[tuple[tuple[Step, ...], int, Where]] = attrs.Factory(list)
    """Per new pair: the example that formed it first, and where (a step index)."""
    kinds: list[str] = attrs.Factory(list)
    """The kind of object (``text``, ``kprobe table``, ...) of each kept example's pair."""
    most_kept: int = 500
    per_pair: int = 4
    """Examples kept per pair: the first few that form it, each where it formed -- one
    example per pair left a single, often unsuitable, place to mutate each pair from."""
    formed: dict[Pair, int] = attrs.Factory(dict)
    """How many examples formed each pair."""

    def attach(self, m: Machine) -> AccessLog:
        log = AccessLog(m)
        m.accesses = log
        return log

    def end_example(self, m: Machine | None) -> int:
        """Fold the example's pairs in; keep its steps once per pair formed fewer than
        :attr:`per_pair` times before. Returns how many pairs are new."""
        log = m.accesses if m is not None else None
        if m is None or log is None:
            return 0
        new = 0
        steps = tuple(m.steps)
        formed = self.formed
        for pair, (at, where) in log.pairs.items():
            n = formed.get(pair, 0)
            formed[pair] = n + 1
            if n >= self.per_pair:
                continue
            new += pair not in self.pairs
            self.pairs.add(pair)
            self.kept.append((steps, at, where))
            self.kinds.append(pair[0])
        del self.kept[:-self.most_kept]
        del self.kinds[:-self.most_kept]
        return new

    def pick(self, rng: random.Random) -> tuple[tuple[Step, ...], int, Where]:
        """A kept example to reschedule: a kind of object first, uniformly, then one of its
        examples -- the few pairs on a kprobe table or a key are not drowned by the many on
        kernel text."""
        kind = rng.choice(sorted(set(self.kinds)))
        return self.kept[rng.choice([i for i, k in enumerate(self.kinds) if k == kind])]


def replay_rescheduled(m: Machine, kept: tuple[tuple[Step, ...], int, Where], rng: random.Random,
                       scheduler: Scheduler, apply: Callable[[Machine, Step], object]) -> None:
    """Replay a kept example on ``m`` with the ``run`` step that formed its pair chosen anew.

    ``kept`` is an entry of :attr:`Interleavings.kept`: the steps, and where the
    pair formed. The ``run`` step there (or the nearest one before it, now and
    then another) is replaced by as many decisions of ``scheduler``, begun
    afresh; the other steps go through ``apply`` (the engine's lenient replay of
    one step). The caller finishes the machine. The same operations, with the
    stretch where two of them met interleaved anew: what a PCT change point or
    a preemption placed elsewhere would have done.
    """
    steps, at, where = kept
    if rng.random() < 0.5:
        for step in delay(steps, where):
            apply(m, step)
        return
    runs = [i for i, s in enumerate(steps) if s.action == "run"]
    near = [i for i in runs if i <= at] or runs
    i = (near[-1] if rng.random() < 0.75 else rng.choice(runs)) if runs else len(steps)
    if runs and hasattr(scheduler, "steps"):
        scheduler.steps = len(steps[i].cpus)  # PCT's change points fall inside this stretch
    scheduler.begin(rng, len(m.cpus))
    for step in steps[:i]:
        apply(m, step)
    if runs:
        scheduler.run(m, rng, len(steps[i].cpus))
        for step in steps[i + 1:]:
            apply(m, step)


def delay(steps: Sequence[Step], where: Where) -> list[Step]:
    """``steps`` with the pair's order flipped: the first access's CPU does not run from that
    access until just after the second one (its decisions in between move there).

    The other CPUs' decisions and every other step stay as they are, so the operations
    are the same and only when that CPU goes on changes: a pause, of exactly the length
    the pair needs, where a scheduler would have to guess it.
    """
    flat = [(i, n) for i, s in enumerate(steps) if s.action == "run" for n in s.cpus]
    first, second = where.first, min(where.second, len(flat) - 1)
    if first > second or flat[second][1] == where.cpu:
        return list(steps)
    moved = [k for k in range(first, second + 1) if flat[k][1] == where.cpu]
    if not moved:
        return list(steps)
    per_step: dict[int, list[int]] = {}
    for k, (i, n) in enumerate(flat):
        if k in moved:
            continue
        per_step.setdefault(i, []).append(n)
        if k == second:
            per_step[i].extend(where.cpu for _ in moved)
    out = []
    for i, s in enumerate(steps):
        if s.action != "run":
            out.append(s)
        elif per_step.get(i):
            out.append(Step("run", cpus=per_step[i]))
    if where.second >= len(flat):  # the second access was in the final round-robin
        out.append(Step("run", cpus=[where.cpu] * len(moved)))
    return out


def extension_prefix(kept: tuple[tuple[Step, ...], int, Where]) -> list[Step]:
    """A kept example's steps up to just after its pair's second access: the point where two
    routines met, from which a walk goes on with fresh rules (the ``extend`` mutation).

    The ``run`` step under way at that access is cut right after it, so the CPU that made
    the first access may be paused there while the fresh rules start other operations --
    on the same objects, since a walk reuses the prefix's arguments.
    """
    steps, _, where = kept
    out: list[Step] = []
    seen = 0
    for s in steps:
        if s.action != "run":
            out.append(s)
            continue
        if seen + len(s.cpus) > where.second:
            out.append(Step("run", cpus=s.cpus[:where.second - seen + 1]))
            return out
        seen += len(s.cpus)
        out.append(s)
    return out
