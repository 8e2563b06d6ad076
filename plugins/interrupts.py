"""Interrupt sources beyond the timer: an IPI, a perf PMI, and an NMI (system reset).

The timer lives in the kernel core. A maskable interrupt arrives at any
interleaving point of a CPU whose interrupts are soft-enabled; the NMI-like
system reset ignores the soft mask and can arrive anywhere, the patch window
included.

Simplification: the model treats the perf PMI as maskable by
``local_irq_save``. On real ppc64 a PMI taken while interrupts are only
soft-disabled is handled as an NMI: ``local_irq_save`` sets IRQS_DISABLED,
not IRQS_PMI_DISABLED, and ``performance_monitor_common`` calls
``performance_monitor_exception_nmi`` when the soft mask is not
IRQS_ENABLED (linux-source-6.12 arch/powerpc/kernel/exceptions-64s.S:2354-2363,
traps.c:1952-1963). perf's user callchain reads the stack with
``copy_from_user_nofault`` (arch/powerpc/perf/callchain.h:24-33), whose
``nmi_uaccess_okay()`` (mm/maccess.c:121) is the generic ``true`` on powerpc
(include/asm-generic/tlb.h:25). So on a real kernel a PMI in the patch window
reads "user" memory through the patching mm: it faults harmlessly unless the
user stack address is the poking address. The ``pmi_in_patch_window``
mistake plugin delivers PMIs that way and shows what the uaccess invariant
says about it; whether upstream should care is a question for a human.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from fuzzer import InterruptSource, RunConfig, hookimpl, routine

if TYPE_CHECKING:
    from fuzzer import Cpu

#: Only runs of this architecture call this plugin's hooks (see fuzzer._hookspec).
FUZZER_ARCH = "powerpc"

Gen = Generator[Any, None, Any]


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [smp_ipi_demux, perf_callchain_user_64, system_reset_exception]


@hookimpl
def fuzzer_interrupt_sources(config: RunConfig) -> list[InterruptSource]:
    sources = [
        InterruptSource("perf_pmi", perf_event_interrupt,
                        doc="a perf sampling interrupt that walks the user stack of current"),
        InterruptSource("system_reset", system_reset, nmi=True,
                        doc="system reset / machine check: ignores the soft mask"),
    ]
    if config.enabled("CONFIG_SMP"):
        sources.insert(0, InterruptSource("ipi", ipi, doc="an IPI (smp_call_function, reschedule)"))
    return sources


def ipi(cpu: Cpu) -> Gen:
    yield from cpu.k.smp_ipi_demux(cpu)


def perf_event_interrupt(cpu: Cpu) -> Gen:
    yield from cpu.k.perf_callchain_user_64(cpu)


def system_reset(cpu: Cpu) -> Gen:
    yield from cpu.k.system_reset_exception(cpu)


@routine("smp_ipi_demux", "arch/powerpc/kernel/smp.c")
def smp_ipi_demux(cpu: Cpu) -> Gen:
    """``smp_ipi_demux()`` (arch/powerpc/kernel/smp.c:315 v6.1): the call-function message runs
    ``generic_smp_call_function_interrupt`` -- this CPU's queued cross-CPU calls, if any."""
    yield from cpu.k.flush_smp_call_function_queue(cpu)


@routine("perf_callchain_user_64", "arch/powerpc/perf/callchain_64.c")
def perf_callchain_user_64(cpu: Cpu) -> Gen:
    """A PMI's user callchain (arch/powerpc/perf/callchain_64.c, v6.1-v6.2).

    ``get_perf_callchain`` walks the user stack only for a task with an mm
    (``task_pt_regs(current)``); each frame is ``read_user_stack_64`` ->
    ``copy_from_user_nofault`` of the back chain and the saved LR.
    """
    task = cpu.current
    yield
    if task.mm is None or not task.user_sp:
        return
    sp = task.user_sp
    for _ in range(2):
        nxt = cpu.m.copy_from_user(cpu, sp)
        yield
        if not nxt:
            return
        sp = nxt


@routine("system_reset_exception", "arch/powerpc/kernel/traps.c")
def system_reset_exception(cpu: Cpu) -> Gen:
    """``system_reset_exception()`` (arch/powerpc/kernel/traps.c): an NMI; touches no user memory."""
    yield
