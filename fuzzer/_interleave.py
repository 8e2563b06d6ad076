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

from fuzzer._routines import FRAME_BY_ID, STEP_ENTRIES
from fuzzer._steps import Step

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine
    from fuzzer._schedulers import Scheduler

Pair = tuple[str, str, str, str, str]

#: Of the rescheduled replays, the fraction that hold the first access's CPU until the other
#: CPU is done (:func:`hold`), and the fraction that flip the pair (:func:`delay`); the rest
#: reschedule the stretch with PCT.
HOLD = 1 / 2
DELAY = 1 / 4
#: Of the holds, the fraction whose held CPU also starts its operation late (at a uniform
#: point of the other CPU's operation before its access).
LATE = 0.75
#: Of the holds, the fraction whose held CPU waits at a uniform point of its operation up to
#: its access rather than just after the access.
EARLIER = 0.5
#: The most decisions :func:`hold` gives the other CPUs once the kept steps ran out.
HOLD_RUN = 2000


def running_routine(depth: int = 2) -> str:
    """The modelled routine that is executing (the innermost on the Python stack); else the
    innermost generator (an operation's entry point, ``op_hit``); else ``?``. No modelled
    routine is below a step entry point (``STEP_ENTRIES``): the walk ends at one once it
    has its generator."""
    f: Any = sys._getframe(depth)
    fallback = "?"
    frames = FRAME_BY_ID  # frame_of_code, without a call per Python frame
    while f is not None:
        code = f.f_code
        frame = frames.get(id(code))
        if frame is not None:
            return frame.function
        if fallback == "?":
            if code.co_flags & inspect.CO_GENERATOR:
                fallback = code.co_name
        elif id(code) in STEP_ENTRIES:
            return fallback
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


Kept = tuple[tuple[Step, ...], int, Where]


@attrs.define
class Interleavings:
    """A campaign's pairs so far, and the examples that formed them (kept for mutation)."""

    pairs: set[Pair] = attrs.Factory(set)
    kept: list[Kept] = attrs.Factory(list)
    """Examples kept for some pair: the steps, the step index where it formed, and where."""
    kinds: list[str] = attrs.Factory(list)
    """The kind of object (``text``, ``kprobe table``, ...) of each kept example's pair."""
    per_pair: int = 4
    """Examples kept per pair -- one per pair left a single, often unsuitable, place to
    mutate each pair from. The first few that form it, then (given an ``rng``) a uniform
    sample of all that did (reservoir sampling): a pair formed in many ways is mutated
    from many of them, not only from the first, which may be the wrong way round."""
    formed: dict[Pair, int] = attrs.Factory(dict)
    """How many examples formed each pair."""
    where: dict[Pair, list[int]] = attrs.Factory(dict)
    """Each pair's kept examples (indices into :attr:`kept`)."""
    ops: list[tuple[Step, ...]] = attrs.Factory(list)
    """Each kept example's steps other than ``run`` (its operations, interrupts, hotplug and
    boot): a pair keeps no two examples with the same ones. Most examples that form a pair
    are replays of one kept example (rescheduled, extended), so a plain sample of them is
    copies of one lineage; kept on seed 4 of ``kprobe_rcu_too_early`` (4,000 examples, the
    pair formed 181 times), the four were one example's operations, and none of their late
    starts and hold points failed."""

    def attach(self, m: Machine) -> AccessLog:
        log = AccessLog(m)
        m.accesses = log
        return log

    def end_example(self, m: Machine | None, rng: random.Random | None = None) -> int:
        """Fold the example's pairs in; keep its steps for each pair formed fewer than
        :attr:`per_pair` times before, and (with ``rng``) in place of one of a pair's kept
        examples with the chance that keeps a uniform sample. Returns how many pairs are new."""
        log = m.accesses if m is not None else None
        if m is None or log is None:
            return 0
        new = 0
        steps = tuple(m.steps)
        ops: tuple[Step, ...] | None = None
        formed = self.formed
        for pair, (at, where) in log.pairs.items():
            n = formed.get(pair, 0)
            formed[pair] = n + 1
            new += pair not in self.pairs
            self.pairs.add(pair)
            mine = self.where.setdefault(pair, [])
            if len(mine) >= self.per_pair and (rng is None or rng.randrange(n + 1) >= self.per_pair):
                continue  # full: a uniform sample of the examples that formed it
            if ops is None:
                ops = tuple(s for s in steps if s.action != "run")
            if any(self.ops[i] == ops for i in mine):
                continue  # a copy of a kept example's operations, rescheduled
            if len(mine) < self.per_pair:
                mine.append(len(self.kept))
                self.kept.append((steps, at, where))
                self.ops.append(ops)
                self.kinds.append(pair[0])
            else:
                i = mine[rng.randrange(len(mine))] if rng is not None else mine[-1]
                self.kept[i] = (steps, at, where)
                self.ops[i] = ops
        return new

    def pick(self, rng: random.Random) -> Kept:
        """A kept example to mutate: a kind of object first, uniformly (the few pairs on a
        kprobe table or a key are not drowned by the many on kernel text), then a pair of
        that kind, the rarer the likelier (weight ``1/sqrt(examples that formed it)``, as
        AFL favours rare paths), then one of its examples."""
        kind = rng.choice(sorted(set(self.kinds)))
        pairs = sorted(p for p in self.where if p[0] == kind)
        pair = rng.choices(pairs, [self.formed[p] ** -0.5 for p in pairs])[0]
        return self.kept[rng.choice(self.where[pair])]


