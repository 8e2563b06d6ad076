"""Two decisions the hardware and the scheduler take behind the kernel's back.

*Speculative translation fills.* A POWER core may load a translation into its
TLB for any address mapped in a context it has live -- the mm it has loaded,
and init_mm's kernel mappings -- at any time, whether or not code touches the
address (the Power ISA lets an implementation load translations into its
TLB speculatively, and only ``tlbie``/``tlbiel`` remove them; that is why the
kernel flushes every CPU in ``mm_cpumask`` -- radix_tlb.c's
``flush_type_needed`` -- and kernel ranges globally, ``flush_tlb_kernel_range``).
The search chooses such a fill like any other step; the MMU plugin does it
(:meth:`fuzzer.Mmu.speculative_fill`).

*Preemption and migration* (kernel/sched/core.c). With ``CONFIG_PREEMPT``, a
task in process context with preemption and interrupts enabled may be
preempted at any interleaving point and resume on another CPU. Routines
receive ``cpu`` as an argument and keep it across their yields; so that
``cpu`` always means the CPU the routine runs on *now* (what
``smp_processor_id()`` reads), a migration exchanges the two CPU objects'
per-CPU state and leaves the task's state where it is: the routine's ``cpu``
then names the new CPU, while anything it read from it before (``cpu.n``, a
per-CPU object) still belongs to the old one -- as in the kernel. Nothing on
the emulator's hot path changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fuzzer._mmu import Mmu

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine
    from fuzzer._mm import MM

#: What moves with a task when it migrates: its activations and the execution
#: state the kernel keeps in the task or restores when it is switched back in
#: (the preempt count in ``thread_info``, the interrupt soft mask, which is
#: enabled whenever a task can be preempted). Everything else on a ``Cpu`` --
#: its number, online state, loaded mm, TLB, MMU registers, breakpoints,
#: per-CPU variables, idle task -- belongs to the CPU and stays with it.
TASK_STATE = ("stack", "wait", "irqs_enabled", "preempt_count", "irq_depth")


# -- speculative fills -----------------------------------------------------------------------


def speculates(m: Machine) -> bool:
    """Whether the MMU plugin models speculative fills (overrides the default)."""
    return type(m.mmu).speculative_fill is not Mmu.speculative_fill


def fill_context(m: Machine, cpu: Cpu, va: int) -> MM | None:
    """The mm whose translation of ``va`` ``cpu`` could load: init_mm for a kernel
    address, else the mm the CPU has loaded (None if that is not a user mm)."""
    if va >= m.layout.page_offset:
        return m.init_mm
    mm = cpu.loaded_mm
    return None if mm is None or mm.is_init or mm.freed else mm


def fill_candidates(m: Machine, cpu: Cpu) -> list[int]:
    """Every page ``cpu`` could load a translation of now: mapped in init_mm's kernel
    tables or in its loaded mm."""
    out = m.init_mm.mapped(m.layout.vmalloc_start)  # the linear map is not in the tables
    mm = fill_context(m, cpu, 0)
    if mm is not None:
        out.extend(mm.mapped(0))
    return out


def can_fill(m: Machine, cpu: Cpu, va: int) -> bool:
    if not (m.booted and cpu.online):
        return False
    mm = fill_context(m, cpu, va)
    return mm is not None and mm.lookup(va) is not None


# -- preemption and migration ----------------------------------------------------------------


def preempt_enabled(m: Machine) -> bool:
    """``CONFIG_PREEMPT`` (full preemption) is on."""
    return m.config.enabled("CONFIG_PREEMPT")


def preemptible(cpu: Cpu) -> bool:
    """``preemptible()`` for a task in process context that is ready to run and may
    change CPU: preempt count 0, interrupts on, not pinned, migration allowed."""
    stack = cpu.stack
    if not stack or stack[-1].kind != "task" or cpu.preempt_count or not cpu.irqs_enabled:
        return False
    task = stack[-1].task
    if task.pinned or task.migration_disabled:
        return False
    return cpu.wait is None or not cpu.wait()


def migration_targets(m: Machine, cpu: Cpu) -> list[Cpu]:
    """Online idle CPUs a preempted task on ``cpu`` can resume on (the model has no
    run queues: a preempted task resumes at once, on a CPU with nothing to run)."""
    return [c for c in m.cpus if c is not cpu and c.online and not c.stack]


def movable(m: Machine) -> list[Cpu]:
    """CPUs whose task could be preempted now and resume on another CPU (a ``migrate``
    step's choices, for the walk and the state machine alike)."""
    return [c for c in m.cpus if preemptible(c) and migration_targets(m, c)]


def can_migrate(m: Machine, cpu: Cpu, to: Cpu) -> bool:
    return (m.booted and preempt_enabled(m) and preemptible(cpu) and to is not cpu
            and to.online and not to.stack)


def migrate(m: Machine, cpu: Cpu, to: Cpu) -> None:
    """Preempt the task running on ``cpu`` and resume it on ``to``.

    ``schedule()`` on the old CPU switches to its idle task; the task is
    switched in on the new one (its mm loaded there). The ``Cpu`` object the
    task's routines hold becomes CPU ``to.n``; the other object becomes the old CPU.
    """
    task = cpu.current
    old, new = cpu.__dict__, to.__dict__
    keep_old = {k: old[k] for k in TASK_STATE}
    keep_new = {k: new[k] for k in TASK_STATE}
    snapshot = dict(old)
    old.clear()
    old.update(new)
    old.update(keep_old)
    new.clear()
    new.update(snapshot)
    new.update(keep_new)
    m.cpus[cpu.n] = cpu
    m.cpus[to.n] = to
    m.mmu.context_switch(to, to.idle_task)
    m.mmu.context_switch(cpu, task)
