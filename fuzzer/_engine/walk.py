"""The walk engine (the default): examples at emulator speed, every decision recorded.

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
site fail (``fail``, with CONFIG_FAULT_INJECTION), or advance a block of 1-48
scheduling decisions -- then finishes (every CPU runs to completion, end-state checks).
A quarter of the examples use swarm testing: a random subset of the operations,
interrupts and hotplug directions is switched off for the whole example, so
that one kind of step can come many times (on the searched mistakes, swarm
on half the examples, or 5-60 rules, needed up to 5x more examples than
these settings). With guidance, examples that
entered a modelled routine no example entered before are kept, and later
examples start from a random prefix of one of them.

Shrinking is :mod:`fuzzer._engine.shrink`'s.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from fuzzer import _sched
from fuzzer._args import sampler
from fuzzer._coverage import RoutineRecorder
from fuzzer._draws import choose as choose_draws
from fuzzer._engine.records import Finding
from fuzzer._engine.replay import Fault, allowed, apply_step, perform, replay
from fuzzer._engine.search import REPORT_EVERY, Found, Search
from fuzzer._engine.store import saved_examples, steps_key
from fuzzer._errors import KernelFailure, ModelLimitation, PluginError, UsageError
from fuzzer._interleave import Interleavings, extension_prefix, replay_rescheduled
from fuzzer._machine import Machine
from fuzzer._model import Model
from fuzzer._schedulers import PCT, Scheduler, Uniform, make, remember_args, reuse_or_draw
from fuzzer._steps import Step, StepAction
from fuzzer.kernel import faults

#: Rules per example: uniform in this range (after the boot).
RULES = (10, 100)
#: Scheduling decisions per ``run`` rule (and per ``advance`` rule of the Hypothesis engine):
#: uniform in 1..SCHEDULE_BLOCK.
SCHEDULE_BLOCK = 48
#: Fraction of examples that use swarm testing.
SWARM = 0.25
#: With guidance: the fraction of examples that start from a kept example's prefix.
MUTATE = 0.5
#: With interleaving feedback: the fraction of examples that replay a kept example with the
#: first access's CPU held until the other is done, the pair flipped, or the stretch where two
#: routines met rescheduled (PCT) -- :func:`fuzzer._interleave.replay_rescheduled`. A half made
#: the shallow injected mistakes need 4x the examples (median over 4 mistakes x 3 seeds: 18
#: against 4); a quarter cost them nothing measurable (4); a third is what the deep set got
#: (``bench/deep.py``; the hold needs kept examples often enough).
RESCHEDULE = 1 / 3
#: With interleaving feedback: the fraction of examples that replay a kept example up to
#: where its pair formed and go on from there with fresh rules (reusing its arguments).
EXTEND = 0.25

Sampler = Callable[[random.Random], Any]


def checked_sampler(model: Model, op: str, arg: str, declared: Any,
                    seed: int) -> tuple[Sampler, Callable[[Any], list[Any]]]:
    """:func:`fuzzer._args.sampler`, blaming a strategy that cannot be drawn from on its plugin."""
    try:
        return sampler(declared, seed=seed)
    except UsageError:
        raise
    except Exception as exc:
        owner = model.plugin_of_traceback(exc.__traceback__)
        if owner is not None:
            raise PluginError(owner[0], f"the strategy of {op}({arg}=...)", exc) from exc
        raise UsageError(f"operation {op!r}: cannot draw argument {arg!r} from {declared!r}:"
                         f" {type(exc).__name__}: {exc}") from exc


class Walker:
    """Runs examples: random walks over the enabled steps, recorded as they are taken."""

    def __init__(self, model: Model, *, seed: int, guide: bool = False,
                 entered: set[str] | None = None, scheduler: Scheduler | None = None,
                 interleave: bool = False) -> None:
        self.model = model
        self.rng = random.Random(seed)
        self.scheduler: Scheduler = scheduler if scheduler is not None else Uniform()
        """Chooses the CPUs of each ``run`` rule (``--scheduler``)."""
        self.interleavings = Interleavings() if interleave else None
        """With interleaving feedback: the pairs seen, and the examples that added them."""
        self.guide = guide
        self.entered = entered
        """With guidance: the routines the current example entered (filled by a recorder)."""
        self.reached: set[str] = set()
        self.kept: list[tuple[Step, ...]] = []
        """With guidance: examples that entered a routine no earlier example had."""
        self.ops = [(op, {k: checked_sampler(model, op.name, k, s, seed)[0]
                          for k, s in op.args.items()}, f"op:{op.name}")
                    for op in model.operations]
        self.kinds = (["online", "offline", "fill", "migrate"]
                      + [f"op:{op.name}" for op in model.operations]
                      + [f"irq:{src.name}" for src in model.interrupts]
                      + (["fail"] if model.run.enabled("CONFIG_FAULT_INJECTION") else []))

    def example(self, prefix: Sequence[Step] = ()) -> tuple[Machine | None, Finding | Fault | None]:
        """One example: ``prefix`` (applied where possible) or a fresh boot, then random rules.

        Returns the machine (None if building it failed) and the failure, if any.
        """
        rng = self.rng
        seen = self.interleavings
        mutate = rng.random() if not prefix and seen is not None and seen.kept else 1.0
        reschedule = mutate < RESCHEDULE
        if seen is not None and RESCHEDULE <= mutate < RESCHEDULE + EXTEND:
            prefix = extension_prefix(seen.pick(rng))
        if not prefix and not reschedule and self.guide and self.kept and rng.random() < MUTATE:
            kept = rng.choice(self.kept)
            prefix = kept[:rng.randint(1, len(kept))]
        m: Machine | None = None
        try:
            m = Machine(self.model, boot_cache=True)
            if seen is not None:
                seen.attach(m)
            if reschedule:
                assert seen is not None
                replay_rescheduled(m, seen.pick(rng), rng, PCT(),
                                   lambda m, step: apply_step(m, step, strict=False))
            else:
                self._walk(m, rng, prefix)
            m.finish()
        except KernelFailure as exc:
            return m, Finding.from_failure(exc, m.steps if m is not None else ())
        except (PluginError, ModelLimitation) as exc:
            return m, exc
        finally:
            if self.guide and self.entered is not None and m is not None \
                    and not self.entered <= self.reached:
                self.reached |= self.entered
                self.kept.append(tuple(m.steps))
            if m is not None:
                self.scheduler.end(sum(len(s.cpus) for s in m.steps))
                if seen is not None:
                    seen.end_example(m, rng)
        return m, None

    def _walk(self, m: Machine, rng: random.Random, prefix: Sequence[Step]) -> None:
        """``prefix`` (where it applies) or a boot with the kernel's draws chosen now and then,
        then random rules, each run rule scheduled by :attr:`scheduler`."""
        self.scheduler.begin(rng, len(m.cpus))
        for step in prefix:
            if apply_step(m, step, strict=False) and step.action is StepAction.START:
                op = next(o for o, _, _ in self.ops if o.name == step.name)
                remember_args(m, op.args, dict(step.args))
        if not m.booted:
            m.boot(rng.getrandbits(32), choose_draws(rng, len(m.cpus)))
        swarm = rng.random() < SWARM
        on = {k for k in self.kinds if not swarm or rng.random() < 0.5}
        checked = -1
        for _ in range(rng.randint(*RULES)):
            self._rule(m, rng, on)
            if m.nsteps != checked and m.quiescent():
                checked = m.nsteps
                m.check_end_state()  # as if the example ended here: end-state bugs show sooner

    def _rule(self, m: Machine, rng: random.Random, on: set[str]) -> None:
        """Apply one rule, chosen uniformly among the enabled ones, on a random CPU that allows it."""
        cpus = m.cpus
        choices: list[tuple[StepAction, Any, list[Any]]] = []
        for action in (StepAction.ONLINE, StepAction.OFFLINE):
            if action.value in on:
                ready = [c for c in cpus if allowed(m, action, c)]
                if ready:
                    choices.append((action, None, ready))
        idle = [c for c in cpus if m.can_start(c)]
        if idle:
            choices.extend((StepAction.START, op, idle) for op in self.ops if op[2] in on)
        for src in m.model.interrupts:
            if f"irq:{src.name}" in on:
                ok = [c for c in cpus if m.can_interrupt(c, src)]
                if ok:
                    choices.append((StepAction.IRQ, src, ok))
        _hidden_choices(m, on, choices)
        if "fail" in on:
            choices.append((StepAction.FAIL, None, cpus))
        if len(choices) == 0 or rng.randrange(len(choices) + 1) == len(choices):
            self.scheduler.run(m, rng, rng.randint(1, SCHEDULE_BLOCK))
            return
        action, what, where = rng.choice(choices)
        cpu = rng.choice(where)
        if action is StepAction.START:
            op, draw, _ = what
            perform(m, action, cpu, op,
                    {k: reuse_or_draw(m, rng, op.args[k], d) for k, d in draw.items()})
        elif action is StepAction.FILL:
            vas = _sched.fill_candidates(m, cpu)
            if vas:
                perform(m, action, cpu, rng.choice(vas))
        elif action is StepAction.MIGRATE:
            perform(m, action, cpu, rng.choice(_sched.migration_targets(m, cpu)))
        elif action is StepAction.FAIL:
            sites = [s for s in faults.SITES if faults.can_arm(m, cpu.n, s)]
            if sites:
                perform(m, action, cpu, rng.choice(sites))
        else:
            perform(m, action, cpu, what)


def _hidden_choices(m: Machine, on: set[str], choices: list[tuple[StepAction, Any, list[Any]]]) -> None:
    """The decisions taken behind the kernel's back: a speculative TLB fill on an online
    CPU (when the MMU models it), preempting a task onto an idle CPU (CONFIG_PREEMPT)."""
    if "fill" in on and m.booted and _sched.speculates(m):
        online = [c for c in m.cpus if c.online]
        if online:
            choices.append((StepAction.FILL, None, online))
    if "migrate" in on and m.booted and _sched.preempt_enabled(m):
        movable = _sched.movable(m)
        if movable:
            choices.append((StepAction.MIGRATE, None, movable))


class WalkEngine:
    """Random walks at emulator speed; saved database examples first."""

    name = "walk"
    description = "walk (random walks at emulator speed, shrunk step by step)"
    guidance = "examples start from prefixes of those that entered new modelled routines"

    def search(self, search: Search) -> Found:
        model, stats, events = search.model, search.stats, search.events
        recorder = RoutineRecorder(model.routines, model.routine_infos)
        recorder.reached = stats.routines
        walker = Walker(attrs.evolve(model, routines=recorder.table), seed=search.seed,
                        guide=search.guide, entered=recorder.example,
                        scheduler=make(search.scheduler), interleave=search.interleave)
        saved = saved_examples(search.database, model)
        next_report = search.started + REPORT_EVERY
        while not search.exhausted():
            now = time.monotonic()
            if now >= next_report:
                next_report = now + REPORT_EVERY
                if search.report():
                    return None
            if events.example_start is not None:
                events.example_start()
            if saved:
                value, prefix = saved.pop(0)
                m, found = replay(walker.model, prefix, strict=False)
                if found is None and search.database is not None:
                    search.database.delete(steps_key(model), value)  # fixed, or not this model's
            else:
                m, found = walker.example()
            known = search.is_known(found)
            if found is not None:
                stats.note_failure(found, known=known)
            stats.count(m.nsteps if m is not None else 0)
            if m is not None and m.warnings:
                stats.note_warned(m.warned_past())
            if walker.interleavings is not None:
                stats.pairs = len(walker.interleavings.pairs)
            recorder.end_example()
            if events.example_finish is not None:
                events.example_finish(m, found)
            if found is not None and not known:
                search.fault_steps = tuple(m.steps) if m is not None else ()
                return found
        return None
