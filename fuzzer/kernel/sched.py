"""Preemption control (include/linux/preempt.h, smp.h, kernel/sched/core.c) for modelled routines.

With ``CONFIG_PREEMPT=y`` the search may preempt a task at any interleaving
point where :func:`preemptible` holds and resume it on another online CPU (a
``migrate`` step). A routine's ``cpu`` argument always names the CPU it runs
on now: read per-CPU data through it inside a section that cannot migrate
(interrupts off, :func:`preempt_disable`, :func:`get_cpu`, a spinlock,
:func:`migrate_disable`), as the kernel must; a value read from it before a
preemption point (``cpu.n``, ``cpu.state[...]``) still belongs to the CPU it
was read on, as ``smp_processor_id()``'s result does in the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fuzzer._machine import Cpu


def smp_processor_id(cpu: Cpu) -> int:
    """``smp_processor_id()``: the number of the CPU the caller runs on now."""
    return cpu.n


def preemptible(cpu: Cpu) -> bool:
    """``preemptible()``: preempt count 0 and interrupts enabled."""
    return cpu.preempt_count == 0 and cpu.irqs_enabled


def preempt_disable(cpu: Cpu) -> None:
    """``preempt_disable()``: no preemption, hence no migration, until the matching enable."""
    cpu.preempt_count += 1


def preempt_enable(cpu: Cpu) -> None:
    """``preempt_enable()``: the next interleaving point may preempt again."""
    cpu.preempt_count -= 1


def get_cpu(cpu: Cpu) -> int:
    """``get_cpu()``: ``preempt_disable()``, then ``smp_processor_id()``."""
    preempt_disable(cpu)
    return cpu.n


def put_cpu(cpu: Cpu) -> None:
    """``put_cpu()``: ``preempt_enable()``."""
    preempt_enable(cpu)


def migrate_disable(cpu: Cpu) -> None:
    """``migrate_disable()``: the task stays preemptible but resumes on this CPU."""
    cpu.current.migration_disabled += 1


def migrate_enable(cpu: Cpu) -> None:
    """``migrate_enable()``."""
    cpu.current.migration_disabled -= 1
