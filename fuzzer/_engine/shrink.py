"""The step-level shrinker: a failing step list made minimal, never running a candidate twice.

Shrinking (:class:`Shrinker`). Steps name CPUs, not positions in a runnable
set, and a step that no longer applies is skipped, so deleting any step
leaves a meaningful run. Passes, repeated until none helps: cut the run at
the failure, delete chunks of steps (halving down to single steps), shorten
and thin each schedule, move work to lower-numbered CPUs, simplify
arguments, the kernel seed and its chosen random draws; for short reproductions, move a step earlier
and delete another. A candidate is kept when it fails with the
same signature and is smaller: fewer steps, then fewer scheduling decisions,
then simpler values.

Every candidate's result is cached (as Hypothesis's ``cached_test_function``
does): the passes propose the same candidate again and again, and a cache
hit costs a dictionary lookup instead of a replay. ``cache_hits`` counts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from fuzzer._args import arg_type
from fuzzer._draws import simpler as simpler_draws
from fuzzer._engine.records import Finding
from fuzzer._engine.replay import replay
from fuzzer._errors import Signature
from fuzzer._model import Model
from fuzzer._steps import Step, StepAction


def _size(steps: Sequence[Step]) -> tuple[int, int]:
    return len(steps), sum(len(s.cpus) for s in steps)




class Shrinker:
    """Shrinks a failing step list to a smaller one failing with the same signature.

    ``best`` is always a verified reproduction (its failure in ``failure``), so
    an interrupted shrink still has one to report.
    """

    def __init__(self, model: Model, steps: Sequence[Step], signature: Signature, *,
                 deadline: float | None = None, seed: int = 0) -> None:
        self.model = model
        self.signature = signature
        self.deadline = deadline
        self.runs = 0
        """Candidates replayed."""
        self.cache_hits = 0
        """Candidates answered from the cache (proposed again after being run)."""
        self.emulated_steps = 0
        self.cache: dict[tuple[Step, ...], Finding | None] = {}
        # Each argument's type once (a strategy that is not one of ours costs a Hypothesis
        # run, seeded like the walk's): its simplifier, and each operation's simplest arguments.
        types = {op.name: {k: arg_type(a, seed=seed) for k, a in op.args.items()} for op in model.operations}
        self.simplifiers: dict[str, dict[str, Callable[[Any], list[Any]]]] = {
            op: {k: t.simpler for k, t in args.items()} for op, args in types.items()
        }
        self.simplest_args = {op: {k: t.simplest for k, t in args.items()} for op, args in types.items()}
        self.op_order = {op.name: i for i, op in enumerate(model.operations)}
        failure = self.check(steps)
        if failure is None:
            raise RuntimeError(f"the failing steps did not fail again with {signature}:"
                               " the model is not deterministic")
        self.failure = failure
        self.best: tuple[Step, ...] = failure.steps or tuple(steps)

    def simplicity(self, steps: Sequence[Step]) -> tuple[Any, ...]:
        """Lower is simpler, among reproductions of one size: earlier operations (in the
        model's order), lower CPUs, seeds and arguments."""
        return tuple((self.op_order.get(s.name, 0), s.cpu or 0, s.seed, len(s.draws),
                      tuple(abs(v) for v in s.draws), tuple(s.cpus),
                      tuple(repr(v) for _, v in s.args)) for s in steps)

    def check(self, steps: Iterable[Step]) -> Finding | None:
        """Replay ``steps`` leniently (or look them up): the finding if it has the wanted
        signature."""
        key = tuple(steps)
        try:
            if key in self.cache:
                self.cache_hits += 1
                return self.cache[key]
        except TypeError:  # an unhashable argument value: run it, uncached
            return self._run(key)
        result = self.cache[key] = self._run(key)
        return result

    def _run(self, steps: tuple[Step, ...]) -> Finding | None:
        m, failure = replay(self.model, steps, strict=False)
        self.runs += 1
        self.emulated_steps += m.nsteps if m is not None else 0
        if isinstance(failure, Finding) and failure.signature == self.signature:
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
        got = failure.steps or tuple(candidate)
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
            if self.best[i].action is StepAction.RUN:
                self._shorten_run(i)
            i += 1

    def _with_run(self, i: int, cpus: Sequence[int]) -> tuple[Step, ...]:
        cur = self.best
        return cur[:i] + ((Step(StepAction.RUN, cpus=cpus),) if cpus else ()) + cur[i + 1:]

    def _shorten_run(self, i: int) -> None:
        cpus = self.best[i].cpus
        # Binary search for the shortest failing prefix (a failure usually needs a run
        # to reach some point, not more).
        lo, hi = 0, len(cpus)
        while lo < hi and not self.out_of_time():
            mid = (lo + hi) // 2
            if self.consider(self._with_run(i, cpus[:mid])):
                hi = mid
                if i >= len(self.best) or self.best[i].action is not StepAction.RUN:
                    return
                cpus = self.best[i].cpus
                hi = min(hi, len(cpus))
            else:
                lo = mid + 1
        if i >= len(self.best) or self.best[i].action is not StepAction.RUN:
            return
        size = max(1, len(self.best[i].cpus) // 2)
        while size >= 1 and not self.out_of_time():
            cpus = self.best[i].cpus
            j = len(cpus) - size
            while j >= 0 and not self.out_of_time():
                cpus = self.best[i].cpus
                if self.consider(self._with_run(i, cpus[:j] + cpus[j + size:])):
                    if i >= len(self.best) or self.best[i].action is not StepAction.RUN:
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
            if step.action is StepAction.START:
                for op in self.model.operations[:self.op_order.get(step.name, 0)]:
                    cand = (*self.best[:i],
                            Step(StepAction.START, cpu=step.cpu, name=op.name,
                                 args=self.simplest_args[op.name]),
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
        """Simpler operation arguments, the kernel seed 0 and simpler chosen draws."""
        cur = self.best
        if cur and cur[0].action is StepAction.BOOT and cur[0].seed != 0:
            self.consider((attrs.evolve(cur[0], seed=0), *cur[1:]), simpler=True)
        self.simplify_draws()
        i = 0
        while i < len(self.best) and not self.out_of_time():
            step = self.best[i]
            if step.action is StepAction.START:
                for name, value in step.args:
                    simplify = self.simplifiers.get(step.name, {}).get(name)
                    for simpler in (simplify(value) if simplify else []):
                        args = dict(self.best[i].args)
                        args[name] = simpler
                        cand = (*self.best[:i],
                                Step(StepAction.START, cpu=step.cpu, name=step.name, args=args),
                                *self.best[i + 1:])
                        if self.consider(cand, simpler=True):
                            break
            i += 1


    def simplify_draws(self) -> None:
        """The boot's chosen random draws, shrunk like an argument: none at all (back to the
        seed), fewer, each value simpler (:func:`fuzzer._draws.simpler`)."""
        for _ in range(64):
            cur = self.best
            if not cur or cur[0].action is not StepAction.BOOT or not cur[0].draws \
                    or self.out_of_time():
                return
            if not any(self.consider((attrs.evolve(cur[0], draws=d), *cur[1:]), simpler=True)
                       for d in simpler_draws(cur[0].draws)):
                return


def _rename(step: Step, mapping: dict[int, int]) -> Step:
    cpu = mapping.get(step.cpu, step.cpu) if step.cpu is not None else None
    return attrs.evolve(step, cpu=cpu, cpus=[mapping.get(n, n) for n in step.cpus])
