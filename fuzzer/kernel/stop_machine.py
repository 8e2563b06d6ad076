"""Stopping every CPU for a CPU's offline (kernel/stop_machine.c): ``multi_cpu_stop``.

``takedown_cpu`` (kernel/cpu.c:1097 v6.1, :1312 v6.12) runs ``take_cpu_down``
through ``stop_machine_cpuslocked``, which queues ``multi_cpu_stop`` on the
stopper thread of *every* online CPU (``stop_cpus(cpu_online_mask, ...)``,
stop_machine.c:619 in both). The stoppers step through the stages together, each
stage beginning once every CPU acked the last: PREPARE (interrupts as the stopper
thread has them: on), DISABLE_IRQ, RUN (the dying CPU alone runs
``take_cpu_down``), EXIT. What follows for the model:

* the offline cannot get past PREPARE while an online CPU cannot run its stopper:
  one spinning with preemption or interrupts off (``csd_lock_wait`` in
  ``on_each_cpu``) holds every CPU there;
* the dying CPU waits in PREPARE with interrupts on, so an IPI queued to it before
  is served there (and ``take_cpu_down``'s ``smpcfd_dying_cpu`` flushes what is
  left, :func:`fuzzer.kernel.smp.smpcfd_dying_cpu`);
* from DISABLE_IRQ to EXIT every other CPU sits in its stopper with interrupts off:
  none starts anything, takes an interrupt (an NMI aside) or sends the dying CPU
  an IPI while it goes offline.

The model folds the control side's ``stop_machine`` into the dying CPU's
activation, as it does the rest of ``takedown_cpu``. Every other online CPU gets a
stopper activation (its ``migration/N`` thread) pushed when it can run it: idle; or
its task asleep (blocked on a mutex or rwsem); or, with ``CONFIG_PREEMPT``,
preemptible at any interleaving point (preempt count 0, interrupts on, not in an
interrupt). Without ``CONFIG_PREEMPT`` a running task keeps its CPU until it
blocks or ends: the kernel's stopper waits for ``schedule()``. The pushes are
decided by the state alone -- at the stop's start, then after every step while
it waits (a step observer) -- so they are no decision of their own: replay and
shrinking see the same steps. At EXIT the stoppers return at once, each CPU's
interrupt state and wait restored.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._routines import routine
from fuzzer._sched import preempt_enabled

if TYPE_CHECKING:
    from fuzzer._machine import Activation, Cpu, Machine

Gen = Generator[Any, None, Any]
STOP_MACHINE_C = "kernel/stop_machine.c"


@attrs.define(eq=False)
class MultiStop:
    """One ``stop_machine``'s ``multi_stop_data``: the active (dying) CPU and the other
    CPUs' stoppers as they come in."""

    active: int
    cpus: list[Cpu]
    """The machine's CPUs (``Machine.cpus``)."""
    stoppers: dict[int, Activation] = attrs.field(factory=dict)
    """Each other CPU's stopper activation, once pushed (its PREPARE ack)."""
    saved: dict[int, tuple[bool, Any]] = attrs.field(factory=dict)
    """Each stopper CPU's interrupt state and wait before its stopper ran."""
    stage: str = "PREPARE"

    def preparing(self) -> bool:
        """What the dying CPU waits on in PREPARE: some online CPU has not acked it
        (no stopper yet, or an interrupt handler running on top of it)."""
        return not self.all_in()

    def all_in(self) -> bool:
        return all(c.n in self.stoppers and c.stack and c.stack[-1] is self.stoppers[c.n]
                   for c in self.cpus if c.online and c.n != self.active)

    def running(self) -> bool:
        """What the other CPUs' stoppers wait on: the stop is not over (EXIT)."""
        return self.stage != "EXIT"

    def __repr__(self) -> str:
        return (f"<stop_machine for CPU {self.active}'s offline: {self.stage},"
                f" stoppers on CPUs {sorted(self.stoppers)}>")


def _can_stop(cpu: Cpu, preempt: bool) -> bool:
    """Whether ``cpu``'s stopper thread can run now (see the module docstring)."""
    stack = cpu.stack
    if not stack:
        return True
    top = stack[-1]
    if top.kind != "task" or cpu.preempt_count or not cpu.irqs_enabled or cpu.irq_depth:
        return False
    if preempt:
        return True
    return cpu.wait is not None and bool(cpu.wait())  # asleep: schedule() ran the stopper


