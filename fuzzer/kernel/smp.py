"""Cross-CPU function calls (kernel/smp.c): ``on_each_cpu`` and the IPIs that carry it.

A caller queues a call-single-data (CSD) on every other online CPU, sends
each an IPI, runs the function locally with interrupts off, then, with
``wait``, spins until every target ran it (``csd_lock_wait``). A target
runs its queue from the IPI handler, which it takes only while its
interrupts are enabled: on ppc64 an IPI that arrives soft-masked waits to be
replayed until ``local_irq_restore``. So a caller spinning with interrupts
off for a target that spins with interrupts off for it never finishes: the
deadlock ``smp_call_function_many_cond``'s lockdep assertion exists to catch.

The model delivers a CSD's IPI at once to a target whose interrupts are on
(at its next interleaving point), and to any other target right after the
step that turns them back on. The walk's own ``ipi`` interrupts run the queue
too.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._routines import routine
from fuzzer.kernel.bug import warn

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine

Gen = Generator[Any, None, Any]
SMP_C = "kernel/smp.c"
#: Lines in kernel/smp.c of smp_call_function_many_cond's two checks.
LINES = {
    "v6.1": {"irqs_enabled": 915, "in_task": 923},
    "v6.12": {"irqs_enabled": 807, "in_task": 815},
}
#: The v6.1 file stands for next-20221215 and v6.2 too: kernel/smp.c did not change there.
SMP_LINES = {**LINES, "next-20221215": LINES["v6.1"], "v6.2": LINES["v6.1"]}


@attrs.define(eq=False)
class Csd:
    """A ``call_single_data_t`` in flight: ``func`` to run on ``dst`` for ``src``."""

    func: Callable[[Cpu], Gen]
    src: int
    dst: int
    done: bool = False
    """``CSD_FLAG_LOCK`` cleared: the target ran the function (csd_unlock)."""

    def pending(self) -> bool:
        """What ``csd_lock_wait`` spins on."""
        return not self.done

    def __repr__(self) -> str:
        name = getattr(self.func, "__name__", "?")
        return (f"<csd {name} from CPU {self.src} to CPU {self.dst}:"
                f" {'done' if self.done else 'not yet run'}>")


def _queue(cpu: Cpu) -> list[Csd]:
    q = cpu.state.get("call_single_queue")
    if q is None:
        q = cpu.attach("call_single_queue", [])
    return q


def lockdep_assert_irqs_enabled(cpu: Cpu, at: str) -> None:
    """``lockdep_assert_irqs_enabled()``: a WARN when interrupts are off.

    Defined with CONFIG_PROVE_LOCKING; the model's lockdep checks are on unless
    a loaded plugin defines that option and it is set to n.
    """
    if not cpu.irqs_enabled and cpu.m.config.values.get("CONFIG_PROVE_LOCKING", True):
        warn(cpu, at, function="smp_call_function_many_cond",
             detail="lockdep_assert_irqs_enabled: IRQs are disabled")  # WARN_ON_ONCE


def _line(cpu: Cpu, what: str) -> str:
    return f"{SMP_C}:{cpu.m.version.lookup(SMP_LINES, 'kernel/smp.c line numbers')[what]}"


def on_each_cpu(cpu: Cpu, func: Callable[[Cpu], Gen], wait: bool = True) -> Gen:
    """``on_each_cpu(func, info, wait)`` (include/linux/smp.h): ``on_each_cpu_cond_mask`` over
    ``cpu_online_mask`` -- preemption off around ``smp_call_function_many_cond``.

    Without CONFIG_SMP, kernel/up.c's ``on_each_cpu_cond_mask``: the function
    with interrupts saved and disabled, no check, no IPI.
    """
    if not cpu.m.config.enabled("CONFIG_SMP"):
        flags = cpu.local_irq_save()
        yield from func(cpu)
        cpu.local_irq_restore(flags)
        return
    cpu.preempt_count += 1
    yield from cpu.k.smp_call_function_many_cond(cpu, func, wait)
    cpu.preempt_count -= 1


@routine("smp_call_function_many_cond", SMP_C)
def smp_call_function_many_cond(cpu: Cpu, func: Callable[[Cpu], Gen], wait: bool) -> Gen:
    """``smp_call_function_many_cond()`` (kernel/smp.c:893 v6.1, :785 v6.12), SCF_RUN_LOCAL.

    On an online CPU, outside early boot (``early_boot_irqs_disabled``: the
    model's SYSTEM_BOOTING, start_kernel), ``lockdep_assert_irqs_enabled()``
    (:915 v6.1, :807 v6.12); ``WARN_ON_ONCE(!in_task())`` (:923, :815). Then a
    CSD for every other online CPU, each sent an IPI; the function locally
    with interrupts saved and disabled; with ``wait``, ``csd_lock_wait`` on
    each CSD in turn.
    """
    m = cpu.m
    if cpu.online and m.system_state != "SYSTEM_BOOTING":
        lockdep_assert_irqs_enabled(cpu, _line(cpu, "irqs_enabled"))
    if cpu.in_interrupt():
        warn(cpu, _line(cpu, "in_task"), function="smp_call_function_many_cond",
             detail="WARN_ON_ONCE(!in_task())")
    csds = [Csd(func, cpu.n, t.n) for t in m.cpus if t.online and t is not cpu]
    for csd in csds:
        yield  # llist_add to the target's call_single_queue
        _queue(m.cpus[csd.dst]).append(csd)
        send_ipi(m, m.cpus[csd.dst])
    flags = cpu.local_irq_save()
    yield from func(cpu)
    cpu.local_irq_restore(flags)
    if wait:
        for csd in csds:
            while csd.pending():
                yield csd.pending


def send_ipi(m: Machine, target: Cpu) -> None:
    """``arch_send_call_function_ipi_mask``: the doorbell arrives at once if the target's
    interrupts are on, else when it turns them on (a soft-masked IPI is replayed)."""
    _watch(m)
    if target.irqs_enabled:
        _deliver(m, target)


def _deliver(m: Machine, target: Cpu) -> None:
    if any(act.label == "ipi" for act in target.stack):
        return  # the handler already running there drains the queue
    task = target.current
    m.push(target, target.k.flush_smp_call_function_queue(target), task, kind="irq", label="ipi")


def _watch(m: Machine) -> None:
    """Once per machine: after every step, a CPU with queued CSDs and interrupts on takes the IPI."""
    if m.state.get("smp_ipi_watch"):
        return
    m.attach("smp_ipi_watch", True)

    def replay_masked_ipi(cpu: Cpu) -> None:
        if cpu.irqs_enabled and cpu.online and cpu.state.get("call_single_queue"):
            _deliver(m, cpu)

    m.observe_steps(replay_masked_ipi)


@routine("flush_smp_call_function_queue", SMP_C, symbol="__flush_smp_call_function_queue")
def flush_smp_call_function_queue(cpu: Cpu) -> Gen:
    """``__flush_smp_call_function_queue()`` (kernel/smp.c:574 v6.1, :474 v6.12), from the IPI.

    ``smp_ipi_demux`` -> ``generic_smp_call_function_interrupt``: run every
    queued CSD's function, then ``csd_unlock`` it (the caller's wait ends).
    """
    q = _queue(cpu)
    while q:
        csd = q.pop(0)
        yield from csd.func(cpu)
        csd.done = True
    yield


@routine("smpcfd_dying_cpu", SMP_C)
def smpcfd_dying_cpu(cpu: Cpu) -> Gen:
    """``smpcfd_dying_cpu()`` (kernel/smp.c:133 v6.1, :86 v6.12), the CPUHP_AP_SMPCFD_DYING
    teardown in ``take_cpu_down``, IRQs off, the CPU already out of ``cpu_online_mask``:
    ``__flush_smp_call_function_queue(false)`` (:144, :97) runs what other CPUs queued here
    and the IPI did not deliver, so the CPU does not go with work pending (a caller
    spinning in ``csd_lock_wait`` for it would never finish). Nothing to run: no step."""
    if cpu.state.get("call_single_queue"):
        yield from cpu.k.flush_smp_call_function_queue(cpu)


ROUTINES = (smp_call_function_many_cond, flush_smp_call_function_queue, smpcfd_dying_cpu)
