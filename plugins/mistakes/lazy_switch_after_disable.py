"""CPU offline leaves the lazy mm only after clearing the CPU from every mm_cpumask (v6.12-fixed).

21641bd9a7a7 calls ``idle_task_prepare_exit()`` at the top of
``take_cpu_down()``, before ``__cpu_disable()``. This variant calls it after
``__cpu_disable()`` (and so after ``cleanup_cpu_mmu_context()``): the switch
away from the lazily used process mm then runs with the CPU already gone from that mm's cpumask, and
6.12's ``switch_mm_irqs_off`` warns (mmu_context.c:106). Only the modelled
lazy TLB, the offline path and that check show it; it needs a process to have
run on the CPU before it goes offline.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine
from fuzzer.kernel import V612_FIXED


@routine("take_cpu_down", "kernel/cpu.c", versions=V612_FIXED, override=True)
def take_cpu_down(cpu: Cpu) -> Generator[Any, None, Any]:
    """take_cpu_down with ``idle_task_prepare_exit`` after ``__cpu_disable``."""
    cpu.m.mmu.isync(cpu)  # woken by an IPI, as the original
    cpu.irqs_enabled = False
    yield
    yield from cpu.k.__cpu_disable(cpu)
    yield from cpu.k.idle_task_prepare_exit(cpu)


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [take_cpu_down]
