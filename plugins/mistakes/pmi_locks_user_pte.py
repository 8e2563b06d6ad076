"""The perf PMI walks the user stack under the PTE lock (v6.12): a lock taken in hardirq context.

A variant of ``perf_callchain_user_64`` that, instead of
``copy_from_user_nofault``, looks each stack word up with ``get_locked_pte``
on the task's mm and reads it under the split PTE lock. The PMI is a
hardirq here, and every split PTE lock is one lockdep class, which
``text_area_cpu_up_mm`` takes with interrupts on at CPU online: lockdep's
"inconsistent lock state" ({HARDIRQ-ON-W} -> {IN-HARDIRQ-W}, or the
reverse) at the first PMI after a CPU came online, or the first online
after a PMI. The deadlock it warns of -- a PMI landing on a CPU that holds
that very PTE lock -- needs a user PTE lock held with interrupts on, which
no modelled path takes: nothing but lockdep sees it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine


@routine("perf_callchain_user_64", "arch/powerpc/perf/callchain_64.c", versions=("v6.12",),
         override=True)
def perf_callchain_user_64(cpu: Cpu) -> Generator[Any, None, Any]:
    """perf_callchain_user_64 reading the back chain under the user PTE lock."""
    task = cpu.current
    yield
    if task.mm is None or not task.user_sp:
        return
    sp = task.user_sp
    for _ in range(2):
        got = yield from cpu.k.__get_locked_pte(cpu, task.mm, sp)
        if got is None:
            return
        pte, ptl = got
        nxt = cpu.m.copy_from_user(cpu, sp)
        yield from cpu.k.pte_unmap_unlock(cpu, pte, ptl)
        if not nxt:
            return
        sp = nxt


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [perf_callchain_user_64]
