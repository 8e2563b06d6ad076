"""Applying steps: the one dispatch on :class:`~fuzzer.StepAction`, and the one replay.

Strict (a corpus entry, a verified reproduction): every step must apply, and
a step that cannot is an error. Lenient (the shrinker, guided prefixes, saved
database examples): a step that no longer makes sense -- a CPU that is not
online, an operation the model no longer has -- is skipped and not recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fuzzer import _sched
from fuzzer._engine.records import Finding
from fuzzer._errors import KernelFailure, ModelLimitation, PluginError
from fuzzer._machine import Cpu, Machine
from fuzzer._model import Model
from fuzzer._steps import Step, StepAction
from fuzzer.kernel import faults

#: What a lenient replay or an engine's example may end with besides a finding.
Fault = PluginError | ModelLimitation


def perform(m: Machine, action: StepAction, cpu: Cpu, what: Any = None,
            args: dict[str, Any] | None = None) -> None:
    """Take a CPU step on ``m``: the walk's rules and replayed steps alike come through here."""
    if action is StepAction.ONLINE:
        m.cpu_up(cpu)
    elif action is StepAction.OFFLINE:
        m.cpu_down(cpu)
    elif action is StepAction.START:
        m.start(cpu, what, args or {})
    elif action is StepAction.IRQ:
        m.interrupt(cpu, what)
    elif action is StepAction.FILL:
        m.speculative_fill(cpu, what)  # what: the virtual address
    elif action is StepAction.MIGRATE:
        m.migrate(cpu, what)  # what: the CPU the task resumes on
    elif action is StepAction.FAIL:
        faults.arm(m, cpu.n, what)  # what: the allocation site
    else:
        raise ValueError(f"{action} is not a step on one CPU")


def allowed(m: Machine, action: StepAction, cpu: Cpu, what: Any = None) -> bool:
    """Whether ``m``'s state allows the CPU step now (the state machine's preconditions)."""
    if action is StepAction.ONLINE:
        return m.can_online(cpu)
    if action is StepAction.OFFLINE:
        return m.can_offline(cpu)
    if action is StepAction.START:
        return m.can_start(cpu)
    if action is StepAction.FILL:
        return isinstance(what, int) and _sched.can_fill(m, cpu, what)
    if action is StepAction.MIGRATE:
        return what is not None and _sched.can_migrate(m, cpu, what)
    if action is StepAction.FAIL:
        return faults.can_arm(m, cpu.n, what)
    return m.can_interrupt(cpu, what)


def apply_step(m: Machine, step: Step, *, strict: bool = True) -> bool:
    """Apply a recorded step; True if it applied.

    ``strict``: a step that cannot apply raises (ValueError, or a usage error
    naming an unknown operation). Otherwise it is skipped (False); a ``run``
    step then advances only the CPUs that can run, and records only those.
    """
    action = step.action
    if action is StepAction.BOOT:
        if m.booted and not strict:
            return False
        m.boot(step.seed, step.draws)
        return True
    if not m.booted and not strict:
        return False
    if action is StepAction.RUN:
        return _run(m, step, strict)
    if step.cpu is None or not 0 <= step.cpu < len(m.cpus):
        if strict:
            raise ValueError(f"step {action} names CPU {step.cpu}, machine has {len(m.cpus)}")
        return False
    cpu = m.cpus[step.cpu]
    what = _target(m, step, strict)
    if not strict and ((what is None and action in (StepAction.START, StepAction.IRQ))
                       or not allowed(m, action, cpu, what)):
        return False
    perform(m, action, cpu, what, dict(step.args))
    return True


def _target(m: Machine, step: Step, strict: bool) -> Any:
    """What a step acts on besides its CPU: the operation or interrupt source it names (None
    for one the model does not have when not ``strict``), a ``fill``'s address, a
    ``migrate``'s target CPU; None for a hotplug step."""
    if step.action is StepAction.FILL:
        va = dict(step.args).get("va")
        return int(va or 0) if strict else va
    if step.action is StepAction.MIGRATE:
        n = step.cpus[0] if step.cpus else None
        if n is None or not 0 <= n < len(m.cpus):
            if strict:
                raise ValueError(f"step migrate names CPU {n}, machine has {len(m.cpus)}")
            return None
        return m.cpus[n]
    if step.action is StepAction.FAIL:
        return step.name
    if step.action is StepAction.START:
        return m.model.operation(step.name) if strict else _find(m.model.operations, step.name)
    if step.action is StepAction.IRQ:
        return m.model.interrupt(step.name) if strict else _find(m.model.interrupts, step.name)
    return None


def _run(m: Machine, step: Step, strict: bool) -> bool:
    if strict:
        m._record_run(list(step.cpus))
        m.run_cpus(step.cpus)
        return True
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


def _find(items: Iterable[Any], name: str) -> Any:
    for item in items:
        if item.name == name:
            return item
    return None


def replay(model: Model, steps: Iterable[Step], *, strict: bool = True
           ) -> tuple[Machine | None, Finding | Fault | None]:
    """Replay ``steps`` on a fresh machine, then finish it: the machine (None if building it
    failed) and the finding, if any, made here with the steps that reach it.

    ``strict`` (see :func:`apply_step`): a plugin error or model limitation propagates.
    Lenient: it is returned, like a finding; the machine's ``steps`` are those that
    applied, and a strict replay of them ends the same way.
    """
    m: Machine | None = None
    try:
        m = Machine(model, boot_cache=True)
        for step in steps:
            apply_step(m, step, strict=strict)
        if m.booted:
            m.finish()
    except KernelFailure as exc:
        return m, Finding.from_failure(exc, m.steps if m is not None else ())
    except (PluginError, ModelLimitation) as exc:
        if strict:
            raise
        return m, exc
    return m, None
