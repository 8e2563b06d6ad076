"""flush_tlb_kernel_range flushes only this CPU's TLB (Radix, v6.1).

The reasoning it encodes -- "only this CPU wrote through its alias, so only
its TLB can hold a translation" -- is right for the temporary mm, which one
CPU alone ever loads, and wrong for v6.1's alias: it lives in init_mm, which
every CPU has live, and a POWER core may load a translation of any mapped
address of a live context into its TLB speculatively. A CPU that did keeps a
writable alias of kernel text after the patch. No modelled code on another
CPU touches the alias: only speculative fills show it. Load with
``--kernel v6.1`` (Radix).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine

from ..radix import RADIX_TLB_C, RadixMmu


@routine("flush_tlb_kernel_range", RADIX_TLB_C, versions=("v6.1",), override=True,
         symbol="radix__flush_tlb_kernel_range")
def flush_tlb_kernel_range(cpu: Cpu, start: int, end: int) -> Generator[Any, None, Any]:
    """radix__flush_tlb_kernel_range with ``_tlbiel_va`` per page instead of ``_tlbie_pid(0)``."""
    m = cpu.m
    mmu = m.mmu
    assert isinstance(mmu, RadixMmu)
    yield
    mmu.ptesync(cpu)
    yield
    for va in range(start, end, m.run.page_size):
        mmu.tlbiel_va(cpu, m.init_mm, va)
    mmu.ptesync(cpu)


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [flush_tlb_kernel_range] if config.mmu == "radix" else []
