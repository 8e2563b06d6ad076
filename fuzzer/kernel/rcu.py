"""RCU, the one model every user shares: read-side critical sections, grace periods, callbacks.

Readers. Since the RCU flavours were consolidated (v5.0), a region with
interrupts or preemption disabled is a read-side critical section, as is any
interrupt handler (:func:`in_rcu_reader`); so is an explicit
``rcu_read_lock()``/``rcu_read_unlock()`` pair (:func:`rcu_read_lock`). Tasks
RCU has no read-side markers: a task is a reader until it voluntarily
schedules; the model marks the code that matters (an optprobe's detour
buffer, run with preemption on) with :func:`tasks_rcu_enter`.

Grace periods. :func:`synchronize_rcu` returns once every CPU that was in a
read-side critical section when it was called has left it; a section that
starts meanwhile cannot see what the updater unpublished and is not waited
for. :func:`synchronize_rcu_tasks` waits for tasks-RCU readers too. The wait
is a pure function of the machine's state, so a replay waits exactly as the
run did; it may last a little longer than a real grace period, never less.

Callbacks. :func:`call_rcu` queues a function for after a grace period; the
model runs the queue (:func:`rcu_barrier`) when the machine is quiescent (every
CPU idle: the end of an example, or a quiescent point where the end-state
checks run) -- the kernel may run it sooner, which only frees memory sooner.
Users: ``unregister_kprobe`` (the insn slot), the optprobes plugin (detour
buffers), ``mmu_gather``'s RCU table free (``tlb_table_flush``,
:mod:`fuzzer.kernel.mm`).

Not replaceable: every model uses it as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._routines import routine
from fuzzer.kernel.locking import might_sleep

if TYPE_CHECKING:
    from fuzzer._machine import Activation, Cpu, Machine

Gen = Generator[Any, None, Any]

#: Where ``synchronize_rcu()``'s ``might_sleep()`` is: v6.1 reaches it through
#: ``wait_rcu_gp`` -> ``wait_for_completion`` (kernel/sched/completion.c:101);
#: 6.12's ``rcu_blocking_is_gp`` calls it first (kernel/rcu/tree.c:4027). The 6.1
#: source stands for next-20221215 and v6.2.
MIGHT_SLEEP = {"v6.1": "kernel/sched/completion.c:101", "next-20221215": "kernel/sched/completion.c:101",
               "v6.2": "kernel/sched/completion.c:101", "v6.12": "kernel/rcu/tree.c:4027"}


@attrs.define(eq=False)
class RcuState:
    """Machine-wide RCU state (``machine.state["rcu"]``)."""

    nesting: dict[Activation, int] = attrs.Factory(dict)
    """``rcu_read_lock()`` depth by the activation that took it. Kept with the activation,
    not the CPU: a preemptible RCU reader may migrate (``current->rcu_read_lock_nesting``)."""
    tasks: dict[Activation, int] = attrs.Factory(dict)
    """Tasks-RCU readers (trampoline code) by activation."""
    pending: list[Callable[[], None]] = attrs.Factory(list)
    """``call_rcu`` callbacks waiting for a grace period."""


def rcu_state(m: Machine) -> RcuState:
    s = m.state.get("rcu")
    if s is None:
        s = m.attach("rcu", RcuState())
    return s


def _enter(table: dict[Activation, int], cpu: Cpu) -> None:
    act = cpu.stack[-1]
    table[act] = table.get(act, 0) + 1


def _exit(table: dict[Activation, int], cpu: Cpu) -> None:
    act = cpu.stack[-1]
    left = table[act] - 1
    if left:
        table[act] = left
    else:
        del table[act]


def rcu_read_lock(cpu: Cpu) -> None:
    """``rcu_read_lock()`` (include/linux/rcupdate.h:787 v6.1, :845 v6.12): enter a read-side
    critical section; they nest."""
    _enter(rcu_state(cpu.m).nesting, cpu)


def rcu_read_unlock(cpu: Cpu) -> None:
    """``rcu_read_unlock()`` (include/linux/rcupdate.h:818 v6.1, :876 v6.12): the outermost
    one ends the section."""
    _exit(rcu_state(cpu.m).nesting, cpu)


def tasks_rcu_enter(cpu: Cpu) -> None:
    """Start running code that only tasks RCU protects (a trampoline): a tasks-RCU reader
    until :func:`tasks_rcu_exit`, preemptible or not."""
    _enter(rcu_state(cpu.m).tasks, cpu)


def tasks_rcu_exit(cpu: Cpu) -> None:
    """Leave that code (the branch back out of the trampoline)."""
    _exit(rcu_state(cpu.m).tasks, cpu)


def in_rcu_reader(cpu: Cpu) -> bool:
    """Whether ``cpu`` is inside an RCU read-side critical section now: interrupts or
    preemption off, an interrupt handler, or ``rcu_read_lock()`` held by an activation
    on its stack. An idle or offline CPU is in none."""
    if not cpu.stack or not cpu.online:
        return False
    if not cpu.irqs_enabled or cpu.preempt_count > 0 or cpu.irq_depth > 0:
        return True
    nesting = rcu_state(cpu.m).nesting
    return bool(nesting) and any(a in nesting for a in cpu.stack)


def in_tasks_rcu_reader(cpu: Cpu) -> bool:
    """Whether ``cpu`` runs code tasks RCU must wait out: a tasks-RCU reader, or any RCU
    reader (it has not voluntarily scheduled either)."""
    if not cpu.stack or not cpu.online:
        return False
    tasks = rcu_state(cpu.m).tasks
    return (bool(tasks) and any(a in tasks for a in cpu.stack)) or in_rcu_reader(cpu)


def _wait_for_readers(cpu: Cpu, reading: Callable[[Cpu], bool]) -> Gen:
    """Wait until no CPU is still in a section that had begun when this was called.

    The activations then on a reader's stack stand for its sections: the wait is
    over for them once none is on a stack that is still reading (they ended, or the
    CPU left its section). A section begun later in another activation is not waited
    for; one begun later in the same activation is, which only waits longer. The
    activations travel with a migrated task, so the wait follows it.
    """
    m = cpu.m
    snap = frozenset(a for c in m.cpus if c is not cpu and reading(c) for a in c.stack)

    def waiting() -> bool:
        return any(reading(c) and any(a in snap for a in c.stack) for c in m.cpus)

    yield
    if snap:
        while waiting():
            yield waiting


@routine("synchronize_rcu", "kernel/rcu/tree.c")
def synchronize_rcu(cpu: Cpu) -> Gen:
    """``synchronize_rcu()`` (kernel/rcu/tree.c:3569 v6.1, :4108 v6.12): wait for a grace
    period -- every reader (:func:`in_rcu_reader`) that had begun when it was called has
    finished. May sleep (``might_sleep``, :data:`MIGHT_SLEEP`)."""
    might_sleep(cpu, cpu.m.version.lookup(MIGHT_SLEEP, "synchronize_rcu's might_sleep line"))
    yield from _wait_for_readers(cpu, in_rcu_reader)


@routine("synchronize_rcu_tasks", "kernel/rcu/tasks.h")
def synchronize_rcu_tasks(cpu: Cpu) -> Gen:
    """``synchronize_rcu_tasks()`` (kernel/rcu/tasks.h:1001 v6.1, :1219 v6.12): wait until
    every task that was running has voluntarily scheduled -- in the model, until every
    tasks-RCU or RCU reader (:func:`in_tasks_rcu_reader`) of the time has left. May sleep."""
    might_sleep(cpu, cpu.m.version.lookup(MIGHT_SLEEP, "synchronize_rcu's might_sleep line"))
    yield from _wait_for_readers(cpu, in_tasks_rcu_reader)


def call_rcu(m: Machine, fn: Callable[[], None]) -> None:
    """``call_rcu()`` (kernel/rcu/tree.c:2820 v6.1, :3200 v6.12): ``fn`` runs after a grace
    period (see :func:`rcu_barrier`)."""
    rcu_state(m).pending.append(fn)


def rcu_barrier(m: Machine) -> None:
    """``rcu_barrier()`` (kernel/rcu/tree.c:4012 v6.1, :4578 v6.12) on a quiescent machine:
    every queued callback's grace period is over; run them, and any they queue."""
    s = rcu_state(m)
    while s.pending:
        pending, s.pending = s.pending, []
        for fn in pending:
            fn()