def replay_rescheduled(m: Machine, kept: Kept, rng: random.Random,
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
    r = rng.random()
    if r < HOLD:
        least, most, own = hold_range(steps, where)
        late = rng.randint(least, most) if rng.random() < LATE else None
        upto = rng.randint(1, max(1, own)) if rng.random() < EARLIER else None
        hold(m, steps, where, apply, late, upto)
        return
    if r < HOLD + DELAY:
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


def hold(m: Machine, steps: Sequence[Step], where: Where,
         apply: Callable[[Machine, Step], object], late: int | None = None,
         upto: int | None = None) -> None:
    """Replay ``steps`` with the first access's CPU held just after that access until the
    CPU of the second access is done -- idle (its operation returned) or unable to run
    (waiting, perhaps for the held CPU) -- then give the held CPU the decisions it missed.

    :func:`delay` flips the pair; this keeps its order and stretches the pause: a race
    often needs the first CPU held for the rest of the other side's operation (a lookup
    before an unhash, the single step after the slot's free), a pause of a length no
    scheduler knows. ``late``: the held CPU's operation also starts late -- it waits
    from its first decision until ``late`` decisions of the others have run, then runs
    to its access (an operation begun inside the other's, after a grace period the
    other waited for, say). ``upto``: the held CPU waits after that many decisions of
    its operation instead of just after its access (an earlier point of the same path:
    the lookup before the single step whose slot the other CPU frees). Should the kept
    steps run out first, the other CPUs run on alone (recorded, :data:`HOLD_RUN`
    decisions at most) before the release. The caller finishes the machine.
    """
    flat = [n for s in steps if s.action == "run" for n in s.cpus]
    if not where.first <= where.second < len(flat) or flat[where.second] == where.cpu:
        for step in steps:
            apply(m, step)
        return
    start = operation_start(steps, where.cpu, where.first)
    need = flat[start:where.first + 1].count(where.cpu)
    h = _Hold(m, apply, m.cpus[where.cpu], m.cpus[flat[where.second]], where, start=start,
              need=need if upto is None else max(1, min(upto, need)), late=late)
    for s in steps:
        if s.action != "run":
            h.check()
            apply(m, s)
            continue
        for n in s.cpus:
            h.decide(n)
    if h.phase in ("late", "hold"):
        for _ in range(HOLD_RUN):
            movable = [c for c in m.runnable() if c is not h.held]
            if not movable:
                break
            apply(m, Step("run", cpus=[movable[0].n]))
        h.release(h.owed)
        h.phase = "done"


def operation_start(steps: Sequence[Step], cpu: int, index: int) -> int:
    """The index, among the scheduled decisions of ``steps``, of the first one after the
    step that started (or interrupted) ``cpu`` last before its decision ``index``."""
    seen = start = 0
    for s in steps:
        if seen > index:
            break
        if s.action == "run":
            seen += len(s.cpus)
        elif s.action in ("start", "irq") and s.cpu == cpu:
            start = seen
    return start


def hold_range(steps: Sequence[Step], where: Where) -> tuple[int, int, int]:
    """The ranges of :func:`hold`'s ``late`` and ``upto``: the decisions of other CPUs from
    the first access's CPU's operation start to the start of the operation that made the
    second access (the least ``late`` that begins inside it), and to the second access
    (the most); the first CPU's own decisions from its operation start to its access."""
    flat = [n for s in steps if s.action == "run" for n in s.cpus]
    start = operation_start(steps, where.cpu, where.first)
    other = operation_start(steps, flat[where.second], where.second) if where.second < len(flat) else 0
    before = sum(1 for n in flat[start:max(start, other)] if n != where.cpu)
    upto = sum(1 for n in flat[start:where.second + 1] if n != where.cpu)
    return before, upto, flat[start:where.first + 1].count(where.cpu)


@attrs.define
class _Hold:
    """:func:`hold`'s progress through the kept decisions: the held CPU runs (``run``), waits
    for a late start (``late``), waits after its access (``hold``), or runs freely (``done``)."""

    m: Machine
    apply: Callable[[Machine, Step], object]
    held: Cpu
    other: Cpu
    where: Where
    start: int
    need: int
    """The held CPU's decisions from its operation's start to its access, both included."""
    late: int | None = None
    k: int = 0
    ran: int = 0
    owed: int = 0
    waited: int = 0
    phase: str = "run"

    def decide(self, n: int) -> None:
        """The kept example's next decision, CPU ``n``: skipped (owed) while ``n`` waits."""
        k, self.k = self.k, self.k + 1
        if n == self.held.n:
            if self.phase == "run" and self.late is not None and k >= self.start:
                self.phase = "late"
            if self.phase in ("late", "hold"):
                self.owed += 1
                return
            self._run_held()
        else:
            self.apply(self.m, Step("run", cpus=[n]))
            if self.phase == "late":
                self.waited += 1
                if self.waited >= (self.late or 0):
                    self.phase = "run"
                    self.release(min(self.owed, self.need - self.ran))
        self.check()

    def _run_held(self) -> None:
        self.apply(self.m, Step("run", cpus=[self.held.n]))
        if self.k > self.start and self.phase == "run":
            self.ran += 1
            if self.ran >= self.need:
                self.phase = "hold"  # the held CPU made its access: it waits from here

    def check(self) -> None:
        other = self.other
        if self.phase == "hold" and self.k > self.where.second \
                and (not other.stack or not other.runnable()):
            self.release(self.owed)
            self.phase = "done"

    def release(self, count: int) -> None:
        """Give the held CPU ``count`` of the decisions it is owed."""
        self.owed -= count
        for _ in range(count):
            self._run_held()


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


def extension_prefix(kept: Kept) -> list[Step]:
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
