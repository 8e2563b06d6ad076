"""Schedulers: who runs next inside a ``run`` rule, chosen to reach deep interleavings.

A scheduler only chooses the CPU advanced at each emulated step of a ``run``
rule; what it chooses is recorded as an ordinary ``run`` step (the CPUs in
order), so replay, shrinking, the corpus and the database never know which
scheduler made an example.

* :class:`Uniform` -- today's choice: each step picks one of the runnable CPUs
  uniformly. A bug that needs one CPU to stay paused for ``n`` steps of
  another has a chance near ``2**-n`` per try.
* :class:`PCT` -- probabilistic concurrency testing (Burckhardt, Kothari,
  Musuvathi, Nagarakatte, ASPLOS 2010): each example gives the CPUs random
  distinct priorities and picks ``d - 1`` change points among the steps it
  expects; the highest-priority runnable CPU always runs, and at the i-th
  change point the running CPU drops below every other (priority ``i``). A
  bug of depth ``d`` (``d`` ordering constraints) in ``k`` steps on ``n``
  CPUs is found with probability at least ``1 / (n * k**(d-1))`` per example,
  however long the pauses it needs.
* :class:`PreemptionBound` -- CHESS (Musuvathi and Qadeer, PLDI 2007 and
  OSDI 2008): the running CPU keeps running until it blocks or finishes,
  except at most ``k`` preemptions per example, placed at random steps; ``k``
  deepens iteratively (0, 1, 2, ... up to ``max_bound``) as examples go by.
* :class:`Mixed` -- one of the above per example (the walk's default).

Every scheduler draws from the ``random.Random`` it is given, so an example
stays a pure function of the engine's seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine

#: The names ``--scheduler`` accepts, and ``mixed`` (the default).
SCHEDULERS = ("uniform", "pct", "bounded", "mixed")


class Scheduler(Protocol):
    """Chooses the next CPU at each emulated step of a ``run`` rule."""

    name: str

    def begin(self, rng: random.Random, ncpus: int) -> None:
        """A new example starts (PCT draws its priorities and change points here)."""

    def pick(self, runnable: Sequence[Cpu], rng: random.Random) -> Cpu:
        """The CPU to advance, among ``runnable`` (never empty, lowest number first)."""
        ...

    def end(self, steps: int) -> None:
        """The example ended after ``steps`` scheduling decisions (for estimates)."""

    def run(self, m: Machine, rng: random.Random, n: int) -> tuple[int, ...]:
        """Advance ``m`` by up to ``n`` emulated steps (a ``run`` rule), recorded."""
        ...


def run_block(m: Machine, scheduler: Scheduler, rng: random.Random, n: int) -> tuple[int, ...]:
    """Advance up to ``n`` emulated steps of ``m``, each on the CPU ``scheduler`` picks.

    What :meth:`Machine.run_bytes` does for the uniform byte schedule, with the
    choice made by a scheduler: recorded as one ``run`` step (merged with a
    preceding one), a deadlock detected when CPUs are busy but none can run.
    """
    return run_chosen(m, n, lambda runnable: scheduler.pick(runnable, rng))


def run_chosen(m: Machine, n: int, choose: Callable[[list[Cpu]], Cpu]) -> tuple[int, ...]:
    """Advance up to ``n`` steps, each on ``choose(runnable CPUs)``; return the CPUs advanced."""
    done: list[int] = []
    for _ in range(n):
        runnable = m.runnable()
        if not runnable:
            if m.busy():
                m._record_run(done)
                m._deadlock()
            break
        cpu = choose(runnable)
        done.append(cpu.n)
        try:
            m.advance(cpu)
        except BaseException:
            m._record_run(done)
            raise
    m._record_run(done)
    return tuple(done)


@attrs.define
class Uniform:
    """Each step: one of the runnable CPUs, uniformly (the walk's original schedule).

    :meth:`run` draws a block of schedule bytes exactly as the walk did before
    schedulers existed (:meth:`Machine.run_bytes`), so ``--scheduler uniform``
    with a seed makes the examples it made then.
    """

    name: str = "uniform"

    def begin(self, rng: random.Random, ncpus: int) -> None:
        pass

    def pick(self, runnable: Sequence[Cpu], rng: random.Random) -> Cpu:
        return runnable[rng.randrange(len(runnable))]

    def end(self, steps: int) -> None:
        pass

    def run(self, m: Machine, rng: random.Random, n: int) -> tuple[int, ...]:
        return m.run_bytes(rng.randbytes(n))


@attrs.define
class PCT:
    """Random priorities, ``depth - 1`` priority-change points per example.

    ``depth``: the bug depth to target; None draws it per example from 1..``max_depth``
    (weighted to 2 and 3, where the deep set's bugs are). ``steps``: the number of
    scheduling decisions an example is expected to make, where change points fall;
    it follows the examples seen (the mean of the last ones).
    """

    depth: int | None = None
    max_depth: int = 4
    steps: int = 200
    name: str = "pct"
    priority: dict[int, int] = attrs.Factory(dict)
    change_points: list[int] = attrs.Factory(list)
    taken: int = 0
    seen: list[int] = attrs.Factory(list)

    def begin(self, rng: random.Random, ncpus: int) -> None:
        d = self.depth if self.depth is not None else _draw_depth(rng, self.max_depth)
        order = list(range(ncpus))
        rng.shuffle(order)
        # Initial priorities d, d+1, ...: above every change-point priority (1..d-1).
        self.priority = {cpu: d + i for i, cpu in enumerate(order)}
        self.change_points = sorted(rng.randint(1, max(1, self.steps)) for _ in range(d - 1))
        self.taken = 0

    def pick(self, runnable: Sequence[Cpu], rng: random.Random) -> Cpu:
        self.taken += 1
        prio = self.priority
        cpu = max(runnable, key=lambda c: prio.get(c.n, 0))
        while self.change_points and self.change_points[0] <= self.taken:
            self.change_points.pop(0)
            # The i-th change point: the running CPU drops to priority d - i, below all.
            prio[cpu.n] = len(self.change_points) + 1
            cpu = max(runnable, key=lambda c: prio.get(c.n, 0))
        return cpu

    def end(self, steps: int) -> None:
        self.seen.append(steps)
        if len(self.seen) >= 8:
            self.steps = max(8, sum(self.seen) // len(self.seen))
            self.seen.clear()

    def run(self, m: Machine, rng: random.Random, n: int) -> tuple[int, ...]:
        return run_block(m, self, rng, n)

    @classmethod
    def fixed(cls, order: Sequence[int], change_points: Sequence[int]) -> PCT:
        """A PCT schedule with its parameters given (the Hypothesis engine draws them):
        ``order`` lists the CPUs from the highest priority down."""
        pct = cls(depth=len(change_points) + 1)
        d = len(change_points) + 1
        pct.priority = {cpu: d + len(order) - i for i, cpu in enumerate(order)}
        pct.change_points = sorted(change_points)
        return pct


def _draw_depth(rng: random.Random, most: int) -> int:
    """PCT's ``d`` per example: 2 and 3 most often, 1 (no change) and deeper sometimes."""
    return min(most, rng.choice((1, 2, 2, 2, 3, 3, 3, 4)))


@attrs.define
class PreemptionBound:
    """At most ``bound`` preemptions per example; the bound deepens as examples go by.

    ``bound`` None deepens it: ``per_bound`` examples with 0 preemptions, then
    as many with 1, ... up to ``max_bound``, then round again. A preemption
    switches away from a CPU that could go on; a switch because the running
    CPU blocked or finished is free. Preemptions fall at random steps, about
    ``bound`` of them in the ``steps`` an example is expected to make.
    """

    bound: int | None = None
    max_bound: int = 3
    per_bound: int = 50
    steps: int = 200
    name: str = "bounded"
    examples: int = 0
    left: int = 0
    k: int = 0
    current: int | None = None
    seen: list[int] = attrs.Factory(list)

    def begin(self, rng: random.Random, ncpus: int) -> None:
        if self.bound is not None:
            self.k = self.bound
        else:
            self.k = (self.examples // self.per_bound) % (self.max_bound + 1)
        self.examples += 1
        self.left = self.k
        self.current = None

    def pick(self, runnable: Sequence[Cpu], rng: random.Random) -> Cpu:
        cur = next((c for c in runnable if c.n == self.current), None)
        if cur is not None and len(runnable) > 1 and self.left > 0 \
                and rng.random() * self.steps < self.k:
            self.left -= 1
            cur = rng.choice([c for c in runnable if c is not cur])
        elif cur is None:
            cur = runnable[rng.randrange(len(runnable))]
        self.current = cur.n
        return cur

    def end(self, steps: int) -> None:
        self.seen.append(steps)
        if len(self.seen) >= 8:
            self.steps = max(8, sum(self.seen) // len(self.seen))
            self.seen.clear()

    def run(self, m: Machine, rng: random.Random, n: int) -> tuple[int, ...]:
        return run_block(m, self, rng, n)


def preempting_block(m: Machine, first: int, preempt_at: Sequence[int], n: int) -> tuple[int, ...]:
    """A bounded-preemption block with its parameters given (the Hypothesis engine draws
    them): CPU ``first`` (or the lowest runnable) runs on until it blocks or finishes;
    at each step index in ``preempt_at`` the next runnable CPU after it takes over."""
    state = {"cur": first, "i": 0}
    at = set(preempt_at)

    def choose(runnable: list[Cpu]) -> Cpu:
        state["i"] += 1
        nums = [c.n for c in runnable]
        cur = state["cur"]
        if cur in nums and state["i"] in at and len(nums) > 1:
            cur = next((k for k in nums if k > cur), nums[0])
        elif cur not in nums:
            cur = nums[0]
        state["cur"] = cur
        return runnable[nums.index(cur)]

    return run_chosen(m, n, choose)


@attrs.define
class Mixed:
    """One scheduler per example, drawn among ``choices`` (uniform, PCT, bounded by default)."""

    choices: list[Scheduler] = attrs.Factory(lambda: [Uniform(), PCT(), PreemptionBound()])
    weights: list[float] = attrs.Factory(lambda: [1.0, 2.0, 1.0])
    name: str = "mixed"
    active: Scheduler | None = None

    def begin(self, rng: random.Random, ncpus: int) -> None:
        self.active = rng.choices(self.choices, self.weights)[0]
        self.active.begin(rng, ncpus)

    def pick(self, runnable: Sequence[Cpu], rng: random.Random) -> Cpu:
        assert self.active is not None, "begin() first"
        return self.active.pick(runnable, rng)

    def end(self, steps: int) -> None:
        for s in self.choices:
            s.end(steps)

    def run(self, m: Machine, rng: random.Random, n: int) -> tuple[int, ...]:
        assert self.active is not None, "begin() first"
        return self.active.run(m, rng, n)


# -- operation arguments ------------------------------------------------------------------------

#: Chance that an operation's argument takes a value an earlier operation of the same example
#: drew from the same declared argument (kprobes' operations share one for the probe site,
#: jump_label's one for the key): a race needs two operations on one object.
REUSE = 0.5


def reuse_or_draw(m: Machine, rng: random.Random, declared: object, draw: Callable[[random.Random], object]
                  ) -> object:
    """An argument value: with :data:`REUSE`, one already drawn from ``declared`` in this
    example (on ``m``), else a fresh ``draw``."""
    used = m.arg_pool.setdefault(id(declared), [])
    if used and rng.random() < REUSE:
        return used[rng.randrange(len(used))]
    value = draw(rng)
    used.append(value)
    return value


def remember_args(m: Machine, declared: Mapping[str, object], args: Mapping[str, object]) -> None:
    """Put the arguments of an operation a replayed step started (``declared``: its declared
    arguments) in the example's pool, so that :func:`reuse_or_draw` reuses them."""
    for k, value in args.items():
        if k in declared:
            used = m.arg_pool.setdefault(id(declared[k]), [])
            if value not in used:
                used.append(value)


def make(name: str, *, depth: int | None = None, bound: int | None = None) -> Scheduler:
    """The scheduler ``--scheduler NAME`` selects (``depth`` for PCT, ``bound`` for bounded)."""
    if name == "uniform":
        return Uniform()
    if name == "pct":
        return PCT(depth=depth)
    if name == "bounded":
        return PreemptionBound(bound=bound)
    if name == "mixed":
        return Mixed(choices=[Uniform(), PCT(depth=depth), PreemptionBound(bound=bound)])
    raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
