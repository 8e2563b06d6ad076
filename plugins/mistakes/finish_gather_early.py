"""put_patching_mm finishes its mmu_gather before freeing the tables (v6.12-fixed).

A plausible misreading of the tlb_finish_mmu fix: ``tlb_finish_mmu`` moved up,
right after ``tlb_gather_mmu``. ``free_pgd_range`` then queues the PTE, PMD
and PUD tables in a fresh batch that nothing flushes: every CPU offline leaks
them and the batch page. The mm's ``pgtables_bytes`` is back to zero and the
mm is freed, so only the page-table ledger (end state "page-table memory
freed") shows it; it needs a CPU to go offline.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import MM, Cpu, RunConfig, hookimpl, routine
from fuzzer.kernel import CP, V612_FIXED


@routine("put_patching_mm", CP, versions=V612_FIXED, override=True, inlined=True)
def put_patching_mm(cpu: Cpu, mm: MM, addr: int) -> Generator[Any, None, Any]:
    """put_patching_mm with ``tlb_finish_mmu`` before ``free_pgd_range``."""
    k = cpu.k
    tlb = yield from k.tlb_gather_mmu(cpu, mm)
    yield from k.tlb_finish_mmu(cpu, tlb)
    yield from k.free_pgd_range(cpu, tlb, addr, addr + cpu.m.run.page_size)
    yield from k.mmput(cpu, mm)


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [put_patching_mm]
