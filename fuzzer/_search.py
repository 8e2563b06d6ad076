"""The default engine: examples at emulator speed, every decision recorded, a step-level shrinker.

Why not a Hypothesis rule per decision: a RuleBasedStateMachine step costs
Hypothesis ~110-200 us and an example ~0.8 ms on top, against ~4 us for an
emulated step and ~0.9 ms for a whole example here (boot included). The
state machine (``--engine hypothesis``) spent 88% of its time outside the
emulator, and Hypothesis's own choice of rules (swarm testing, small values)
needed 10-200x more examples than a uniform walk on every injected mistake
(``bench/run.py``). So the search loop runs here, at emulator speed, and each
example is still a pure function of its recorded :class:`~fuzzer.Step` list:
the shrinker, the corpus and the example database all work on that list.

Search (:class:`Walker`). An example boots CPU 0 with a random kernel seed,
then applies a random number of rules, each chosen uniformly among the
enabled ones -- bring a CPU online or offline, start an operation with
random arguments, deliver an interrupt, make a CPU's next allocation at a
site fail (``fail``, with CONFIG_FAULT_INJECTION), or advance a block of 1-48 scheduling
decisions -- then finishes (every CPU runs to completion, end-state checks).
A quarter of the examples use swarm testing: a random subset of the operations,
interrupts and hotplug directions is switched off for the whole example, so
that one kind of step can come many times (on the searched mistakes, swarm
on half the examples, or 5-60 rules, needed up to 5x more examples than
these settings). With guidance, examples that
entered a modelled routine no example entered before are kept, and later
examples start from a random prefix of one of them.

Shrinking (:class:`Shrinker`). Steps name CPUs, not positions in a runnable
set, and a step that no longer applies is skipped, so deleting any step
leaves a meaningful run. Passes, repeated until none helps: cut the run at
the failure, delete chunks of steps (halving down to single steps), shorten
and thin each schedule, move work to lower-numbered CPUs, simplify
arguments and the kernel seed; for short reproductions, move a step earlier
and delete another. A candidate is kept when it fails with the
same signature and is smaller: fewer steps, then fewer scheduling decisions,
then simpler values.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hypothesis
from hypothesis import HealthCheck, Phase

from fuzzer import _sched
from fuzzer._errors import KernelFailure, ModelLimitation, PluginError, Signature, UsageError
from fuzzer._machine import Cpu, Machine
from fuzzer._model import Model
from fuzzer._steps import Step
from fuzzer.kernel import faults

#: Rules per example: uniform in this range (after the boot).
RULES = (10, 100)
#: Scheduling decisions per ``run`` rule: uniform in 1..SCHEDULE_BLOCK.
SCHEDULE_BLOCK = 48
#: Fraction of examples that use swarm testing.
SWARM = 0.25
#: With guidance: the fraction of examples that start from a kept example's prefix.
MUTATE = 0.5

Sampler = Callable[[random.Random], Any]


# -- argument values -------------------------------------------------------------------------


def sampler(strategy: Any, *, seed: int = 0) -> tuple[Sampler, Callable[[Any], list[Any]]]:
    """A uniform sampler for an operation argument's strategy, and its simplifier.

    ``integers(a, b)``, ``booleans()``, ``just(x)`` and ``sampled_from(...)`` are
    sampled directly. Any other strategy is drawn 256 times by Hypothesis (once,
    seeded) and the walk samples from those values. The simplifier lists simpler
    values to try for a value, simplest first (the shrinker's candidates).
    """
    inner = getattr(strategy, "wrapped_strategy", strategy)
    kind = type(inner).__name__
    if kind == "IntegersStrategy" and inner.start is not None and inner.end is not None:
        lo, hi = inner.start, inner.end
        return (lambda rng: rng.randint(lo, hi)), (lambda v: _simpler_ints(v, lo))
    if kind == "BooleansStrategy":
        return (lambda rng: rng.random() < 0.5), (lambda v: [False] if v else [])
    if kind == "JustStrategy" and not getattr(inner, "_transformations", ()):
        value = inner.value
        return (lambda rng: value), (lambda v: [])
    if kind == "SampledFromStrategy" and not getattr(inner, "_transformations", ()):
        elements = tuple(inner.elements)
        return (lambda rng: rng.choice(elements)), (lambda v: _earlier(elements, v))
    pool = _draw_pool(strategy, seed)
    return (lambda rng: rng.choice(pool)), (lambda v: _earlier(pool, v))


def _checked_sampler(model: Model, op: str, arg: str, strategy: Any,
                     seed: int) -> tuple[Sampler, Callable[[Any], list[Any]]]:
    """:func:`sampler`, blaming a strategy that cannot be drawn from on its plugin."""
    try:
        return sampler(strategy, seed=seed)
    except UsageError:
        raise
    except Exception as exc:
        owner = model.plugin_of_traceback(exc.__traceback__)
        if owner is not None:
            raise PluginError(owner[0], f"the strategy of {op}({arg}=...)", exc) from exc
        raise UsageError(f"operation {op!r}: cannot draw argument {arg!r} from {strategy!r}:"
                         f" {type(exc).__name__}: {exc}") from exc


def _simpler_ints(value: Any, lo: int) -> list[Any]:
    if not isinstance(value, int) or value <= lo:
        return []
    out = [lo]
    mid = lo + (value - lo) // 2
    if lo < mid < value:
        out.append(mid)
    if value - 1 > lo and value - 1 != mid:
        out.append(value - 1)
    return out


def _earlier(elements: Sequence[Any], value: Any) -> list[Any]:
    for i, e in enumerate(elements):
        if e == value:
            return list(elements[:i])
    return []


def _draw_pool(strategy: Any, seed: int) -> tuple[Any, ...]:
    values: list[Any] = []

    @hypothesis.settings(max_examples=256, database=None, deadline=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @hypothesis.given(strategy)
    def collect(value: Any) -> None:
        values.append(value)

    hypothesis.seed(seed)(collect)()
    if not values:
        raise UsageError(f"cannot draw any value from the argument strategy {strategy!r}")
    # Distinct values, in the order Hypothesis found them (simplest first).
    return tuple(dict.fromkeys(values)) if all(_hashable(v) for v in values) else tuple(values)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


# -- steps that may no longer apply ----------------------------------------------------------


def apply_if_possible(m: Machine, step: Step) -> bool:
    """Apply ``step`` when it makes sense in ``m``'s current state; skip it (False) otherwise.

    What the shrinker and guided prefixes replay: after a deletion, a step may
    name a CPU that is not online, busy, or an operation the model no longer
    has. A ``run`` step advances only the CPUs that can run, and records only
    those.
    """
    action = step.action
    if action == "boot":
        if m.booted:
            return False
        m.boot(step.seed)
        return True
    if not m.booted:
        return False
    if action == "run":
        done: list[int] = []
        cpus = m.cpus
        try:
            for n in step.cpus:
                if n < len(cpus) and cpus[n].runnable():
                    done.append(n)
                    m.advance(cpus[n])
        finally:
            m._record_run(done)
        return bool(done)
    if step.cpu is None or not 0 <= step.cpu < len(m.cpus):
        return False
    cpu = m.cpus[step.cpu]
    if action == "online":
        if not m.can_online(cpu):
            return False
        m.cpu_up(cpu)
    elif action == "offline":
        if not m.can_offline(cpu):
            return False
        m.cpu_down(cpu)
    elif action == "start":
        op = _find(m.model.operations, step.name)
        if op is None or not m.can_start(cpu):
            return False
        m.start(cpu, op, dict(step.args))
    elif action == "irq":
        src = _find(m.model.interrupts, step.name)
        if src is None or not m.can_interrupt(cpu, src):
            return False
        m.interrupt(cpu, src)
    elif action == "fail":
        if not faults.can_arm(m, cpu.n, step.name):
            return False
        faults.arm(m, cpu.n, step.name)
    elif action in ("fill", "migrate"):
        return _apply_hidden(m, cpu, step)
    else:
        return False
    return True


def _apply_hidden(m: Machine, cpu: Cpu, step: Step) -> bool:
    """A ``fill`` or ``migrate`` step, when it still makes sense."""
    if step.action == "fill":
        va = dict(step.args).get("va")
        if not isinstance(va, int) or not _sched.can_fill(m, cpu, va):
            return False
        m.speculative_fill(cpu, va)
        return True
    to = m.cpus[step.cpus[0]] if step.cpus and step.cpus[0] < len(m.cpus) else None
    if to is None or not _sched.can_migrate(m, cpu, to):
        return False
    m.migrate(cpu, to)
    return True


def _find(items: Iterable[Any], name: str) -> Any:
    for item in items:
        if item.name == name:
            return item
    return None


Found = KernelFailure | PluginError | ModelLimitation


def replay_lenient(model: Model, steps: Iterable[Step]) -> tuple[Machine | None, Found | None]:
    """Replay ``steps`` with :func:`apply_if_possible`, then finish; the machine (None if
    building it failed) and any failure.

    The failure's ``steps`` are the ones that applied, up to the failure: a
    strict replay of them fails the same way.
    """
    m: Machine | None = None
    try:
        m = Machine(model)
        for step in steps:
            apply_if_possible(m, step)
        if m.booted:
            m.finish()
    except (KernelFailure, PluginError, ModelLimitation) as exc:
        _attach(exc, m)
        return m, exc
    return m, None


def _attach(exc: BaseException, m: Machine | None) -> None:
    """Give a finding the steps that led to it (what reports and the shrinker read)."""
    exc.steps = tuple(m.steps) if m is not None else ()  # type: ignore[attr-defined]


# -- the search ------------------------------------------------------------------------------


class Walker:
    """Runs examples: random walks over the enabled steps, recorded as they are taken."""

    def __init__(self, model: Model, *, seed: int, guide: bool = False,
                 entered: set[str] | None = None) -> None:
        self.model = model
        self.rng = random.Random(seed)
        self.guide = guide
        self.entered = entered
        """With guidance: the routines the current example entered (filled by a recorder)."""
        self.reached: set[str] = set()
        self.kept: list[tuple[Step, ...]] = []
        """With guidance: examples that entered a routine no earlier example had."""
        self.ops = [(op, {k: _checked_sampler(model, op.name, k, s, seed)[0]
                          for k, s in op.args.items()}, f"op:{op.name}")
                    for op in model.operations]
        self.kinds = (["online", "offline", "fill", "migrate"]
                      + [f"op:{op.name}" for op in model.operations]
                      + [f"irq:{src.name}" for src in model.interrupts]
                      + (["fail"] if model.run.enabled("CONFIG_FAULT_INJECTION") else []))

    def example(self, prefix: Sequence[Step] = ()) -> tuple[Machine | None, Found | None]:
        """One example: ``prefix`` (applied where possible) or a fresh boot, then random rules.

        Returns the machine (None if building it failed) and the failure, if any.
        """
        rng = self.rng
        if not prefix and self.guide and self.kept and rng.random() < MUTATE:
            kept = rng.choice(self.kept)
            prefix = kept[:rng.randint(1, len(kept))]
        m: Machine | None = None
        try:
            m = Machine(self.model)
            for step in prefix:
                apply_if_possible(m, step)
            if not m.booted:
                m.boot(rng.getrandbits(32))
            swarm = rng.random() < SWARM
            on = {k for k in self.kinds if not swarm or rng.random() < 0.5}
            checked = -1
            for _ in range(rng.randint(*RULES)):
                self._rule(m, rng, on)
                if m.nsteps != checked and m.quiescent():
                    checked = m.nsteps
                    m.check_end_state()  # as if the example ended here: end-state bugs show sooner
            m.finish()
        except (KernelFailure, PluginError, ModelLimitation) as exc:
            _attach(exc, m)
            return m, exc
        finally:
            if self.guide and self.entered is not None and m is not None \
                    and not self.entered <= self.reached:
                self.reached |= self.entered
                self.kept.append(tuple(m.steps))
        return m, None

    def replay(self, steps: Sequence[Step]) -> tuple[Machine | None, Found | None]:
        """A saved example, exactly (steps that no longer apply are skipped), then finish."""
        return replay_lenient(self.model, steps)

    def _rule(self, m: Machine, rng: random.Random, on: set[str]) -> None:
        """Apply one rule, chosen uniformly among the enabled ones, on a random CPU that allows it."""
        cpus = m.cpus
        choices: list[tuple[str, Any, list[Any]]] = []
        if "online" in on:
            up = [c for c in cpus if m.can_online(c)]
            if up:
                choices.append(("online", None, up))
        if "offline" in on:
            down = [c for c in cpus if m.can_offline(c)]
            if down:
                choices.append(("offline", None, down))
        idle = [c for c in cpus if m.can_start(c)]
        if idle:
            choices.extend(("start", op, idle) for op in self.ops if op[2] in on)
        for src in m.model.interrupts:
            if f"irq:{src.name}" in on:
                ok = [c for c in cpus if m.can_interrupt(c, src)]
                if ok:
                    choices.append(("irq", src, ok))
        _hidden_choices(m, on, choices)
        if "fail" in on:
            choices.append(("fail", None, cpus))
        if len(choices) == 0 or rng.randrange(len(choices) + 1) == len(choices):
            m.run_bytes(rng.randbytes(rng.randint(1, SCHEDULE_BLOCK)))
            return
        action, what, where = rng.choice(choices)
        cpu = rng.choice(where)
        if action == "fill":
            vas = _sched.fill_candidates(m, cpu)
            if vas:
                m.speculative_fill(cpu, rng.choice(vas))
        elif action == "migrate":
            m.migrate(cpu, rng.choice(_sched.migration_targets(m, cpu)))
        elif action == "online":
            m.cpu_up(cpu)
        elif action == "offline":
            m.cpu_down(cpu)
        elif action == "start":
            op, draw, _ = what
            m.start(cpu, op, {k: d(rng) for k, d in draw.items()})
        elif action == "fail":
            sites = [s for s in faults.SITES if faults.can_arm(m, cpu.n, s)]
            if sites:
                faults.arm(m, cpu.n, rng.choice(sites))
        else:
            m.interrupt(cpu, what)


def _hidden_choices(m: Machine, on: set[str], choices: list[tuple[str, Any, list[Any]]]) -> None:
    """The decisions taken behind the kernel's back: a speculative TLB fill on an online
    CPU (when the MMU models it), preempting a task onto an idle CPU (CONFIG_PREEMPT)."""
    if "fill" in on and m.booted and _sched.speculates(m):
        online = [c for c in m.cpus if c.online]
        if online:
            choices.append(("fill", None, online))
    if "migrate" in on and m.booted and _sched.preempt_enabled(m):
        movable = [c for c in m.cpus if _sched.preemptible(c) and _sched.migration_targets(m, c)]
        if movable:
            choices.append(("migrate", None, movable))


# -- the shrinker ----------------------------------------------------------------------------


def _size(steps: Sequence[Step]) -> tuple[int, int]:
    return len(steps), sum(len(s.cpus) for s in steps)




class Shrinker:
    """Shrinks a failing step list to a smaller one failing with the same signature.

    ``best`` is always a verified reproduction (its failure in ``failure``), so
    an interrupted shrink still has one to report.
    """

    def __init__(self, model: Model, steps: Sequence[Step], signature: Signature, *,
                 deadline: float | None = None) -> None:
        self.model = model
        self.signature = signature
        self.deadline = deadline
        self.runs = 0
        self.emulated_steps = 0
        # Each argument's sampler once (a strategy outside the four simple kinds costs a
        # Hypothesis run): its simplifier, and the simplest arguments of each operation.
        samplers = {op.name: {k: sampler(s) for k, s in op.args.items()} for op in model.operations}
        self.simplifiers: dict[str, dict[str, Callable[[Any], list[Any]]]] = {
            op: {k: simplify for k, (_, simplify) in args.items()} for op, args in samplers.items()
        }
        self.simplest_args = {op: {k: _simplest(*pair) for k, pair in args.items()}
                              for op, args in samplers.items()}
        self.op_order = {op.name: i for i, op in enumerate(model.operations)}
        failure = self.check(steps)
        if failure is None:
            raise RuntimeError(f"the failing steps did not fail again with {signature}:"
                               " the model is not deterministic")
        self.failure = failure
        self.best: tuple[Step, ...] = tuple(failure.steps or steps)

    def simplicity(self, steps: Sequence[Step]) -> tuple[Any, ...]:
        """Lower is simpler, among reproductions of one size: earlier operations (in the
        model's order), lower CPUs, seeds and arguments."""
        return tuple((self.op_order.get(s.name, 0), s.cpu or 0, s.seed, tuple(s.cpus),
                      tuple(repr(v) for _, v in s.args)) for s in steps)

    def check(self, steps: Iterable[Step]) -> KernelFailure | None:
        """Replay ``steps`` leniently: the failure if it has the wanted signature."""
        m, failure = replay_lenient(self.model, steps)
        self.runs += 1
        self.emulated_steps += m.nsteps if m is not None else 0
        if isinstance(failure, KernelFailure) and failure.signature == self.signature:
            return failure
        return None

    def consider(self, candidate: Sequence[Step], *, simpler: bool = False) -> bool:
        """Keep ``candidate`` if it fails the same way and is smaller (or, with
        ``simpler``, the same size and simpler)."""
        if self.out_of_time():
            return False
        failure = self.check(candidate)
        if failure is None:
            return False
        got = tuple(failure.steps or candidate)
        better = _size(got) < _size(self.best) or (
            simpler and _size(got) == _size(self.best) and self.simplicity(got) < self.simplicity(self.best))
        if better:
            self.best, self.failure = got, failure
        return better

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def shrink(self) -> tuple[Step, ...]:
        """Run the passes until none makes progress (or the deadline passes)."""
        while not self.out_of_time():
            before = (_size(self.best), self.simplicity(self.best))
            self.delete_steps()
            self.shorten_schedules()
            self.lower_cpus()
            self.simplify_values()
            if (_size(self.best), self.simplicity(self.best)) == before:
                self.replace_operations()
                self.move_then_delete()
            if (_size(self.best), self.simplicity(self.best)) == before:
                break
        return self.best

    def delete_steps(self) -> None:
        """Delete chunks of steps, halving the chunk down to one step; never the boot."""
        size = max(1, (len(self.best) - 1) // 2)
        while size >= 1 and not self.out_of_time():
            i = len(self.best) - size
            while i >= 1 and not self.out_of_time():
                cur = self.best
                if not self.consider(cur[:i] + cur[i + size:]):
                    i -= 1
                else:
                    i = min(i, len(self.best) - size)
            size //= 2

    def shorten_schedules(self) -> None:
        """For each ``run``: the shortest prefix that still fails, then delete chunks of it."""
        i = 0
        while i < len(self.best) and not self.out_of_time():
            if self.best[i].action == "run":
                self._shorten_run(i)
            i += 1

    def _with_run(self, i: int, cpus: Sequence[int]) -> tuple[Step, ...]:
        cur = self.best
        return cur[:i] + ((Step("run", cpus=cpus),) if cpus else ()) + cur[i + 1:]

    def _shorten_run(self, i: int) -> None:
        cpus = self.best[i].cpus
        # Binary search for the shortest failing prefix (a failure usually needs a run
        # to reach some point, not more).
        lo, hi = 0, len(cpus)
        while lo < hi and not self.out_of_time():
            mid = (lo + hi) // 2
            if self.consider(self._with_run(i, cpus[:mid])):
                hi = mid
                if i >= len(self.best) or self.best[i].action != "run":
                    return
                cpus = self.best[i].cpus
                hi = min(hi, len(cpus))
            else:
                lo = mid + 1
        if i >= len(self.best) or self.best[i].action != "run":
            return
        size = max(1, len(self.best[i].cpus) // 2)
        while size >= 1 and not self.out_of_time():
            cpus = self.best[i].cpus
            j = len(cpus) - size
            while j >= 0 and not self.out_of_time():
                cpus = self.best[i].cpus
                if self.consider(self._with_run(i, cpus[:j] + cpus[j + size:])):
                    if i >= len(self.best) or self.best[i].action != "run":
                        return
                    j = min(j, len(self.best[i].cpus) - size)
                else:
                    j -= 1
            size //= 2

    def replace_operations(self, most: int = 8) -> None:
        """For short reproductions: start an earlier operation of the model instead, with its
        simplest arguments (another path into the same bug may need fewer steps)."""
        if len(self.best) > most:
            return
        i = 0
        while i < len(self.best) and not self.out_of_time():
            step = self.best[i]
            if step.action == "start":
                for op in self.model.operations[:self.op_order.get(step.name, 0)]:
                    cand = (*self.best[:i],
                            Step("start", cpu=step.cpu, name=op.name, args=self.simplest_args[op.name]),
                            *self.best[i + 1:])
                    if self.consider(cand, simpler=True):
                        break
            i += 1

    def move_then_delete(self, most: int = 8) -> None:
        """For short reproductions: move a step earlier, then delete another one.

        Deletion alone gets stuck where a step is needed only because of its
        place (a CPU brought online after the operation that shows the bug).
        """
        cur = self.best
        if len(cur) > most:
            return
        for i in range(len(cur) - 1, 1, -1):
            for j in range(1, i):
                moved = (*cur[:j], cur[i], *cur[j:i], *cur[i + 1:])
                for k in range(len(moved) - 1, 0, -1):
                    if self.out_of_time():
                        return
                    if self.consider(moved[:k] + moved[k + 1:]):
                        return

    def lower_cpus(self) -> None:
        """Swap a CPU with a lower-numbered one everywhere (steps that then make no sense drop out)."""
        used = sorted({n for s in self.best for n in (*s.cpus, *((s.cpu,) if s.cpu is not None else ()))})
        for high in reversed(used):
            for low in range(high):
                if self.out_of_time():
                    return
                mapping = {high: low, low: high}
                candidate = [_rename(s, mapping) for s in self.best]
                if self.consider(candidate, simpler=True):
                    break

    def simplify_values(self) -> None:
        """Simpler operation arguments, and the kernel seed 0."""
        cur = self.best
        if cur and cur[0].action == "boot" and cur[0].seed != 0:
            self.consider((Step("boot", seed=0), *cur[1:]), simpler=True)
        i = 0
        while i < len(self.best) and not self.out_of_time():
            step = self.best[i]
            if step.action == "start":
                for name, value in step.args:
                    simplify = self.simplifiers.get(step.name, {}).get(name)
                    for simpler in (simplify(value) if simplify else []):
                        args = dict(self.best[i].args)
                        args[name] = simpler
                        cand = (*self.best[:i], Step("start", cpu=step.cpu, name=step.name, args=args),
                                *self.best[i + 1:])
                        if self.consider(cand, simpler=True):
                            break
            i += 1


def _simplest(draw: Sampler, simplify: Callable[[Any], list[Any]]) -> Any:
    """The simplest value a sampler offers (what its simplifier ends at)."""
    value = draw(random.Random(0))
    simpler = simplify(value)
    return simpler[0] if simpler else value


def _rename(step: Step, mapping: dict[int, int]) -> Step:
    cpu = mapping.get(step.cpu, step.cpu) if step.cpu is not None else None
    return Step(step.action, cpu=cpu, name=step.name, args=step.args,
                cpus=[mapping.get(n, n) for n in step.cpus], seed=step.seed)