def _stopper_task(m: Machine, cpu: Cpu) -> Any:
    """The CPU's ``migration/N`` thread (created once, as smpboot does at boot)."""
    task = cpu.state.get("cpu_stopper")
    if task is None:
        task = cpu.attach("cpu_stopper", m.new_task(f"migration/{cpu.n}"))
        task.pinned = True
    return task


def _stopper(stop: MultiStop) -> Gen:
    """``multi_cpu_stop()`` on a CPU that is not the active one: ack each stage; nothing
    to run. Returns at EXIT (at once: :func:`_release`)."""
    while stop.running():
        yield stop.running


def _enter(m: Machine, stop: MultiStop, cpu: Cpu) -> None:
    """``cpu`` switches to its stopper: push it, keeping what it interrupts."""
    stop.saved[cpu.n] = (cpu.irqs_enabled, cpu.wait)
    n = cpu.n

    def restore(_: Any) -> None:
        c = m.cpus[n]
        c.irqs_enabled, c.wait = stop.saved.pop(n)

    stop.stoppers[n] = m.push(cpu, _stopper(stop), _stopper_task(m, cpu), label="multi_cpu_stop",
                              on_done=restore)
    cpu.wait = stop.running  # it spins from the start: no step of its own


def _gather(m: Machine, stop: MultiStop) -> None:
    """Push a stopper on every online CPU able to run it that has none yet."""
    preempt = preempt_enabled(m)
    for c in m.cpus:
        if c.online and c.n != stop.active and c.n not in stop.stoppers and _can_stop(c, preempt):
            _enter(m, stop, c)


def _watch(m: Machine) -> None:
    """Once per machine: after every step, a pending stop gathers the CPUs that can now
    run their stopper."""
    if m.state.get("stop_machine_watch"):
        return
    m.attach("stop_machine_watch", True)
    m.attach("stop_machine", None)

    def gather(_: Cpu) -> None:
        stop = m.state["stop_machine"]
        if stop is not None and stop.stage == "PREPARE":
            _gather(m, stop)

    m.observe_steps(gather)


def _release(m: Machine, stop: MultiStop) -> None:
    """EXIT: every stopper returns; its CPU's interrupt state and wait come back. One with
    an NMI handler on top of it returns when that CPU runs again."""
    stop.stage = "EXIT"
    m.state["stop_machine"] = None
    for n, act in list(stop.stoppers.items()):
        cpu = m.cpus[n]
        if cpu.stack and cpu.stack[-1] is act:
            act.gen.close()
            m._returned(cpu, act, None)


@routine("multi_cpu_stop", STOP_MACHINE_C)
def multi_cpu_stop(cpu: Cpu, fn: Callable[[Cpu], Gen]) -> Gen:
    """``multi_cpu_stop()`` (kernel/stop_machine.c:203 v6.1, :201 v6.12) on the active CPU
    (the dying one) of ``stop_machine_cpuslocked(take_cpu_down, NULL, cpumask_of(cpu))``
    (stop_machine.c:586-619; kernel/cpu.c:1097 v6.1, :1312 v6.12), with the other online
    CPUs' stoppers (module docstring).

    PREPARE: wait, interrupts as they are (on, in the hotplug thread the model runs
    this in), until every other online CPU runs its stopper with nothing on top of
    it; an IPI queued to this CPU meanwhile is served. DISABLE_IRQ
    (``local_irq_disable``, :235 v6.1, :233 v6.12) on every stopper CPU; this CPU's
    own is ``fn``'s first step (``take_cpu_down`` sets it). RUN: ``fn``. EXIT: the
    stoppers return. The dying CPU's interrupts stay off (it goes to die).
    """
    m = cpu.m
    _watch(m)
    stop = MultiStop(cpu.n, m.cpus)
    m.state["stop_machine"] = stop
    _gather(m, stop)
    while not stop.all_in():
        yield stop.preparing
    stop.stage = "DISABLE_IRQ"
    for n in stop.stoppers:
        m.cpus[n].irqs_enabled = False
    stop.stage = "RUN"
    ret = yield from fn(cpu)
    _release(m, stop)
    return ret
