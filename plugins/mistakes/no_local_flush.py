"""The local TLB flush after clearing the patching PTE dropped (v6.2).

The CPU keeps a translation of its patching address to the last page it
patched; the next patch of another page writes through the stale entry.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import MM, Cpu, RunConfig, hookimpl, routine


@routine("local_flush_tlb_page_psize", "arch/powerpc/mm/book3s64/radix_tlb.c",
         versions=("v6.2",), override=True, symbol="radix__local_flush_tlb_page_psize")
def local_flush_tlb_page_psize(cpu: Cpu, mm: MM, va: int) -> Generator[Any, None, Any]:
    """A flush that does nothing but order: ptesync without the tlbiel."""
    yield
    cpu.m.mmu.ptesync(cpu)


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [local_flush_tlb_page_psize] if config.mmu == "radix" else []
